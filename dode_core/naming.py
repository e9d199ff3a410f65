"""λ file names: the convention of lambdas/README.md, one function for every host,

    <model>_<sampler>_<steps>steps_<scheduler or "fitted">[_cfg<cfg>]_h<history>

so that files for different checkpoints, schedules and guidance never collide into ``_2``, ``_3`` (the file itself
records all of this in its metadata; the name is for people choosing from a dropdown), and the bare stem a save
reduces any user text to, so that a name cannot leave its folder.
"""

from __future__ import annotations

import math
import os
import re

from .file_format import EXTENSION

FITTED = "fitted"


def slug(text, fallback: str, limit: int = 60) -> str:
    """A file-name-safe piece of ``text``: letters, digits, '.', '-' and '_' only (other runs become '-')."""
    piece = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text or "")).strip("-._")
    return piece[:limit] or fallback


def cfg_tag(cfg) -> str | None:
    """``cfg7``, ``cfg4p5`` (a '.' would read as an extension); None when there is no finite cfg."""
    try:
        value = float(cfg)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return "cfg" + f"{value:g}".replace(".", "p").replace("-", "m")


def lambda_file_stem(model, sampler: str, steps: int, scheduler, cfg=None, history=1, *,
                     schedule_fitted: bool = False) -> str:
    """The stem (no extension) of a λ file.

    model:     checkpoint name where the host knows it (extension dropped), else a model fingerprint
    scheduler: the scheduler's name; replaced by "fitted" when the fit chose the schedule
    cfg:       the guidance scale, left out when None (e.g. a guider without one)
    """
    model_text = str(model or "")
    if model_text.lower().endswith((".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".sft", ".bin")):
        model_text = model_text.rsplit(".", 1)[0]
    parts = [slug(model_text, "model"), slug(sampler, "sampler"), f"{int(steps)}steps",
             FITTED if schedule_fitted else slug(scheduler, "automatic").lower()]
    tag = cfg_tag(cfg)
    if tag:
        parts.append(tag)
    parts.append(f"h{slug(history, '1')}")
    return "_".join(parts)


def file_stem(text, fallback: str = "lambdas") -> str:
    """A bare, portable file stem from user text: no folder part, no extension, no leading dots, only
    ``[A-Za-z0-9._-]`` (other runs become ``_``), at most 120 characters; ``fallback`` when nothing is left."""
    stem = os.path.basename(str(text or "").strip().replace("\\", "/"))
    if stem.lower().endswith(EXTENSION):
        stem = stem[: -len(EXTENSION)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:120]
    if stem:
        return stem
    return file_stem(fallback, fallback="") if fallback else "lambdas"
