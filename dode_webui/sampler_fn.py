"""The function the WebUI calls for a D-ODE sampler: k-diffusion signature, λ chosen per run.

WebUI's ``KDiffusionSampler`` calls ``func(model, x, sigmas=..., extra_args=..., callback=..., disable=False)``
with its CFG denoiser as ``model`` (A1111 1.6-1.10, Forge old and new backends, reForge). The function finds the
λ file for the sigmas it is given (or distills one, when the run is a distill job), then runs the base sampler
with λ applied. Probes, replays and the fit run the base sampler ``hijack_free``: only the one real run draws
from the host's random stream (``p.rng`` through ``TorchHijack``), as many times as the base sampler alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from dode_core import (
    DODEDenoiser,
    FileChoice,
    LambdaFileError,
    Lambdas,
    NoGainError,
    SamplerRefusedError,
    ScheduleMismatchError,
    cached_call_sigmas,
)
from dode_core.blackbox import sampler_name
from dode_core.file_rules import ModelIdentity, model_identity, model_mismatch

from .distill_job import DistillRefusedError, DistillRequest, run_distill_job
from .lambda_files import LambdaResolutionError, infotext_fields, resolve_lambdas
from .messages import for_the_error_box, schedule_refusal
from .names import SamplerSpec

log = logging.getLogger(__name__)

INFOTEXT_SCHEDULE = "D-ODE schedule"
INFOTEXT_HELDOUT = "D-ODE held-out RMSE"
INFOTEXT_STEPS = "Steps"  # the host's own key: extra_generation_params override its value in place (create_infotext)
INFOTEXT_STEPS_REQUESTED = "D-ODE steps requested"
# What the D-ODE sampler function raises for the user, restated for the error box (anything else keeps its traceback).
USER_ERRORS = (SamplerRefusedError, LambdaResolutionError, ScheduleMismatchError, NoGainError, LambdaFileError,
               DistillRefusedError)


def _identity(sampler):
    return sampler


@dataclass
class RunContext:
    """What one sampler run needs from the host.

    folder:          the λ folder (models/dode_lambdas)
    choice:          a file name from the script's override or the setting; None / "auto" = newest match
    distill:         a pending distill request for this run, or None
    infotext:        the dict the infotext keys go to (``p.extra_generation_params``)
    progress:        progress(done, total) during a distill job
    end_progress:    called when a distill job ends (done or not): hands the progress bar back to the sampling
    check_interrupt: raises to stop a distill job (Interrupt / Skip)
    teacher_for:     the host's function for a teacher label ("auto" -> None: dode_core's default)
    hijack_free:     the base sampler as run for probes, replays and the fit (no host random numbers)
    steps_requested: the steps the user asked for (the infotext's "Steps"), or None where the run's infotext steps
                     are not ours to correct (a hires pass)
    model:           what the host knows of the checkpoint it samples with, to warn about a file fitted for another
    """

    folder: str
    choice: str | None = None
    distill: DistillRequest | None = None
    infotext: dict = field(default_factory=dict)
    progress: Callable[[int, int], None] | None = None
    end_progress: Callable[[], None] | None = None
    check_interrupt: Callable[[], None] | None = None
    teacher_for: Callable[[str], Callable | None] = lambda label: None
    hijack_free: Callable[[Callable], Callable] = _identity
    steps_requested: int | None = None
    model: ModelIdentity | None = None


def sample_with(model, x, sigmas, base, quiet_base, lam: Lambdas, *, call_sigmas=None, extra_args=None, callback=None,
                disable=None, **options):
    """dode_core.sample, with the schedule probe on ``quiet_base`` (no host random numbers; skipped when the
    caller already probed ``sigmas`` into ``call_sigmas``) and the real run on ``base``: the sigmas are checked
    against the file before any model call."""
    if call_sigmas is None:
        call_sigmas = cached_call_sigmas(model, x, sigmas, quiet_base, extra_args=extra_args, options=options)
    lam.check_call_sigmas(call_sigmas)
    return base(DODEDenoiser(model, lam), x, sigmas, extra_args=extra_args or {}, callback=callback, disable=disable,
                **options)


def distill_for_run(context: RunContext, model, x, sigmas, quiet_base, extra_args, options) -> FileChoice:
    """Run the pending distill job of ``context`` (raising its refusal, if any) and return the new file."""
    request = context.distill
    if request.refused:
        raise DistillRefusedError(request.refused)
    teacher = context.teacher_for(request.teacher)
    try:
        path, lam = run_distill_job(model, x, sigmas, quiet_base, context.folder, request,
                                    teacher_sampler=None if teacher is None else context.hijack_free(teacher),
                                    extra_args=extra_args, options=options, progress=context.progress,
                                    check_interrupt=context.check_interrupt)
    finally:
        if context.end_progress is not None:
            context.end_progress()
    if request.heldout:
        context.infotext[INFOTEXT_HELDOUT] = request.heldout
    if lam.schedule_fitted:
        return FileChoice(path, lam, lam.schedule, f"fitted schedule of the λ file ({len(lam.schedule) - 1} steps)")
    return FileChoice(path, lam)


def note_steps(context: RunContext, sampled: int, host_steps: int) -> None:
    """The infotext's "Steps" says the steps sampled when the file's own schedule has another count than the host's
    (A1111, Forge and reForge write ``{"Steps": p.steps, ..., **p.extra_generation_params}``); what the user asked for
    stays visible as "D-ODE steps requested"."""
    if context.steps_requested is None or sampled == host_steps:
        return
    context.infotext[INFOTEXT_STEPS] = sampled
    context.infotext[INFOTEXT_STEPS_REQUESTED] = context.steps_requested


def make_dode_sampler(spec: SamplerSpec, base_sampler: Callable[[], Callable], context_for: Callable):
    """A k-diffusion-signature sampler for ``spec``.

    base_sampler(): the host's base function (e.g. its ``k_diffusion.sampling.sample_euler``), looked up per run
    context_for(model): the RunContext of the run the host is doing with this denoiser

    Before the first model call the base sampler is checked on the run's own sigmas (dode_core.cached_call_sigmas:
    stand-in probes, cached): one that injects noise or chooses its steps at this step count is refused. What the
    user must read is raised as one short first line and the details (messages.py).
    """

    def find_lambdas(context, model, x, sigmas, base, quiet_base, extra_args, options):
        steps = len(sigmas) - 1
        distilling = context.distill is not None and not context.distill.done
        if distilling and context.distill.refused:
            raise DistillRefusedError(context.distill.refused)
        try:
            call_sigmas = cached_call_sigmas(model, x, sigmas, quiet_base, extra_args=extra_args, options=options)
        except SamplerRefusedError as error:
            raise schedule_refusal(error, spec.label, spec.base_label, steps, distilling) from None
        if distilling:
            return distill_for_run(context, model, x, sigmas, quiet_base, extra_args, options), None
        found = resolve_lambdas(context.folder, context.choice, sampler_name(base), call_sigmas, sigmas, x.shape)
        if context.model is not None and (why := model_mismatch(model_identity(found.lam.metadata), context.model)):
            log.warning("%s: λ file %s: %s; λ fitted for another model may make images worse: distill for this one.",
                        spec.label, os.path.basename(found.path), why)
        return found, call_sigmas

    def sample_dode(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        context = context_for(model)
        base = base_sampler()
        quiet_base = context.hijack_free(base)
        try:
            found, call_sigmas = find_lambdas(context, model, x, sigmas, base, quiet_base, extra_args, options)
        except USER_ERRORS as error:
            raise for_the_error_box(error, spec.label) from None
        context.infotext.update(infotext_fields(found.path))
        if found.schedule is not None:
            host_steps = len(sigmas) - 1
            sigmas, call_sigmas = found.schedule.to(device=sigmas.device, dtype=sigmas.dtype), None
            context.infotext[INFOTEXT_SCHEDULE] = found.note
            note_steps(context, len(sigmas) - 1, host_steps)
        log.info("%s: λ file %s%s", spec.label, os.path.basename(found.path),
                 f", sampling on the {found.note}" if found.schedule is not None else "")
        try:
            return sample_with(model, x, sigmas, base, quiet_base, found.lam, call_sigmas=call_sigmas,
                               extra_args=extra_args, callback=callback, disable=disable, **options)
        except USER_ERRORS as error:
            raise for_the_error_box(error, spec.label) from None

    sample_dode.__name__ = sample_dode.__qualname__ = f"sample_dode_{spec.base_name}"
    sample_dode.__doc__ = f"{spec.label}: the host's {spec.base_label} with fitted D-ODE λ."
    return sample_dode
