"""The closed-form, greedy λ fit over a black-box sampler, proved on held-out latents (DESIGN.md §1).

At model call k every standard ODE sampler is affine in the denoised output it is given, so the state it
reaches next is affine in the λ of that call:

    x_next(lambda) = x_next(0) + sum_j lambda_j * v_j,    v_j = beta_k * term_j,

where ``beta_k`` is the weight of this call's output in the next state (measured on free stand-in probes,
blackbox.measure_sampler) and ``term_j = D_{k-j+1} - D_{k-j}``. lambda_k solves the least-squares problem
against the teacher state t at the same sigma,

    G lambda = b,    G_ij = <v_i, v_j>,   b_i = <t - x_next(0), v_i>,

summed in float64 over the fit latents. The student sampler runs once, live: λ_k is fitted inside model
call k and the corrected output handed back, so a fit costs one teacher run, one student run and one base
run on the same batch (the held-out proof).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
from dataclasses import dataclass

import torch

from .blackbox import (
    ModelProxy,
    SamplerMap,
    SamplerRefusedError,
    check_deterministic,
    check_follows_schedule,
    close_enough,
    measure_sampler,
    private_rng,
    sampler_name,
    sigma_value,
)
from .correction import DODEDenoiser, all_finite, apply_correction, differences, working_precision
from .lambdas_file import MAX_ABS_LAMBDA, Lambdas, format_sigmas
from .schedule import check_calls_on_schedule, dense_grid, run_dense_teacher, schedule_range
from .teacher import sample_dpmpp_2m_teacher, teacher_sigmas
from .version import __version__

log = logging.getLogger(__name__)

AUTO_MAX_HISTORY = 3
HELD_OUT_EVERY = 4  # history="auto": every 4th fit latent is held out to choose the term count
MAX_TEACHER_STEPS = 20_000  # steps x teacher_factor: beyond this a fit is a mistake, not a wish
SHRINK_CANDIDATES = (0.5,)  # tried, each at one more student run, when the full λ do not beat the base


class NoGainError(ValueError):
    """The fitted λ were not better than the base sampler on the held-out latents; no λ are delivered."""


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


def check_inputs(x, sigmas, teacher_factor, history, holdout) -> int:
    """Clear errors for a schedule, latent or option that cannot be distilled; returns the held-out count."""
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
    if isinstance(teacher_factor, bool) or not isinstance(teacher_factor, int) or teacher_factor < 1:
        raise ValueError(f"teacher_factor must be an integer >= 1; got {teacher_factor!r}.")
    if (len(sigmas) - 1) * teacher_factor > MAX_TEACHER_STEPS:
        raise ValueError(f"steps x teacher_factor = {len(sigmas) - 1} x {teacher_factor} is over "
                         f"{MAX_TEACHER_STEPS}; the teacher would make at least that many model calls. "
                         "Use fewer steps or a smaller teacher_factor (10 is plenty).")
    if history != "auto" and (isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= 8):
        raise ValueError(f"history must be 1 to 8 or 'auto'; got {history!r}.")
    batch = x.shape[0]
    if batch < 2:
        raise ValueError("D-ODE proves every fit on latents it was not fitted on, so it needs a batch of at least "
                         "2 latents (4 to 16 is reasonable); got 1.")
    if holdout is None:
        holdout = max(1, batch // 4)
    if isinstance(holdout, bool) or not isinstance(holdout, int) or not 1 <= holdout < batch:
        raise ValueError(f"holdout must be an integer from 1 to batch - 1 = {batch - 1}; got {holdout!r}.")
    if history == "auto" and batch - holdout < HELD_OUT_EVERY:
        raise ValueError(f"history='auto' holds out every {HELD_OUT_EVERY}th fit latent to choose the number of "
                         f"terms, so it needs at least {HELD_OUT_EVERY} fit latents besides the {holdout} held "
                         f"out; got a batch of {batch}.")
    return holdout


def _check_teacher(model, x, grid, teacher, extra_args, options) -> list[float]:
    """The teacher's call sigmas, from free probes; refuses a teacher that injects noise or breaks on the grid."""
    try:
        return check_deterministic(model, x, grid, teacher, extra_args=extra_args, options=options,
                                   role="the teacher grid")
    except SamplerRefusedError as error:
        raise SamplerRefusedError(f"{error}\nAs the teacher, choose a deterministic ODE sampler (the default, "
                                  "dpmpp_2m_teacher, always is).") from None


def _teacher_call_indices(teacher_calls: list[float], wanted: list[float], name: str) -> list[int]:
    """For each wanted sigma, the index of the teacher's *last* call there (so a Heun-style predictor stage at
    the same sigma does not count as the state)."""
    indices = []
    for sigma in wanted:
        found = [i for i, s in enumerate(teacher_calls) if math.isclose(s, sigma, rel_tol=1e-5, abs_tol=1e-8)]
        if not found:
            raise SamplerRefusedError(f"teacher sampler '{name}' does not call the model at sigma {sigma:.4g}, "
                                      "so its state there cannot be read; choose another teacher.")
        indices.append(found[-1])
    return indices


class _Recorder(ModelProxy):
    """Passes calls through and keeps, on the CPU, the inputs of the calls at ``indices``."""

    def __init__(self, model, indices):
        super().__init__(model)
        self.wanted = set(indices)
        self.states: dict[int, torch.Tensor] = {}
        self.count = 0

    def __call__(self, x, sigma, **extra_args):
        if self.count in self.wanted:
            self.states[self.count] = x.detach().to("cpu", copy=True)
        self.count += 1
        return self.inner(x, sigma, **extra_args)


def run_teacher(model, x, grid, teacher, wanted_sigmas, teacher_calls, *, extra_args=None, options=None):
    """Run ``teacher`` over ``grid`` from ``x``; return its states at ``wanted_sigmas`` (read from its model
    inputs: the last call at each sigma), then its result (the state at the grid's last sigma), on the CPU."""
    indices = _teacher_call_indices(teacher_calls, wanted_sigmas, sampler_name(teacher))
    recorder = _Recorder(model, indices)
    final = teacher(recorder, x.clone(), grid.clone(), extra_args=dict(extra_args or {}), callback=None, disable=True,
                    **(options or {}))
    return [recorder.states[i] for i in indices] + [final.detach().to("cpu", copy=True)]


def _dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Per-latent inner products ``out[n, i, j] = <a_i[n], b_j[n]>`` as float64 on the CPU (the sums are formed
    in the tensors' own precision, at least float32, on their device: no float64 on devices that lack it)."""
    flat_a = [t.reshape(t.shape[0], -1) for t in a]
    flat_b = [t.reshape(t.shape[0], -1) for t in b]
    out = torch.stack([torch.stack([(u * v).sum(-1) for v in flat_b], -1) for u in flat_a], -2)
    return out.to("cpu", torch.float64)


def _batch_stats(terms: list[torch.Tensor], residual: torch.Tensor):
    """Per-latent Gram matrices G (B, m, m), right sides b (B, m) and residual energies c (B,), float64, CPU."""
    G = _dots(terms, terms)
    b = _dots(terms, [residual])[..., 0]
    c = _dots([residual], [residual])[:, 0, 0]
    return G, b, c


def _solve(G: torch.Tensor, b: torch.Tensor, floor: float) -> torch.Tensor:
    """Least squares ``G lam = b``; directions with energy below ``floor`` get no λ (no rounding noise fits)."""
    return torch.linalg.pinv(G, atol=floor, rtol=1e-12, hermitian=True) @ b


def _residual_energy(G, b, c, lam) -> torch.Tensor:
    """``||r - V lam||^2 = c - 2 lam.b + lam^T G lam``."""
    return c - 2 * lam @ b + lam @ G @ lam


def _choose_term_count(G, b, c, floor: float) -> int:
    """The number of history terms (1..m) with the lowest error on the held-out latents."""
    held_out = torch.arange(len(c), device=c.device) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    G_fit, b_fit = G[~held_out].sum(0), b[~held_out].sum(0)
    G_out, b_out, c_out = G[held_out].sum(0), b[held_out].sum(0), c[held_out].sum()
    errors = []
    for m in range(1, G.shape[-1] + 1):
        lam = _solve(G_fit[:m, :m], b_fit[:m], floor)
        errors.append(float(_residual_energy(G_out[:m, :m], b_out[:m], c_out, lam)))
    return 1 + min(range(len(errors)), key=errors.__getitem__)  # ties go to fewer terms


@dataclass
class _CallFit:
    """The fit of one call: its λ (float64, exactly what the file holds), the terms used, and the squared
    error of the next state on the fit latents before (λ = 0) and after."""

    lambdas: torch.Tensor
    terms: int
    energy_before: float
    energy_after: float


def fit_call(x_zero, vs, target, history, max_terms: int) -> _CallFit:
    """λ of one call: least squares of ``target - x_zero`` on the directions ``vs`` (all (B, ...), one device)."""
    residual = target - x_zero
    lam = torch.zeros(max_terms, dtype=torch.float64)
    if not vs:  # the first call has no earlier output to correct with
        energy = float(_dots([residual], [residual]).sum())
        return _CallFit(lam, 0, energy, energy)
    G, b, c = _batch_stats(vs, residual)
    # directions with energy below (1e-6 |x|)^2 are rounding, not signal: they get no λ
    floor = 1e-12 * float(_dots([x_zero], [x_zero]).sum())
    terms = _choose_term_count(G, b, c, floor) if history == "auto" else len(vs)
    G, b, c = G.sum(0), b.sum(0), c.sum()
    lam[:terms] = _solve(G[:terms, :terms], b[:terms], floor)
    if not bool(lam.abs().max() <= MAX_ABS_LAMBDA):  # a near-degenerate direction, not a correction
        log.info("a call's λ %s are beyond %g: this call is left uncorrected", lam.tolist(), MAX_ABS_LAMBDA)
        lam.zero_()
        terms = 0
    lam = lam.float().double()  # exactly the λ the file will hold
    used = lam[: len(vs)]
    return _CallFit(lam, terms, float(c), float(_residual_energy(G, b, c, used)))


class _LiveFit(ModelProxy):
    """The student run, driven by the real sampler once: at call k it reads the state the sampler passes,
    checks it against the state the sampler's affine map predicted, calls the model, fits λ_k on the fit latents
    and hands back the corrected output. Holds O(history + window) full-batch tensors."""

    def __init__(self, model, name, sampler_map: SamplerMap, targets, fit_count: int, history, max_terms: int):
        super().__init__(model)
        self.name, self.map, self.targets = name, sampler_map, targets
        self.fit_count, self.history, self.max_terms = fit_count, history, max_terms
        self.raw: list[torch.Tensor] = []  # the last max_terms + 1 raw outputs (working precision)
        self.given: list[torch.Tensor] = []  # the last outputs_kept corrected outputs the sampler was given
        self.start: torch.Tensor | None = None
        self.predicted: torch.Tensor | None = None  # the next input the map predicts
        self.predicted_scale = 0.0  # the norms of the terms summed into it, for the rounding tolerance
        self.fits: list[_CallFit] = []

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
        vs = [term * step.own for term in terms]

        fit = self.fit_count
        target = self.targets[k].to(x_zero.device, x_zero.dtype)
        call_fit = fit_call(x_zero[:fit], [v[:fit] for v in vs], target[:fit], self.history, self.max_terms)
        self.fits.append(call_fit)
        lambdas_k = call_fit.lambdas.float()
        corrected = apply_correction(denoised, terms, lambdas_k[: len(terms)])
        for lam, v in zip(lambdas_k.tolist(), vs, strict=False):
            x_zero.add_(v, alpha=lam)
            scale += abs(lam) * float(v.norm())
        self.predicted, self.predicted_scale = x_zero, scale
        self.given.append(corrected)
        del self.given[: -max(self.map.outputs_kept, 1)]
        return corrected


def distill(model, x, sigmas, sampler, *, extra_args=None, teacher_factor=10, teacher_sampler=None, history=1,
            holdout=None, callback=None, options=None, fit_schedule=False) -> Lambdas:
    """Fit D-ODE λ for ``sampler`` on ``sigmas`` against a ``teacher_factor``-times finer teacher run, and prove
    them on latents the fit did not see.

    model:    ``model(x, sigma, **extra_args) -> denoised`` (k-diffusion convention)
    x:        a batch of at least 2 start latents, already at noise level ``sigmas[0]``
    teacher_sampler: the teacher's sampler function; None: DPM-Solver++(2M) on the teacher grid
              (teacher.sample_dpmpp_2m_teacher), chosen by measurement (see the README)
    history:  terms per call (1 = the paper's single λ), or "auto": 1 to 3 per call, chosen on held-out latents
    holdout:  how many latents (the last ones of ``x``) are held out of the fit to prove it; default batch // 4
    callback: ``callback(done, total)`` after each model evaluation; raise to cancel
    options:  extra keyword arguments for the sampler (as ComfyUI's ``extra_options``)
    fit_schedule: choose the schedule too. ``sigmas`` then gives only the step count and the range (its first
              sigma, its smallest positive one, the final 0); the teacher runs once over a dense grid of
              ``teacher_factor * steps`` sigmas in that range, the schedule with the least summed one-step error
              on the fit latents is chosen from that run (dode_core.schedule), and λ are fitted on it against the
              same run: still one teacher run plus one student run. ``lam.schedule`` holds the chosen sigmas.

    The held-out proof (final-state RMSE to the teacher, base sampler vs D-ODE) goes into the metadata. If D-ODE
    is not better than the base on the held-out latents, even with its λ shrunk, NoGainError says so and no λ
    are returned. The global random state is left as it was found.
    """
    with torch.no_grad(), private_rng():
        return _distill(model, x, sigmas, sampler, extra_args, teacher_factor, teacher_sampler, history, holdout,
                        callback, options, fit_schedule)


def _latent_errors(final: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each latent's final state (float64, CPU)."""
    error = final.detach().to("cpu", torch.float64) - reference.to(torch.float64)
    return error.reshape(error.shape[0], -1).square().mean(-1)


def proves_gain(base_errors: torch.Tensor, dode_errors: torch.Tensor) -> bool:
    """Whether D-ODE beats the base on the held-out latents by more than chance: the mean per-latent gain
    ``g_i = e_base,i - e_dode,i`` must exceed its standard error ``std(g) / sqrt(n)`` (with one latent: be
    positive). A few latents that land on another image dominate an RMSE; the paired test keeps such luck out."""
    gain = base_errors - dode_errors
    if len(gain) < 2:
        return bool(gain.mean() > 0)
    return bool(gain.mean() > gain.std() / math.sqrt(len(gain)))


def _held_out_rerun(checked, progress, x, sigmas, sampler, call_sigmas, extra_args, options, fit_count, lambdas):
    """One more run of the batch with ``lambdas`` applied (a candidate of the proof); its held-out final states."""
    progress.total += len(call_sigmas)
    checked.role = "held-out check of shrunk λ"
    candidate = Lambdas(lambdas, tuple(call_sigmas), {"base_sampler": sampler_name(sampler)})
    final = sampler(DODEDenoiser(checked, candidate), x.clone(), sigmas.clone(), extra_args=dict(extra_args),
                    callback=None, disable=True, **(options or {}))
    return final[fit_count:]


def _held_out_proof(name, holdout, base_errors, dode_errors, lambdas, rerun, teacher_final, history):
    """The scale of λ to deliver (1, or a shrink that proves itself) with both held-out RMSEs and the number of runs
    the proof took; NoGainError when no candidate beats the base by more than chance."""
    scale, runs = 1.0, 1
    for shrink in SHRINK_CANDIDATES:
        if proves_gain(base_errors, dode_errors):
            break
        log.info("D-ODE %s: held-out gain not shown (RMSE base %.4g, D-ODE %.4g); trying λ x %g", name,
                 float(base_errors.mean().sqrt()), float(dode_errors.mean().sqrt()), shrink)
        candidate_errors, runs = _latent_errors(rerun(lambdas * shrink), teacher_final), runs + 1
        if proves_gain(base_errors, candidate_errors) or candidate_errors.mean() < dode_errors.mean():
            dode_errors, scale = candidate_errors, shrink
    rmse_base, rmse_dode = float(base_errors.mean().sqrt()), float(dode_errors.mean().sqrt())
    if not proves_gain(base_errors, dode_errors):
        raise NoGainError(
            f"D-ODE did not beat the base sampler '{name}' on the {holdout} held-out latent(s) by more than chance "
            f"(final-state RMSE to the teacher: base {rmse_base:.4g}, D-ODE {rmse_dode:.4g}); no λ file was "
            "written. Here the base sampler is already about as close to the teacher as λ can bring it: try "
            f"history={'auto' if history == 1 else 1}, a larger batch (more held-out latents make the proof "
            "sharper), or keep the base sampler."
        )
    return scale, rmse_base, rmse_dode, runs


def _fit_schedule(checked, x, grid, teacher, steps, fit_count, sampler, name, extra_args, options, teacher_options,
                  dtype):
    """The dense teacher run, the schedule chosen from it on the fit latents, the student's map on that schedule
    and the λ targets read from the same run (the state at the sigma of every next call, the result at 0)."""
    run = run_dense_teacher(checked, x, grid, teacher, extra_args=extra_args, options=teacher_options)
    sigmas = run.choose(steps, fit_count)[0].to(device=x.device, dtype=dtype)
    sampler_map = measure_sampler(checked.inner, x, sigmas, sampler, extra_args=extra_args, options=options)
    check_calls_on_schedule(sampler_map.call_sigmas, sigmas, name)
    log.info("fitted schedule for %s: %s", name, format_sigmas(sigmas))
    return sigmas, sampler_map, [run.state_at(s) for s in sampler_map.call_sigmas[1:] + [0.0]]


def _distill(model, x, sigmas, sampler, extra_args, teacher_factor, teacher_sampler, history, holdout, callback,
             options, fit_schedule=False):
    holdout = check_inputs(x, sigmas, teacher_factor, history, holdout)
    teacher = teacher_sampler or sample_dpmpp_2m_teacher
    extra_args = dict(extra_args or {})
    sigmas = sigmas.to(x.device)
    name = sampler_name(sampler)
    batch, fit_count = x.shape[0], x.shape[0] - holdout

    sampler_map = measure_sampler(model, x, sigmas, sampler, extra_args=extra_args, options=options)
    call_sigmas = sampler_map.call_sigmas
    if len(call_sigmas) < 2:
        raise ValueError(f"sampler '{name}' calls the model {len(call_sigmas)} time(s) on this schedule; "
                         "D-ODE needs at least 2 calls.")
    check_follows_schedule(sampler_map, sigmas, name)
    if fit_schedule:  # the user's sigmas give the step count and the range; the calls must stay on schedule sigmas
        check_calls_on_schedule(call_sigmas, sigmas, name)
        steps, sigma_max, sigma_min = schedule_range(sigmas)
        grid64 = dense_grid(sigma_max, sigma_min, teacher_factor * steps)
    else:
        grid64, _ = teacher_sigmas(sigmas.tolist(), call_sigmas, teacher_factor)
    grid = grid64.to(device=x.device, dtype=sigmas.dtype)
    teacher_options = options if teacher is sampler else None
    teacher_call_sigmas = _check_teacher(model, x, grid, teacher, extra_args, teacher_options)
    progress = _Progress(callback, len(teacher_call_sigmas) + 2 * len(call_sigmas))
    progress.report()  # (0, total): the host learns the cost, and may cancel, before the first model call
    checked = _CheckedModel(model, progress)

    # target of call k: the state the sampler reaches next, at the sigma of call k+1 (the end, for the last)
    checked.role = "teacher run"
    if fit_schedule:
        sigmas, sampler_map, targets = _fit_schedule(checked, x, grid, teacher, steps, fit_count, sampler, name,
                                                     extra_args, options, teacher_options, sigmas.dtype)
        call_sigmas = sampler_map.call_sigmas
        progress.total = len(teacher_call_sigmas) + 2 * len(call_sigmas)  # the fitted schedule's own calls
    else:
        targets = run_teacher(checked, x, grid, teacher, call_sigmas[1:], teacher_call_sigmas, extra_args=extra_args,
                              options=teacher_options)
    log.info("teacher: %d model calls over %d sigmas", progress.done, len(grid))

    calls = len(call_sigmas)
    max_terms = AUTO_MAX_HISTORY if history == "auto" else history
    checked.role = "student run"
    live = _LiveFit(checked, name, sampler_map, targets, fit_count, history, max_terms)
    dode_final = sampler(live, x.clone(), sigmas.clone(), extra_args=dict(extra_args), callback=None, disable=True,
                         **(options or {}))
    if len(live.fits) != calls:
        live.refuse(f"made {len(live.fits)} model calls, not the {calls} of its free probe run")
    live.check_state(dode_final, "at its result")
    lambdas = torch.stack([fit.lambdas.float().cpu() for fit in live.fits])

    checked.role = "base run"
    base_final = sampler(checked, x.clone(), sigmas.clone(), extra_args=dict(extra_args), callback=None, disable=True,
                         **(options or {}))
    teacher_final = targets[-1][fit_count:]
    rerun = functools.partial(_held_out_rerun, checked, progress, x, sigmas, sampler, call_sigmas, extra_args, options,
                              fit_count)
    scale, rmse_base, rmse_dode, proof_runs = _held_out_proof(
        name, holdout, _latent_errors(base_final[fit_count:], teacher_final),
        _latent_errors(dode_final[fit_count:], teacher_final), lambdas, rerun, teacher_final, history)
    lambdas = lambdas * scale

    n_fit = fit_count * x[0].numel()
    rmse_before = [math.sqrt(max(fit.energy_before, 0.0) / n_fit) for fit in live.fits]
    rmse_after = [math.sqrt(max(fit.energy_after, 0.0) / n_fit) for fit in live.fits]
    log.info("distilled %s: %d calls; held-out final RMSE to the teacher: base %.4g, D-ODE %.4g (%d latents)",
             name, calls, rmse_base, rmse_dode, holdout)
    metadata = {
        "base_sampler": name,
        "steps": str(len(sigmas) - 1),
        "schedule": json.dumps([float(s) for s in sigmas.tolist()]),
        "schedule_source": "fitted" if fit_schedule else "user",
        "history_mode": str(history),
        "history_per_call": json.dumps([fit.terms for fit in live.fits]),
        "teacher_sampler": sampler_name(teacher),
        "teacher_factor": str(teacher_factor),
        "teacher_calls": str(len(teacher_call_sigmas)),
        "proof_calls": str(proof_runs * len(call_sigmas)),
        "batch_size": str(batch),
        "latent_shape": json.dumps(list(x.shape[1:])),
        "model_dtype": checked.dtype,
        "fit_rmse_before": json.dumps(rmse_before),
        "fit_rmse_after": json.dumps(rmse_after),
        "heldout_rmse_base": repr(rmse_base),
        "heldout_rmse_dode": repr(rmse_dode),
        "heldout_count": str(holdout),
        "lambda_scale": repr(scale),
        "plugin_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return Lambdas(lambdas=lambdas, call_sigmas=tuple(call_sigmas), metadata=metadata)
