"""λ files in ``models/dode_lambdas/``: listing, choosing the one for a run, hashing for the infotext.

The files are dode_core's safetensors format, the same as in ComfyUI, so they move between the hosts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from dode_core import LambdaFileError, Lambdas, ScheduleMismatchError, load_lambdas, newest_matching
from dode_core.lambdas_file import format_sigmas

from .messages import user_message

LAMBDAS_FOLDER_NAME = "dode_lambdas"
EXTENSION = ".safetensors"
AUTO = "auto"
INFOTEXT_NAME = "D-ODE lambdas"
INFOTEXT_HASH = "D-ODE lambdas hash"

_hash_cache: dict[tuple[str, int, int], str] = {}
_load_cache: dict[tuple[str, int, int], Lambdas] = {}


class LambdaResolutionError(ValueError):
    """No λ file fits the run (or the chosen one does not); the message lists what there is and why not."""


def list_lambda_files(folder: str) -> list[str]:
    """Names of the ``*.safetensors`` files directly in ``folder``, sorted; [] if it does not exist."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(name for name in names if name.endswith(EXTENSION) and not name.startswith(".")
                  and os.path.isfile(os.path.join(folder, name)))


def _stat_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_mtime_ns, stat.st_size


def load_cached(path: str) -> Lambdas:
    """``load_lambdas`` with a cache keyed by path, modification time and size (files are replaced, not edited)."""
    key = _stat_key(path)
    if key not in _load_cache:
        _load_cache[key] = load_lambdas(path)
    return _load_cache[key]


def file_hash(path: str) -> str:
    """The first 10 hex digits of the file's sha256 (as WebUI's short model hashes), cached like the loads."""
    key = _stat_key(path)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()[:10]
    return _hash_cache[key]


def infotext_fields(path: str) -> dict[str, str]:
    """The infotext (PNG parameters) keys that name the λ file of a run: its file name and its hash."""
    return {INFOTEXT_NAME: os.path.basename(path), INFOTEXT_HASH: file_hash(path)}


def chosen_path(folder: str, choice: str) -> str:
    """The path of the file the user named; a plain file name in ``folder`` (``.safetensors`` optional)."""
    name = choice.strip()
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise LambdaResolutionError(f"λ file {choice!r}: give a file name inside {folder}, not a path.")
    if not name.endswith(EXTENSION):
        name += EXTENSION
    return os.path.join(folder, name)


# A file's schedule may stand in for the host's when the run starts at the same sigma (the start latent is
# already at that noise level) and, for a file not fitted with its own schedule, has the same steps and every
# model call within HOST_SIGMA_RTOL of the host's. A1111 takes an SD checkpoint's noise table from its fp16
# alphas_cumprod and Forge/reForge recompute it, which moves the smallest sigma of SD1.5 from 0.0292 to 0.0313
# (7%) and every Karras/exponential sigma by less (tests/test_webui.py measures it); schedulers differ by far more.
START_RTOL = 1e-3
HOST_SIGMA_RTOL = 0.10


@dataclass
class Resolution:
    """The λ file for a run: ``schedule`` is the file's own schedule when the run samples on it instead of the
    host's sigmas (None: the host's), ``note`` says why (for the infotext and the log)."""

    path: str
    lam: Lambdas
    schedule: torch.Tensor | None = None
    note: str = ""


def relative_gap(a, b) -> float:
    """The largest ``|a_i - b_i| / max(|a_i|, |b_i|)`` over two equally long sigma lists (0 where both are 0)."""
    gaps = [abs(x - y) / max(abs(x), abs(y)) for x, y in zip(a, b, strict=True) if max(abs(x), abs(y)) > 0]
    return max(gaps, default=0.0)


def own_schedule_note(lam: Lambdas, sigmas, call_sigmas, *, allow_fitted: bool) -> str | None:
    """Why the run may sample on the file's own schedule instead of ``sigmas``, or None if it may not.

    Fitted schedules (``allow_fitted``): any step count, same start sigma. Other files: same start sigma, same
    step and call count, every call sigma within HOST_SIGMA_RTOL (the same schedule computed by another host).
    """
    schedule = lam.schedule
    if schedule is None or sigmas is None or len(sigmas) < 2 or len(schedule) < 2:
        return None
    first, own_first = float(sigmas[0]), float(schedule[0])
    if abs(first - own_first) > START_RTOL * max(abs(first), abs(own_first)):
        return None
    if lam.schedule_fitted:
        return f"fitted schedule of the λ file ({len(schedule) - 1} steps)" if allow_fitted else None
    if len(schedule) != len(sigmas) or len(call_sigmas) != lam.calls:
        return None
    gap = relative_gap(call_sigmas, lam.call_sigmas)
    if gap > HOST_SIGMA_RTOL:
        return None
    return f"schedule of the λ file (this host's sigmas differ by up to {100 * gap:.1f}%)"


def resolve_lambdas(folder: str, choice: str | None, base_sampler: str, call_sigmas, sigmas=None) -> Resolution:
    """The λ file for a run of ``base_sampler`` on ``sigmas``, whose model calls are at ``call_sigmas``.

    choice: a file name in ``folder`` (used as is; refused with both schedules if neither the run's nor its
    own schedule can be used), or None / "" / "auto": the newest file in ``folder`` whose base sampler and
    call sigmas match the run, else the newest whose own schedule may stand in (own_schedule_note).
    Raises LambdaResolutionError (or ScheduleMismatchError for a named file) with a message for the UI.
    """
    run = f"{base_sampler}, {len(call_sigmas)} calls at {format_sigmas(call_sigmas)}"
    if choice and choice.strip() and choice.strip().lower() != AUTO:
        path = chosen_path(folder, choice)
        if not os.path.isfile(path):
            available = ", ".join(list_lambda_files(folder)) or "none"
            raise LambdaResolutionError(f"λ file {os.path.basename(path)} is not in {folder} (files there: "
                                        f"{available}). Choose one of them, or 'auto'.")
        try:
            lam = load_cached(path)
        except (LambdaFileError, OSError) as error:
            raise LambdaResolutionError(f"λ file {os.path.basename(path)}: {error}") from None
        if lam.base_sampler != base_sampler:
            raise LambdaResolutionError(
                f"λ file {os.path.basename(path)} was fitted for sampler {lam.base_sampler!r}, not {base_sampler!r} "
                f"(this run: {run}). Pick the D-ODE sampler it was made for, or another file."
            )
        if lam.matches(call_sigmas) and not lam.schedule_fitted:
            return Resolution(path, lam)
        note = own_schedule_note(lam, sigmas, call_sigmas, allow_fitted=True)
        if note is not None:
            return Resolution(path, lam, lam.schedule, note)
        if lam.matches(call_sigmas):
            return Resolution(path, lam)
        try:
            lam.check_call_sigmas(call_sigmas)
        except ScheduleMismatchError as error:
            raise ScheduleMismatchError(user_message(
                f"λ file {os.path.basename(path)}: fitted for another schedule. Use the scheduler and steps it was "
                "made with, or distill λ for this run.", str(error))) from None

    paths = [os.path.join(folder, name) for name in list_lambda_files(folder)]
    try:
        path, lam = newest_matching(paths, base_sampler, call_sigmas, load=load_cached)
    except ScheduleMismatchError as error:
        near = newest_near_match(paths, base_sampler, sigmas, call_sigmas)
        if near is not None:
            return near
        steps = f"{len(sigmas) - 1} steps, " if sigmas is not None else ""
        raise LambdaResolutionError(user_message(
            f"no λ file fits this run ({base_sampler}, {steps}{len(call_sigmas)} model calls). Distill λ for it "
            "(txt2img: the 'Distill λ (D-ODE)' accordion), or use the scheduler and steps of one of the files below.",
            f"{error}\n(folder: {folder})")) from None
    return Resolution(path, lam)


def newest_near_match(paths, base_sampler: str, sigmas, call_sigmas) -> Resolution | None:
    """The newest file for ``base_sampler`` whose own schedule may stand in for the run's (not a fitted
    schedule: those are used only when named), or None."""
    found = []
    for path in paths:
        try:
            lam = load_cached(path)
        except (LambdaFileError, OSError):
            continue
        if lam.base_sampler != base_sampler:
            continue
        note = own_schedule_note(lam, sigmas, call_sigmas, allow_fitted=False)
        if note is not None:
            found.append((os.stat(path).st_mtime_ns, os.path.basename(path), Resolution(path, lam, lam.schedule, note)))
    if not found:
        return None
    return max(found, key=lambda item: item[:2])[2]
