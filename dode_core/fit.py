"""The closed-form, greedy λ fit over a black-box sampler, proved on every latent against what the user runs.

At model call k every standard ODE sampler is affine in the denoised output it is given, so the state it
reaches next is affine in the λ of that call:

    x_next(lambda) = x_next(0) + sum_j lambda_j * v_j,    v_j = beta_k * term_j,

where ``beta_k`` is the weight of this call's output in the next state (measured on free stand-in probes,
blackbox.measure_sampler) and ``term_j = D_{k-j+1} - D_{k-j}``. lambda_k is the least-squares fit of
``x_next`` to the teacher's state at the same sigma, summed in float64 over the batch (crossfit.fit_call).

A fit costs, in runs of the model over the batch:

    teacher (factor F) + teacher (factor F/2, its convergence estimate) + student + base

The student runs once, live: λ_k is fitted inside model call k, and every latent is handed the output corrected
with λ fitted *without* it (leave one out), so its final state is an honest, held-out D-ODE result. The base
run is what the user runs without the plugin: the base sampler on the user's schedule. D-ODE is delivered only
if it beats that base on the batch by more than chance (crossfit.proves_gain). With ``fit_schedule`` the
teacher runs on a dense grid instead, and a second student run and base run try the fitted schedule; the better
D-ODE of the two schedules is delivered, still judged against the base on the user's.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from dataclasses import dataclass, field, replace

import torch

from .blackbox import (
    ModelProxy,
    SamplerMap,
    SamplerRefusedError,
    check_follows_schedule,
    close_enough,
    measure_sampler,
    private_rng,
    sampler_name,
    sigma_value,
)
from .correction import all_finite, differences, working_precision
from .crossfit import CallFit, batch_stats, dots, fit_call, proves_gain
from .lambdas_file import Lambdas, format_sigmas
from .schedule import check_calls_on_schedule, dense_grid, merge_points, run_dense_teacher, schedule_range
from .teacher import (
    check_teacher,
    convergence_error,
    half_grid,
    model_sigma_min,
    run_teacher,
    sample_dpmpp_2m_teacher,
    student_points,
    teacher_order,
    teacher_sigmas,
)
from .version import __version__

log = logging.getLogger(__name__)

AUTO_MAX_HISTORY = 3
MIN_BATCH = 4  # every latent is judged by λ fitted on the others: fewer cannot show a gain beyond chance
MAX_TEACHER_STEPS = 20_000  # steps x teacher_factor: beyond this a fit is a mistake, not a wish
# the teacher must be clearly closer to the ODE's end than the base sampler it proves D-ODE against
TEACHER_MARGIN = 0.25


class NoGainError(ValueError):
    """D-ODE was not better than the base sampler on the batch (each latent judged with λ fitted without it);
    no λ are delivered."""


class TeacherNotConvergedError(ValueError):
    """The teacher run is not clearly closer to the ODE's end than the base sampler: it cannot prove anything."""


@dataclass(frozen=True)
class FitOptions:
    """What one distill call was asked for, checked (see distill)."""

    teacher_factor: int
    teacher: object
    history: int | str
    fit_schedule: bool
    sigma_min: float
    extra_args: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # the student sampler's
    teacher_options: dict = field(default_factory=dict)  # the same, when the teacher is the student's function

    @property
    def max_terms(self) -> int:
        return AUTO_MAX_HISTORY if self.history == "auto" else int(self.history)


class _Progress:
    """Counts real model evaluations and reports ``callback(done, total)``; a raising callback cancels."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total)


class _CheckedModel(ModelProxy):
    """The user's model, with every output checked for shape and finiteness and counted for progress."""

    def __init__(self, model, progress: _Progress):
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
            hint = ("the guidance scale (cfg) in extra_args is not finite" if _non_finite_cfg(extra_args) else
                    "check the model and its precision (try float32 or bfloat16 instead of float16)")
            raise ValueError(f"the model returned non-finite values (NaN or inf) during the {self.role} "
                             f"at sigma {sigma_value(sigma):.4g}; no λ were fitted: {hint}.")
        self.progress.step()
        self.dtype = str(denoised.dtype).removeprefix("torch.")
        return denoised


def _non_finite_cfg(extra_args) -> bool:
    value = extra_args.get("cond_scale", extra_args.get("cfg"))
    return isinstance(value, (int, float)) and not math.isfinite(value)


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
    if isinstance(teacher_factor, bool) or not isinstance(teacher_factor, int) or teacher_factor < 2:
        raise ValueError(f"teacher_factor must be an integer >= 2 (the teacher's error is measured against its "
                         f"own run at half the factor); got {teacher_factor!r}.")
    if (len(sigmas) - 1) * teacher_factor > MAX_TEACHER_STEPS:
        raise ValueError(f"steps x teacher_factor = {len(sigmas) - 1} x {teacher_factor} is over "
                         f"{MAX_TEACHER_STEPS}; the teacher would make at least that many model calls. "
                         "Use fewer steps or a smaller teacher_factor (10 is plenty).")
    if history != "auto" and (isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= 8):
        raise ValueError(f"history must be 1 to 8 or 'auto'; got {history!r}.")
    if x.shape[0] < MIN_BATCH:
        raise ValueError(f"D-ODE proves every fit on latents it was not fitted on (each latent against λ fitted on "
                         f"the others), so it needs a batch of at least {MIN_BATCH} latents (8 to 16 give a sharper "
                         f"proof); got {x.shape[0]}.")


class _CrossFitRun(ModelProxy):
    """The student run, driven by the real sampler once: at call k it reads the state the sampler passes, checks
    it against the state the sampler's affine map predicted, calls the model, fits λ_k (crossfit.fit_call) and
    hands back each latent's output corrected with the λ fitted without it. Holds O(history + window)
    full-batch tensors."""

    def __init__(self, model, name, sampler_map: SamplerMap, targets, history, max_terms: int):
        super().__init__(model)
        self.name, self.map, self.targets = name, sampler_map, targets
        self.history, self.max_terms = history, max_terms
        self.raw: list[torch.Tensor] = []  # the last max_terms + 1 raw outputs (working precision)
        self.given: list[torch.Tensor] = []  # the last outputs_kept corrected outputs the sampler was given
        self.start: torch.Tensor | None = None
        self.predicted: torch.Tensor | None = None  # the next input the map predicts
        self.predicted_scale = 0.0  # the norms of the terms summed into it, for the rounding tolerance
        self.fits: list[CallFit] = []

    def refuse(self, why: str):
        raise SamplerRefusedError(f"sampler '{self.name}' {why}; D-ODE needs a deterministic ODE sampler with "
                                  "fixed steps that is affine in the denoised output (euler, heun, dpmpp_2m, ...).")

    def check_state(self, actual: torch.Tensor, where: str) -> None:
        if not close_enough(actual.to(self.predicted.dtype), self.predicted, self.predicted_scale):
            self.refuse(f"did not reach the state its stand-in probes predicted {where} (it injects noise, keeps "
                        "state between runs, or is not affine in the denoised output)")

    def __call__(self, x, sigma, **extra_args):
        k = len(self.fits)
        calls = len(self.map.call_sigmas)
        if k >= calls or not math.isclose(sigma_value(sigma), self.map.call_sigmas[k], rel_tol=1e-5, abs_tol=1e-8):
            self.refuse(f"made model call {k} at sigma {sigma_value(sigma):.4g}, not as on its free probe run "
                        "(it adapts its steps)")
        if k == 0:
            self.start = x.detach().clone() if self.map.needs_start else None
        else:
            self.check_state(x, f"at model call {k}")
        denoised = working_precision(self.inner(x, sigma, **extra_args))
        self.raw.append(denoised)
        del self.raw[: -(self.max_terms + 1)]
        terms = differences(self.raw, self.max_terms)

        # x_next(λ) = x_zero + own * sum_j λ_j term_j, all in the outputs' working precision
        step = self.map.steps[k]
        x_zero = x.to(denoised.dtype) * step.alpha
        scale = abs(step.alpha) * float(x.norm())
        if step.gamma:
            x_zero.add_(self.start.to(denoised.dtype), alpha=step.gamma)
            scale += abs(step.gamma) * float(self.start.norm())
        earlier = self.given[len(self.given) - (len(step.betas) - 1):] if len(step.betas) > 1 else []
        for beta, output in zip(step.betas, earlier + [denoised], strict=True):
            x_zero.add_(output, alpha=beta)
            scale += abs(beta) * float(output.norm())
        directions = [term * step.own for term in terms]

        call_fit = self._fit(x_zero, directions, k)
        self.fits.append(call_fit)
        corrected = denoised
        if call_fit.terms:
            corrected = denoised.clone()
            for j in range(call_fit.terms):
                lam = _per_latent(call_fit.per_latent[:, j], denoised)
                corrected.add_(terms[j] * lam)
                x_zero.add_(directions[j] * lam)
                scale += float(call_fit.per_latent[:, j].abs().max()) * float(directions[j].norm())
        self.predicted, self.predicted_scale = x_zero, scale
        self.given.append(corrected)
        del self.given[: -max(self.map.outputs_kept, 1)]
        return corrected

    def _fit(self, x_zero, directions, k) -> CallFit:
        residual = self.targets[k].to(x_zero.device, x_zero.dtype) - x_zero
        if not directions:  # the first call has no earlier output to correct with
            energy = float(dots([residual], [residual]).sum())
            return CallFit(torch.zeros(self.max_terms, dtype=torch.float64),
                           torch.zeros(x_zero.shape[0], self.max_terms, dtype=torch.float64), 0, energy, energy)
        G, b, c = batch_stats(directions, residual)
        # directions with energy below (1e-6 |x|)^2 are rounding, not signal: they get no λ
        floor = 1e-12 * float(dots([x_zero], [x_zero]).sum())
        return fit_call(G, b, c, floor, self.history, self.max_terms)


def _per_latent(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) float64 λ as a (B, 1, ..., 1) tensor in ``like``'s dtype and device."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def latent_errors(final: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each latent's final state (float64, CPU)."""
    error = final.detach().to("cpu", torch.float64) - reference.to("cpu", torch.float64)
    return error.reshape(error.shape[0], -1).square().mean(-1)


def _rmse(errors: torch.Tensor) -> float:
    return float(errors.mean().sqrt())


def ratio_standard_error(base_errors: torch.Tensor, dode_errors: torch.Tensor) -> float:
    """Standard error of ``R = sqrt(sum e_dode / sum e_base)`` over the latents (delta method, paired):

        SE(R) = std(e_dode,i - R^2 e_base,i) / (sqrt(n) mean(e_base) 2 R)

    With 8 latents it is typically 10-20% of R: what a claim made on the fit batch can promise."""
    count = len(base_errors)
    ratio_squared = float(dode_errors.sum() / base_errors.sum())
    if count < 2 or ratio_squared <= 0:
        return 0.0
    spread = float((dode_errors - ratio_squared * base_errors).std())
    return spread / (math.sqrt(count) * float(base_errors.mean()) * 2 * math.sqrt(ratio_squared))


@dataclass
class _Candidate:
    """D-ODE on one schedule: its sigmas, map, per-call fits and each latent's cross-fitted squared final error,
    with the base sampler's on the same schedule."""

    source: str  # "user" or "fitted"
    sigmas: torch.Tensor
    sampler_map: SamplerMap
    fits: list[CallFit]
    dode_errors: torch.Tensor
    base_errors: torch.Tensor


class _Fit:
    """One distill: the model (checked, counted), the options and the runs of the sampler over the batch."""

    def __init__(self, model, x, sampler, opts: FitOptions, progress: _Progress):
        self.model, self.x, self.sampler, self.opts = model, x, sampler, opts
        self.name = sampler_name(sampler)
        self.progress = progress
        self.checked = _CheckedModel(model, progress)

    def run(self, model, sigmas, role: str) -> torch.Tensor:
        """One run of the student sampler over the batch (a copy of the schedule each: ComfyUI's UniPC writes
        into the one it is given)."""
        self.checked.role = role
        return self.sampler(model, self.x.clone(), sigmas.clone(), extra_args=dict(self.opts.extra_args),
                            callback=None, disable=True, **self.opts.options)

    def teacher_run(self, grid, wanted_sigmas, teacher_calls, role: str):
        self.checked.role = role
        return run_teacher(self.checked, self.x, grid, self.opts.teacher, wanted_sigmas, teacher_calls,
                           extra_args=self.opts.extra_args, options=self.opts.teacher_options)

    def candidate(self, source, sigmas, sampler_map, targets, reference, base_final=None) -> _Candidate:
        """Cross-fitted D-ODE and the base on ``sigmas`` (its run, unless given), both scored against ``reference``
        (the teacher's end)."""
        live = _CrossFitRun(self.checked, self.name, sampler_map, targets, self.opts.history, self.opts.max_terms)
        dode_final = self.run(live, sigmas, f"student run ({source} schedule)")
        calls = len(sampler_map.call_sigmas)
        if len(live.fits) != calls:
            live.refuse(f"made {len(live.fits)} model calls, not the {calls} of its free probe run")
        live.check_state(dode_final, "at its result")
        if base_final is None:
            base_final = self.run(self.checked, sigmas, f"base run ({source} schedule)")
        return _Candidate(source, sigmas, sampler_map, live.fits, latent_errors(dode_final, reference),
                          latent_errors(base_final, reference))


def distill(model, x, sigmas, sampler, *, extra_args=None, teacher_factor=10, teacher_sampler=None, history=1,
            callback=None, options=None, fit_schedule=False, sigma_min=None) -> Lambdas:
    """Fit D-ODE λ for ``sampler`` on ``sigmas`` against a ``teacher_factor``-times finer teacher run, and prove
    them on every latent of the batch against the base sampler on ``sigmas``.

    model:    ``model(x, sigma, **extra_args) -> denoised`` (k-diffusion convention)
    x:        a batch of at least 4 start latents (8 to 16 give a sharper proof), already at noise level ``sigmas[0]``
    teacher_sampler: the teacher's sampler function; None: DPM-Solver++(2M) on the teacher grid
              (teacher.sample_dpmpp_2m_teacher), chosen by measurement (see the README)
    history:  terms per call (1 = the paper's single λ), or "auto": 1 to 3 per call; per call, the term count
              (0: uncorrected) with the least leave-one-out error is used
    callback: ``callback(done, total)`` after each model evaluation; raise to cancel
    options:  extra keyword arguments for the sampler (as ComfyUI's ``extra_options``)
    sigma_min: the model's smallest sigma: the teacher sub-steps the last interval down to it before its final
              denoise. None: ``model.sigma_min`` where the model has one (k-diffusion's wrapped models), else
              0.002 (EDM's). Hosts pass their model's own (ComfyUI: ``model_sampling.sigma_min``).
    fit_schedule: also try a schedule chosen by the fit. ``sigmas`` still is the user's schedule (and its step
              count and first sigma the fitted one's); the teacher runs once over a dense grid down to
              ``sigma_min`` holding the user's sigmas, the schedule with the least summed one-step error is
              chosen from that run (dode_core.schedule), and λ are fitted on both schedules. The file holds the
              better D-ODE of the two (``lam.schedule``, ``schedule_source``).

    Every fit measures its teacher against the same teacher at half the factor (``teacher_error`` in the file). A
    teacher not clearly closer to the ODE's end than the base (its error over TEACHER_MARGIN times the base's
    distance to it) is run once more at twice the factor; if that is not enough, TeacherNotConvergedError. If
    D-ODE does not beat the base sampler on the user's schedule by more than chance, NoGainError says so and no λ
    are returned. The figures of the proof are in the metadata. The global random state is left as found.
    """
    with torch.no_grad(), private_rng():
        check_inputs(x, sigmas, teacher_factor, history)
        teacher = teacher_sampler or sample_dpmpp_2m_teacher
        opts = FitOptions(teacher_factor=teacher_factor, teacher=teacher, history=history,
                          fit_schedule=bool(fit_schedule), sigma_min=model_sigma_min(model, sigma_min),
                          extra_args=dict(extra_args or {}), options=dict(options or {}),
                          teacher_options=dict(options or {}) if teacher is sampler else {})
        return _distill(model, x, sigmas.to(x.device), sampler, opts, callback)


def _distill(model, x, sigmas, sampler, opts: FitOptions, callback) -> Lambdas:
    name = sampler_name(sampler)
    user_map = measure_sampler(model, x, sigmas, sampler, extra_args=opts.extra_args, options=opts.options)
    call_sigmas = user_map.call_sigmas
    if len(call_sigmas) < 2:
        raise ValueError(f"sampler '{name}' calls the model {len(call_sigmas)} time(s) on this schedule; "
                         "D-ODE needs at least 2 calls.")
    check_follows_schedule(user_map, sigmas, name)
    if opts.fit_schedule:  # the calls must stay on schedule sigmas, so that a fitted schedule puts them on the grid
        check_calls_on_schedule(call_sigmas, sigmas, name)
    grid, teacher_calls = _teacher_grid(model, x, sigmas, call_sigmas, opts, opts.teacher_factor)
    half = half_grid(grid, student_points(sigmas, call_sigmas)).to(grid)
    half_calls = check_teacher(model, x, half, opts.teacher, opts.extra_args, opts.teacher_options)
    runs = 2 if opts.fit_schedule else 1
    progress = _Progress(callback, len(teacher_calls) + len(half_calls) + 2 * runs * len(call_sigmas))
    progress.report()  # (0, total): the host learns the cost, and may cancel, before the first model call
    fit = _Fit(model, x, sampler, opts, progress)
    base_user = fit.run(fit.checked, sigmas, "base run (user schedule)")

    # the teacher at half the factor measures the teacher; one not clearly closer to the ODE's end than the base gets
    # twice the factor once (its run so far becomes the half), else the fit stops
    reference_half = fit.teacher_run(half, [], half_calls, "teacher run at half the factor")[-1]
    while True:
        if opts.fit_schedule:
            fit.checked.role = "teacher run"
            dense = run_dense_teacher(fit.checked, x, grid, opts.teacher, extra_args=opts.extra_args,
                                      options=opts.teacher_options)
            user_targets = [dense.state_at(s) for s in call_sigmas[1:]] + [dense.states[-1]]
        else:
            user_targets = fit.teacher_run(grid, call_sigmas[1:], teacher_calls, "teacher run")
        reference = user_targets[-1]
        teacher_errors = convergence_error(reference, reference_half, teacher_order(fit.opts.teacher))
        teacher_error, base_distance = _rmse(teacher_errors.square()), _rmse(latent_errors(base_user, reference))
        log.info("teacher x%d: %d model calls so far; its estimated error at the end %.3g, the base's distance to it "
                 "%.3g", fit.opts.teacher_factor, progress.done, teacher_error, base_distance)
        if teacher_error <= TEACHER_MARGIN * base_distance:
            break
        factor = 2 * fit.opts.teacher_factor
        if factor != 2 * opts.teacher_factor or (len(sigmas) - 1) * factor > MAX_TEACHER_STEPS:
            raise TeacherNotConvergedError(
                f"the teacher is not clearly closer to the ODE's end than the base sampler '{name}': its estimated "
                f"error is {teacher_error:.4g} (against itself at half the factor), the base's distance to it "
                f"{base_distance:.4g}, even at teacher_factor {fit.opts.teacher_factor}. No λ file was written: raise "
                "teacher_factor, or use more steps.")
        log.info("the teacher is not clearly closer to the ODE's end than the base: teacher_factor %d -> %d",
                 fit.opts.teacher_factor, factor)
        fit.opts = replace(fit.opts, teacher_factor=factor)
        grid, teacher_calls = _teacher_grid(model, x, sigmas, call_sigmas, fit.opts, factor)
        progress.total += len(teacher_calls)
        reference_half = reference

    found = [fit.candidate("user", sigmas, user_map, user_targets, reference, base_user)]
    if opts.fit_schedule:
        fitted = dense.choose(len(sigmas) - 1)[0].to(device=x.device, dtype=sigmas.dtype)
        fitted_map = measure_sampler(model, x, fitted, sampler, extra_args=opts.extra_args, options=opts.options)
        check_calls_on_schedule(fitted_map.call_sigmas, fitted, name)
        log.info("fitted schedule for %s: %s", name, format_sigmas(fitted))
        fitted_targets = [dense.state_at(s) for s in fitted_map.call_sigmas[1:]] + [reference]
        del dense
        found.append(fit.candidate("fitted", fitted, fitted_map, fitted_targets, reference))
    return _deliver(fit, found, teacher_errors)


def _teacher_grid(model, x, sigmas, call_sigmas, opts: FitOptions, factor: int):
    """The teacher's grid at ``factor`` (a dense one over the schedule's range for fit_schedule, holding the user's
    sigmas) on the schedule's device and dtype, and the teacher's call sigmas on it (free probes)."""
    if opts.fit_schedule:
        steps, sigma_max, _ = schedule_range(sigmas)
        grid64 = merge_points(dense_grid(sigma_max, min(opts.sigma_min, float(sigmas[-2])), factor * steps),
                              student_points(sigmas, call_sigmas))
    else:
        grid64, _ = teacher_sigmas(sigmas.tolist(), call_sigmas, factor, opts.sigma_min)
    grid = grid64.to(device=x.device, dtype=sigmas.dtype)
    return grid, check_teacher(model, x, grid, opts.teacher, opts.extra_args, opts.teacher_options)


def _deliver(fit: _Fit, found: list[_Candidate], teacher_errors) -> Lambdas:
    """The better D-ODE of the candidates, if it beats the base on the user's schedule by more than chance."""
    user = found[0]
    best = min(found, key=lambda c: float(c.dode_errors.mean()))
    rmse_base, rmse_dode = _rmse(user.base_errors), _rmse(best.dode_errors)
    teacher_error = _rmse(teacher_errors.square())
    count = len(user.base_errors)
    if not proves_gain(user.base_errors, best.dode_errors):
        raise NoGainError(
            f"D-ODE did not beat the base sampler '{fit.name}' on the user's schedule by more than chance on the "
            f"{count} latents, each judged with λ fitted on the others (final-state RMSE to the teacher: base "
            f"{rmse_base:.4g}, D-ODE {rmse_dode:.4g}); no λ file was written. The base sampler is already about as "
            f"close to the teacher as λ can bring it here: try history={'auto' if fit.opts.history == 1 else 1}, a "
            "larger batch (a sharper proof), or keep the base sampler.")
    lambdas = torch.stack([call.lambdas.float() for call in best.fits])
    n_values = count * fit.x[0].numel()
    rmse_before = [math.sqrt(max(call.energy_before, 0.0) / n_values) for call in best.fits]
    rmse_after = [math.sqrt(max(call.energy_after, 0.0) / n_values) for call in best.fits]
    log.info("distilled %s (%s schedule): %d calls; final-state RMSE to the teacher over %d latents, each with λ "
             "fitted on the others: base %.4g, D-ODE %.4g", fit.name, best.source, len(best.fits), count, rmse_base,
             rmse_dode)
    runs = len(found)
    metadata = {
        "base_sampler": fit.name,
        "steps": str(len(best.sigmas) - 1),
        "schedule": json.dumps([float(s) for s in best.sigmas.tolist()]),
        "schedule_source": best.source,
        "history_mode": str(fit.opts.history),
        "history_per_call": json.dumps([call.terms for call in best.fits]),
        "teacher_sampler": sampler_name(fit.opts.teacher),
        "teacher_factor": str(fit.opts.teacher_factor),
        "teacher_calls": str(fit.progress.done - sum(2 * len(c.fits) for c in found)),
        "teacher_error": repr(teacher_error),
        "sigma_min": repr(fit.opts.sigma_min),
        "proof_calls": str(runs * len(user.fits)),
        "model_calls": str(fit.progress.done),
        "batch_size": str(count),
        "latent_shape": json.dumps(list(fit.x.shape[1:])),
        "model_dtype": fit.checked.dtype,
        "fit_rmse_before": json.dumps(rmse_before),
        "fit_rmse_after": json.dumps(rmse_after),
        "heldout_rmse_base": repr(rmse_base),
        "heldout_rmse_dode": repr(rmse_dode),
        "heldout_count": str(count),
        "heldout_ratio_se": repr(ratio_standard_error(user.base_errors, best.dode_errors)),
        "heldout_method": "leave-one-out",
        "plugin_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if fit.opts.fit_schedule:
        fitted = found[1]
        metadata["heldout_rmse_dode_user"] = repr(_rmse(user.dode_errors))
        metadata["heldout_rmse_base_fitted"] = repr(_rmse(fitted.base_errors))
        metadata["heldout_rmse_dode_fitted"] = repr(_rmse(fitted.dode_errors))
    return Lambdas(lambdas=lambdas, call_sigmas=tuple(best.sampler_map.call_sigmas), metadata=metadata)
