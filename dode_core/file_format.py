"""The λ file format (version 1): its fields and limits, and the checks every file read or written passes.

One tensor, ``lambdas``, of shape ``(calls, history)`` or ``(calls, history, channels)``, float32:
``lambdas[k, j-1]`` multiplies ``D_{k-j+1} - D_{k-j}`` at model call ``k``. Every metadata value is a string
(safetensors requires it); lists are JSON. ``lambdas/README.md`` documents every field and the trust model; every way
a file can be wrong ends in a LambdaFileError naming the field and what was expected.
"""

from __future__ import annotations

import json
import math
import re

import torch

from .rules import MAX_HISTORY
from .text import printable, shown

FORMAT = "dode-lambdas"
EXTENSION = ".safetensors"
FORMAT_VERSION = "1"
TENSOR_NAME = "lambdas"

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_CALLS = 1000
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

# field name -> what a valid value looks like (for the error message); all other fields are free text.
REQUIRED_FIELDS = ("format", "format_version", "base_sampler", "steps", "calls", "history", "call_sigmas")
LIST_FIELDS = ("call_sigmas", "schedule", "fit_rmse_before", "fit_rmse_after", "history_per_call", "correction_limit")
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


class LambdaFileError(ValueError):
    """A λ file (or a Lambdas object about to be saved) is malformed; the message names the field."""


def check_tensor_names(names: list[str], fail) -> None:
    """A λ file holds exactly one tensor, ``lambdas``."""
    if names != [TENSOR_NAME]:
        listed = ", ".join(printable(repr(name))[:40] for name in sorted(names)[:5])
        listed += ", ..." if len(names) > 5 else ""
        fail(f"tensors are [{listed}]; expected exactly [{TENSOR_NAME!r}].")


def check_shape(shape: tuple[int, ...], fail) -> None:
    """(calls, history[, channels]) within the format's limits."""
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

    fields = check_metadata(metadata, fail)
    check_tensor_names(list(tensors), fail)
    check_lambdas(tensors[TENSOR_NAME], fields, fail)


def check_lambdas(lambdas: torch.Tensor, fields: dict, fail) -> None:
    """The λ tensor itself, and its agreement with the metadata already checked into ``fields``."""
    if lambdas.dtype != torch.float32:
        fail(f"tensor '{TENSOR_NAME}' has dtype {lambdas.dtype}; expected torch.float32.")
    check_shape(tuple(lambdas.shape), fail)
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
    for key in ("call_sigmas", "fit_rmse_before", "fit_rmse_after", "history_per_call", "correction_limit"):
        if key in fields and len(fields[key]) != calls:
            fail(f"field '{key}' has {len(fields[key])} entries; expected one per model call ({calls}).")
    if "history_per_call" in fields and max(fields["history_per_call"]) > history:
        fail(f"field 'history_per_call' holds {max(fields['history_per_call']):g} terms; expected at most the "
             f"history, {history}.")


def check_metadata(metadata, fail) -> dict:
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
        fail(f"field 'format' is {shown(metadata['format'])}; expected {FORMAT!r}. This is not a D-ODE λ file.")
    if metadata["format_version"] != FORMAT_VERSION:
        fail(
            f"field 'format_version' is {shown(metadata['format_version'])}; expected {FORMAT_VERSION!r}. "
            "The file comes from another version of the plugin: update the plugin or re-distill."
        )
    if not SAMPLER_NAME.fullmatch(metadata["base_sampler"]):
        fail(f"field 'base_sampler' is {shown(metadata['base_sampler'])}; expected a sampler name of 1 to 64 "
             "letters, digits and underscores, e.g. 'euler' or 'dpmpp_2m'.")
    if metadata.get("schedule_source", "user") not in SCHEDULE_SOURCES:
        fail(f"field 'schedule_source' is {shown(metadata['schedule_source'])}; expected one of "
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
        fail(f"metadata key {shown(key)} is {type(key).__name__}; expected a string.")
    name = shown(key)
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



def _check_lists(fields: dict, fail) -> None:
    for key in LIST_FIELDS:
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
        fail(f"field '{key}' is {shown(text, 40)}; expected an integer (ASCII digits).")
    value = int(text)
    if (least is not None and value < least) or (most is not None and value > most):
        bounds = f"from {least} to {most}" if most is not None else f"at least {least}"
        fail(f"field '{key}' is {value}; expected an integer {bounds}.")
    return value


def _parse_non_negative_float(metadata: dict[str, str], key: str, fail) -> float:
    text = metadata[key]
    value = float(text) if len(text) <= 64 and FLOAT_TEXT.fullmatch(text) else math.nan
    if not (math.isfinite(value) and value >= 0):
        fail(f"field '{key}' is {shown(text, 40)}; expected a finite number >= 0.")
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
        fail(f"field '{key}' is {shown(text)}; expected a JSON list of finite numbers.")
    return values

