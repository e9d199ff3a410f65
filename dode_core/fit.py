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
teacher runs on a dense grid instead, a search (search.py) proposes schedules from it on half the batch, the best
few run for real, and the fitted schedule is delivered only if it beats D-ODE on the user's schedule, and the base
on it, on the other half, which chose nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from dataclasses import dataclass, replace

import torch

from .blackbox import SamplerMap, check_follows_schedule, measure_sampler, private_rng, sampler_name
from .crossfit import CallFit, CrossFitRun, final_errors, proves_gain, ratio_standard_error, typical_ratio
from .fit_setup import CheckedModel, FitOptions, Progress, check_inputs
from .lambdas_file import Lambdas
from .rules import MAX_TEACHER_STEPS
from .schedule import check_calls_on_schedule, dense_grid, merge_points, run_dense_teacher, schedule_range
from .search import EFFORT, REAL_LADDERS, ScheduleSearch, Surrogate, last_jump_limit, start_paths
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
from .text import format_sigmas
from .version import __version__

log = logging.getLogger(__name__)

# the teacher must be clearly closer to the ODE's end than the base sampler it proves D-ODE against
TEACHER_MARGIN = 0.25


class NoGainError(ValueError):
    """D-ODE was not better than the base sampler on the batch (each latent judged with λ fitted without it);
    no λ are delivered."""


class TeacherNotConvergedError(ValueError):
    """The teacher run is not clearly closer to the ODE's end than the base sampler: it cannot prove anything."""


def _rmse(errors: torch.Tensor) -> float:
    return float(errors.mean().sqrt())


@dataclass
class _Candidate:
    """D-ODE on one schedule: its sigmas, map, per-call fits and each latent's cross-fitted squared final error,
    with the base sampler's on the same schedule."""

    source: str  # "user" or "fitted"
    sigmas: torch.Tensor
    sampler_map: SamplerMap
    fits: list[CallFit]
    dode_errors: torch.Tensor
    base_errors: torch.Tensor | None


@dataclass
class _ScheduleChoice:
    """The fitted schedule a search found, run for real: chosen on the ``search`` latents (by the surrogate, then by
    the real runs), to be judged on the ``proof`` latents only."""

    candidate: _Candidate
    search: slice
    proof: slice
    surrogate_mse: float
    origin: str
    scored: int
    real_runs: int


class _Fit:
    """One distill: the model (checked, counted), the options and the runs of the sampler over the batch."""

    def __init__(self, model, x, sampler, opts: FitOptions, progress: Progress):
        self.model, self.x, self.sampler, self.opts = model, x, sampler, opts
        self.name = sampler_name(sampler)
        self.progress = progress
        self.checked = CheckedModel(model, progress)
        self.teacher_calls = 0

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

    def candidate(self, source, sigmas, sampler_map, targets, reference, base_final=None,
                  with_base: bool = True) -> _Candidate:
        """Cross-fitted D-ODE and the base on ``sigmas`` (its run, unless given or not wanted), both scored against
        ``reference`` (the teacher's end)."""
        live = CrossFitRun(self.checked, self.name, sampler_map, targets, self.opts.history, self.opts.max_terms)
        dode_final = self.run(live, sigmas, f"student run ({source} schedule)")
        calls = len(sampler_map.call_sigmas)
        if len(live.fits) != calls:
            live.refuse(f"made {len(live.fits)} model calls, not the {calls} of its free probe run")
        live.check_state(dode_final, "at its result")
        if base_final is None and with_base:
            base_final = self.run(self.checked, sigmas, f"base run ({source} schedule)")
        return _Candidate(source, sigmas, sampler_map, live.fits, final_errors(dode_final, reference),
                          None if base_final is None else final_errors(base_final, reference))


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
    fit_schedule: also try a schedule chosen for the corrected sampler (True, or "thorough" for a wider search).
              ``sigmas`` still is the user's schedule (its step count and first sigma are the fitted one's); the
              teacher runs once over a dense grid down to ``sigma_min`` holding the user's sigmas; schedules are
              scored on a surrogate of that run by the final error of this sampler with λ refit (dode_core.search)
              on the first half of the batch, the best few run for real; the fitted schedule is delivered only if
              its D-ODE beats D-ODE on the user's schedule (and the base) on the other half, which chose nothing
              (``lam.schedule``, ``schedule_source``). Cost: 1.5 teacher runs + 2 + real candidates (4; thorough 10)
              + 1 student runs.

    Every fit measures its teacher against the same teacher at half the factor (``teacher_error`` in the file). A
    teacher not clearly closer to the ODE's end than the base (its error over TEACHER_MARGIN times the base's
    distance to it) is run once more at twice the factor; if that is not enough, TeacherNotConvergedError. If
    D-ODE does not beat the base sampler on the user's schedule by more than chance, NoGainError says so and no λ
    are returned. The figures of the proof are in the metadata. The global random state is left as found.
    """
    with torch.no_grad(), private_rng():
        check_inputs(x, sigmas, teacher_factor, history)
        if fit_schedule not in (False, True, "thorough"):
            raise ValueError(f"fit_schedule must be False, True or 'thorough'; got {fit_schedule!r}.")
        teacher = teacher_sampler or sample_dpmpp_2m_teacher
        opts = FitOptions(teacher_factor=teacher_factor, teacher=teacher, history=history,
                          fit_schedule=fit_schedule, sigma_min=model_sigma_min(model, sigma_min),
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
    progress = Progress(callback, len(teacher_calls) + len(half_calls) + 2 * runs * len(call_sigmas))
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
        teacher_error, base_distance = _rmse(teacher_errors.square()), _rmse(final_errors(base_user, reference))
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

    fit.teacher_calls = progress.done - len(call_sigmas)  # everything so far but the base run
    user = fit.candidate("user", sigmas, user_map, user_targets, reference, base_user)
    choice = _search_schedule(fit, dense, sigmas, reference, user) if opts.fit_schedule else None
    lam = _deliver(fit, user, choice, teacher_errors)
    if progress.total != progress.done:  # an estimate (the search's runs, a raised teacher): end it full, once
        progress.total = progress.done
        progress.report()
    return lam


def _search_schedule(fit: _Fit, dense, sigmas, reference, user: _Candidate) -> _ScheduleChoice | None:
    """Search the schedule on the first half of the latents (search.py), run the best few for real, and keep the one
    with the least real error there; the other half stays out of every choice, for the proof."""
    x, opts = fit.x, fit.opts
    half = x.shape[0] // 2
    search_latents, proof_latents = slice(0, half), slice(half, None)
    effort = EFFORT["thorough" if opts.fit_schedule == "thorough" else "default"]
    surrogate = Surrogate(fit.model, dense, search_latents)
    user_path = [surrogate.index(float(s)) for s in sigmas]
    last = last_jump_limit(surrogate, float(user.dode_errors[search_latents].mean()))
    search = ScheduleSearch(surrogate, x[search_latents], dense.grid, fit.sampler, fit.name, opts.history,
                            opts.max_terms, opts.extra_args, opts.options, effort, progress=fit.progress.report,
                            first_last_index=last)
    starts = start_paths(dense, len(sigmas) - 1, user_path, search_latents)
    ranked = search.run(starts)
    chosen = [found for found in ranked if found[1] != user_path][: effort.real_candidates]  # the user's has run
    for name in REAL_LADDERS:  # unrefined too: the surrogate may rank a good hand-made ladder far too low
        if name not in starts:
            continue
        path = search.within_limit(starts[name])
        surrogate_mse = search.score(path)  # scored by search.run already: no new surrogate run
        if path != user_path and math.isfinite(surrogate_mse) and all(path != other for _, other, _ in chosen):
            chosen.append((surrogate_mse, path, name))
    real = []
    for surrogate_mse, path, origin in chosen:
        candidate_sigmas = dense.grid[path].to(device=x.device, dtype=sigmas.dtype)
        sampler_map = measure_sampler(fit.model, x, candidate_sigmas, fit.sampler, extra_args=opts.extra_args,
                                      options=opts.options)
        check_calls_on_schedule(sampler_map.call_sigmas, candidate_sigmas, fit.name)
        targets = [dense.state_at(s) for s in sampler_map.call_sigmas[1:]] + [reference]
        fit.progress.total += len(sampler_map.call_sigmas)
        candidate = fit.candidate("fitted", candidate_sigmas, sampler_map, targets, reference, with_base=False)
        real.append((float(candidate.dode_errors[search_latents].mean()), surrogate_mse, origin, candidate))
        log.info("schedule %s (%s): surrogate RMSE %.4g, real %.4g on the search latents", format_sigmas(
            candidate_sigmas), origin, math.sqrt(surrogate_mse), math.sqrt(real[-1][0]))
    if not real:
        return None
    _, surrogate_mse, origin, best = min(real, key=lambda found: found[0])
    fit.progress.total += len(best.sampler_map.call_sigmas)
    best.base_errors = final_errors(fit.run(fit.checked, best.sigmas, "base run (fitted schedule)"), reference)
    return _ScheduleChoice(best, search_latents, proof_latents, surrogate_mse, origin, len(search.scores), len(real))


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


def _deliver(fit: _Fit, user: _Candidate, choice: _ScheduleChoice | None, teacher_errors) -> Lambdas:
    """D-ODE on the fitted schedule if it beats D-ODE on the user's by more than chance on latents that chose
    nothing, else on the user's; delivered if it beats the base sampler on the user's schedule by more than chance."""
    best, proof = user, slice(None)
    if choice is not None:
        fitted, proof_latents = choice.candidate, choice.proof
        if (proves_gain(user.dode_errors[proof_latents], fitted.dode_errors[proof_latents])
                and proves_gain(user.base_errors[proof_latents], fitted.dode_errors[proof_latents])):
            best, proof = fitted, proof_latents
        else:
            log.info("the fitted schedule did not beat D-ODE on the user's schedule on the latents that chose "
                     "nothing: the user's schedule is kept")
    base_errors, dode_errors = user.base_errors[proof], best.dode_errors[proof]
    rmse_base, rmse_dode = _rmse(base_errors), _rmse(dode_errors)
    count = len(base_errors)
    if not proves_gain(base_errors, dode_errors):
        raise NoGainError(
            f"D-ODE did not beat the base sampler '{fit.name}' on the user's schedule by more than chance on the "
            f"{count} latents, each judged with λ fitted on the others (final-state RMSE to the teacher: base "
            f"{rmse_base:.4g}, D-ODE {rmse_dode:.4g}); no λ file was written. The base sampler is already about as "
            f"close to the teacher as λ can bring it here: try history={'auto' if fit.opts.history == 1 else 1}, a "
            "larger batch (a sharper proof), or keep the base sampler.")
    lambdas = torch.stack([call.lambdas.float() for call in best.fits])
    n_values = fit.x.shape[0] * fit.x[0].numel()
    rmse_before = [math.sqrt(max(call.energy_before, 0.0) / n_values) for call in best.fits]
    rmse_after = [math.sqrt(max(call.energy_after, 0.0) / n_values) for call in best.fits]
    log.info("distilled %s (%s schedule): %d calls; final-state RMSE to the teacher over %d latents, each with λ "
             "fitted on the others: base %.4g, D-ODE %.4g", fit.name, best.source, len(best.fits), count, rmse_base,
             rmse_dode)
    base_runs = 1 if choice is None else 2
    metadata = {
        "base_sampler": fit.name,
        "steps": str(len(best.sigmas) - 1),
        "schedule": json.dumps([float(s) for s in best.sigmas.tolist()]),
        "schedule_source": best.source,
        "history_mode": str(fit.opts.history),
        "history_per_call": json.dumps([call.terms for call in best.fits]),
        "teacher_sampler": sampler_name(fit.opts.teacher),
        "teacher_factor": str(fit.opts.teacher_factor),
        "teacher_calls": str(fit.teacher_calls),
        "teacher_error": repr(_rmse(teacher_errors.square())),
        "sigma_min": repr(fit.opts.sigma_min),
        "proof_calls": str(base_runs * len(user.fits)),
        "model_calls": str(fit.progress.done),
        "batch_size": str(fit.x.shape[0]),
        "latent_shape": json.dumps(list(fit.x.shape[1:])),
        "model_dtype": fit.checked.dtype,
        "fit_rmse_before": json.dumps(rmse_before),
        "fit_rmse_after": json.dumps(rmse_after),
        "correction_limit": json.dumps([call.limit for call in best.fits]),
        "heldout_rmse_base": repr(rmse_base),
        "heldout_rmse_dode": repr(rmse_dode),
        "heldout_count": str(count),
        "heldout_ratio_se": repr(ratio_standard_error(base_errors, dode_errors)),
        "heldout_typical_ratio": repr(typical_ratio(base_errors, dode_errors)),
        "heldout_method": "leave-one-out",
        "plugin_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if choice is not None:
        latents = choice.proof
        metadata["heldout_rmse_dode_user"] = repr(_rmse(user.dode_errors[latents]))
        metadata["heldout_rmse_base_fitted"] = repr(_rmse(choice.candidate.base_errors[latents]))
        metadata["heldout_rmse_dode_fitted"] = repr(_rmse(choice.candidate.dode_errors[latents]))
        metadata["schedule_proof_count"] = str(len(user.dode_errors[latents]))
        metadata["schedule_fitted"] = json.dumps([float(s) for s in choice.candidate.sigmas.tolist()])
        metadata["schedule_search"] = (
            f"{choice.scored} schedules scored on a surrogate of the teacher run over {choice.search.stop} latents, "
            f"{choice.real_runs} run for real; the best from {choice.origin}; surrogate RMSE "
            f"{math.sqrt(choice.surrogate_mse):.4g}, real "
            f"{_rmse(choice.candidate.dode_errors[choice.search]):.4g} there")
    return Lambdas(lambdas=lambdas, call_sigmas=tuple(best.sampler_map.call_sigmas), metadata=metadata)
