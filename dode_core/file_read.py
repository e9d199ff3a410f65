"""Reading a λ file from a stranger: only a regular file, at most MAX_FILE_BYTES, through one descriptor opened
non-blocking; its safetensors header parsed here, with bounds and without duplicate keys, before safetensors sees
the bytes; nothing ever unpickled. Every way a file can be wrong ends in ``fail(message)`` (a LambdaFileError)."""

from __future__ import annotations

import json
import math
import os
import stat

import torch
from safetensors.torch import load as st_load

from .file_format import (
    MAX_FILE_BYTES,
    TENSOR_NAME,
    check_lambdas,
    check_metadata,
    check_shape,
    check_tensor_names,
)
from .text import printable

_TORCH_DTYPE_NAMES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                      "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8",
                      "U8": "torch.uint8", "BOOL": "torch.bool"}


def read_checked(path: str, fail) -> tuple[torch.Tensor, dict[str, str], dict]:
    """The λ tensor, the metadata and its parsed fields (ints and lists by name) of the file at ``path``, every
    part checked; ``fail(message)`` raises for the first thing wrong."""
    data = _read_regular_file(path, fail)
    header, data_start = _parse_header(data, fail)
    metadata = header.pop("__metadata__", None)
    fields = check_metadata(metadata, fail)
    _check_tensor_entries(header, len(data) - data_start, fail)
    try:
        tensors = st_load(data)
    except Exception as error:  # noqa: BLE001 - the header was checked; anything left is safetensors' word
        fail(f"safetensors header: {printable(str(error))[:200]}.")
    check_lambdas(tensors[TENSOR_NAME], fields, fail)
    return tensors[TENSOR_NAME], metadata, fields


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
    check_tensor_names(list(entries), fail)
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
    check_shape(tuple(shape), fail)
    size = 4 * math.prod(shape)
    if entry["data_offsets"] == [0, size] and data_bytes < size:
        fail(f"not a readable safetensors file: it is cut short (tensor '{TENSOR_NAME}' needs {size} bytes, the file "
             f"holds {data_bytes}).")
    if entry["data_offsets"] != [0, size] or data_bytes != size:
        fail(f"safetensors header: tensor '{TENSOR_NAME}' data_offsets {printable(repr(entry['data_offsets']))[:60]} "
             f"do not match its shape ({size} bytes) and the {data_bytes} data bytes in the file (truncated?).")
