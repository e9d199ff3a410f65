"""Raw λ-file bytes for the hostile-file and fuzz tests: a safetensors file is an 8-byte little-endian header length,
a JSON header, then the tensor bytes. Built by hand, so a test can write what no safetensors writer would."""

import json
import struct

import torch

from dode_core import Lambdas


def valid_lambdas(channels: int = 0) -> Lambdas:
    """A small valid λ set: 3 calls x 2 terms (x channels), with every optional field the fit writes."""
    lambdas = torch.tensor([[0.0, 0.0], [0.5, 0.0], [-0.25, 1.5]])
    if channels:
        lambdas = lambdas[..., None].repeat(1, 1, channels).contiguous()
    metadata = {"base_sampler": "euler", "steps": "3", "schedule": "[80.0, 5.0, 0.5, 0.0]",
                "fit_rmse_before": "[1.0, 0.5, 0.25]", "fit_rmse_after": "[1.0, 0.25, 0.125]",
                "history_per_call": "[0, 1, 2]", "correction_limit": "[0.0, 0.5, 1.25]", "teacher_sampler": "euler",
                "teacher_factor": "10",
                "teacher_calls": "30", "batch_size": "8", "seed": "18446744073709551615",
                "heldout_rmse_base": "0.25", "heldout_rmse_dode": "1.5e-05", "heldout_count": "2",
                "lambda_scale": "0.5", "proof_calls": "6", "schedule_source": "fitted"}
    return Lambdas(lambdas, (80.0, 5.0, 0.5), metadata)


def parts(lam: Lambdas | None = None) -> tuple[dict, dict, bytes]:
    """(header tensor entries, metadata, data bytes) of a valid file."""
    lam = lam or valid_lambdas()
    tensors, metadata = lam.to_file_dict()
    tensor = tensors["lambdas"]
    data = tensor.numpy().astype("<f4").tobytes()
    entries = {"lambdas": {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [0, len(data)]}}
    return entries, metadata, data


def raw_file(entries: dict, metadata, data: bytes, *, header_text: str | None = None,
             header_len: int | None = None) -> bytes:
    """The bytes of a safetensors file with this header (or ``header_text`` verbatim) and data."""
    if header_text is None:
        header = dict(entries)
        if metadata is not None:
            header["__metadata__"] = metadata
        header_text = json.dumps(header)
    header_bytes = header_text.encode("utf-8", "surrogatepass")
    length = len(header_bytes) if header_len is None else header_len
    return struct.pack("<Q", length) + header_bytes + data


def floats(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
