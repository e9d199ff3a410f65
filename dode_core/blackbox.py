"""Running a sampler we did not write as a black box: probe its call sigmas, replay it from cached outputs.

A deterministic ODE sampler is a fixed function of the start latent and of the denoised outputs it is
given. So the state it passes to model call ``k + 1`` can be recomputed with no model evaluation at all:
run it again, hand it cached outputs for calls ``0..k``, and stop it (an exception) when it asks for call
``k + 1``. Samplers that inject noise or choose their own steps break this, and are refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch

from .karras import karras

log = logging.getLogger(__name__)


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


class _StandIn(ModelProxy):
    """A free denoiser for probe runs: answers call ``k`` with ``outputs(k, x)`` and records every call's sigma.

    It keeps no latent (so a probe over a long teacher grid costs O(1) memory) and notes the first call whose
    input is not finite.
    """

    def __init__(self, model, outputs=None, record_rows: bool = False):
        super().__init__(model)
        self.outputs = outputs or (lambda k, x: torch.zeros_like(x))
        self.sigmas: list[float] = []
        self.rows: list[torch.Tensor] = []  # the inputs themselves, only for the small coefficient probes
        self.record_rows = record_rows
        self.non_finite_call: int | None = None
        self.given_args = None  # the layout of the extra_args the run was started with
        self.name = ""

    def __call__(self, x, sigma, **extra_args):
        k = len(self.sigmas)
        if _layout(extra_args) != self.given_args:
            # e.g. ComfyUI's *_cfg_pp samplers register a post-CFG hook and step with the unconditional prediction
            _refuse(self.name, f"passes the model arguments of its own ({_layout(extra_args)} instead of "
                               f"{self.given_args}): it reads more from the model than the denoised output D-ODE "
                               "corrects")
        self.sigmas.append(sigma_value(sigma))
        if self.non_finite_call is None and not bool(torch.isfinite(x).all()):
            self.non_finite_call = k
        if self.record_rows:
            self.rows.append(x.detach().reshape(x.shape[0]).clone())
        return self.outputs(k, x)


@contextlib.contextmanager
def private_rng(seed: int | None = None):
    """Fork torch's generators (seeded with ``seed`` if given) and restore them afterwards: the host owns
    the random state, and k-diffusion's samplers draw from it even when they add no noise."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def tiny_latents(x: torch.Tensor, batch: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``batch`` one-element latents with ``x``'s number of dimensions, on its device, in ``dtype`` (default: x's,
    at least float32): probes run the sampler on these, since its coefficients do not depend on the latent's
    size."""
    dtype = dtype or torch.promote_types(x.dtype, torch.float32)
    return torch.zeros((batch,) + (1,) * (x.dim() - 1), dtype=dtype, device=x.device)


def _layout(value, depth: int = 0):
    """The key structure of (nested) extra_args, e.g. ``{'model_options': {'transformer_options': {}}}``."""
    if isinstance(value, dict) and depth < 4:
        return {str(key): _layout(item, depth + 1) for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)) and depth < 4:
        return len(value)
    return None


def _run_probe(model, start, sigmas, sampler, stand_in: _StandIn, extra_args, options, seed):
    with private_rng(seed):
        args = dict(extra_args or {})
        if seed is not None and "seed" in args:
            args["seed"] = seed  # noise seeded from extra_args (ComfyUI) must change with the probe's seed
        stand_in.given_args, stand_in.name = _layout(args), sampler_name(sampler)
        # a copy: ComfyUI's UniPC writes into the schedule it is given (timesteps = sigmas[:])
        return sampler(stand_in, start, sigmas.clone(), extra_args=args, callback=None, disable=True,
                       **(options or {}))


def probe_call_sigmas(model, x, sigmas, sampler, *, extra_args=None, options=None, seed=0):
    """The sigma of every model call ``sampler`` makes on ``sigmas``, from a run with a free stand-in.

    Returns ``(call_sigmas, final)``, ``final`` being the probe's one-element result. Costs no model evaluation
    and O(1) memory, whatever the number of steps.
    """
    stand_in = _StandIn(model)
    final = _run_probe(model, tiny_latents(x, 1), sigmas, sampler, stand_in, extra_args, options, seed)
    return stand_in.sigmas, final


@dataclass
class Step:
    """How the state after model call ``k`` follows from what the fit already holds:

        x_next = alpha * x_k + gamma * x_start + sum_i betas[i] * D~_{first + i},   i = 0 .. k - first

    ``x_k`` is the input of call ``k``, ``D~`` the (corrected) outputs the sampler was given; ``x_next`` is the
    input of call ``k + 1``, or the sampler's result after the last call.
    """

    alpha: float
    gamma: float
    first: int
    betas: list[float]

    @property
    def own(self) -> float:
        """The weight of this call's own output D~_k in x_next: how its λ moves the next state."""
        return self.betas[-1]


@dataclass
class SamplerMap:
    """A deterministic sampler on one schedule, as the affine map it is: its call sigmas and, per call, the Step
    that gives the next state. Measured on one-element latents, at no model cost."""

    call_sigmas: list[float]
    steps: list[Step]

    @property
    def outputs_kept(self) -> int:
        """How many recent outputs the steps refer to (the window a run must keep)."""
        return max((len(step.betas) for step in self.steps), default=0)

    @property
    def needs_start(self) -> bool:
        return any(step.gamma != 0.0 for step in self.steps)


def _refuse(name: str, why: str):
    raise SamplerRefusedError(
        f"sampler '{name}' {why}; D-ODE needs a deterministic ODE sampler with fixed steps that is affine in the "
        "denoised output (euler, heun, dpmpp_2m, lms, ipndm, deis, ...): ancestral and SDE samplers cannot be "
        "distilled."
    )


def _check_finite(name: str, stand_in: _StandIn, final: torch.Tensor, schedule: str) -> None:
    if stand_in.non_finite_call is not None or not bool(torch.isfinite(final).all()):
        where = (f"at model call {stand_in.non_finite_call} (sigma {stand_in.sigmas[stand_in.non_finite_call]:.4g})"
                 if stand_in.non_finite_call is not None else "in its result")
        _refuse(name, f"produced non-finite values (NaN or inf) {where} on {schedule}")


def _check_calls_decrease(name: str, call_sigmas: list[float], schedule: str) -> None:
    """A sampler walks from noise to data; one whose stage calls go back up (heunpp2 evaluates sigma_{i+2}, then
    sigma_{i+1} again) has no single noise level per call for a teacher state, and a λ file holds call sigmas
    that never rise."""
    for k in range(1, len(call_sigmas)):
        if call_sigmas[k] > call_sigmas[k - 1] * (1 + 1e-6) + 1e-12:
            _refuse(name, f"calls the model at sigma {call_sigmas[k]:.4g} after sigma {call_sigmas[k - 1]:.4g} (model "
                          f"call {k}) on {schedule}: its stage sigmas rise, so its calls have no single order from "
                          "noise to data")


MAX_WINDOW = 8  # outputs a step may refer to before the map keeps the whole history


def _fit_step(row: torch.Tensor, next_row: torch.Tensor, k: int, eps: float) -> Step:
    """The Step from coefficient rows over ``[x_start, D_0, ..., D_{calls-1}]``: the shortest window of recent
    outputs with ``next_row = alpha * row + window``; failing that, the whole history and the start latent."""
    scale = float(next_row.abs().max()) + float(row.abs().max()) + 1e-300
    tol = 1e3 * eps * scale
    for first in range(k, max(-1, k - MAX_WINDOW), -1):
        outside = torch.cat([row[:1], row[1 : 1 + first]]), torch.cat([next_row[:1], next_row[1 : 1 + first]])
        energy = float(outside[0] @ outside[0])
        alpha = float(outside[0] @ outside[1]) / energy if energy > 0 else 0.0
        if float((outside[1] - alpha * outside[0]).abs().max()) <= tol:
            betas = (next_row[1 + first : 2 + k] - alpha * row[1 + first : 2 + k]).tolist()
            return Step(alpha=alpha, gamma=0.0, first=first, betas=betas)
    return Step(alpha=0.0, gamma=float(next_row[0]), first=0, betas=next_row[1 : 2 + k].tolist())


def measure_sampler(model, x, sigmas, sampler, *, extra_args=None, options=None, role: str = "") -> SamplerMap:
    """The affine map of ``sampler`` on ``sigmas`` (see _measure), with float64 coefficients where the device has
    float64 and the sampler runs in it (a step like Heun's into sigma_min weighs outputs by +-250: float32
    coefficients would be off by more than the run's own rounding); else in the latent's own dtype."""
    if x.device.type in ("cpu", "cuda") and x.dtype != torch.float64:
        try:
            return _measure(model, x, sigmas.double(), sampler, extra_args, options, role, torch.float64)
        except SamplerRefusedError:
            raise
        except (RuntimeError, TypeError) as error:  # a dtype clash (ComfyUI's UniPC mixes float32 tables into the
            # state): probe in the latent's own dtype, as the run will be
            log.debug("probing %s in float64 failed (%s); probing in %s", sampler_name(sampler), error, x.dtype)
    return _measure(model, x, sigmas, sampler, extra_args, options, role, None)


def _measure(model, x, sigmas, sampler, extra_args, options, role, dtype) -> SamplerMap:
    """Probe ``sampler`` on ``sigmas`` with free stand-ins and return its affine map, or refuse it.

    Four runs on one-element latents: zeros (the call sigmas), the unit basis (x_start and every D_k in turn: the
    coefficient rows), and twice random values with different seeds (noise injection: the two differ; adaptive
    steps: other call sigmas; not affine: the rows do not predict them). A state that is not finite is named as
    such. No model evaluation; memory O(calls^2) numbers, not latents.
    """
    name = sampler_name(sampler)
    schedule = f"this schedule{f' ({role})' if role else ''}"
    zeros = _StandIn(model)
    final = _run_probe(model, tiny_latents(x, 1, dtype), sigmas, sampler, zeros, extra_args, options, seed=1)
    _check_finite(name, zeros, final, schedule)
    _check_calls_decrease(name, zeros.sigmas, schedule)
    calls = len(zeros.sigmas)

    # unit basis: latent 0 starts at 1 and gets D = 0; latent 1 + i starts at 0 and gets D_k = [k == i]
    basis = tiny_latents(x, calls + 1, dtype)
    basis[0] = 1.0
    hot = torch.eye(calls + 1, dtype=basis.dtype, device=basis.device)[:, 1:]

    def unit_outputs(k, x_k):
        return hot[:, k].reshape(x_k.shape).to(x_k.dtype) if k < calls else torch.zeros_like(x_k)

    rows = _StandIn(model, unit_outputs, record_rows=True)
    final = _run_probe(model, basis, sigmas, sampler, rows, extra_args, options, seed=1)
    if rows.sigmas != zeros.sigmas:
        _refuse(name, f"chose other steps when its model's outputs changed (it adapts its steps) on {schedule}")
    _check_finite(name, rows, final, schedule)
    matrix = torch.stack(rows.rows + [final.reshape(-1)]).to("cpu", torch.float64)  # (calls + 1, 1 + calls)

    generator = torch.Generator().manual_seed(12345)
    start = torch.randn((3,) + basis.shape[1:], generator=generator, dtype=torch.float64) * (1 + float(sigmas[0]))
    answers = torch.randn(calls + 1, 3, generator=generator, dtype=torch.float64)

    def random_outputs(k, x_k):
        return answers[min(k, calls)].reshape(x_k.shape).to(x_k)

    runs = []
    for seed in (2, 3):
        stand_in = _StandIn(model, random_outputs, record_rows=True)
        result = _run_probe(model, start.to(basis), sigmas, sampler, stand_in, extra_args, options, seed=seed)
        if stand_in.sigmas != zeros.sigmas:
            _refuse(name, f"chose other steps when its model's outputs changed (it adapts its steps) on {schedule}")
        _check_finite(name, stand_in, result, schedule)
        runs.append(torch.stack(stand_in.rows + [result.reshape(-1)]).to("cpu", torch.float64))
    if not torch.equal(runs[0], runs[1]):
        _refuse(name, "injects noise: two runs from the same latent with different seeds gave different results")
    predicted = matrix @ torch.cat([start.reshape(1, -1), answers[:calls]]).to(matrix)
    eps = torch.finfo(basis.dtype).eps
    if not torch.allclose(predicted, runs[0], rtol=1e4 * eps, atol=1e4 * eps * float(runs[0].abs().max())):
        _refuse(name, "is not affine in the denoised output (its unit-output probes do not predict a random one)")
    steps = [_fit_step(matrix[k], matrix[k + 1], k, eps) for k in range(calls)]
    return SamplerMap(call_sigmas=zeros.sigmas, steps=steps)


def check_deterministic(model, x, sigmas, sampler, *, extra_args=None, options=None, role: str = "") -> list[float]:
    """The call sigmas of ``sampler`` on ``sigmas``, after two free runs on one random one-element latent with the
    same stand-in outputs and different seeds: refused if they differ (noise, or steps that depend on the random
    state) or are not finite. O(calls) numbers of memory: fit for a long teacher grid."""
    name = sampler_name(sampler)
    generator = torch.Generator().manual_seed(54321)
    start = torch.randn(tiny_latents(x, 1).shape, generator=generator, dtype=torch.float64) * (1 + float(sigmas[0]))
    start = start.to(tiny_latents(x, 1))
    answers: list[torch.Tensor] = []

    def random_outputs(k, x_k):
        while len(answers) <= k:
            answers.append(torch.randn(x_k.shape, generator=generator, dtype=torch.float64))
        return answers[k].to(x_k)

    runs = []
    for seed in (1, 2):
        stand_in = _StandIn(model, random_outputs, record_rows=True)
        final = _run_probe(model, start.clone(), sigmas, sampler, stand_in, extra_args, options, seed=seed)
        _check_finite(name, stand_in, final, f"this schedule{f' ({role})' if role else ''}")
        runs.append((stand_in.sigmas, torch.cat(stand_in.rows + [final.reshape(-1)])))
    if runs[0][0] != runs[1][0] or not torch.equal(runs[0][1], runs[1][1]):
        _refuse(name, "injects noise: two runs from the same latent with different seeds gave different results")
    return runs[0][0]


def default_probe_sigmas() -> torch.Tensor:
    """A typical 8-step Karras schedule of a latent-diffusion model (sigma 14.6 to 0.03, then 0), for checks that
    have no schedule of their own."""
    sigmas = karras(14.61, 0.0292, 8)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def refusal_reason(sampler, *, options=None, sigmas=None, extra_args=None, model=None) -> str | None:
    """Why D-ODE cannot fit ``sampler`` (injects noise, adapts its steps, not affine, non-finite, does not call
    the model at every step), or None when it can. Free: it runs only on stand-ins. Hosts build their sampler
    lists with it from the samplers they offer at run time, passing as ``model`` an object with the attributes
    their samplers read from the model (ComfyUI's read ``model.inner_model...model_sampling``)."""
    sigmas = default_probe_sigmas().float() if sigmas is None else sigmas
    try:
        sampler_map = measure_sampler(model, torch.zeros(1, 4, 1, 1), sigmas, sampler, extra_args=extra_args,
                                      options=options)
        check_follows_schedule(sampler_map, sigmas, sampler_name(sampler))
    except SamplerRefusedError as error:
        return str(error)
    except Exception as error:  # a sampler that cannot even run on a stand-in is not one we can fit
        return f"sampler '{sampler_name(sampler)}' cannot run on a stand-in model ({type(error).__name__}: {error})"
    return None


def check_follows_schedule(sampler_map: SamplerMap, sigmas, name: str) -> None:
    """The student's state at every schedule sigma but the last is what it passes to the model there, so it must
    call the model at each of them, in order (stage calls in between are fine); its result is the state at the
    last sigma."""
    wanted = [float(s) for s in sigmas[:-1]]
    calls = iter(sampler_map.call_sigmas)
    for sigma in wanted:
        if not any(math.isclose(c, sigma, rel_tol=1e-5, abs_tol=1e-8) for c in calls):
            _refuse(name, f"does not call the model at sigma {sigma:.4g} of the schedule (its model calls are at "
                          f"{', '.join(f'{c:.4g}' for c in sampler_map.call_sigmas)})")


def close_enough(actual: torch.Tensor, expected: torch.Tensor, scale: float) -> bool:
    """Equal up to rounding in ``actual``'s dtype, relative to ``scale`` (the norm of the terms summed).

    The bound (1e-6 to 1e-2 relative; 3.6e-3 in float32, where ComfyUI's UniPC loses 1e-3 dividing by its last
    sigma) is far below what injected noise or a clamp changes.
    """
    eps = torch.finfo(actual.dtype).eps if actual.dtype.is_floating_point else 1e-7
    rel_tol = min(max(3e4 * eps, 1e-6), 1e-2)
    # in actual's dtype, on expected's device: no float64 on devices that lack it
    error = float((actual.to(expected.device, expected.dtype) - expected).norm())
    return math.isfinite(error) and error <= rel_tol * max(scale, 1e-12)
