"""The λ file: fitted D-ODE coefficients plus the schedule they belong to, in safetensors.

One tensor, ``lambdas``, of shape ``(calls, history)`` or ``(calls, history, channels)``, float32:
``lambdas[k, j-1]`` multiplies ``D_{k-j+1} - D_{k-j}`` at model call ``k``. Every metadata value is a
string (safetensors requires it); lists are JSON. See ``lambdas/README.md`` for the field list and the trust model.

λ files come from strangers, so the loader assumes nothing: it reads only regular files, at most MAX_FILE_BYTES,
through one descriptor opened non-blocking; it parses the safetensors header itself, with bounds, before safetensors
sees the bytes; it never unpickles; and every way a file can be wrong ends in a LambdaFileError naming the field.
Saves are atomic even under SIGKILL: a final name only ever holds a complete file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import stat
import time
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .version import __version__

log = logging.getLogger(__name__)

FORMAT = "dode-lambdas"
EXTENSION = ".safetensors"
FORMAT_VERSION = "1"
TENSOR_NAME = "lambdas"

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_CALLS = 1000
MAX_HISTORY = 8
MAX_CHANNELS = 64
MAX_STEPS = 100_000
# The fit gives no λ to directions with less than (1e-6 |x|)^2 energy, so a λ is at most ~1e6 times the residual's
# share of the state. Big λ are real: where consecutive outputs barely differ (Heun's two calls at one sigma) the
# difference they scale is tiny; measured over 120 fits (Gaussian and digits denoisers; euler, heun, dpmpp_2m, lms,
# dpm_2; 3-12 steps; history 1, 3, auto) the largest |λ| was 1.3e4. 1e6 keeps that margin and refuses λ that only
# overflow a latent (λ = 1e30).
MAX_ABS_LAMBDA = 1e6
MAX_METADATA_FIELDS = 256
MAX_METADATA_KEY_BYTES = 256
MAX_METADATA_VALUE_BYTES = 64 * 1024
MAX_METADATA_VALUE_CHARS = MAX_METADATA_VALUE_BYTES  # the old name, kept for importers
SIGMA_RTOL = 1e-3

# field name -> what a valid value looks like (for the error message); all other fields are free text.
REQUIRED_FIELDS = ("format", "format_version", "base_sampler", "steps", "calls", "history", "call_sigmas")
LIST_FIELDS = ("call_sigmas", "schedule", "fit_rmse_before", "fit_rmse_after", "history_per_call")
# field -> (least, most) value; None: unbounded on that side
INT_FIELDS = {"steps": (1, MAX_STEPS), "calls": (2, MAX_CALLS), "history": (1, MAX_HISTORY),
              "teacher_factor": (1, None), "teacher_calls": (1, None), "batch_size": (1, None), "seed": (None, None),
              "heldout_count": (1, None), "proof_calls": (1, None), "model_calls": (1, None)}
NON_NEGATIVE_FLOAT_FIELDS = ("heldout_rmse_base", "heldout_rmse_dode", "lambda_scale", "heldout_ratio_se",
                             "heldout_typical_ratio",
                             "heldout_rmse_dode_user", "heldout_rmse_base_fitted", "heldout_rmse_dode_fitted",
                             "teacher_error", "sigma_min")
SCHEDULE_SOURCES = ("user", "fitted")

# what a host's sampler function name reduces to (sample_dpmpp_2m -> dpmpp_2m); which ones exist is the host's call
SAMPLER_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
INT_TEXT = re.compile(r"-?[0-9]{1,20}")  # ASCII digits only: int() would also take '٤', ' 4', '+4' and '4_0'
FLOAT_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
FLAT_NUMBER_LIST = re.compile(r"\[[-+0-9.eE,\s]*\]", re.ASCII)  # no nesting, no NaN/Infinity, no strings

# Temp files of a save: .dode-<host tag>-<pid>-<random>.tmp. One left by a killed save is removed by a later save in
# the same folder once its process is gone (same host) or it is older than STALE_TEMP_SECONDS (any host).
TEMP_PREFIX, TEMP_SUFFIX = ".dode-", ".tmp"
TEMP_NAME = re.compile(r"\.dode-([0-9a-f]{8})-([0-9]{1,10})-[0-9a-f]{8}\.tmp")
STALE_TEMP_SECONDS = 3600

_TORCH_DTYPE_NAMES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                      "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8",
                      "U8": "torch.uint8", "BOOL": "torch.bool"}


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
        """Validate, then write atomically (temp file in the same folder, fsync, rename, fsync the folder); an
        existing file at ``path`` is replaced. Returns the path."""
        data = self._file_bytes(**metadata)
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        remove_stale_temp_files(folder)
        temp = _write_temp_file(folder, data)
        try:
            os.replace(temp, path)
        except BaseException:
            _remove_quietly(temp)
            raise
        _fsync_folder(folder)
        return path

    def _file_bytes(self, **metadata) -> bytes:
        """The whole file, validated: nothing invalid is ever written."""
        tensors, meta = self.to_file_dict(**metadata)
        validate(tensors, meta, source="lambdas to save")
        return st_save(tensors, metadata=meta)

    def fit_rmse(self) -> tuple[list[float], list[float]]:
        """The fit error per call, with this call's λ = 0 and with the fitted λ; empty lists if not recorded."""
        return tuple([float(v) for v in json.loads(self.metadata.get(key) or "[]")]
                     for key in ("fit_rmse_before", "fit_rmse_after"))

    def heldout(self) -> tuple[float, float, int] | None:
        """``(rmse_base, rmse_dode, count)``: the final-state RMSE to the teacher of the base sampler on the user's
        schedule and of D-ODE as delivered, on ``count`` latents, each judged with λ fitted without it (files of
        plugin 0.1: latents held out of the fit); None for files written before fits proved themselves."""
        try:
            return (float(self.metadata["heldout_rmse_base"]), float(self.metadata["heldout_rmse_dode"]),
                    int(self.metadata["heldout_count"]))
        except (KeyError, ValueError):
            return None

    def save_new(self, folder: str | os.PathLike, stem: str, **metadata) -> str:
        """Save as ``folder/<stem>.safetensors``, or ``<stem>_2``, ``<stem>_3``, ... if taken: never overwrites.

        ``stem`` is reduced to a bare file stem (see file_stem), so a name cannot leave ``folder``. The whole file
        is written and fsynced under a temp name first; the final name is then claimed with a hard link, which
        fails if the name exists, so two saves cannot pick the same one and a final name never shows a partial
        or empty file, even when the process is killed. Without hard links (FAT, some network shares) Windows
        claims the name with a non-replacing rename; elsewhere an empty placeholder is reserved first (a kill in
        that moment can leave it). Returns the path.
        """
        data = self._file_bytes(**metadata)
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        remove_stale_temp_files(folder)
        temp = _write_temp_file(folder, data)
        try:
            path = _claim_new_name(temp, folder, file_stem(stem))
        finally:
            _remove_quietly(temp)  # after the link, the data lives on under the final name
        _fsync_folder(folder)
        return path

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


def format_sigmas(sigmas) -> str:
    return "[" + ", ".join(f"{float(s):.4g}" for s in sigmas) + "]"


def printable(text: str) -> str:
    r"""``text`` safe for a terminal or a log: every character a terminal could act on (C0 and C1 controls, ESC,
    CR, LF, DEL, bidi overrides and other format characters, line and paragraph separators, surrogates, private
    and unassigned code points) is written as a ``\xNN`` / ``\uNNNN`` / ``\UNNNNNNNN`` escape, as ``repr`` does.
    Spaces (category Zs) stay as they are. Idempotent: the escapes are printable ASCII."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or unicodedata.category(ch) == "Zs" else _escape(ch) for ch in text)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def newest_matching(paths, base_sampler: str, call_sigmas, *, load=None) -> tuple[str, Lambdas]:
    """The newest λ file (modification time, then name) among ``paths`` fitted for ``base_sampler`` at
    ``call_sigmas``, as ``(path, Lambdas)``. What hosts use when the user picks no file.

    Raises ScheduleMismatchError listing every file with its schedule (or why it is unusable) and the run.
    ``load`` defaults to load_lambdas (a host may pass a cached loader). One bad entry (a hostile file, a dangling
    link, a FIFO, a folder, a None from a host's lookup, even a loader bug) is listed as not usable, never raised.
    """
    load = load or load_lambdas
    fitting, lines = [], []
    for path in paths:
        name = _entry_name(path)
        try:
            lam = load(path)
            mtime = os.stat(path).st_mtime_ns
        except Exception as error:  # noqa: BLE001 - one entry must not break the choice among the others
            reason = str(error) if isinstance(error, (LambdaFileError, OSError)) else f"{type(error).__name__}: {error}"
            lines.append(f"  {name}: not usable ({printable(reason)[:500]})")
            continue
        lines.append(f"  {name}: {printable(lam.describe())}")
        if lam.base_sampler == base_sampler and lam.matches(call_sigmas):
            fitting.append((mtime, name, path, lam))
    if not fitting:
        run = f"{base_sampler}, {len(call_sigmas)} calls at {format_sigmas(call_sigmas)}"
        listing = "\n".join(lines) or "  (no .safetensors files)"
        raise ScheduleMismatchError(f"no D-ODE λ file fits this run ({run}).\nFiles there:\n{listing}")
    _, _, path, lam = max(fitting, key=lambda item: item[:2])
    return path, lam


def _entry_name(path) -> str:
    try:
        return printable(os.path.basename(os.fsdecode(path)))
    except (TypeError, ValueError):
        return printable(repr(path))


def load_lambdas(path: str | os.PathLike) -> Lambdas:
    """Read and validate a λ file; raise LambdaFileError naming what is wrong and what was expected.

    LambdaFileError is the only exception it raises, whatever the file holds or is (FIFO, device, folder).
    """
    path = os.fspath(path)
    shown = printable(os.fsdecode(path))
    try:
        return _load(path, shown)
    except LambdaFileError:
        raise
    except Exception as error:  # noqa: BLE001 - a loader bug must not take a host down; the fuzz test hunts these
        log.warning("unexpected error reading λ file %s", shown, exc_info=True)
        raise LambdaFileError(f"{shown}: unexpected error while reading the λ file ({type(error).__name__}: "
                              f"{printable(str(error))[:200]}); please report it.") from error


def _load(path: str, shown: str) -> Lambdas:
    def fail(what: str):
        raise LambdaFileError(f"{shown}: {what}")

    data = _read_regular_file(path, fail)
    header, data_start = _parse_header(data, fail)
    metadata = header.pop("__metadata__", None)
    fields = _check_metadata(metadata, fail)
    _check_tensor_entries(header, len(data) - data_start, fail)
    try:
        tensors = st_load(data)
    except Exception as error:  # noqa: BLE001 - the header was checked; anything left is safetensors' word
        fail(f"safetensors header: {printable(str(error))[:200]}.")
    _check_lambdas(tensors[TENSOR_NAME], fields, fail)
    return Lambdas(lambdas=tensors[TENSOR_NAME], call_sigmas=tuple(fields["call_sigmas"]), metadata=metadata)


def _read_regular_file(path: str, fail) -> bytes:
    """The bytes of ``path`` if it is a regular file (a link to one is fine) of at most MAX_FILE_BYTES.

    A FIFO, socket, device or folder is refused before a byte is read: it is opened non-blocking (a FIFO without
    a writer would otherwise block forever), checked with fstat on that very descriptor, and read with a bound.
    """
    try:
        kind = _file_kind(os.stat(path).st_mode)  # devices are refused before they are even opened
        if kind is None:
            flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
            descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        fail(f"cannot read the λ file ({printable(error.strerror or str(error))}).")
    if kind is not None:
        fail(f"is {kind}, not a regular file; a λ file is a regular .safetensors file.")
    try:
        info = os.fstat(descriptor)
        kind = _file_kind(info.st_mode)
        if kind is not None:  # swapped in since the stat above
            fail(f"is {kind}, not a regular file; a λ file is a regular .safetensors file.")
        if info.st_size > MAX_FILE_BYTES:
            fail(f"file is {info.st_size} bytes; a λ file is at most {MAX_FILE_BYTES} bytes. Is this a λ file?")
        chunks, size = [], 0
        while chunk := os.read(descriptor, min(1 << 20, MAX_FILE_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                fail(f"file grew past {MAX_FILE_BYTES} bytes while being read; a λ file is at most that.")
        return b"".join(chunks)
    except OSError as error:
        fail(f"cannot read the λ file ({printable(error.strerror or str(error))}).")
    finally:
        os.close(descriptor)


def _file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is, for the message."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "a special file")


def _foreign_format(data: bytes) -> str | None:
    """What a file that is not safetensors looks like, where its first bytes say so."""
    if data[:2] == b"PK":
        return "it is a zip archive, as a PyTorch .pt/.ckpt checkpoint"
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "it is a Python pickle"
    return None


def _parse_header(data: bytes, fail) -> tuple[dict, int]:
    """The safetensors header (8-byte little-endian length, then a JSON object) and where the tensor data starts.

    Parsed here, with bounds and without duplicate keys, so that safetensors only ever sees a header already
    known to hold one float32 tensor; a file that is no safetensors at all is called that."""
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if len(data) >= 10 and header_len <= len(data) - 8 and data[8:9] == b"{":
        pass  # the shape of a safetensors file (a header length can start with the bytes of a pickle or zip magic)
    elif foreign := _foreign_format(data):
        fail(f"not a safetensors file ({foreign}); λ files are safetensors and are never unpickled.")
    elif len(data) < 10:
        fail(f"not a safetensors file (it is {len(data)} bytes, too short for a safetensors header).")
    elif data[8:9] == b"{" and header_len <= MAX_FILE_BYTES:
        fail(f"not a readable safetensors file: it is cut short (its header alone is {header_len} bytes, the whole "
             f"file {len(data)}).")
    else:
        fail(f"not a safetensors file (its first 8 bytes give a header of {header_len} bytes, the file has "
             f"{len(data)} bytes, and a header starts with '{{').")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"), object_pairs_hook=_object_without_duplicates)
    except _DuplicateKeyError as error:
        fail(f"safetensors header: key {printable(repr(str(error))[:80])} appears twice; expected unique keys.")
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        fail(f"safetensors header: not valid JSON ({printable(str(error))[:120]}).")
    if not isinstance(header, dict):
        fail("safetensors header: expected a JSON object.")
    return header, 8 + header_len


class _DuplicateKeyError(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _check_tensor_entries(entries: dict, data_bytes: int, fail) -> None:
    """The header's tensor table holds exactly one float32 ``lambdas`` of a plausible shape whose bytes are exactly
    the file's data section."""
    _check_tensor_names(list(entries), fail)
    entry = entries[TENSOR_NAME]
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        fail(f"safetensors header: tensor '{TENSOR_NAME}' must have exactly dtype, shape and data_offsets.")
    dtype = entry["dtype"]
    if dtype != "F32":
        shown = _TORCH_DTYPE_NAMES.get(dtype) if isinstance(dtype, str) else None
        fail(f"tensor '{TENSOR_NAME}' has dtype {shown or printable(repr(dtype))[:40]}; expected torch.float32.")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**31 for d in shape):
        fail(f"tensor '{TENSOR_NAME}' has shape {printable(repr(shape))[:60]}; expected (calls, history[, channels]).")
    _check_shape(tuple(shape), fail)
    size = 4 * math.prod(shape)
    if entry["data_offsets"] == [0, size] and data_bytes < size:
        fail(f"not a readable safetensors file: it is cut short (tensor '{TENSOR_NAME}' needs {size} bytes, the file "
             f"holds {data_bytes}).")
    if entry["data_offsets"] != [0, size] or data_bytes != size:
        fail(f"safetensors header: tensor '{TENSOR_NAME}' data_offsets {printable(repr(entry['data_offsets']))[:60]} "
             f"do not match its shape ({size} bytes) and the {data_bytes} data bytes in the file (truncated?).")


def _check_tensor_names(names: list[str], fail) -> None:
    if names != [TENSOR_NAME]:
        shown = ", ".join(printable(repr(name))[:40] for name in sorted(names)[:5])
        shown += ", ..." if len(names) > 5 else ""
        fail(f"tensors are [{shown}]; expected exactly [{TENSOR_NAME!r}].")


def _check_shape(shape: tuple[int, ...], fail) -> None:
    if len(shape) not in (2, 3):
        fail(f"tensor '{TENSOR_NAME}' has shape {shape}; expected (calls, history[, channels]).")
    calls, history = shape[:2]
    if not 2 <= calls <= MAX_CALLS:
        fail(f"tensor '{TENSOR_NAME}' has {calls} calls; expected 2 to {MAX_CALLS}.")
    if not 1 <= history <= MAX_HISTORY:
        fail(f"tensor '{TENSOR_NAME}' has history {history}; expected 1 to {MAX_HISTORY}.")
    if len(shape) == 3 and not 1 <= shape[2] <= MAX_CHANNELS:
        fail(f"tensor '{TENSOR_NAME}' has {shape[2]} channels; expected 1 to {MAX_CHANNELS}.")


def validate(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str) -> None:
    """Check every field of a λ file; raise LambdaFileError("<source>: field 'x' ...; expected ...")."""

    def fail(what: str):
        raise LambdaFileError(f"{source}: {what}")

    fields = _check_metadata(metadata, fail)
    _check_tensor_names(list(tensors), fail)
    _check_lambdas(tensors[TENSOR_NAME], fields, fail)


def _check_lambdas(lambdas: torch.Tensor, fields: dict, fail) -> None:
    """The λ tensor itself, and its agreement with the metadata already checked into ``fields``."""
    if lambdas.dtype != torch.float32:
        fail(f"tensor '{TENSOR_NAME}' has dtype {lambdas.dtype}; expected torch.float32.")
    _check_shape(tuple(lambdas.shape), fail)
    calls, history = lambdas.shape[:2]
    if not torch.isfinite(lambdas).all():
        fail(f"tensor '{TENSOR_NAME}' holds non-finite values; expected finite λ.")
    largest = float(lambdas.abs().max())
    if largest > MAX_ABS_LAMBDA:
        fail(f"tensor '{TENSOR_NAME}' holds |λ| = {largest:.4g}; expected at most {MAX_ABS_LAMBDA:g}, more than a "
             "fit produces.")
    for k in range(min(calls, history)):
        # call k has only k earlier outputs, so terms j > k do not exist and must be 0
        if lambdas[k, k:].abs().max() > 0:
            fail(f"tensor '{TENSOR_NAME}' has λ for call {k} term > {k}, which has no earlier output; expected 0.")
    if fields["calls"] != calls:
        fail(f"field 'calls' is {fields['calls']}; expected {calls}, the first dimension of '{TENSOR_NAME}'.")
    if fields["history"] != history:
        fail(f"field 'history' is {fields['history']}; expected {history}, the second dimension of '{TENSOR_NAME}'.")
    for key in ("call_sigmas", "fit_rmse_before", "fit_rmse_after", "history_per_call"):
        if key in fields and len(fields[key]) != calls:
            fail(f"field '{key}' has {len(fields[key])} entries; expected one per model call ({calls}).")
    if "history_per_call" in fields and max(fields["history_per_call"]) > history:
        fail(f"field 'history_per_call' holds {max(fields['history_per_call']):g} terms; expected at most the "
             f"history, {history}.")


def _check_metadata(metadata, fail) -> dict:
    """Every metadata field a λ file defines, checked; returns the parsed ints and lists by field name."""
    if not metadata:
        fail("no metadata; expected the D-ODE fields (format, format_version, call_sigmas, ...).")
    if not isinstance(metadata, dict):
        fail(f"metadata is {type(metadata).__name__}; expected a table of strings.")
    if len(metadata) > MAX_METADATA_FIELDS:
        fail(f"metadata has {len(metadata)} fields; expected at most {MAX_METADATA_FIELDS}.")
    for key, value in metadata.items():
        _check_text_field(key, value, fail)
    for key in REQUIRED_FIELDS:
        if key not in metadata:
            fail(f"field '{key}' is missing; expected it in every λ file.")
    if metadata["format"] != FORMAT:
        fail(f"field 'format' is {_shown(metadata['format'])}; expected {FORMAT!r}. This is not a D-ODE λ file.")
    if metadata["format_version"] != FORMAT_VERSION:
        fail(
            f"field 'format_version' is {_shown(metadata['format_version'])}; expected {FORMAT_VERSION!r}. "
            "The file comes from another version of the plugin: update the plugin or re-distill."
        )
    if not SAMPLER_NAME.fullmatch(metadata["base_sampler"]):
        fail(f"field 'base_sampler' is {_shown(metadata['base_sampler'])}; expected a sampler name of 1 to 64 "
             "letters, digits and underscores, e.g. 'euler' or 'dpmpp_2m'.")
    if metadata.get("schedule_source", "user") not in SCHEDULE_SOURCES:
        fail(f"field 'schedule_source' is {_shown(metadata['schedule_source'])}; expected one of "
             f"{', '.join(repr(s) for s in SCHEDULE_SOURCES)}.")
    fields = {key: _parse_int(metadata, key, fail) for key in INT_FIELDS if key in metadata}
    for key in NON_NEGATIVE_FLOAT_FIELDS:
        if key in metadata:
            fields[key] = _parse_non_negative_float(metadata, key, fail)
    for key in LIST_FIELDS:
        if key in metadata:
            fields[key] = _parse_float_list(metadata, key, fail)
    _check_lists(fields, fail)
    return fields


def _check_text_field(key, value, fail) -> None:
    """A metadata entry is a string key of at most MAX_METADATA_KEY_BYTES and a string value of at most
    MAX_METADATA_VALUE_BYTES, both valid Unicode (no lone surrogates, which no terminal or UTF-8 file can hold)."""
    if not isinstance(key, str):
        fail(f"metadata key {_shown(key)} is {type(key).__name__}; expected a string.")
    name = _shown(key)
    key_bytes = _utf8_size(key)
    if key_bytes is None or not 1 <= key_bytes <= MAX_METADATA_KEY_BYTES:
        what = "is not valid Unicode" if key_bytes is None else f"is {key_bytes} bytes long"
        fail(f"field name {name} {what}; expected 1 to {MAX_METADATA_KEY_BYTES} bytes of UTF-8 text.")
    if not isinstance(value, str):
        fail(f"field {name} is {type(value).__name__}; expected a string.")
    value_bytes = _utf8_size(value)
    if value_bytes is None:
        fail(f"field {name} is not valid Unicode (it holds a lone surrogate); expected UTF-8 text.")
    if value_bytes > MAX_METADATA_VALUE_BYTES:
        fail(f"field {name} has {value_bytes} bytes; expected at most {MAX_METADATA_VALUE_BYTES}.")


def _utf8_size(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _shown(value, limit: int = 60) -> str:
    """An untrusted value for a message: quoted, escaped, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return printable(repr(text[:limit]) + ("..." if len(text) > limit else ""))


def _check_lists(fields: dict, fail) -> None:
    for key in ("call_sigmas", "schedule", "fit_rmse_before", "fit_rmse_after", "history_per_call"):
        if key in fields and any(v < 0 for v in fields[key]):
            what = "sigma" if "sigma" in key or key == "schedule" else "value"
            fail(f"field '{key}' holds a negative {what}; expected values >= 0.")
    for key in ("call_sigmas", "schedule"):
        values = fields.get(key, [])
        rising = next((i for i in range(1, len(values)) if values[i] > values[i - 1]), None)
        if rising is not None:
            fail(f"field '{key}' rises from {values[rising - 1]:.6g} to {values[rising]:.6g} at entry {rising}; "
                 "expected non-increasing sigmas (a sampler walks from noise to data).")
    if "history_per_call" in fields and any(v != int(v) for v in fields["history_per_call"]):
        fail("field 'history_per_call' holds a fraction; expected whole numbers of terms.")
    if "schedule" in fields and len(fields["schedule"]) != fields["steps"] + 1:
        fail(f"field 'schedule' has {len(fields['schedule'])} sigmas; expected steps + 1 = {fields['steps'] + 1}.")


def _parse_int(metadata: dict[str, str], key: str, fail) -> int:
    text = metadata[key]
    least, most = INT_FIELDS[key]
    if not INT_TEXT.fullmatch(text):
        fail(f"field '{key}' is {_shown(text, 40)}; expected an integer (ASCII digits).")
    value = int(text)
    if (least is not None and value < least) or (most is not None and value > most):
        bounds = f"from {least} to {most}" if most is not None else f"at least {least}"
        fail(f"field '{key}' is {value}; expected an integer {bounds}.")
    return value


def _parse_non_negative_float(metadata: dict[str, str], key: str, fail) -> float:
    text = metadata[key]
    value = float(text) if len(text) <= 64 and FLOAT_TEXT.fullmatch(text) else math.nan
    if not (math.isfinite(value) and value >= 0):
        fail(f"field '{key}' is {_shown(text, 40)}; expected a finite number >= 0.")
    return value


def _parse_float_list(metadata: dict[str, str], key: str, fail) -> list[float]:
    """A flat JSON list of finite numbers. Checked as text first: no nesting (a deep one would recurse), and
    integers are read as floats (a 400-digit one becomes inf and is refused, not an OverflowError)."""
    text = metadata[key]
    values = None
    if FLAT_NUMBER_LIST.fullmatch(text):
        try:
            values = json.loads(text, parse_int=float)
        except ValueError:
            values = None
    if not isinstance(values, list) or not all(isinstance(v, float) and math.isfinite(v) for v in values):
        fail(f"field '{key}' is {_shown(text)}; expected a JSON list of finite numbers.")
    return values


def _as_string(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps([v if isinstance(v, (int, float, str)) else float(v) for v in value])
    return str(value)


# ---- atomic, kill-safe writes ---------------------------------------------------------------------------------


def _write_temp_file(folder: str, data: bytes) -> str:
    """Write ``data`` to a new ``.dode-<host>-<pid>-<random>.tmp`` in ``folder`` and fsync it; returns its path.

    Mode 0666 & ~umask, as every other file the hosts write (a temp file from ``tempfile`` would be 0600)."""
    path = os.path.join(folder, f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _remove_quietly(path)
        raise
    return path


def _claim_new_name(temp: str, folder: str, stem: str) -> str:
    """Give the complete file ``temp`` the first free name of ``stem``, ``stem_2``, ... without replacing any."""
    for counter in range(1, 100_000):
        path = os.path.join(folder, stem + (f"_{counter}" if counter > 1 else "") + EXTENSION)
        try:
            _link_without_replacing(temp, path)
        except FileExistsError:
            continue
        return path
    raise LambdaFileError(f"{printable(folder)}: no free file name for {stem!r}.")


def _link_without_replacing(temp: str, path: str) -> None:
    """``path`` becomes ``temp``'s content, atomically, or FileExistsError if ``path`` exists (even as a link)."""
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        raise
    except (OSError, NotImplementedError) as error:  # no hard links on this file system
        log.debug("hard link %s failed (%s); claiming the name without one", path, error)
    if os.name == "nt":
        os.rename(temp, path)  # Windows' rename never replaces: FileExistsError if taken
        return
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # reserve, then replace
    try:
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(path)
        raise


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove the ``.dode-*.tmp`` files that killed saves left in ``folder``; returns the names removed.

    A temp file is stale when the process that wrote it, on this host, no longer runs, or when it is older than
    STALE_TEMP_SECONDS (a save takes seconds at most; this covers other hosts sharing the folder, reused process
    ids, Windows, and temp files of older plugin versions). A save never fails over this cleanup."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            match = TEMP_NAME.fullmatch(entry.name)
            orphaned = bool(match) and match[1] == _host_tag() and not _process_runs(int(match[2]))
            if orphaned or now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                os.remove(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    if removed:
        log.info("removed %d temp file(s) left by interrupted λ saves in %s", len(removed), printable(folder))
    return removed


@lru_cache(maxsize=1)
def _host_tag() -> str:
    """8 hex digits naming this host, so that process ids are only compared with processes of the same host."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` exists on this host; True when unsure (the age rule then applies)."""
    if os.name == "nt" or pid <= 0:
        return True  # on Windows os.kill(pid, 0) would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # PermissionError: it runs, as another user
    return True


def _fsync_folder(folder: str) -> None:
    """Make a rename or link in ``folder`` durable (POSIX); where a folder cannot be opened or fsynced, skip."""
    if os.name == "nt":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
