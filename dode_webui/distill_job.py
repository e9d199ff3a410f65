"""The "Distill λ (D-ODE)" job over a denoiser: run dode_core.distill, then save the λ file without
overwriting anything. The host supplies the denoiser (WebUI's CFG denoiser), the batch and the schedule."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from dode_core import Lambdas, distill
from dode_core.blackbox import sampler_name
from dode_core.lambdas_file import REQUIRED_FIELDS
from dode_core.naming import lambda_file_stem

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000  # prompts are stored for reference only; the file format caps a value at 64k


@dataclass
class DistillRequest:
    """What the user asked for in the accordion, plus what the host knows about the run (file metadata).

    metadata: model, model_fingerprint, prompt, negative_prompt, cfg, seed, scheduler, host, ... (strings or
    numbers; stored in the λ file). done: set once a sampler run has used the request, so later batches of
    the same job sample with the new file instead of distilling again.
    """

    teacher_factor: int = 10
    history: int | str = 1
    metadata: dict = field(default_factory=dict)
    done: bool = False
    saved_path: str | None = None


def _slug(text, fallback: str) -> str:
    """A file-name-safe piece: letters, digits, '.', '-' and '_' only."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text or "")).strip("-._")
    return slug[:60] or fallback


def build_file_stem(model: str, base_sampler: str, steps: int, scheduler: str, cfg, history) -> str:
    """``<model>_<sampler>_<steps>steps_<scheduler>[_cfg<cfg>]_h<history>`` (lambdas/README.md naming)."""
    return lambda_file_stem(model, base_sampler, steps, scheduler, cfg, history)


def file_metadata(request: DistillRequest, reserved=()) -> dict[str, str]:
    """The host metadata as strings; long texts cut to MAX_TEXT_CHARS; an unusable seed dropped; keys in
    ``reserved`` (the fields dode_core writes, e.g. steps or base_sampler) never overridden."""
    metadata = {}
    for key, value in request.metadata.items():
        if value is None or key in reserved or key in REQUIRED_FIELDS:
            continue
        text = str(value)
        if key == "seed":
            try:
                text = str(int(value))
            except (TypeError, ValueError):
                continue
        metadata[key] = text[:MAX_TEXT_CHARS]
    return metadata


def run_distill_job(model, x, sigmas, base_sampler, folder: str, request: DistillRequest, *, extra_args=None,
                    options=None, progress=None, check_interrupt=None, file_stem: str | None = None
                    ) -> tuple[str, Lambdas]:
    """Fit λ for ``base_sampler`` on ``sigmas`` from the batch ``x`` with ``model``; save; return (path, λ).

    progress(done, total): after every model evaluation. check_interrupt(): called before it; raise from it to
    stop the job (nothing is written then). The file goes to ``folder`` under a new name (a counter is added
    instead of overwriting).
    """

    def on_call(done: int, total: int) -> None:
        if check_interrupt is not None:
            check_interrupt()
        if progress is not None:
            progress(done, total)

    lam = distill(model, x, sigmas, base_sampler, extra_args=extra_args, teacher_factor=request.teacher_factor,
                  history=request.history, callback=on_call, options=options)
    if check_interrupt is not None:
        check_interrupt()
    metadata = file_metadata(request, reserved=lam.metadata)
    stem = file_stem or build_file_stem(metadata.get("model", "model"), sampler_name(base_sampler),
                                        len(sigmas) - 1, metadata.get("scheduler", "automatic"),
                                        metadata.get("cfg"), request.history)
    path = lam.save_new(folder, stem, **metadata)
    request.done, request.saved_path = True, path
    log.info("D-ODE: distilled %s over %d steps, saved %s", sampler_name(base_sampler), len(sigmas) - 1, path)
    return path, lam
