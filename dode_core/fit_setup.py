"""What one distill was asked for, checked before any model call; and the user's model as the fit sees it: every
output checked for shape and finiteness, and counted for the progress callback."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .blackbox import ModelProxy, sigma_value
from .correction import all_finite
from .rules import AUTO, AUTO_MAX_HISTORY, MAX_HISTORY, MIN_BATCH, MIN_TEACHER_FACTOR, fit_size_problem
from .text import format_sigmas


@dataclass(frozen=True)
class FitOptions:
    """What one distill call was asked for, checked (see fit.distill)."""

    teacher_factor: int
    teacher: object
    history: int | str
    fit_schedule: bool | str  # False, True or "thorough"
    sigma_min: float
    extra_args: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # the student sampler's
    teacher_options: dict = field(default_factory=dict)  # the same, when the teacher is the student's function

    @property
    def max_terms(self) -> int:
        return AUTO_MAX_HISTORY if self.history == AUTO else int(self.history)


def check_inputs(x, sigmas, teacher_factor, history) -> None:
    """Clear errors for a schedule, latent or option that cannot be distilled."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch of latents (batch, ...); got {getattr(x, 'shape', type(x))}.")
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1:
        raise ValueError(f"sigmas must be a 1-D tensor; got {getattr(sigmas, 'shape', type(sigmas))}.")
    if len(sigmas) < 3:
        raise ValueError(f"the schedule has {max(len(sigmas) - 1, 0)} step(s); D-ODE corrects each call "
                         "from the previous ones, so it needs at least 2 steps.")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ValueError(f"sigmas must be finite and >= 0; got {format_sigmas(sigmas)}.")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError(f"sigmas must decrease; got {format_sigmas(sigmas)}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds non-finite values (NaN or inf); expected a finite start latent.")
    if isinstance(teacher_factor, bool) or not isinstance(teacher_factor, int) or teacher_factor < MIN_TEACHER_FACTOR:
        raise ValueError(f"teacher_factor must be an integer >= {MIN_TEACHER_FACTOR} (the teacher's error is measured "
                         f"against its own run at half the factor); got {teacher_factor!r}.")
    too_large = fit_size_problem(len(sigmas) - 1, teacher_factor)
    if too_large:
        raise ValueError(too_large)
    if history != AUTO and (isinstance(history, bool) or not isinstance(history, int)
                            or not 1 <= history <= MAX_HISTORY):
        raise ValueError(f"history must be 1 to {MAX_HISTORY} or '{AUTO}'; got {history!r}.")
    if x.shape[0] < MIN_BATCH:
        raise ValueError(f"D-ODE proves every fit on latents it was not fitted on (each latent against λ fitted on "
                         f"the others), so it needs a batch of at least {MIN_BATCH} latents (8 to 16 give a sharper "
                         f"proof); got {x.shape[0]}.")


class Progress:
    """Counts real model evaluations and reports ``callback(done, total)``; a raising callback cancels."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total)


class CheckedModel(ModelProxy):
    """The user's model, with every output checked for shape and finiteness and counted for progress."""

    def __init__(self, model, progress: Progress):
        super().__init__(model)
        self.progress, self.role = progress, "fit"
        self.dtype = ""  # of the last output, recorded in the λ file

    def __call__(self, x, sigma, **extra_args):
        denoised = self.inner(x, sigma, **extra_args)
        if not isinstance(denoised, torch.Tensor) or denoised.shape != x.shape:
            shape = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
            raise ValueError(f"the model returned {shape} for an input of shape {tuple(x.shape)} "
                             f"({self.role}, sigma {sigma_value(sigma):.4g}); expected the same shape.")
        if not all_finite(denoised):
            raise ValueError(f"the model returned non-finite values (NaN or inf) during the {self.role} at sigma "
                             f"{sigma_value(sigma):.4g}; no λ were fitted: check the model and its precision (try "
                             "float32 or bfloat16 instead of float16), and that the guidance scale is a number.")
        self.progress.step()
        self.dtype = str(denoised.dtype).removeprefix("torch.")
        return denoised
