"""λ files in ``models/dode_lambdas/``: listing, choosing the one for a run, hashing for the infotext.

The files are dode_core's safetensors format, the same as in ComfyUI, so they move between the hosts; which file a
run uses is dode_core's rule for both hosts (dode_core.file_rules: a named file, or "auto", and when a file's own
schedule stands in for this host's).
"""

from __future__ import annotations

import os

from dode_core import (
    FileChoice,
    LambdaFileError,
    Lambdas,
    ScheduleMismatchError,
    choose_file,
    load_lambdas,
    same_sampler,
    use_file,
)
from dode_core.file_format import EXTENSION
from dode_core.file_rules import SHORT_HASH_DIGITS, file_sha256
from dode_core.rules import AUTO
from dode_core.text import format_sigmas

from .messages import user_message

LAMBDAS_FOLDER_NAME = "dode_lambdas"
INFOTEXT_NAME = "D-ODE lambdas"
INFOTEXT_HASH = "D-ODE lambdas hash"

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


def load_cached(path: str) -> Lambdas:
    """``load_lambdas`` with a cache keyed by path, modification time and size (files are replaced, not edited)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _load_cache:
        _load_cache[key] = load_lambdas(path)
    return _load_cache[key]


def file_hash(path: str) -> str:
    """The first 10 hex digits of the file's sha256 (as WebUI's short model hashes), computed once per version."""
    return file_sha256(path)[:SHORT_HASH_DIGITS]


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


def resolve_lambdas(folder: str, choice: str | None, base_sampler: str, call_sigmas, sigmas=None,
                    latent_shape=None) -> FileChoice:
    """The λ file for a run of ``base_sampler`` on ``sigmas`` (latents of ``latent_shape``), whose model calls are
    at ``call_sigmas``: the file named by ``choice`` (dode_core.use_file), or for None / "" / "auto" the one
    dode_core.choose_file picks in ``folder``. Raises LambdaResolutionError (or ScheduleMismatchError for a named
    file) with a message for the UI.
    """
    if choice and choice.strip() and choice.strip().lower() != AUTO:
        return _named(folder, choice, base_sampler, call_sigmas, sigmas, latent_shape)
    paths = [os.path.join(folder, name) for name in list_lambda_files(folder)]
    try:
        return choose_file(paths, same_sampler(base_sampler, call_sigmas), sigmas, latent_shape=latent_shape,
                           load=load_cached, run=f"{base_sampler}, {len(call_sigmas)} calls at "
                                                 f"{format_sigmas(call_sigmas)}")
    except ScheduleMismatchError as error:
        steps = f"{len(sigmas) - 1} steps, " if sigmas is not None else ""
        raise LambdaResolutionError(user_message(
            f"no λ file fits this run ({base_sampler}, {steps}{len(call_sigmas)} model calls). Distill λ for it "
            "(txt2img: the 'Distill λ (D-ODE)' accordion), or use the scheduler and steps of one of the files below.",
            f"{error}\n(folder: {folder})")) from None


def _named(folder: str, choice: str, base_sampler: str, call_sigmas, sigmas, latent_shape) -> FileChoice:
    path = chosen_path(folder, choice)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        available = ", ".join(list_lambda_files(folder)) or "none"
        raise LambdaResolutionError(f"λ file {name} is not in {folder} (files there: {available}). Choose one of "
                                    "them, or 'auto'.")
    try:
        lam = load_cached(path)
    except (LambdaFileError, OSError) as error:
        raise LambdaResolutionError(f"λ file {name}: {error}") from None
    if lam.base_sampler != base_sampler:
        raise LambdaResolutionError(
            f"λ file {name} was fitted for sampler {lam.base_sampler!r}, not {base_sampler!r} (this run: "
            f"{base_sampler}, {len(call_sigmas)} calls at {format_sigmas(call_sigmas)}). Pick the D-ODE sampler it "
            "was made for, or another file.")
    try:
        return use_file(path, lam, sigmas, call_sigmas, latent_shape)
    except ScheduleMismatchError as error:
        raise ScheduleMismatchError(user_message(
            f"λ file {name}: fitted for another schedule. Use the scheduler and steps it was made with, or distill λ "
            "for this run.", str(error))) from None
