"""The λ file: fitted D-ODE coefficients plus the schedule they belong to, in safetensors.

One tensor, ``lambdas``, of shape ``(calls, history)`` or ``(calls, history, channels)``, float32:
``lambdas[k, j-1]`` multiplies ``D_{k-j+1} - D_{k-j}`` at model call ``k``. Every metadata value is a
string (safetensors requires it); lists are JSON. See ``lambdas/README.md`` for the field list.

Nothing here unpickles anything, and every file is validated, field by field, before it is used.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .version import __version__

FORMAT = "dode-lambdas"
EXTENSION = ".safetensors"
FORMAT_VERSION = "1"
TENSOR_NAME = "lambdas"

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_CALLS = 1000
MAX_HISTORY = 8
MAX_CHANNELS = 64
MAX_METADATA_VALUE_CHARS = 64 * 1024
SIGMA_RTOL = 1e-3

# field name -> what a valid value looks like (for the error message); all other fields are free text.
REQUIRED_FIELDS = ("format", "format_version", "base_sampler", "steps", "calls", "history", "call_sigmas")
LIST_FIELDS = ("call_sigmas", "schedule", "fit_rmse_before", "fit_rmse_after", "history_per_call")
INT_FIELDS = ("steps", "calls", "history", "teacher_factor", "batch_size", "seed")


class LambdaFileError(ValueError):
    """A λ file (or a Lambdas object about to be saved) is malformed; the message names the field."""


class ScheduleMismatchError(ValueError):
    """λ were fitted for other model-call sigmas than the run that wants to use them."""


@dataclass(frozen=True)
class Lambdas:
    """Fitted D-ODE coefficients for one sampler and one schedule.

    lambdas:     float32 tensor (calls, history) or (calls, history, channels).
    call_sigmas: the sigma of every model call of the student run, in call order.
    metadata:    string -> string; the fields the fit and the hosts record (see lambdas/README.md).
    """

    lambdas: torch.Tensor
    call_sigmas: tuple[float, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return self.lambdas.shape[0]

    @property
    def history(self) -> int:
        return self.lambdas.shape[1]

    @property
    def base_sampler(self) -> str:
        return self.metadata.get("base_sampler", "")

    @property
    def schedule(self) -> torch.Tensor | None:
        """The schedule (``steps + 1`` sigmas, float64, ending in 0) the λ were fitted on, if the file records it."""
        if not self.metadata.get("schedule"):
            return None
        return torch.tensor(json.loads(self.metadata["schedule"]), dtype=torch.float64)

    @property
    def schedule_fitted(self) -> bool:
        """Whether the schedule was chosen by the fit (``distill(..., fit_schedule=True)``), not given by the user:
        such a file is self-contained, and hosts sample on ``schedule`` instead of their scheduler's."""
        return self.metadata.get("schedule_source") == "fitted"

    def to_file_dict(self, **extra_metadata) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The (tensors, metadata) pair written to disk, with ``extra_metadata`` merged in as strings."""
        fitted = [key for key in extra_metadata if key in REQUIRED_FIELDS or key in LIST_FIELDS]
        if fitted:
            raise LambdaFileError(f"fields {fitted} are written by the fit and cannot be set when saving; "
                                  "put host information under other names (model, cfg, seed, prompt, ...).")
        metadata = dict(self.metadata)
        metadata.update({key: _as_string(value) for key, value in extra_metadata.items()})
        metadata["format"] = FORMAT
        metadata["format_version"] = FORMAT_VERSION
        metadata["calls"] = str(self.calls)
        metadata["history"] = str(self.history)
        metadata["call_sigmas"] = json.dumps([float(s) for s in self.call_sigmas])
        metadata.setdefault("plugin_version", __version__)
        tensors = {TENSOR_NAME: self.lambdas.detach().to("cpu", torch.float32).contiguous()}
        return tensors, metadata

    def save(self, path: str | os.PathLike, **metadata) -> str:
        """Validate, then write atomically (temp file in the same folder + rename). Returns the path."""
        tensors, meta = self.to_file_dict(**metadata)
        validate(tensors, meta, source="lambdas to save")
        data = st_save(tensors, metadata=meta)
        _write_atomically(os.fspath(path), data)
        return os.fspath(path)

    def fit_rmse(self) -> tuple[list[float], list[float]]:
        """The fit error per call, with this call's λ = 0 and with the fitted λ; empty lists if not recorded."""
        return tuple([float(v) for v in json.loads(self.metadata.get(key) or "[]")]
                     for key in ("fit_rmse_before", "fit_rmse_after"))

    def heldout(self) -> tuple[float, float, int] | None:
        """``(rmse_base, rmse_dode, count)``: the final-state RMSE to the teacher of the base sampler and of D-ODE
        on ``count`` latents the fit did not see; None for files written before fits proved themselves."""
        try:
            return (float(self.metadata["heldout_rmse_base"]), float(self.metadata["heldout_rmse_dode"]),
                    int(self.metadata["heldout_count"]))
        except (KeyError, ValueError):
            return None

    def save_new(self, folder: str | os.PathLike, stem: str, **metadata) -> str:
        """Save as ``folder/<stem>.safetensors``, or ``<stem>_2``, ``<stem>_3``, ... if taken: never overwrites.

        ``stem`` is reduced to a bare file stem (see file_stem), so a name cannot leave ``folder``. The name is
        claimed with an exclusive create, so two saves cannot pick the same one; on any failure (including an
        interrupt) the placeholder is removed and nothing is left behind. Returns the path.
        """
        path = _reserve_new_path(os.fspath(folder), file_stem(stem))
        try:
            return self.save(path, **metadata)
        except BaseException:
            os.remove(path)
            raise

    def matches(self, call_sigmas, rtol: float = SIGMA_RTOL) -> bool:
        """Whether a run whose model calls are at ``call_sigmas`` is the one these λ were fitted for."""
        call_sigmas = [float(s) for s in call_sigmas]
        return len(call_sigmas) == len(self.call_sigmas) and all(
            math.isclose(a, b, rel_tol=rtol, abs_tol=1e-8) for a, b in zip(call_sigmas, self.call_sigmas, strict=True)
        )

    def describe(self) -> str:
        """One line for messages: base sampler, steps, calls and the sigma of every call."""
        return (f"{self.base_sampler or '?'}, {self.metadata.get('steps', '?')} steps, {self.calls} calls at "
                f"{format_sigmas(self.call_sigmas)}")

    def check_call_sigmas(self, call_sigmas, rtol: float = SIGMA_RTOL) -> None:
        """Raise ScheduleMismatchError unless ``call_sigmas`` match the fitted ones within ``rtol``."""
        if self.matches(call_sigmas, rtol):
            return
        call_sigmas = [float(s) for s in call_sigmas]
        steps = self.metadata.get("steps", "?")
        raise ScheduleMismatchError(
            "these λ were fitted for another schedule.\n"
            f"  λ file ({self.base_sampler or 'unknown sampler'}, {steps} steps, {self.calls} model calls): "
            f"{format_sigmas(self.call_sigmas)}\n"
            f"  this run ({len(call_sigmas)} model calls): {format_sigmas(call_sigmas)}\n"
            "Use the scheduler, step count and denoise the λ file was made with, "
            "or distill λ for this schedule."
        )


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


def _reserve_new_path(folder: str, stem: str) -> str:
    """Create an empty ``folder/stem.safetensors`` (or ``stem_2``, ...) with O_EXCL and return its path."""
    os.makedirs(folder, exist_ok=True)
    for counter in range(1, 100_000):
        path = os.path.join(folder, stem + (f"_{counter}" if counter > 1 else "") + EXTENSION)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return path
    raise LambdaFileError(f"{folder}: no free file name for {stem!r}.")


def format_sigmas(sigmas) -> str:
    return "[" + ", ".join(f"{float(s):.4g}" for s in sigmas) + "]"


def newest_matching(paths, base_sampler: str, call_sigmas, *, load=None) -> tuple[str, Lambdas]:
    """The newest λ file (modification time, then name) among ``paths`` fitted for ``base_sampler`` at
    ``call_sigmas``, as ``(path, Lambdas)``. What hosts use when the user picks no file.

    Raises ScheduleMismatchError listing every file with its schedule (or why it is unusable) and the run.
    ``load`` defaults to load_lambdas (a host may pass a cached loader).
    """
    load = load or load_lambdas
    fitting, lines = [], []
    for path in paths:
        name = os.path.basename(path)
        try:
            lam = load(path)
        except (LambdaFileError, OSError) as error:
            lines.append(f"  {name}: not usable ({error})")
            continue
        lines.append(f"  {name}: {lam.describe()}")
        if lam.base_sampler == base_sampler and lam.matches(call_sigmas):
            fitting.append((os.stat(path).st_mtime_ns, name, path, lam))
    if not fitting:
        run = f"{base_sampler}, {len(call_sigmas)} calls at {format_sigmas(call_sigmas)}"
        listing = "\n".join(lines) or "  (no .safetensors files)"
        raise ScheduleMismatchError(f"no D-ODE λ file fits this run ({run}).\nFiles there:\n{listing}")
    _, _, path, lam = max(fitting, key=lambda item: item[:2])
    return path, lam


def load_lambdas(path: str | os.PathLike) -> Lambdas:
    """Read and validate a λ file; raise LambdaFileError naming what is wrong and what was expected."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise LambdaFileError(f"{path}: cannot read the λ file ({error.strerror or error}).") from None
    if size > MAX_FILE_BYTES:
        raise LambdaFileError(
            f"{path}: file is {size} bytes; a λ file is at most {MAX_FILE_BYTES} bytes. Is this a λ file?"
        )
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        tensors = st_load(data)
        metadata = _read_metadata(data)
    except (SafetensorError, ValueError, OSError) as error:
        raise LambdaFileError(f"{path}: not a readable safetensors file ({error}).") from None
    validate(tensors, metadata, source=path)
    return Lambdas(
        lambdas=tensors[TENSOR_NAME],
        call_sigmas=tuple(json.loads(metadata["call_sigmas"])),
        metadata=metadata,
    )


def validate(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str) -> None:
    """Check every field of a λ file; raise LambdaFileError("<source>: field 'x' ...; expected ...")."""

    def fail(what: str) -> None:
        raise LambdaFileError(f"{source}: {what}")

    if not metadata:
        fail("no metadata; expected the D-ODE fields (format, format_version, call_sigmas, ...).")
    for key, value in metadata.items():
        if not isinstance(value, str):
            fail(f"field '{key}' is {type(value).__name__}; expected a string.")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            fail(f"field '{key}' has {len(value)} characters; expected at most {MAX_METADATA_VALUE_CHARS}.")
    for key in REQUIRED_FIELDS:
        if key not in metadata:
            fail(f"field '{key}' is missing; expected it in every λ file.")
    if metadata["format"] != FORMAT:
        fail(f"field 'format' is {metadata['format']!r}; expected {FORMAT!r}. This is not a D-ODE λ file.")
    if metadata["format_version"] != FORMAT_VERSION:
        fail(
            f"field 'format_version' is {metadata['format_version']!r}; expected {FORMAT_VERSION!r}. "
            "The file comes from another version of the plugin: update the plugin or re-distill."
        )
    ints = {key: _parse_int(metadata, key, fail) for key in INT_FIELDS if key in metadata}
    lists = {key: _parse_float_list(metadata, key, fail) for key in LIST_FIELDS if key in metadata}

    if set(tensors) != {TENSOR_NAME}:
        fail(f"tensors are {sorted(tensors)}; expected exactly [{TENSOR_NAME!r}].")
    lambdas = tensors[TENSOR_NAME]
    if lambdas.dtype != torch.float32:
        fail(f"tensor '{TENSOR_NAME}' has dtype {lambdas.dtype}; expected torch.float32.")
    if lambdas.dim() not in (2, 3):
        fail(f"tensor '{TENSOR_NAME}' has shape {tuple(lambdas.shape)}; expected (calls, history[, channels]).")
    calls, history = lambdas.shape[:2]
    if not 2 <= calls <= MAX_CALLS:
        fail(f"tensor '{TENSOR_NAME}' has {calls} calls; expected 2 to {MAX_CALLS}.")
    if not 1 <= history <= MAX_HISTORY:
        fail(f"tensor '{TENSOR_NAME}' has history {history}; expected 1 to {MAX_HISTORY}.")
    if lambdas.dim() == 3 and not 1 <= lambdas.shape[2] <= MAX_CHANNELS:
        fail(f"tensor '{TENSOR_NAME}' has {lambdas.shape[2]} channels; expected 1 to {MAX_CHANNELS}.")
    if not torch.isfinite(lambdas).all():
        fail(f"tensor '{TENSOR_NAME}' holds non-finite values; expected finite λ.")
    for k in range(min(calls, history)):
        # call k has only k earlier outputs, so terms j > k do not exist and must be 0
        if lambdas[k, k:].abs().max() > 0:
            fail(f"tensor '{TENSOR_NAME}' has λ for call {k} term > {k}, which has no earlier output; expected 0.")
    if ints["calls"] != calls:
        fail(f"field 'calls' is {ints['calls']}; expected {calls}, the first dimension of '{TENSOR_NAME}'.")
    if ints["history"] != history:
        fail(f"field 'history' is {ints['history']}; expected {history}, the second dimension of '{TENSOR_NAME}'.")
    if ints["steps"] < 1:
        fail(f"field 'steps' is {ints['steps']}; expected at least 1.")
    for key in ("call_sigmas", "fit_rmse_before", "fit_rmse_after", "history_per_call"):
        if key in lists and len(lists[key]) != calls:
            fail(f"field '{key}' has {len(lists[key])} entries; expected one per model call ({calls}).")
    if any(s < 0 for s in lists["call_sigmas"]):
        fail("field 'call_sigmas' holds a negative sigma; expected sigmas >= 0.")
    if "schedule" in lists and len(lists["schedule"]) != ints["steps"] + 1:
        fail(f"field 'schedule' has {len(lists['schedule'])} sigmas; expected steps + 1 = {ints['steps'] + 1}.")


def _parse_int(metadata: dict[str, str], key: str, fail) -> int:
    try:
        return int(metadata[key])
    except ValueError:
        fail(f"field '{key}' is {metadata[key][:40]!r}; expected an integer.")


def _parse_float_list(metadata: dict[str, str], key: str, fail) -> list[float]:
    try:
        values = json.loads(metadata[key])
    except ValueError:
        values = None
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        fail(f"field '{key}' is {metadata[key][:60]!r}; expected a JSON list of finite numbers.")
    return [float(v) for v in values]


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` table of a safetensors blob (the header is JSON after an 8-byte length)."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ValueError("header length points past the end of the file")
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


def _as_string(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps([v if isinstance(v, (int, float, str)) else float(v) for v in value])
    return str(value)


def _write_atomically(path: str, data: bytes) -> None:
    """Write to a temp file beside ``path``, fsync, then rename: readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=".dode-", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
        raise
