"""The λ file: round trip, atomic writes, and one exact error for each malformed case."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from dode_core import LambdaFileError, Lambdas, ScheduleMismatchError, distill, load_lambdas, sample
from dode_core.file_format import MAX_FILE_BYTES
from models import GaussianDenoiser


@pytest.fixture
def lam():
    lambdas = torch.tensor([[0.0, 0.0], [0.5, 0.0], [-0.25, 1.5]])
    return Lambdas(lambdas, (80.0, 5.0, 0.5), {"base_sampler": "euler", "steps": "3",
                                               "fit_rmse_before": "[1.0, 0.5, 0.25]"})


def write_raw(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


def valid_parts(lam):
    return lam.to_file_dict()


def test_round_trip_keeps_lambdas_sigmas_and_metadata(tmp_path, lam):
    path = lam.save(tmp_path / "euler.safetensors", cfg=7.5, seed=42, prompt="a cat")
    loaded = load_lambdas(path)
    assert torch.equal(loaded.lambdas, lam.lambdas)
    assert loaded.call_sigmas == (80.0, 5.0, 0.5)
    assert loaded.metadata["cfg"] == "7.5" and loaded.metadata["seed"] == "42" and loaded.metadata["prompt"] == "a cat"
    assert loaded.metadata["format"] == "dode-lambdas" and loaded.metadata["format_version"] == "1"
    assert loaded.metadata["calls"] == "3" and loaded.metadata["history"] == "2"
    assert all(isinstance(value, str) for value in loaded.metadata.values())
    assert os.listdir(tmp_path) == ["euler.safetensors"]  # no temp file left behind


def test_a_distilled_file_round_trips_and_samples_identically(K, karras, tmp_path):
    gaussian = GaussianDenoiser()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    sigmas = karras(4)
    lam = distill(gaussian, x, sigmas, K.sample_dpmpp_2m, history=2, teacher_factor=4)
    loaded = load_lambdas(lam.save(tmp_path / "f.safetensors"))
    assert loaded.metadata["base_sampler"] == "dpmpp_2m" and loaded.metadata["teacher_factor"] == "4"
    assert json.loads(loaded.metadata["schedule"]) == pytest.approx(sigmas.tolist())
    assert len(json.loads(loaded.metadata["fit_rmse_after"])) == loaded.calls == 4
    assert torch.equal(sample(gaussian, x, sigmas, K.sample_dpmpp_2m, loaded, disable=True),
                       sample(gaussian, x, sigmas, K.sample_dpmpp_2m, lam, disable=True))


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, lam, monkeypatch):
    path = lam.save(tmp_path / "keep.safetensors")
    before = open(path, "rb").read()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    changed = Lambdas(lam.lambdas * 2, lam.call_sigmas, lam.metadata)
    with pytest.raises(OSError, match="disk full"):
        changed.save(path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"]


def test_invalid_lambdas_are_not_saved(tmp_path, lam):
    bad = Lambdas(torch.tensor([[0.0], [float("nan")]]), (1.0, 0.5), {"base_sampler": "euler", "steps": "2"})
    with pytest.raises(LambdaFileError, match="non-finite"):
        bad.save(tmp_path / "bad.safetensors")
    assert os.listdir(tmp_path) == []


def with_metadata(lam, **changes):
    tensors, metadata = valid_parts(lam)
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    return tensors, metadata


def with_tensor(lam, tensor, **extra):
    tensors, metadata = valid_parts(lam)
    tensors = {"lambdas": tensor, **extra}
    return tensors, metadata


MALFORMED = {
    "wrong format": (lambda lam: with_metadata(lam, format="something-else"),
                     "field 'format' is 'something-else'; expected 'dode-lambdas'"),
    "future version": (lambda lam: with_metadata(lam, format_version="2"),
                       "field 'format_version' is '2'; expected '1'"),
    "missing sigmas": (lambda lam: with_metadata(lam, call_sigmas=None), "field 'call_sigmas' is missing"),
    "sigmas not json": (lambda lam: with_metadata(lam, call_sigmas="80, 5, 0.5"),
                        "field 'call_sigmas' is '80, 5, 0.5'; expected a JSON list of finite numbers"),
    "one sigma short": (lambda lam: with_metadata(lam, call_sigmas="[80.0, 5.0]"),
                        r"field 'call_sigmas' has 2 entries; expected one per model call \(3\)"),
    "negative sigma": (lambda lam: with_metadata(lam, call_sigmas="[80.0, 5.0, -0.5]"),
                       "field 'call_sigmas' holds a negative sigma"),
    "calls disagree": (lambda lam: with_metadata(lam, calls="4"), "field 'calls' is 4; expected 3"),
    "steps not int": (lambda lam: with_metadata(lam, steps="three"), "field 'steps' is 'three'; expected an integer"),
    "errors wrong length": (lambda lam: with_metadata(lam, fit_rmse_before="[1.0]"),
                            r"field 'fit_rmse_before' has 1 entries; expected one per model call \(3\)"),
    "float64 tensor": (lambda lam: with_tensor(lam, lam.lambdas.double()),
                       "tensor 'lambdas' has dtype torch.float64; expected torch.float32"),
    "1-d tensor": (lambda lam: with_tensor(lam, lam.lambdas[:, 0].contiguous()),
                   r"tensor 'lambdas' has shape \(3,\); expected \(calls, history\[, channels\]\)"),
    "nan lambda": (lambda lam: with_tensor(lam, torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [0.0, 0.0]])),
                   "tensor 'lambdas' holds non-finite values"),
    "lambda without history": (lambda lam: with_tensor(lam, torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 0.0]])),
                               "tensor 'lambdas' has λ for call 0 term > 0, which has no earlier output"),
    "extra tensor": (lambda lam: with_tensor(lam, lam.lambdas, payload=torch.zeros(3)),
                     r"tensors are \['lambdas', 'payload'\]; expected exactly \['lambdas'\]"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_file_is_refused_with_the_field_named(tmp_path, lam, case):
    build, message = MALFORMED[case]
    path = write_raw(tmp_path / "bad.safetensors", *build(lam))
    with pytest.raises(LambdaFileError, match=message):
        load_lambdas(path)


def test_a_file_without_metadata_is_not_a_lambda_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(LambdaFileError, match="no metadata; expected the D-ODE fields"):
        load_lambdas(path)


def test_garbage_truncated_missing_and_huge_files(tmp_path, lam):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(LambdaFileError, match=r"not a safetensors file \(it is a Python pickle\)"):
        load_lambdas(garbage)

    good = lam.save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(good, "rb").read()[:-5])
    with pytest.raises(LambdaFileError, match=r"not a readable safetensors file: it is cut short \(tensor 'lambdas' "
                                              r"needs 24 bytes, the file holds 19\)"):
        load_lambdas(truncated)

    with pytest.raises(LambdaFileError, match="cannot read the λ file"):
        load_lambdas(tmp_path / "absent.safetensors")

    huge = tmp_path / "huge.safetensors"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(LambdaFileError, match=f"file is {MAX_FILE_BYTES + 1} bytes; a λ file is at most"):
        load_lambdas(huge)


def test_a_schedule_mismatch_shows_both_schedules(K, karras, tmp_path):
    gaussian = GaussianDenoiser()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    lam = distill(gaussian, x, karras(4), K.sample_euler, teacher_factor=2)
    with pytest.raises(ScheduleMismatchError) as error:
        sample(gaussian, x, karras(5), K.sample_euler, lam)
    message = str(error.value)
    assert "λ file (euler, 4 steps, 4 model calls): [80, 9.723, 0.47, 0.002]" in message
    assert "this run (5 model calls): [80, 17.53, 2.515, 0.1698, 0.002]" in message
    assert "Use the scheduler, step count and denoise the λ file was made with" in message
    # a small relative difference (float32 vs float64 schedules) is accepted
    sample(gaussian, x.float(), karras(4, dtype=torch.float32), K.sample_euler, lam)


def test_saving_cannot_overwrite_what_the_fit_wrote(tmp_path, lam):
    with pytest.raises(LambdaFileError, match=r"fields \['steps', 'call_sigmas'\] are written by the fit"):
        lam.save(tmp_path / "x.safetensors", steps=9, call_sigmas=[1.0], cfg=7)
    assert os.listdir(tmp_path) == []


def test_save_new_never_overwrites_and_cannot_leave_the_folder(tmp_path, lam):
    folder = tmp_path / "dode_lambdas"
    paths = [lam.save_new(folder, "sd15 euler/8 steps") for _ in range(2)]
    assert [os.path.basename(p) for p in paths] == ["8_steps.safetensors", "8_steps_2.safetensors"]
    assert os.path.basename(lam.save_new(folder, "../../escape.safetensors")) == "escape.safetensors"
    assert os.path.basename(lam.save_new(folder, "..")) == "lambdas.safetensors"
    assert sorted(os.listdir(tmp_path)) == ["dode_lambdas"]
    for path in paths:
        load_lambdas(path)


def test_a_failed_save_new_leaves_no_placeholder(tmp_path, lam):
    bad = Lambdas(torch.tensor([[0.0], [float("nan")]]), (1.0, 0.5), {"base_sampler": "euler", "steps": "2"})
    with pytest.raises(LambdaFileError, match="non-finite"):
        bad.save_new(tmp_path, "bad")
    assert os.listdir(tmp_path) == []
