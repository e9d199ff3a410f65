"""The closed-form, greedy λ fit over a black-box sampler (DESIGN.md §1).

At model call k every standard ODE sampler is affine in the denoised output it is given, so the state
it reaches next is affine in the λ of that call:

    x_next(lambda) = x_next(0) + sum_j lambda_j * v_j,    v_j = x_next(e_j) - x_next(0)

and lambda_k solves the least-squares problem against the teacher state t at the same sigma,

    G lambda = b,    G_ij = <v_i, v_j>,   b_i = <t - x_next(0), v_i>,

summed in float64 over the whole batch. x_next(0) and x_next(e_j) come from replays of the sampler over
cached outputs (no model evaluation), so a fit costs one teacher run plus one student run.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from dataclasses import dataclass

import torch

from .blackbox import (
    ModelCall,
    ModelProxy,
    SamplerRefusedError,
    check_deterministic,
    close_enough,
    private_rng,
    replay,
    sampler_name,
    sigma_value,
)
from .correction import apply_correction, differences, working_precision
from .lambdas_file import Lambdas, format_sigmas
from .schedule import check_calls_on_schedule, dense_grid, run_dense_teacher, schedule_range
from .teacher import grid_index, teacher_sigmas
from .version import __version__

log = logging.getLogger(__name__)

AUTO_MAX_HISTORY = 3
HELD_OUT_EVERY = 4  # history="auto": every 4th latent of the batch is held out to choose the term count


class _Progress:
    """Counts real model evaluations and reports ``callback(done, total)``; a raising callback cancels."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


class _CheckedModel(ModelProxy):
    """The user's model, with every output checked for shape and finiteness and counted for progress."""

    def __init__(self, model, progress: _Progress, role: str):
        super().__init__(model)
        self.progress, self.role = progress, role
        self.dtype = ""  # of the last output, recorded in the λ file

    def __call__(self, x, sigma, **extra_args):
        denoised = self.inner(x, sigma, **extra_args)
        if not isinstance(denoised, torch.Tensor) or denoised.shape != x.shape:
            shape = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
            raise ValueError(f"the model returned {shape} for an input of shape {tuple(x.shape)} "
                             f"({self.role}, sigma {sigma_value(sigma):.4g}); expected the same shape.")
        if not bool(torch.isfinite(denoised).all()):
            raise ValueError(f"the model returned non-finite values (NaN or inf) during the {self.role} "
                             f"at sigma {sigma_value(sigma):.4g}; no λ were fitted. Check the model and its "
                             "precision (try float32 or bfloat16 instead of float16).")
        self.progress.step()
        self.dtype = str(denoised.dtype).removeprefix("torch.")
        return denoised


def check_inputs(x, sigmas, teacher_factor, history) -> None:
    """Clear errors for a schedule, latent or option that cannot be distilled."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch of latents (batch, ...); got {getattr(x, 'shape', type(x))}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds non-finite values (NaN or inf); expected a finite start latent.")
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1:
        raise ValueError(f"sigmas must be a 1-D tensor; got {getattr(sigmas, 'shape', type(sigmas))}.")
    if len(sigmas) < 3:
        raise ValueError(f"the schedule has {max(len(sigmas) - 1, 0)} step(s); D-ODE corrects each call "
                         "from the previous ones, so it needs at least 2 steps.")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ValueError(f"sigmas must be finite and >= 0; got {format_sigmas(sigmas)}.")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError(f"sigmas must decrease; got {format_sigmas(sigmas)}.")
    if isinstance(teacher_factor, bool) or not isinstance(teacher_factor, int) or teacher_factor < 1:
        raise ValueError(f"teacher_factor must be an integer >= 1; got {teacher_factor!r}.")
    if history != "auto" and (isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= 8):
        raise ValueError(f"history must be 1 to 8 or 'auto'; got {history!r}.")
    if history == "auto" and x.shape[0] < HELD_OUT_EVERY:
        raise ValueError(f"history='auto' holds out every {HELD_OUT_EVERY}th latent to choose the number of "
                         f"terms, so it needs a batch of at least {HELD_OUT_EVERY}; got {x.shape[0]}.")


def run_teacher(model, x, grid, sampler, wanted: list[int], *, extra_args=None, options=None):
    """Run ``sampler`` over ``grid`` from ``x``; return the states at grid indices ``wanted``, on the CPU.

    States come from the sampler's callback (``{"i", "x"}``, the state at ``grid[i]``); the last grid
    point's state is the sampler's result.
    """
    last = len(grid) - 1
    states: dict[int, torch.Tensor] = {}

    def record(info):
        if info["i"] in wanted:
            states[info["i"]] = info["x"].detach().to("cpu", copy=True)

    final = sampler(model, x.clone(), grid, extra_args=dict(extra_args or {}), callback=record, disable=True,
                    **(options or {}))
    states[last] = final.detach().to("cpu", copy=True)
    missing = [i for i in wanted if i not in states]
    if missing:
        raise ValueError(f"teacher sampler '{sampler_name(sampler)}' did not report its state through the "
                         "callback ({'i': step, 'x': state}); use a k-diffusion-style sampler as teacher.")
    return [states[i] for i in wanted]


def _batch_stats(vs: list[torch.Tensor], residual: torch.Tensor):
    """Per-latent Gram matrices G (B, m, m), right sides b (B, m) and residual energies c (B,), float64."""
    V = torch.stack([v.reshape(v.shape[0], -1) for v in vs], dim=1)
    r = residual.reshape(residual.shape[0], -1)
    return torch.einsum("bip,bjp->bij", V, V), torch.einsum("bip,bp->bi", V, r), (r * r).sum(-1)


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


def distill(model, x, sigmas, sampler, *, extra_args=None, teacher_factor=10, teacher_sampler=None, history=1,
            callback=None, options=None, fit_schedule=False) -> Lambdas:
    """Fit D-ODE λ for ``sampler`` on ``sigmas`` against a ``teacher_factor``-times finer teacher run.

    model:    ``model(x, sigma, **extra_args) -> denoised`` (k-diffusion convention)
    x:        a batch of start latents, already at noise level ``sigmas[0]``
    history:  terms per call (1 = the paper's single λ), or "auto": 1 to 3 per call, chosen on held-out latents
    callback: ``callback(done, total)`` after each model evaluation (teacher + student); raise to cancel
    options:  extra keyword arguments for the sampler (as ComfyUI's ``extra_options``)
    fit_schedule: choose the schedule too. ``sigmas`` then gives only the step count and the range (its first
              sigma, its smallest positive one, the final 0); the teacher runs once over a dense grid of
              ``teacher_factor * steps`` sigmas in that range, the schedule with the least summed one-step error
              on that run is chosen (dode_core.schedule), and λ are fitted on it against the same run.
              ``lam.schedule`` holds the chosen sigmas.

    The global random state is left as it was found.
    """
    with torch.no_grad(), private_rng():
        return _distill(model, x, sigmas, sampler, extra_args, teacher_factor, teacher_sampler, history, callback,
                        options, fit_schedule)


def _fitted_schedule_targets(model, x, sigmas, sampler, teacher, teacher_factor, extra_args, options, callback):
    """``fit_schedule=True``: one dense teacher run; returns the chosen schedule (in ``sigmas``' dtype), the
    student's call sigmas on it, the λ targets read from the same run, the teacher's call count and progress."""
    name = sampler_name(sampler)
    steps, sigma_max, sigma_min = schedule_range(sigmas)
    user_calls = check_deterministic(model, x, sigmas, sampler, extra_args=extra_args, options=options)
    check_calls_on_schedule(user_calls, sigmas, name)
    grid64 = dense_grid(sigma_max, sigma_min, teacher_factor * steps)
    grid = grid64.to(device=x.device, dtype=sigmas.dtype)
    teacher_options = options if teacher is sampler else None
    teacher_calls = len(check_deterministic(model, x, grid, teacher, extra_args=extra_args, options=teacher_options))
    progress = _Progress(callback, teacher_calls + len(user_calls))  # the call count does not depend on the sigmas
    run = run_dense_teacher(_CheckedModel(model, progress, "teacher run"), x, grid, teacher, extra_args=extra_args,
                            options=teacher_options)
    fitted = run.choose(steps)[0].to(device=x.device, dtype=sigmas.dtype)
    call_sigmas = check_deterministic(model, x, fitted, sampler, extra_args=extra_args, options=options)
    check_calls_on_schedule(call_sigmas, fitted, name)
    targets = [run.state_at(s) for s in call_sigmas[1:] + [0.0]]
    log.info("fitted schedule for %s: %s", name, format_sigmas(fitted))
    return fitted, call_sigmas, targets, teacher_calls, progress


def _distill(model, x, sigmas, sampler, extra_args, teacher_factor, teacher_sampler, history, callback, options,
             fit_schedule=False):
    check_inputs(x, sigmas, teacher_factor, history)
    teacher_sampler = teacher_sampler or sampler
    extra_args = dict(extra_args or {})
    sigmas = sigmas.to(x.device)
    name = sampler_name(sampler)

    if fit_schedule:
        sigmas, call_sigmas, targets, teacher_calls, progress = _fitted_schedule_targets(
            model, x, sigmas, sampler, teacher_sampler, teacher_factor, extra_args, options, callback)
    else:
        call_sigmas = check_deterministic(model, x, sigmas, sampler, extra_args=extra_args, options=options)
    if len(call_sigmas) < 2:
        raise ValueError(f"sampler '{name}' calls the model {len(call_sigmas)} time(s) on this schedule; "
                         "D-ODE needs at least 2 calls.")
    if not fit_schedule:
        grid64, _ = teacher_sigmas(sigmas.tolist(), call_sigmas, teacher_factor)
        grid = grid64.to(device=x.device, dtype=sigmas.dtype)
        teacher_options = options if teacher_sampler is sampler else None
        teacher_calls = len(check_deterministic(model, x, grid, teacher_sampler, extra_args=extra_args,
                                                options=teacher_options))
        progress = _Progress(callback, teacher_calls + len(call_sigmas))

        # target of call k: the state the sampler reaches next, at the sigma of call k+1 (the end, for the last)
        target_sigmas = call_sigmas[1:] + [float(sigmas[-1])]
        targets = run_teacher(_CheckedModel(model, progress, "teacher run"), x, grid, teacher_sampler,
                              [grid_index(grid64, s) for s in target_sigmas], extra_args=extra_args,
                              options=teacher_options)
    log.info("teacher: %d model calls", progress.done)

    max_terms = AUTO_MAX_HISTORY if history == "auto" else history
    model_calls = _CheckedModel(model, progress, "student run")
    student = _Student(model, x, sigmas, sampler, call_sigmas, extra_args, options)
    accumulate_on = x.device if x.device.type in ("cpu", "cuda") else torch.device("cpu")  # float64 support

    lambdas = torch.zeros(len(call_sigmas), max_terms, dtype=torch.float32)
    fits: list[_CallFit] = []
    raw, corrected = [], []
    for k in range(len(call_sigmas)):
        call = student.call(corrected, fits[-1] if fits else None)
        # replays see at least float32, so that λ = 0, 1/2, 1 differ only by the correction, not by rounding
        denoised = working_precision(model_calls(call.x, call.sigma, **call.extra_args))
        raw.append(denoised)
        terms = differences(raw, max_terms)
        del raw[: -(max_terms + 1)]
        x_zero, vs = student.affine_next_state(corrected, denoised, terms, accumulate_on)
        fits.append(fit_call(x_zero, vs, targets[k].to(accumulate_on, torch.float64), history, max_terms))
        lambdas[k] = fits[-1].lambdas.float().cpu()
        corrected.append(apply_correction(denoised, terms, lambdas[k, : len(terms)]))
    student.check_final(corrected, fits[-1])

    rmse_before = [math.sqrt(max(fit.energy_before, 0.0) / x.numel()) for fit in fits]
    rmse_after = [math.sqrt(max(fit.energy_after, 0.0) / x.numel()) for fit in fits]
    log.info("distilled %s: %d calls, fit RMSE %.4g -> %.4g at the last call", name, len(call_sigmas),
             rmse_before[-1], rmse_after[-1])
    metadata = {
        "base_sampler": name,
        "steps": str(len(sigmas) - 1),
        "schedule": json.dumps([float(s) for s in sigmas.tolist()]),
        "schedule_source": "fitted" if fit_schedule else "user",
        "history_mode": str(history),
        "history_per_call": json.dumps([fit.terms for fit in fits]),
        "teacher_sampler": sampler_name(teacher_sampler),
        "teacher_factor": str(teacher_factor),
        "teacher_calls": str(teacher_calls),
        "batch_size": str(x.shape[0]),
        "latent_shape": json.dumps(list(x.shape[1:])),
        "model_dtype": model_calls.dtype,
        "fit_rmse_before": json.dumps(rmse_before),
        "fit_rmse_after": json.dumps(rmse_after),
        "plugin_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return Lambdas(lambdas=lambdas, call_sigmas=tuple(call_sigmas), metadata=metadata)


@dataclass
class _CallFit:
    """The fit of one call: its λ, the terms used, the squared error of the next state before (λ = 0) and
    after, and the next state the fitted λ predict (checked against the next replay)."""

    lambdas: torch.Tensor
    terms: int
    energy_before: float
    energy_after: float
    predicted: torch.Tensor
    predicted_scale: float  # norm of what was summed into `predicted`, for the rounding tolerance


def fit_call(x_zero: torch.Tensor, vs: list[torch.Tensor], target: torch.Tensor, history, max_terms: int) -> _CallFit:
    """λ of one call from its replays: least squares of ``target - x_zero`` on the directions ``vs``."""
    residual = target - x_zero
    lam = torch.zeros(max_terms, dtype=torch.float64, device=x_zero.device)
    if not vs:  # the first call has no earlier output to correct with
        energy = float((residual * residual).sum())
        return _CallFit(lam, 0, energy, energy, x_zero, float(x_zero.norm()))
    G, b, c = _batch_stats(vs, residual)
    floor = (1e-6 * float(x_zero.norm())) ** 2
    terms = _choose_term_count(G, b, c, floor) if history == "auto" else len(vs)
    G, b, c = G.sum(0), b.sum(0), c.sum()
    lam[:terms] = _solve(G[:terms, :terms], b[:terms], floor)
    lam = lam.float().double()  # exactly the λ the file will hold
    used = lam[: len(vs)]
    scale = float(x_zero.norm()) + sum(abs(float(w)) * float(v.norm()) for w, v in zip(used, vs, strict=True))
    return _CallFit(
        lambdas=lam,
        terms=terms,
        energy_before=float(c),
        energy_after=float(_residual_energy(G, b, c, used)),
        predicted=x_zero + sum(weight * v for weight, v in zip(used, vs, strict=True)),
        predicted_scale=scale,
    )


class _Student:
    """Replays of the student sampler over cached outputs, refusing it where it is not what the fit needs."""

    def __init__(self, model, x, sigmas, sampler, call_sigmas, extra_args, options):
        self.model, self.x, self.sigmas, self.sampler = model, x, sigmas, sampler
        self.call_sigmas, self.extra_args, self.options = call_sigmas, extra_args, options

    def refuse(self, why: str):
        raise SamplerRefusedError(
            f"sampler '{sampler_name(self.sampler)}' {why}; D-ODE needs a deterministic ODE sampler with fixed "
            "steps that is affine in the denoised output (euler, heun, dpmpp_2m, lms, dpm_2, ...)."
        )

    def replay(self, outputs):
        return replay(self.model, self.x, self.sigmas, self.sampler, outputs, extra_args=self.extra_args,
                      options=self.options)

    def call(self, outputs, previous: _CallFit | None) -> ModelCall:
        """The input of call ``len(outputs)``, checked against its probed sigma and the fit's prediction."""
        k = len(outputs)
        call, _ = self.replay(outputs)
        if call is None or not math.isclose(sigma_value(call.sigma), self.call_sigmas[k], rel_tol=1e-5, abs_tol=1e-8):
            self.refuse(f"did not make model call {k} at sigma {self.call_sigmas[k]:.4g} when replayed (it adapts "
                        "its steps)")
        if previous is not None and not close_enough(call.x, previous.predicted, previous.predicted_scale):
            self.refuse(f"did not reach the state its replays predicted at call {k} (it injects noise, keeps "
                        "state between runs, or is not affine in the denoised output)")
        return call

    def next_state(self, outputs) -> torch.Tensor:
        """The state after call ``len(outputs) - 1``: the next call's input, or the result after the last call."""
        k, calls = len(outputs) - 1, len(self.call_sigmas)
        call, final = self.replay(outputs)
        if k == calls - 1 and final is None:
            self.refuse(f"asked for more than the {calls} model calls it made on a free probe run")
        if k < calls - 1 and call is None:
            self.refuse(f"finished after {k + 1} model calls when replayed, but made {calls} on a free probe run")
        return final if final is not None else call.x

    def affine_next_state(self, corrected, denoised, terms, device):
        """``x_next(0)`` and ``v_j = x_next(e_j) - x_next(0)`` in float64, after checking that the λ = 0, 1/2, 1
        replays are collinear (the sampler is affine in the denoised output)."""
        def state_with(lambdas_k: torch.Tensor) -> torch.Tensor:
            return self.next_state(corrected + [apply_correction(denoised, terms, lambdas_k)])

        x_zero = self.next_state(corrected + [denoised]).to(device, torch.float64)
        unit = torch.eye(len(terms))
        vs = [state_with(unit[j]).to(device, torch.float64) - x_zero for j in range(len(terms))]
        if terms:
            x_half = state_with(torch.full((len(terms),), 0.5))
            scale = float(x_zero.norm()) + sum(float(v.norm()) for v in vs)
            if not close_enough(x_half.to(device), x_zero + 0.5 * sum(vs), scale):
                self.refuse(f"is not affine in the denoised output at call {len(corrected)} (the λ = 0, 1/2, 1 "
                            "replays are not collinear)")
        return x_zero, vs

    def check_final(self, corrected, last: _CallFit) -> None:
        """The full replay with every corrected output must end where the fit predicted."""
        _, final = self.replay(corrected)
        if final is None:
            self.refuse(f"asked for more than the {len(self.call_sigmas)} model calls it made on a free probe run")
        if not close_enough(final, last.predicted, last.predicted_scale):
            self.refuse("did not reach the final state its replays predicted (it injects noise, keeps state "
                        "between runs, or is not affine in the denoised output)")
