"""The "Distill λ (D-ODE)" job over a denoiser: run dode_core.distill, then save the λ file without
overwriting anything. The host supplies the denoiser (WebUI's CFG denoiser), the batch and the schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dode_core import Lambdas, distill
from dode_core.blackbox import sampler_name
from dode_core.file_rules import CHECKPOINT_NAME
from dode_core.naming import lambda_file_stem
from dode_core.rules import (
    AUTO,
    DEFAULT_TEACHER_FACTOR,
    MAX_TEACHER_FACTOR,
    MAX_TEACHER_STEPS,
    MIN_BATCH,
    MIN_TEACHER_FACTOR,
    fit_size_problem,
    host_fields,
    parse_history,
    proof_summary,
)

log = logging.getLogger(__name__)
PREFIX = "Distill λ (D-ODE): "


class DistillRefusedError(ValueError):
    """The distill job the user asked for cannot run; the message says why and what to do."""


@dataclass
class DistillRequest:
    """What the user asked for in the accordion, plus what the host knows about the run (file metadata).

    teacher: "auto" (dode_core picks it) or the host label of a supported sampler. fit_schedule: let the fit
    choose the schedule too (the file then carries it). refused: why the job cannot run; the sampler function
    raises it, where the host shows it (the script runner swallows errors raised in ``process()``).
    metadata: the model's identity fields (dode_core.file_rules), prompt, negative_prompt, cfg, seed, scheduler,
    host, ... (strings or numbers; stored in the λ file, see dode_core.rules.host_fields). done: set once a sampler
    run has used the request, so later batches of the same job sample with the new file instead of distilling again.
    """

    teacher_factor: int = DEFAULT_TEACHER_FACTOR
    history: int | str = 1
    teacher: str = AUTO
    fit_schedule: bool = False
    refused: str | None = None
    metadata: dict = field(default_factory=dict)
    done: bool = False
    saved_path: str | None = None
    heldout: str | None = None


def parse_int(value, what: str, default: int, low: int, high: int) -> int:
    """An integer from a UI or API value: None -> ``default``; bools, fractions, non-ASCII digits and values
    outside ``[low, high]`` raise DistillRefusedError naming ``what``."""
    if value is None:
        return default
    text = str(value).strip()
    if isinstance(value, bool) or not text.isascii():
        number = None
    else:
        try:
            number = int(float(text)) if float(text).is_integer() else None
        except (ValueError, OverflowError):
            number = None
    if number is None or not low <= number <= high:
        raise DistillRefusedError(f"{PREFIX}{what} must be a whole number from {low} to {high}; got "
                                  f"{str(value)[:40]!r}.")
    return number


def history_terms(value) -> int | str:
    """The history from the accordion ("1", "2", "3", "auto") or the API (an int); None -> 1
    (dode_core.rules.parse_history)."""
    if value is None:
        return 1
    try:
        return parse_history(value)
    except ValueError as error:
        raise DistillRefusedError(f"{PREFIX}{error}") from None


def parse_distill_request(steps, teacher_factor, history, teacher, fit_schedule, teacher_labels,
                          batch_size=None) -> DistillRequest:
    """The request for a distill over ``steps`` steps of ``batch_size`` images from the accordion's (or the API's)
    values.

    None values take the defaults (a None batch_size is not checked here; dode_core checks the batch it gets). The
    size of the fit is bounded as in every host (dode_core.rules.fit_size_problem), so a request cannot make the
    teacher run (and its memory) grow without bound; a batch under dode_core.rules.MIN_BATCH is refused before the
    run starts, in the words of the WebUI's own sliders (WebUI's default batch size is 1). teacher: "auto" or one of
    ``teacher_labels`` (the host labels of the samplers D-ODE supports). Raises DistillRefusedError.
    """
    factor = parse_int(teacher_factor, "teacher sub-steps per step", DEFAULT_TEACHER_FACTOR, MIN_TEACHER_FACTOR,
                       MAX_TEACHER_FACTOR)
    steps = parse_int(steps, "steps", 20, 2, MAX_TEACHER_STEPS)
    too_large = fit_size_problem(steps, factor)
    if too_large:
        raise DistillRefusedError(PREFIX + too_large)
    teacher = AUTO if teacher is None or not str(teacher).strip() else str(teacher).strip()
    if teacher.lower() == AUTO:
        teacher = AUTO
    elif teacher not in teacher_labels:
        raise DistillRefusedError(f"{PREFIX}teacher {teacher[:60]!r} is not one of this host's supported "
                                  f"samplers; choose auto or one of {', '.join(teacher_labels)}.")
    batch = parse_int(batch_size, "batch size", MIN_BATCH, 1, 10**6)
    if batch < MIN_BATCH:
        raise DistillRefusedError(
            f"{PREFIX}the fit needs a Batch size of at least {MIN_BATCH} (8 to 16 prove sharper): every image of "
            f"the batch is judged with λ fitted on the others. This run has batch size {batch}; raise "
            "Batch size (Batch count runs batches one after another and does not add images to the fit). No λ "
            "file was written.")
    return DistillRequest(teacher_factor=factor, history=history_terms(history), teacher=teacher,
                          fit_schedule=bool(fit_schedule) and str(fit_schedule).lower() != "false")


def model_sigma_min(model) -> float | None:
    """The smallest sigma of the host's model, read from the CFG denoiser the sampler is given: its k-diffusion
    wrapper's sigma table (A1111: ``inner_model.sigma_min``), Forge's predictor (``inner_model.predictor``) or the
    denoiser itself; None when none says (dode_core then uses its default). The teacher steps down to it."""
    for owner in (getattr(model, "inner_model", None), getattr(getattr(model, "inner_model", None), "predictor", None),
                  model):
        value = getattr(owner, "sigma_min", None) if owner is not None else None
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def run_distill_job(model, x, sigmas, base_sampler, folder: str, request: DistillRequest, *, teacher_sampler=None,
                    extra_args=None, options=None, progress=None, check_interrupt=None, file_stem: str | None = None
                    ) -> tuple[str, Lambdas]:
    """Fit λ for ``base_sampler`` on ``sigmas`` from the batch ``x`` with ``model``; save; return (path, λ).

    teacher_sampler: the teacher's function (None: dode_core's measured default). progress(done, total): after
    every model evaluation. check_interrupt(): called before it; raise from it to stop the job (nothing is
    written then). The file goes to ``folder`` under a new name (a counter is added instead of overwriting).
    A fit that does not beat the base beyond chance (leave-one-out over the batch) raises dode_core's NoGainError;
    a batch too large for any host (dode_core.rules.fit_size_problem) DistillRefusedError, before any model call;
    no file is written then.
    """

    too_large = fit_size_problem(len(sigmas) - 1, request.teacher_factor, tuple(x.shape))
    if too_large:  # the batch x latent size, as ComfyUI bounds it too
        raise DistillRefusedError(PREFIX + too_large)

    def on_call(done: int, total: int) -> None:
        if check_interrupt is not None:
            check_interrupt()
        if progress is not None:
            progress(done, total)

    lam = distill(model, x, sigmas, base_sampler, extra_args=extra_args, teacher_factor=request.teacher_factor,
                  teacher_sampler=teacher_sampler, history=request.history, callback=on_call, options=options,
                  fit_schedule=request.fit_schedule, sigma_min=model_sigma_min(model))
    if check_interrupt is not None:
        check_interrupt()
    metadata = host_fields(request.metadata, reserved=lam.metadata)
    stem = file_stem or lambda_file_stem(metadata.get(CHECKPOINT_NAME, "model"), sampler_name(base_sampler),
                                         len(sigmas) - 1, metadata.get("scheduler", "automatic"),
                                         metadata.get("cfg"), request.history)
    path = lam.save_new(folder, stem, **metadata)
    request.done, request.saved_path, request.heldout = True, path, proof_summary(lam)
    log.info("D-ODE: distilled %s over %d steps, saved %s; final-state RMSE to the teacher: %s",
             sampler_name(base_sampler), len(sigmas) - 1, path, request.heldout or "not recorded")
    return path, lam


class DistillProgress:
    """Drives the host's progress fields (``shared.state``) over a distill job's model calls, then hands them
    back: the host set ``sampling_steps`` / ``sampling_step`` for the sampling run the job runs inside
    (``Sampler.launch_sampling``), and its callback only moves ``sampling_step`` afterwards."""

    def __init__(self, state):
        self.state = state
        self.saved: tuple | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.saved is None:
            self.saved = (self.state.sampling_steps, self.state.sampling_step, self.state.textinfo)
        self.state.sampling_steps = total
        self.state.sampling_step = done
        self.state.textinfo = f"Distilling λ (D-ODE): model call {done}/{total}"

    def restore(self) -> None:
        """Back to the sampling run's step total and status text, at its first step."""
        if self.saved is not None:
            self.state.sampling_steps, _, self.state.textinfo = self.saved
            self.state.sampling_step = 0
            self.saved = None
