"""Running a sampler we did not write as a black box: probe its call sigmas, replay it from cached outputs.

A deterministic ODE sampler is a fixed function of the start latent and of the denoised outputs it is
given. So the state it passes to model call ``k + 1`` can be recomputed with no model evaluation at all:
run it again, hand it cached outputs for calls ``0..k``, and stop it (an exception) when it asks for call
``k + 1``. Samplers that inject noise or choose their own steps break this, and are refused.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch


class SamplerRefusedError(ValueError):
    """The sampler cannot be distilled: it injects noise, adapts its steps, or is not affine in D."""


class ModelProxy:
    """Base for denoiser wrappers: forwards attribute reads to the wrapped model.

    Host samplers read attributes of the model they are given (ComfyUI: ``model.inner_model``), so a
    wrapper must look like the model it wraps.
    """

    def __init__(self, model):
        self.inner = model

    def __getattr__(self, name):
        # only reached for names this wrapper lacks; guard "inner" so a half-built proxy cannot recurse
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def sigma_value(sigma) -> float:
    """A python float from a sigma argument (a scalar or a per-sample tensor, as hosts pass it)."""
    if isinstance(sigma, torch.Tensor):
        return float(sigma.reshape(-1)[0])
    return float(sigma)


def sampler_name(sampler) -> str:
    """``sample_dpmpp_2m`` -> ``dpmpp_2m``: the name hosts show and λ files record."""
    name = getattr(sampler, "__name__", type(sampler).__name__)
    return name.removeprefix("sample_")


@dataclass
class ModelCall:
    """What a sampler passed to the model at one call."""

    x: torch.Tensor
    sigma: object
    extra_args: dict


class _Stop(BaseException):
    # BaseException, so that a sampler's own `except Exception` cannot swallow it
    def __init__(self, call: ModelCall):
        super().__init__()
        self.call = call


class _StandIn(ModelProxy):
    """A free denoiser (returns zeros) that records the sigma and the input of every call."""

    def __init__(self, model):
        super().__init__(model)
        self.sigmas: list[float] = []
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x, sigma, **extra_args):
        self.sigmas.append(sigma_value(sigma))
        self.inputs.append(x.detach().clone())
        return torch.zeros_like(x)


class _Replayer(ModelProxy):
    """Returns cached outputs for calls ``0..len(outputs)-1``, then stops the run at the next call."""

    def __init__(self, model, outputs: list[torch.Tensor]):
        super().__init__(model)
        self.outputs = outputs
        self.count = 0

    def __call__(self, x, sigma, **extra_args):
        k = self.count
        self.count += 1
        if k == len(self.outputs):
            raise _Stop(ModelCall(x, sigma, extra_args))
        return self.outputs[k]


@contextlib.contextmanager
def private_rng(seed: int | None = None):
    """Fork torch's generators (seeded with ``seed`` if given) and restore them afterwards: the host owns
    the random state, and k-diffusion's samplers draw from it even when they add no noise."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def probe_call_sigmas(model, x, sigmas, sampler, *, extra_args=None, options=None, seed=0):
    """The sigma of every model call ``sampler`` makes on ``sigmas``, from a run with a free stand-in.

    Returns ``(call_sigmas, states)``: the states passed to each call, then the result. Runs one latent
    and costs no model evaluation.
    """
    stand_in = _StandIn(model)
    with private_rng(seed):
        final = sampler(stand_in, x[:1].clone(), sigmas, extra_args=dict(extra_args or {}), callback=None,
                        disable=True, **(options or {}))
    return stand_in.sigmas, stand_in.inputs + [final]


def check_deterministic(model, x, sigmas, sampler, *, extra_args=None, options=None) -> list[float]:
    """Probe ``sampler`` twice with different random seeds; refuse it if the two runs differ.

    Noise drawn from torch's global generator and noise seeded from ``extra_args["seed"]`` (as ComfyUI's
    samplers do) both change between the two runs. Returns the call sigmas.
    """
    name = sampler_name(sampler)
    runs = []
    for seed in (1, 2):
        args = dict(extra_args or {}, seed=seed)
        runs.append(probe_call_sigmas(model, x, sigmas, sampler, extra_args=args, options=options, seed=seed))
    (sigmas_a, states_a), (sigmas_b, states_b) = runs
    if sigmas_a != sigmas_b:
        raise SamplerRefusedError(
            f"sampler '{name}' chose different steps in two runs on the same schedule; D-ODE needs a "
            "sampler with fixed steps (euler, heun, dpmpp_2m, lms, dpm_2, ipndm, deis, ...)."
        )
    if not all(torch.equal(a, b) for a, b in zip(states_a, states_b, strict=True)):
        raise SamplerRefusedError(
            f"sampler '{name}' injects noise: two runs from the same latent with different seeds gave "
            "different results. D-ODE needs a deterministic ODE sampler (euler, heun, dpmpp_2m, lms, "
            "dpm_2, ipndm, deis, ...); ancestral and SDE samplers cannot be distilled."
        )
    return sigmas_a


def replay(model, x, sigmas, sampler, outputs, *, extra_args=None, options=None):
    """Run ``sampler`` with ``outputs`` as the model's answers to its first calls.

    Returns ``(next_call, None)`` when it asks for one more call (a ``ModelCall``), ``(None, final_state)``
    when it finished.
    """
    replayer = _Replayer(model, outputs)
    try:
        # a fresh copy each time: a sampler that updates x in place must not change the caller's latent
        final = sampler(replayer, x.clone(), sigmas, extra_args=dict(extra_args or {}), callback=None,
                        disable=True, **(options or {}))
    except _Stop as stop:
        return stop.call, None
    return None, final


def close_enough(actual: torch.Tensor, expected: torch.Tensor, scale: float) -> bool:
    """Equal up to rounding in ``actual``'s dtype, relative to ``scale`` (the norm of the terms summed).

    The bound (1e-6 to 1e-2 relative) is far below what injected noise or a clamp changes.
    """
    eps = torch.finfo(actual.dtype).eps if actual.dtype.is_floating_point else 1e-7
    rel_tol = min(max(1e3 * eps, 1e-6), 1e-2)
    error = float((actual.double() - expected.double()).norm())
    return math.isfinite(error) and error <= rel_tol * max(scale, 1e-12)
