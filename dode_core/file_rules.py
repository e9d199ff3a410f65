"""Rules about λ files both hosts follow: which file a run uses, when a file's own schedule stands in for the host's,
and which model a file was fitted for.

**Which file.** A file the user names is used on the run's sigmas where its model calls match them (rules.SIGMA_RTOL),
else on its own schedule where that may stand in (own_schedule_note), else refused with both schedules (use_file).
"auto" takes the newest file (modification time, then name) whose model calls match the run, else the newest whose
own schedule may stand in (choose_file). A file fitted for latents with another channel count than the run's belongs
to another model (the embedded demo's files, for a Stable Diffusion run): "auto" passes it over, a named one is
refused (check_latent).

**Which model.** A file records the model it was fitted for under three keys, each written by the host that knows it:

    checkpoint_sha256   sha256 of the checkpoint file, in hex: whole (ComfyUI, the demo), or its first 10 digits
                        (the WebUI's short hash, where the WebUI has not computed the whole)
    weights_digest      ComfyUI's digest of the loaded weights and their patches (LoRAs): 16 hex
    checkpoint_name     the checkpoint's file name, for people (files get renamed: never compared)

Like is compared with like (model_mismatch): weights digests where both sides have one, else checkpoint hashes on
the digits both have. So a file the WebUI made for a checkpoint is never "another model" in ComfyUI with the same
checkpoint, nor the other way round. Files of plugin 0.1 carry ``model_fingerprint`` instead: 10 hex digits were the
WebUI's checkpoint short hash, 16 were ComfyUI's weights digest (model_identity reads them so).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .file_format import LambdaFileError
from .lambdas_file import Lambdas, ModelMismatchError, ScheduleMismatchError, load_lambdas
from .rules import HOST_SIGMA_RTOL, START_RTOL
from .text import format_sigmas, printable

# --- which model ---------------------------------------------------------------------------------------------------
CHECKPOINT_SHA256, WEIGHTS_DIGEST, CHECKPOINT_NAME = "checkpoint_sha256", "weights_digest", "checkpoint_name"
LEGACY_FINGERPRINT = "model_fingerprint"  # plugin 0.1
SHORT_HASH_DIGITS = 10  # A1111's short checkpoint hash: the first 10 hex digits of the file's sha256
WEIGHTS_DIGEST_DIGITS = 16
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class ModelIdentity:
    """What is known of a model: any of its checkpoint file's sha256 (hex, 10 to 64 digits), ComfyUI's digest of the
    loaded weights, the checkpoint's name."""

    checkpoint_sha256: str | None = None
    weights_digest: str | None = None
    checkpoint_name: str | None = None

    def fields(self) -> dict[str, str]:
        """The metadata a host writes into a λ file: the keys it knows, hashes only when they are hex digests."""
        fields = {CHECKPOINT_NAME: self.checkpoint_name or None, CHECKPOINT_SHA256: _hex(self.checkpoint_sha256),
                  WEIGHTS_DIGEST: _hex(self.weights_digest)}
        return {key: value for key, value in fields.items() if value}


def _hex(value, least: int = SHORT_HASH_DIGITS) -> str | None:
    text = str(value or "").strip().lower()
    return text if least <= len(text) <= 64 and _HEX.fullmatch(text) else None


def model_identity(metadata: dict[str, str]) -> ModelIdentity:
    """The model a file says it was fitted for (reading plugin 0.1's ``model_fingerprint`` too)."""
    checkpoint, weights = _hex(metadata.get(CHECKPOINT_SHA256)), _hex(metadata.get(WEIGHTS_DIGEST))
    legacy = _hex(metadata.get(LEGACY_FINGERPRINT))
    if legacy and len(legacy) == SHORT_HASH_DIGITS:
        checkpoint = checkpoint or legacy
    elif legacy and len(legacy) == WEIGHTS_DIGEST_DIGITS:
        weights = weights or legacy
    return ModelIdentity(checkpoint, weights, metadata.get(CHECKPOINT_NAME) or metadata.get("checkpoint") or None)


def model_mismatch(fitted: ModelIdentity, run: ModelIdentity) -> str | None:
    """Why a file fitted for ``fitted`` looks made for another model than the run's, or None: weights digests
    decide where both are known, else checkpoint hashes on the digits both have; nothing else is compared."""
    if fitted.weights_digest and run.weights_digest:
        if fitted.weights_digest != run.weights_digest:
            return (f"the weights differ from those the λ file was fitted with (weights digest {run.weights_digest}, "
                    f"fitted with {fitted.weights_digest}: another checkpoint, or other LoRAs or patches)")
        return None
    if fitted.checkpoint_sha256 and run.checkpoint_sha256:
        digits = min(len(fitted.checkpoint_sha256), len(run.checkpoint_sha256))
        if fitted.checkpoint_sha256[:digits] != run.checkpoint_sha256[:digits]:
            name = f" ({printable(fitted.checkpoint_name)[:80]})" if fitted.checkpoint_name else ""
            return (f"the checkpoint differs from the one the λ file was fitted for (sha256 "
                    f"{run.checkpoint_sha256[:SHORT_HASH_DIGITS]}, fitted for {fitted.checkpoint_sha256[:digits]}"
                    f"{name})")
    return None


_sha256_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """The sha256 (64 hex) of the file at ``path``, computed once per path, size and modification time (a
    multi-GB checkpoint takes seconds)."""
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_size, info.st_mtime_ns)
    if key not in _sha256_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _sha256_cache[key] = digest.hexdigest()
    return _sha256_cache[key]


# --- which file ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileChoice:
    """The λ file for a run. ``schedule``: the file's own sigmas to sample on instead of the run's (None: the run's),
    ``note`` why; ``matching``: how many files of the folder fit the run as well (for "auto")."""

    path: str
    lam: Lambdas
    schedule: torch.Tensor | None = None
    note: str = ""
    matching: int = 1


def latent_problem(lam: Lambdas, latent_shape) -> str | None:
    """Why ``lam`` cannot serve latents of ``latent_shape`` (batch, channels, ...): fitted for another channel count,
    which is another model's latent format; None when it can (or the file does not say)."""
    fitted = lam.latent_shape
    if fitted is None or len(latent_shape) < 2 or int(latent_shape[1]) == fitted[0]:
        return None
    return (f"it was fitted for latents of {fitted[0]} channel{'s' if fitted[0] != 1 else ''} {fitted} (model "
            f"{printable(lam.metadata.get('model') or lam.metadata.get(CHECKPOINT_NAME) or '?')[:60]}), and this "
            f"run's latents have {int(latent_shape[1])}: it belongs to another model")


def check_latent(lam: Lambdas, latent_shape, name: str = "") -> None:
    """ModelMismatchError when ``lam`` was fitted for another model's latents (latent_problem)."""
    problem = latent_problem(lam, latent_shape)
    if problem is not None:
        raise ModelMismatchError(f"{printable(name) + ': ' if name else ''}{problem}; use a λ file distilled "
                                 "with this model.")


def own_schedule_note(lam: Lambdas, sigmas, call_sigmas, *, allow_fitted: bool) -> str | None:
    """Why a run on ``sigmas`` (model calls at ``call_sigmas``) may sample on the file's own schedule instead, or
    None if it may not. Both start at the same sigma (rules.START_RTOL: the start latent is already at that noise
    level); a fitted schedule (only where ``allow_fitted``: a file the user named) then has any step count; any other
    has the run's step and call count, every call within rules.HOST_SIGMA_RTOL: the same schedule, computed by
    another host."""
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


def relative_gap(a, b) -> float:
    """The largest ``|a_i - b_i| / max(|a_i|, |b_i|)`` over two equally long sigma lists (0 where both are 0)."""
    gaps = [abs(x - y) / max(abs(x), abs(y)) for x, y in zip(a, b, strict=True) if max(abs(x), abs(y)) > 0]
    return max(gaps, default=0.0)


def use_file(path: str, lam: Lambdas, sigmas, call_sigmas, latent_shape=None) -> FileChoice:
    """A file the user named, for a run on ``sigmas`` whose model calls are at ``call_sigmas``: on the run's sigmas
    where they match (and the file's schedule is not a fitted one), else on its own schedule where that may stand
    in, else ScheduleMismatchError with both schedules; ModelMismatchError for another model's latents."""
    if latent_shape is not None:
        check_latent(lam, latent_shape, os.path.basename(path))
    if lam.matches(call_sigmas) and not lam.schedule_fitted:
        return FileChoice(path, lam)
    note = own_schedule_note(lam, sigmas, call_sigmas, allow_fitted=True)
    if note is not None:
        return FileChoice(path, lam, lam.schedule, note)
    lam.check_call_sigmas(call_sigmas)
    return FileChoice(path, lam)


def same_sampler(base_sampler: str, call_sigmas) -> Callable[[Lambdas], list[float] | None]:
    """``run_calls`` for choose_file when the run's base sampler is known: files for another sampler do not fit."""
    return lambda lam: call_sigmas if lam.base_sampler == base_sampler else None


def choose_file(paths: Iterable, run_calls: Callable[[Lambdas], list[float] | None], sigmas=None, *,
                latent_shape=None, load=None, run: str = "") -> FileChoice:
    """What "auto" uses: among ``paths``, the newest file (modification time, then name) whose model calls match
    the run's, else the newest whose own schedule may stand in for ``sigmas`` (a fitted schedule is used only when
    named). ``run_calls(lam)``: the run's model-call sigmas with that file's base sampler, None where the file's
    sampler is not this run's (same_sampler); ``latent_shape``: the run's, to pass over other models' files;
    ``load`` (default load_lambdas): a host's cached loader.

    Raises ScheduleMismatchError listing every file with its schedule (or why it is unusable) and ``run``. One bad
    entry (a hostile file, a dangling link, a FIFO, a folder, a None from a host's lookup, a sampler that cannot be
    probed) is listed as not usable, never raised.
    """
    load = load or load_lambdas
    exact, near, lines = [], [], []
    for path in paths:
        name = _entry_name(path)
        try:
            lam = load(path)
            mtime = os.stat(path).st_mtime_ns
            calls = run_calls(lam)
        except Exception as error:  # noqa: BLE001 - one entry must not break the choice among the others
            reason = str(error) if isinstance(error, (LambdaFileError, OSError)) else f"{type(error).__name__}: {error}"
            lines.append(f"  {name}: not usable ({printable(reason)[:500]})")
            continue
        problem = latent_problem(lam, latent_shape) if latent_shape is not None else None
        lines.append(f"  {name}: {printable(lam.describe())}" + (f" (not usable: {problem})" if problem else ""))
        if calls is None or problem:
            continue
        key = (mtime, name)
        if lam.matches(calls):
            exact.append((key, FileChoice(os.fspath(path), lam)))
        elif (note := own_schedule_note(lam, sigmas, calls, allow_fitted=False)) is not None:
            near.append((key, FileChoice(os.fspath(path), lam, lam.schedule, note)))
    for found in (exact, near):
        if found:
            _, choice = max(found, key=lambda item: item[0])
            return FileChoice(choice.path, choice.lam, choice.schedule, choice.note, matching=len(found))
    listing = "\n".join(lines) or "  (no .safetensors files)"
    what = run or (f"{len(sigmas) - 1} steps, sigmas {format_sigmas(sigmas)}" if sigmas is not None else "")
    raise ScheduleMismatchError(f"no D-ODE λ file fits this run{f' ({what})' if what else ''}.\nFiles there:\n"
                                f"{listing}")


def _entry_name(path) -> str:
    try:
        return printable(os.path.basename(os.fsdecode(path)))
    except (TypeError, ValueError):
        return printable(repr(path))
