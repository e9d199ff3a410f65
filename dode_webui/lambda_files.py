"""λ files in ``models/dode_lambdas/``: listing, choosing the one for a run, hashing for the infotext.

The files are dode_core's safetensors format, the same as in ComfyUI, so they move between the hosts.
"""

from __future__ import annotations

import hashlib
import logging
import os

from dode_core import LambdaFileError, Lambdas, ScheduleMismatchError, load_lambdas, newest_matching
from dode_core.lambdas_file import format_sigmas

log = logging.getLogger(__name__)

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


def resolve_lambdas(folder: str, choice: str | None, base_sampler: str, call_sigmas) -> tuple[str, Lambdas]:
    """The λ file for a run of ``base_sampler`` whose model calls are at ``call_sigmas``: ``(path, Lambdas)``.

    choice: a file name in ``folder`` (used as is, and refused with both schedules if it does not fit), or
    None / "" / "auto": the newest file in ``folder`` whose base sampler and call sigmas match the run.
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
        try:
            lam.check_call_sigmas(call_sigmas)
        except ScheduleMismatchError as error:
            raise ScheduleMismatchError(f"λ file {os.path.basename(path)}: {error}") from None
        return path, lam

    paths = [os.path.join(folder, name) for name in list_lambda_files(folder)]
    try:
        path, lam = newest_matching(paths, base_sampler, call_sigmas, load=load_cached)
    except ScheduleMismatchError as error:
        raise LambdaResolutionError(
            f"{error}\n(folder: {folder})\nDistill λ for this checkpoint, scheduler and step count (the 'Distill λ "
            "(D-ODE)' accordion in txt2img), or use the scheduler and steps of one of the files."
        ) from None
    log.info("D-ODE: using λ file %s", os.path.basename(path))
    return path, lam
