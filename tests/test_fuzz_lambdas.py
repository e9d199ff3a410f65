"""Seeded fuzzing of the λ-file loader (issue 12): thousands of mutated files (byte flips, cuts, header-length and
header-JSON mutations, dtype/shape/offset swaps, hostile field values, λ values). The only allowed outcomes are a
valid ``Lambdas`` (checked against the format's rules, written out here independently of the loader) or a
LambdaFileError whose message names the field.

A bigger run by hand: ``DODE_FUZZ_CASES=100000 DODE_FUZZ_SEED=1 .venv/bin/python -m pytest -q -s
tests/test_fuzz_lambdas.py`` prints the counts.
"""

import glob
import json
import math
import os
import random
import re
import struct
import unicodedata

import torch
from conftest import ROOT
from lambda_bytes import parts, raw_file, valid_lambdas

from dode_core import LambdaFileError, load_lambdas
from dode_core.cli import describe

CASES = int(os.environ.get("DODE_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("DODE_FUZZ_SEED", "0"))

# what a refusal names, after "<path>: "
NAMES_THE_FIELD = re.compile(r"(field( name)? '|metadata (has|is|key)|tensor '|tensors are \[|safetensors header: |"
                             r"not a (readable )?safetensors file|no metadata;|file is \d+ bytes)")

HUGE_INT = "1" + "0" * 400
VALUES = ["", "0", "1", "-1", "3", "2", "1000", "1001", "100001", HUGE_INT, "٤", "3\n", " 3", "+3", "3_0", "3.0",
          "1e3", "nan", "NaN", "inf", "-inf", "1e999", "0.25", "-0.25", "1.5e-05", "euler", "dpmpp_2m", "EULER",
          "../../x", "euler\x1b[2J", "e" * 65, "user", "fitted", "Fitted", "dode-lambdas", "dode-lambdas ",
          "[]", "[1]", "[80.0, 5.0, 0.5]", "[0.5, 5.0, 80.0]", "[80.0, 5.0, -0.5]", "[80.0, NaN, 0.5]",
          "[80.0, Infinity, 0.5]", f"[{HUGE_INT}, 5.0, 0.5]", "[1e400, 5, 0.5]", "[[80.0], [5.0], [0.5]]",
          '["80", "5", "0.5"]', "[true, false, null]", "[80.0, 5.0, 0.5,]", "{}", "null", "true",
          "[" * 5000 + "]" * 5000, "[0, 1, 2]", "[0, 1.5, 2]", "[0, 1, 9]", "[80.0, 5.0, 0.5, 0.0]",
          "x" * 70_000, "é" * 33_000, "\u202eevil\u202c", "a\r\nVALID forged", "\x00\x7f\x9b", "\ud800"]
KEYS = ["format", "format_version", "base_sampler", "steps", "calls", "history", "call_sigmas", "schedule",
        "fit_rmse_before", "fit_rmse_after", "history_per_call", "correction_limit", "teacher_factor", "teacher_calls",
        "batch_size", "seed", "heldout_rmse_base", "heldout_rmse_dode", "heldout_count", "schedule_source",
        "lambda_scale", "proof_calls", "prompt", "",
        "k" * 300, "\x1b[2J", "\ud800"]
DTYPES = ["F32", "F64", "F16", "BF16", "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3", "F8_E5M2", "I64", "U8",
          "BOOL", "C64", "f32", "", 32, None]
SHAPES = [[3, 2], [2, 3], [6], [6, 1], [1, 6], [3, 2, 1], [3, 1, 2], [], [0, 2], [3, -2], [3, 2.0], [3, "2"],
          [2**63, 2], [2**70, 1], [3, 2, 65], [1001, 1], [3, 9], None, "3,2", [[3, 2]], [True, 2]]
FLOATS = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e6, -1e6, 1000001.0, 3.4e38, -0.0, 1e-45, 0.5, 13199.2]


def seed_files() -> list[bytes]:
    """Valid files: hand-built 2-D and per-channel ones with every optional field, and a shipped demo file."""
    shipped = sorted(glob.glob(os.path.join(ROOT, "lambdas", "*.safetensors")))
    files = [raw_file(*parts()), raw_file(*parts(valid_lambdas(channels=4)))]
    files += [open(path, "rb").read() for path in shipped[:1]]
    return files


def split(data: bytes):
    """(header dict, data bytes) of a file whose header still parses, else None."""
    if len(data) < 8:
        return None
    length = struct.unpack("<Q", data[:8])[0]
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return (header, data[8 + length :]) if isinstance(header, dict) else None


def join(header, data: bytes, rng: random.Random) -> bytes:
    text = json.dumps(header, ensure_ascii=rng.random() < 0.5)
    return raw_file(None, None, data, header_text=text)


# ---- mutations: (rng, bytes) -> bytes ------------------------------------------------------------------------


def flip_bytes(rng, data):
    data = bytearray(data)
    header_end = min(len(data), 8 + int.from_bytes(data[:8], "little")) if len(data) >= 8 else len(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        if not data:
            break
        end = header_end if rng.random() < 0.7 and header_end > 0 else len(data)
        position = rng.randrange(end)
        data[position] = rng.randrange(256) if rng.random() < 0.5 else data[position] ^ (1 << rng.randrange(8))
    return bytes(data)


def cut(rng, data):
    return data[: rng.randrange(len(data))] if data else data


def extend(rng, data):
    return data + (bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) if rng.random() < 0.5
                   else b"\0" * rng.randrange(1, 5000))


def header_length(rng, data):
    length = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    new = rng.choice([length + rng.randint(-8, 8), 0, 1, 2**64 - 1, 2**63, rng.randrange(2**32), len(data)])
    return struct.pack("<Q", max(0, min(new, 2**64 - 1))) + data[8:]


def metadata_value(rng, data):
    return _edit_header(rng, data, lambda header, md: md.__setitem__(rng.choice(KEYS + list(md)), rng.choice(VALUES)))


def metadata_drop(rng, data):
    return _edit_header(rng, data, lambda header, md: md.pop(rng.choice(list(md))) if md else None)


def metadata_type(rng, data):
    def edit(header, md):
        if rng.random() < 0.5 and md:
            md[rng.choice(list(md))] = rng.choice([3, 0.5, None, True, ["80"], {"a": "b"}])
        else:
            header["__metadata__"] = rng.choice([None, [], "format", 1, [["format", "dode-lambdas"]]])

    return _edit_header(rng, data, edit)


def list_field(rng, data):
    def edit(header, md):
        key = rng.choice(["call_sigmas", "schedule", "fit_rmse_before", "fit_rmse_after", "history_per_call",
                          "correction_limit"])
        try:
            values = json.loads(md.get(key, "[1.0, 0.5]"))
        except (ValueError, RecursionError, TypeError):
            values = [1.0]
        if not isinstance(values, list) or not values:
            values = [1.0]
        action = rng.randrange(7)
        if action == 0:
            values = values[::-1]
        elif action == 1:
            values[rng.randrange(len(values))] = -rng.choice([1e-3, 1.0, 80.0])
        elif action == 2:
            values = values[:-1]
        elif action == 3:
            values = values + values[-1:]
        elif action == 4:
            values[rng.randrange(len(values))] = int(HUGE_INT)
        elif action == 5:
            values = [values]
        else:
            values[rng.randrange(len(values))] = rng.choice(["1", None, True, 1e308 * 10])
        md[key] = json.dumps(values)

    return _edit_header(rng, data, edit)


def tensor_entry(rng, data):
    def edit(header, md):
        names = [name for name in header if name != "__metadata__"] or ["lambdas"]
        entry = header.setdefault(rng.choice(names), {})
        if not isinstance(entry, dict):
            header[rng.choice(names)] = {"dtype": "F32"}
            return
        action = rng.randrange(4)
        if action == 0:
            entry["dtype"] = rng.choice(DTYPES)
        elif action == 1:
            entry["shape"] = rng.choice(SHAPES)
        elif action == 2:
            entry["data_offsets"] = rng.choice([[0, 0], [0, 8], [8, 24], [0, 2**64], [-1, 24], [0], None, [0, 24.0]])
        else:
            entry.pop(rng.choice(["dtype", "shape", "data_offsets"]), None)

    return _edit_header(rng, data, edit)


def tensor_table(rng, data):
    def edit(header, md):
        action = rng.randrange(3)
        if action == 0 and "lambdas" in header:
            header[rng.choice(["Lambdas", "lambdas ", "λ", "", "__metadata__x"])] = header.pop("lambdas")
        elif action == 1:
            header[rng.choice(["payload", "lambdas2"])] = {"dtype": rng.choice(DTYPES), "shape": [1],
                                                           "data_offsets": [0, 4]}
        else:
            header.pop("lambdas", None)

    return _edit_header(rng, data, edit)


def header_not_an_object(rng, data):
    parsed = split(data)
    body = parsed[1] if parsed else b""
    text = rng.choice(["[]", '"lambdas"', "null", "1", "[" * 3000 + "]" * 3000, '{"a": ' * 3000 + "1" + "}" * 3000,
                       '{"lambdas": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 24]}, "lambdas": {}}'])
    return raw_file(None, None, body, header_text=text)


def lambda_values(rng, data):
    parsed = split(data)
    if not parsed or len(parsed[1]) < 4:
        return flip_bytes(rng, data)
    header, body = parsed
    body = bytearray(body)
    count = len(body) // 4
    entry = header.get("lambdas")
    shape = entry.get("shape") if isinstance(entry, dict) else None
    plausible = isinstance(shape, list) and len(shape) in (2, 3) and all(type(d) is int and d > 0 for d in shape)
    if plausible and rng.random() < 0.3 and math.prod(shape) <= count:
        # a term that cannot exist: call k < history, term j >= k
        calls, history, channels = shape[0], shape[1], shape[2] if len(shape) == 3 else 1
        k = rng.randrange(min(calls, history))
        index = (k * history + rng.randrange(k, history)) * channels + rng.randrange(channels)
    else:
        index = rng.randrange(count)
    value = rng.choice(FLOATS) if rng.random() < 0.8 else rng.gauss(0, 10)
    if index < count:
        body[4 * index : 4 * index + 4] = struct.pack("<f", value)
    return data[: len(data) - len(body)] + bytes(body)


def _edit_header(rng, data, edit):
    parsed = split(data)
    if not parsed:
        return flip_bytes(rng, data)
    header, body = parsed
    metadata = header.get("__metadata__")
    edit(header, metadata if isinstance(metadata, dict) else {})
    out = join(header, body, rng)
    return out if rng.random() < 0.95 else header_length(rng, out)


MUTATIONS = [flip_bytes, flip_bytes, cut, extend, header_length, metadata_value, metadata_value, metadata_value,
             metadata_drop, metadata_type, list_field, list_field, tensor_entry, tensor_entry, tensor_table,
             header_not_an_object, lambda_values, lambda_values]


# ---- what a valid file is, written out independently of the loader -------------------------------------------


def terminal_safe(text: str) -> bool:
    return all(ch == "\n" or ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in text)


def is_int_text(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return 1 <= len(digits) <= 20 and all("0" <= ch <= "9" for ch in digits)


def rises(values) -> bool:
    return any(values[i] > values[i - 1] for i in range(1, len(values)))


def violations(lam, path: str) -> list[str]:
    """Why an accepted ``lam`` is not a valid λ file (lambdas/README.md), empty if it is."""
    found = []
    t = lam.lambdas
    if t.dtype != torch.float32 or t.dim() not in (2, 3):
        return [f"tensor {t.dtype} {tuple(t.shape)}"]
    calls, history = t.shape[:2]
    if not (2 <= calls <= 1000 and 1 <= history <= 8 and (t.dim() == 2 or 1 <= t.shape[2] <= 64)):
        found.append(f"shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or t.abs().max() > 1e6:
        found.append("λ not finite or beyond 1e6")
    if any(t[k, k:].abs().max() > 0 for k in range(min(calls, history))):
        found.append("λ for a term that does not exist")
    md = lam.metadata
    for key, value in md.items():
        try:
            if len(key.encode()) > 256 or not key or len(value.encode()) > 65536:
                found.append(f"size of {key[:20]!r}")
        except (UnicodeEncodeError, AttributeError):
            found.append(f"not text: {key[:20]!r}")
    if md.get("format") != "dode-lambdas" or md.get("format_version") != "1":
        found.append("format")
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", md.get("base_sampler", "")):
        found.append("base_sampler")
    for key in ("steps", "calls", "history", "teacher_factor", "teacher_calls", "batch_size", "seed", "heldout_count",
                "proof_calls"):
        if key in md and not is_int_text(md[key]):
            found.append(f"{key} not an integer")
    if found:
        return found
    if int(md["calls"]) != calls or int(md["history"]) != history or int(md["steps"]) < 1:
        found.append("calls/history/steps")
    sigmas = json.loads(md["call_sigmas"])
    if list(lam.call_sigmas) != sigmas or len(sigmas) != calls or any(s < 0 for s in sigmas) or rises(sigmas):
        found.append("call_sigmas")
    if "schedule" in md:
        schedule = lam.schedule.tolist()
        if len(schedule) != int(md["steps"]) + 1 or rises(schedule):
            found.append("schedule")
    for key in ("heldout_rmse_base", "heldout_rmse_dode", "lambda_scale"):
        if key in md and not (math.isfinite(float(md[key])) and float(md[key]) >= 0):
            found.append(key)
    if md.get("schedule_source", "user") not in ("user", "fitted"):
        found.append("schedule_source")
    before, after = lam.fit_rmse()
    if (before and len(before) != calls) or (after and len(after) != calls):
        found.append("fit_rmse length")
    if not terminal_safe(describe(path, lam)):
        found.append("inspect output not terminal safe")
    return found


def round_trips(lam, path: str) -> bool:
    """An accepted file saves and loads back unchanged (the hosts rewrite files they load)."""
    from safetensors.torch import save

    tensors, metadata = lam.to_file_dict()
    with open(path, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))
    again = load_lambdas(path)
    # saving writes the lists as JSON floats and adds plugin_version where it is missing; nothing else changes
    rewritten = {"call_sigmas", "plugin_version"}
    kept = {key: value for key, value in lam.metadata.items() if key not in rewritten}
    return (torch.equal(again.lambdas, lam.lambdas) and again.call_sigmas == lam.call_sigmas
            and {key: value for key, value in again.metadata.items() if key not in rewritten} == kept)


def fuzz(cases: int, seed: int, folder: str) -> dict:
    rng = random.Random(seed)
    seeds = seed_files()
    path = os.path.join(folder, "fuzzed.safetensors")
    counts = {"cases": 0, "valid": 0, "refused": 0, "crashes": [], "wrong acceptances": [], "half files": []}
    for case in range(cases):
        original = rng.choice(seeds)
        data = original
        steps = [rng.choice(MUTATIONS) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        for mutation in steps:
            data = mutation(rng, data)
        with open(path, "wb") as handle:
            handle.write(data)
        what = f"case {case} ({', '.join(m.__name__ for m in steps)})"
        counts["cases"] += 1
        try:
            lam = load_lambdas(path)
        except LambdaFileError as error:
            message = str(error)
            rest = message[len(path) + 2 :] if message.startswith(path + ": ") else ""
            if "unexpected error" in message or not NAMES_THE_FIELD.match(rest):
                counts["crashes"].append(f"{what}: {message[:300]!r}")
            else:
                counts["refused"] += 1
            continue
        except Exception as error:  # noqa: BLE001 - exactly what this test looks for
            counts["crashes"].append(f"{what}: {type(error).__name__}: {str(error)[:200]!r}")
            continue
        if len(data) < len(original) and original.startswith(data):
            counts["half files"].append(what)
        try:
            problems = violations(lam, path) or ([] if round_trips(lam, path) else ["does not round-trip"])
        except Exception as error:  # noqa: BLE001 - an accepted file the checks cannot even read
            problems = [f"{type(error).__name__} while checking it: {str(error)[:200]}"]
        if problems:
            counts["wrong acceptances"].append(f"{what}: {problems}")
        else:
            counts["valid"] += 1
    return counts


def test_fuzzed_files_load_as_valid_lambdas_or_are_refused_naming_the_field(tmp_path):
    counts = fuzz(CASES, SEED, str(tmp_path))
    print(f"fuzz seed {SEED}: {counts['cases']} cases, {counts['valid']} valid, {counts['refused']} refused, "
          f"{len(counts['crashes'])} crashes, {len(counts['wrong acceptances'])} wrong acceptances, "
          f"{len(counts['half files'])} half files")
    assert counts["crashes"] == []
    assert counts["wrong acceptances"] == []
    assert counts["half files"] == []
    # the mutations reach both outcomes, so the test tests something
    assert counts["valid"] > CASES // 50 and counts["refused"] > CASES // 2, counts
