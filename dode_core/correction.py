"""The D-ODE correction of a denoiser's output, and samplers that apply fitted λ.

    D~_k = D_k + sum_j lambda[k, j-1] * (D_{k-j+1} - D_{k-j}),   j = 1..history, terms with k-j < 0 absent

``D_k`` is the raw output of model call ``k``; the base sampler receives ``D~_k`` and is not changed.
"""

from __future__ import annotations

import functools
import math

import torch

from .blackbox import ModelProxy, probe_call_sigmas, sampler_name, sigma_value
from .lambdas_file import SIGMA_RTOL, Lambdas, ScheduleMismatchError


def working_precision(denoised: torch.Tensor) -> torch.Tensor:
    """At least float32: history terms and corrections of a float16/bfloat16 model are formed without re-rounding."""
    return denoised.to(torch.promote_types(denoised.dtype, torch.float32))


def differences(raw_outputs: list[torch.Tensor], history: int) -> list[torch.Tensor]:
    """The history terms at the newest call: ``[D_k - D_{k-1}, D_{k-1} - D_{k-2}, ...]``, at most ``history``."""
    count = min(history, len(raw_outputs) - 1)
    return [raw_outputs[-j] - raw_outputs[-j - 1] for j in range(1, count + 1)]


def apply_correction(denoised: torch.Tensor, terms: list[torch.Tensor], lambdas_k: torch.Tensor) -> torch.Tensor:
    """``D~ = D + sum_j lambdas_k[j] * terms[j]``; ``lambdas_k`` is (history,) or (history, channels).

    All-zero λ return ``denoised`` itself, so λ = 0 reproduces the base sampler bit for bit. Otherwise the
    sum is formed in at least float32: a float16 model's output is not rounded again after the correction.
    """
    if not terms or not bool(lambdas_k.any()):
        return denoised
    corrected = working_precision(denoised).clone()
    for lam, term in zip(lambdas_k.to(denoised.device), terms, strict=False):  # λ beyond the terms are 0
        if lam.dim() == 1:  # one λ per latent channel (dim 1)
            lam = lam.view(1, -1, *([1] * (term.dim() - 2)))
        corrected += lam * term
    return corrected


class DODEDenoiser(ModelProxy):
    """Wraps ``model(x, sigma, **extra_args) -> denoised`` and applies fitted λ call by call.

    One instance serves one sampler run; it keeps only the raw outputs the history terms need.
    """

    def __init__(self, model, lam: Lambdas):
        super().__init__(model)
        self.lam = lam
        self.raw_outputs: list[torch.Tensor] = []
        self.count = 0

    def __call__(self, x, sigma, **extra_args):
        k = self.count
        self.count += 1
        sigma_k = sigma_value(sigma)
        if k >= self.lam.calls or not math.isclose(sigma_k, self.lam.call_sigmas[k], rel_tol=SIGMA_RTOL, abs_tol=1e-8):
            raise ScheduleMismatchError(
                f"model call {k} is at sigma {sigma_k:.4g}, which the λ file does not expect "
                f"(it has {self.lam.calls} calls); the sampler chose steps of its own."
            )
        denoised = self.inner(x, sigma, **extra_args)
        self.raw_outputs.append(working_precision(denoised))
        del self.raw_outputs[: -(self.lam.history + 1)]
        return apply_correction(denoised, differences(self.raw_outputs, self.lam.history), self.lam.lambdas[k])


def make_sampler(sampler, lam: Lambdas):
    """A k-diffusion-signature sampler that runs ``sampler`` with D-ODE λ applied to every model call."""

    @functools.wraps(sampler)
    def dode_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return sample(model, x, sigmas, sampler, lam, extra_args=extra_args, callback=callback,
                      disable=disable, **options)

    dode_sampler.__name__ = dode_sampler.__qualname__ = f"sample_dode_{sampler_name(sampler)}"
    return dode_sampler


def sample(model, x, sigmas, sampler, lam: Lambdas, *, extra_args=None, callback=None, disable=None, **options):
    """Run ``sampler`` with ``lam`` applied; the schedule is checked against the file before any model call."""
    call_sigmas, _ = probe_call_sigmas(model, x, sigmas, sampler, extra_args=extra_args, options=options)
    lam.check_call_sigmas(call_sigmas)
    return sampler(DODEDenoiser(model, lam), x, sigmas, extra_args=extra_args or {}, callback=callback,
                   disable=disable, **options)
