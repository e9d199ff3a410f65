"""The file rules both hosts follow (dode_core/file_rules.py): which file "auto" picks and when a file's own schedule
stands in, which latents a file serves, and which model a file says it was fitted for."""

import hashlib
import os

import pytest
import torch

from dode_core import (
    FileChoice,
    LambdaFileError,
    Lambdas,
    ModelMismatchError,
    ScheduleMismatchError,
    choose_file,
    same_sampler,
    sample,
    use_file,
)
from dode_core.file_rules import ModelIdentity, file_sha256, model_identity, model_mismatch
from dode_core.rules import HOST_SIGMA_RTOL

SCHEDULE = [80.0, 5.0, 0.5, 0.0]
CALLS = SCHEDULE[:-1]


def lam_for(call_sigmas=CALLS, sampler="euler", fitted=False, latent_shape=(4, 8, 8)):
    lambdas = torch.zeros(len(call_sigmas), 1)
    lambdas[1:, 0] = 0.5
    metadata = {"base_sampler": sampler, "steps": str(len(call_sigmas)),
                "schedule": str([*call_sigmas, 0.0]), "schedule_source": "fitted" if fitted else "user",
                "latent_shape": str(list(latent_shape))}
    return Lambdas(lambdas, tuple(call_sigmas), metadata)


def saved(tmp_path, name, lam, age_s=0):
    path = lam.save(tmp_path / f"{name}.safetensors")
    if age_s:
        stamp = os.stat(path).st_mtime_ns - int(age_s * 1e9)
        os.utime(path, ns=(stamp, stamp))
    return path


def test_auto_takes_the_newest_exact_match(tmp_path):
    old, new = saved(tmp_path, "old", lam_for(), age_s=100), saved(tmp_path, "new", lam_for())
    other = saved(tmp_path, "other", lam_for([80.0, 4.0, 0.5]))
    heun = saved(tmp_path, "heun", lam_for(sampler="heun"))
    choice = choose_file([old, new, other, heun], same_sampler("euler", CALLS), SCHEDULE)
    assert isinstance(choice, FileChoice)
    assert (choice.path, choice.schedule, choice.matching) == (new, None, 2)


def test_auto_lists_every_file_when_none_fits(tmp_path):
    other = saved(tmp_path, "other", lam_for([80.0, 4.0, 0.5]))
    with pytest.raises(ScheduleMismatchError) as error:
        choose_file([other], same_sampler("heun", CALLS), SCHEDULE, run="heun, 3 calls")
    message = str(error.value)
    assert "heun, 3 calls" in message and "other.safetensors: euler, 3 steps, 3 calls at [80, 4, 0.5]" in message


def test_the_same_schedule_from_another_host_stands_in_within_the_tolerance(tmp_path):
    """A1111's SD1.5 sigmas and ComfyUI's differ by up to 7%: a file from one host serves the other, sampled on its
    own schedule; two schedulers differ by more than HOST_SIGMA_RTOL and do not."""
    path = saved(tmp_path, "webui", lam_for())
    near = [80.0, 5.0 * (1 + 0.7 * HOST_SIGMA_RTOL), 0.5]
    choice = choose_file([path], same_sampler("euler", near), [80.0, near[1], 0.5, 0.0])
    assert choice.path == path and choice.schedule.tolist() == SCHEDULE and "differ by up to 6.5%" in choice.note
    named = use_file(path, choice.lam, [80.0, near[1], 0.5, 0.0], near)
    assert named.schedule.tolist() == SCHEDULE
    far = [80.0, 5.0 * (1 + 1.5 * HOST_SIGMA_RTOL), 0.5]
    with pytest.raises(ScheduleMismatchError):
        choose_file([path], same_sampler("euler", far), [80.0, far[1], 0.5, 0.0])
    with pytest.raises(ScheduleMismatchError):  # another start sigma: the start latent is at another noise level
        use_file(path, choice.lam, [70.0, 5.0, 0.5, 0.0], [70.0, 5.0, 0.5])


def test_a_fitted_schedule_is_used_when_named_but_never_by_auto(tmp_path):
    path = saved(tmp_path, "fitted", lam_for([80.0, 3.0, 0.3], fitted=True))
    user = [80.0, 5.0, 0.5]
    with pytest.raises(ScheduleMismatchError):
        choose_file([path], same_sampler("euler", user), SCHEDULE)
    named = use_file(path, choose_file([path], same_sampler("euler", [80.0, 3.0, 0.3]), SCHEDULE).lam, SCHEDULE,
                     user)
    assert named.schedule.tolist() == [80.0, 3.0, 0.3, 0.0] and "fitted schedule" in named.note


def test_a_file_for_other_latents_is_passed_over_by_auto_and_refused_when_named(tmp_path):
    demo = saved(tmp_path, "demo-digits16", lam_for(latent_shape=(1, 16, 16)))
    sd = saved(tmp_path, "sd15", lam_for(), age_s=100)
    run_latents = (2, 4, 64, 64)
    assert choose_file([demo, sd], same_sampler("euler", CALLS), SCHEDULE, latent_shape=run_latents).path == sd
    with pytest.raises(ScheduleMismatchError) as error:
        choose_file([demo], same_sampler("euler", CALLS), SCHEDULE, latent_shape=run_latents)
    assert "demo-digits16.safetensors" in str(error.value) and "1 channel" in str(error.value)
    with pytest.raises(ModelMismatchError) as error:
        use_file(demo, lam_for(latent_shape=(1, 16, 16)), SCHEDULE, CALLS, latent_shape=run_latents)
    assert isinstance(error.value, LambdaFileError)
    assert "1 channel" in str(error.value) and "have 4" in str(error.value)


def test_sampling_refuses_another_models_file_before_any_model_call(K):
    calls = []

    def model(x, sigma, **extra_args):
        calls.append(float(sigma[0]))
        return x * 0

    sigmas = torch.tensor(SCHEDULE)
    with pytest.raises(ModelMismatchError) as error:
        sample(model, torch.zeros(2, 4, 8, 8), sigmas, K.sample_euler, lam_for(latent_shape=(1, 16, 16)))
    assert "1 channel" in str(error.value) and calls == []


def test_a_file_without_a_latent_shape_serves_any_latent(tmp_path):
    lam = lam_for()
    del lam.metadata["latent_shape"]
    assert use_file("x.safetensors", lam, SCHEDULE, CALLS, latent_shape=(1, 3, 2)).schedule is None


def test_identity_compares_like_with_like():
    sha = hashlib.sha256(b"checkpoint").hexdigest()
    other = hashlib.sha256(b"another").hexdigest()
    webui_file = ModelIdentity(checkpoint_sha256=sha[:10], checkpoint_name="sd15.safetensors")
    comfy_run = ModelIdentity(checkpoint_sha256=sha, weights_digest="0123456789abcdef")
    assert model_mismatch(webui_file, comfy_run) is None  # the short hash is the full one's first digits
    assert "checkpoint differs" in model_mismatch(webui_file, ModelIdentity(checkpoint_sha256=other))
    comfy_file = ModelIdentity(checkpoint_sha256=sha, weights_digest="0123456789abcdef")
    assert model_mismatch(comfy_file, ModelIdentity(checkpoint_sha256=sha[:10])) is None  # in the WebUI
    assert "weights differ" in model_mismatch(comfy_file, ModelIdentity(sha, "fedcba9876543210"))  # a LoRA
    assert model_mismatch(comfy_file, ModelIdentity(weights_digest="0123456789abcdef")) is None
    assert model_mismatch(webui_file, ModelIdentity(weights_digest="0123456789abcdef")) is None  # nothing to compare
    assert model_mismatch(ModelIdentity(checkpoint_name="a"), ModelIdentity(checkpoint_name="b")) is None


def test_identity_fields_keep_only_hex_digests_and_read_plugin_0_1_files():
    fields = ModelIdentity("ABCDEF0123", "not hex!", "sd15.safetensors").fields()
    assert fields == {"checkpoint_sha256": "abcdef0123", "checkpoint_name": "sd15.safetensors"}
    assert model_identity({"model_fingerprint": "abcdef0123"}).checkpoint_sha256 == "abcdef0123"  # a WebUI file
    comfy = model_identity({"model_fingerprint": "0123456789abcdef", "checkpoint": "sd15.safetensors"})
    assert (comfy.weights_digest, comfy.checkpoint_sha256, comfy.checkpoint_name) == (
        "0123456789abcdef", None, "sd15.safetensors")
    assert model_identity({"model_fingerprint": "a1b2c3d4"}) == ModelIdentity()  # A1111's old 8-digit hash: unknown


def test_file_sha256_is_computed_once_per_file_version(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    assert file_sha256(str(path)) == hashlib.sha256(b"weights").hexdigest()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    file_sha256(str(path))
    assert opened == []
    path.write_bytes(b"other weights")
    os.utime(path, ns=(1, 1))
    assert file_sha256(str(path)) == hashlib.sha256(b"other weights").hexdigest() and opened


def test_the_host_sigma_tolerance_separates_hosts_from_schedulers(K):
    """SD1.5's noise table from fp16 alphas_cumprod (A1111) vs recomputed (Forge/reForge): the largest call-sigma
    gap for Karras, exponential and uniform schedules of 3 to 60 steps is 6.71%; two different schedulers at the
    same steps differ by at least 21%. HOST_SIGMA_RTOL (10%) lies between."""
    from k_diffusion.external import DiscreteSchedule

    from dode_core.file_rules import relative_gap

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    tables = [((1 - acp) / acp) ** 0.5 for acp in (alphas_cumprod.half().double(), alphas_cumprod)]
    assert [round(float(t[0]), 5) for t in tables] == [0.03127, 0.02917]

    def schedules(table, steps):
        low, high = float(table[0]), float(table[-1])
        return [K.get_sigmas_karras(steps, low, high).double(), K.get_sigmas_exponential(steps, low, high).double(),
                DiscreteSchedule(table.float(), quantize=False).get_sigmas(steps).double()]

    host_gap, scheduler_gap = 0.0, 1.0
    for steps in range(3, 61):
        a1111, forge = schedules(tables[0], steps), schedules(tables[1], steps)
        host_gap = max(host_gap, *(relative_gap(a[:-1].tolist(), f[:-1].tolist())
                                   for a, f in zip(a1111, forge, strict=True)))
        scheduler_gap = min(scheduler_gap, *(relative_gap(forge[i][:-1].tolist(), forge[j][:-1].tolist())
                                             for i, j in ((0, 1), (0, 2), (1, 2))))
    assert round(host_gap, 4) == 0.0671 and scheduler_gap > 0.21
    assert host_gap < HOST_SIGMA_RTOL < scheduler_gap
