"""The host-independent WebUI logic (dode_webui), on the real dode_core with small models: sampler names and
options, λ file resolution, infotext fields, the D-ODE sampler function and the distill job."""

import hashlib
import json
import os

import pytest
import torch

from dode_core import Lambdas, ScheduleMismatchError, distill, load_lambdas, sample
from dode_webui import (
    SAMPLER_TABLE,
    DistillRequest,
    LambdaResolutionError,
    RunContext,
    build_file_stem,
    check_sampler_name,
    file_hash,
    infotext_fields,
    list_lambda_files,
    make_dode_sampler,
    resolve_lambdas,
    run_distill_job,
    sampler_options,
    spec_for_label,
)
from models import GaussianDenoiser


class FakeCFGDenoiser:
    """Stands in for WebUI's CFG denoiser: a denoiser callable with the strict extra_args keys, counting calls."""

    def __init__(self):
        self.inner = GaussianDenoiser()
        self.calls = 0

    def __call__(self, x, sigma, cond=None, uncond=None, cond_scale=None, s_min_uncond=None, image_cond=None):
        self.calls += 1
        return self.inner(x, sigma)


EXTRA_ARGS = {"cond": "c", "uncond": "u", "cond_scale": 7.0, "s_min_uncond": 0.0, "image_cond": None}


def noise(batch=8, seed=0):
    return torch.randn(batch, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fitted(K, sigmas, sampler="sample_euler"):
    return distill(GaussianDenoiser(), noise() * sigmas[0], sigmas, getattr(K, sampler), teacher_factor=4)


def spec(label):
    return spec_for_label(label)


# ---- names and options -----------------------------------------------------------------------------------------

def test_every_table_name_survives_the_scheduler_split():
    labels = [s.label for s in SAMPLER_TABLE]
    assert {"D-ODE Euler", "D-ODE DPM++ 2M", "D-ODE Heun"} <= set(labels)
    for label in labels:
        assert check_sampler_name(label) == label


@pytest.mark.parametrize("name", ["D-ODE Euler Karras", "D-ODE Euler simple", "D-ODE SGMUniform",
                                  "D-ODE Heun Align Your Steps", "D-ODE Euler Automatic"])
def test_a_name_ending_with_a_scheduler_label_is_refused(name):
    with pytest.raises(ValueError, match="scheduler label"):
        check_sampler_name(name)


def test_the_hosts_own_scheduler_labels_are_checked_too():
    check_sampler_name("D-ODE Euler Turbo")
    with pytest.raises(ValueError, match="'turbo'"):
        check_sampler_name("D-ODE Euler Turbo", scheduler_names=("turbo", "Turbo"))


def test_options_are_json_safe_and_follow_the_hosts_entry_for_the_base():
    heun = spec("D-ODE Heun")
    assert sampler_options(heun) == {"second_order": True}
    merged = sampler_options(spec("D-ODE DPM++ 2M"), {"scheduler": "exponential", "brownian_noise": True,
                                                      "uses_ensd": True})
    assert merged == {"scheduler": "exponential"}  # noise options of a host entry are never copied
    json.dumps([sampler_options(s) for s in SAMPLER_TABLE])
    with pytest.raises(ValueError, match="JSON"):
        sampler_options(heun, {"scheduler": object()})


def test_spec_lookup_by_d_ode_name_or_base_name():
    assert spec_for_label("Euler").label == "D-ODE Euler"
    assert spec_for_label("D-ODE DPM++ 2M").base_name == "dpmpp_2m"
    assert spec_for_label("Euler a") is None


# ---- λ resolution ------------------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path, K, karras):
    """Two euler files (4 and 6 Karras steps) and one dpmpp_2m file (6 steps)."""
    path = tmp_path / "dode_lambdas"
    path.mkdir()
    fitted(K, karras(4)).save(path / "euler_4.safetensors")
    fitted(K, karras(6)).save(path / "euler_6.safetensors")
    fitted(K, karras(6), "sample_dpmpp_2m").save(path / "dpmpp_2m_6.safetensors")
    return str(path)


def test_auto_picks_the_file_whose_sampler_and_schedule_match(folder, karras):
    path, lam = resolve_lambdas(folder, "auto", "euler", karras(6)[:-1].tolist())
    assert os.path.basename(path) == "euler_6.safetensors" and lam.calls == 6
    path, _ = resolve_lambdas(folder, None, "dpmpp_2m", karras(6)[:-1].tolist())
    assert os.path.basename(path) == "dpmpp_2m_6.safetensors"


def test_auto_takes_the_newest_of_several_matches(folder, karras):
    newer = os.path.join(folder, "euler_6_again.safetensors")
    with open(os.path.join(folder, "euler_6.safetensors"), "rb") as source, open(newer, "wb") as target:
        target.write(source.read())
    os.utime(newer, ns=(2_000_000_000 * 10**9,) * 2)
    path, _ = resolve_lambdas(folder, "", "euler", karras(6)[:-1].tolist())
    assert path == newer


def test_no_match_lists_every_file_with_its_schedule_and_the_run(folder, karras):
    with open(os.path.join(folder, "broken.safetensors"), "wb") as handle:
        handle.write(b"not a safetensors file")
    run = karras(5)[:-1].tolist()
    with pytest.raises(LambdaResolutionError) as caught:
        resolve_lambdas(folder, "auto", "euler", run)
    message = str(caught.value)
    assert "euler, 5 calls at [80, " in message  # this run
    assert "euler_4.safetensors: euler, 4 steps, 4 calls at [80, " in message  # a candidate and its schedule
    assert "dpmpp_2m_6.safetensors: dpmpp_2m, 6 steps" in message
    assert "broken.safetensors: not usable" in message
    assert "Distill λ (D-ODE)" in message


def test_an_empty_or_missing_folder_says_so(tmp_path, karras):
    assert list_lambda_files(str(tmp_path / "missing")) == []
    with pytest.raises(LambdaResolutionError, match="no .safetensors files"):
        resolve_lambdas(str(tmp_path / "missing"), "auto", "euler", karras(4)[:-1].tolist())


def test_a_named_file_with_another_schedule_stops_with_both_schedules(folder, karras):
    with pytest.raises(ScheduleMismatchError) as caught:
        resolve_lambdas(folder, "euler_4.safetensors", "euler", karras(6)[:-1].tolist())
    message = str(caught.value)
    assert message.startswith("λ file euler_4.safetensors:")
    assert "λ file (euler, 4 steps, 4 model calls)" in message and "this run (6 model calls)" in message


def test_a_named_file_for_another_sampler_or_outside_the_folder_is_refused(folder, karras):
    with pytest.raises(LambdaResolutionError, match="fitted for sampler 'dpmpp_2m', not 'euler'"):
        resolve_lambdas(folder, "dpmpp_2m_6", "euler", karras(6)[:-1].tolist())  # extension optional
    with pytest.raises(LambdaResolutionError, match="not a path"):
        resolve_lambdas(folder, "../euler_6.safetensors", "euler", karras(6)[:-1].tolist())
    with pytest.raises(LambdaResolutionError, match="gone.safetensors is not in .*files there: dpmpp_2m_6"):
        resolve_lambdas(folder, "gone.safetensors", "euler", karras(6)[:-1].tolist())


# ---- infotext -----------------------------------------------------------------------------------------------------

def test_infotext_names_the_file_and_a_stable_hash_of_its_bytes(folder):
    path = os.path.join(folder, "euler_6.safetensors")
    with open(path, "rb") as handle:
        expected = hashlib.sha256(handle.read()).hexdigest()[:10]
    assert infotext_fields(path) == {"D-ODE lambdas": "euler_6.safetensors", "D-ODE lambdas hash": expected}
    assert file_hash(path) == file_hash(path) == expected
    lam = load_lambdas(path)
    Lambdas(lam.lambdas * 0.5, lam.call_sigmas, dict(lam.metadata)).save(path)
    assert file_hash(path) != expected  # a replaced file gets its own hash


# ---- the sampler function ------------------------------------------------------------------------------------------

def test_the_d_ode_sampler_function_equals_dode_core_sample(folder, K, karras):
    sigmas = karras(6)
    x = noise(seed=3) * sigmas[0]
    context = RunContext(folder=folder, choice="auto")
    func = make_dode_sampler(spec("D-ODE Euler"), lambda: K.sample_euler, lambda model: context)
    steps = []
    got = func(FakeCFGDenoiser(), x, sigmas, extra_args=dict(EXTRA_ARGS), callback=steps.append, disable=True)
    expected = sample(FakeCFGDenoiser(), x, sigmas, K.sample_euler,
                      load_lambdas(os.path.join(folder, "euler_6.safetensors")), extra_args=dict(EXTRA_ARGS))
    assert torch.equal(got, expected)
    assert [step["i"] for step in steps] == list(range(6))  # the host's callback drives its progress bar
    assert context.infotext["D-ODE lambdas"] == "euler_6.safetensors"
    assert func.__name__ == "sample_dode_euler"


def test_the_sampler_function_stops_before_any_model_call_without_a_matching_file(folder, K, karras):
    model = FakeCFGDenoiser()
    func = make_dode_sampler(spec("D-ODE Euler"), lambda: K.sample_euler,
                             lambda model: RunContext(folder=folder, choice="auto"))
    with pytest.raises(LambdaResolutionError, match="no D-ODE λ file"):
        func(model, noise() * 80, karras(7), extra_args=dict(EXTRA_ARGS))
    assert model.calls == 0


def test_heun_runs_with_its_own_file(tmp_path, K, karras):
    sigmas = karras(3)
    fitted(K, sigmas, "sample_heun").save(tmp_path / "heun.safetensors")
    func = make_dode_sampler(spec("D-ODE Heun"), lambda: K.sample_heun,
                             lambda model: RunContext(folder=str(tmp_path), choice="heun.safetensors"))
    x = noise() * sigmas[0]
    got = func(FakeCFGDenoiser(), x, sigmas, extra_args=dict(EXTRA_ARGS))
    expected = sample(FakeCFGDenoiser(), x, sigmas, K.sample_heun, load_lambdas(tmp_path / "heun.safetensors"),
                      extra_args=dict(EXTRA_ARGS))
    assert torch.equal(got, expected)


# ---- the distill job ------------------------------------------------------------------------------------------------

def request(**metadata):
    base = {"model": "sd15 test", "prompt": "a cat", "negative_prompt": "blurry", "cfg": 7.0, "seed": 1234,
            "scheduler": "Karras", "host": "test"}
    return DistillRequest(teacher_factor=4, history=1, metadata={**base, **metadata})


def test_the_distill_job_writes_a_valid_file_with_the_run_metadata(tmp_path, K, karras):
    sigmas = karras(5)
    progress = []
    job = request(steps=99)  # a host key that would clash with the fit's own field is ignored
    path, lam = run_distill_job(FakeCFGDenoiser(), noise() * sigmas[0], sigmas, K.sample_euler, str(tmp_path), job,
                                extra_args=dict(EXTRA_ARGS),
                                progress=lambda done, total: progress.append((done, total)))
    assert os.path.basename(path) == "sd15-test_euler_5steps_karras_cfg7_h1.safetensors"
    loaded = load_lambdas(path)
    assert torch.equal(loaded.lambdas, lam.lambdas)
    meta = loaded.metadata
    assert (meta["base_sampler"], meta["steps"], meta["prompt"], meta["negative_prompt"], meta["cfg"], meta["seed"],
            meta["scheduler"], meta["model"]) == ("euler", "5", "a cat", "blurry", "7.0", "1234", "Karras", "sd15 test")
    total = progress[-1][1]
    assert progress == [(done, total) for done in range(1, total + 1)] and total == 4 * 5 + 5
    assert job.done and job.saved_path == path


def test_the_distill_job_never_overwrites(tmp_path, K, karras):
    sigmas = karras(4)
    paths = [run_distill_job(GaussianDenoiser(), noise() * sigmas[0], sigmas, K.sample_euler, str(tmp_path),
                             request())[0] for _ in range(3)]
    assert [os.path.basename(p) for p in paths] == [
        "sd15-test_euler_4steps_karras_cfg7_h1.safetensors",
        "sd15-test_euler_4steps_karras_cfg7_h1_2.safetensors",
        "sd15-test_euler_4steps_karras_cfg7_h1_3.safetensors",
    ]
    for path in paths:
        load_lambdas(path)


def test_an_interrupt_stops_the_job_and_leaves_no_file(tmp_path, K, karras):
    class Interrupted(BaseException):  # WebUI's InterruptedException is a BaseException too
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 7:
            raise Interrupted

    sigmas = karras(5)
    job = request()
    with pytest.raises(Interrupted):
        run_distill_job(FakeCFGDenoiser(), noise() * sigmas[0], sigmas, K.sample_euler, str(tmp_path), job,
                        check_interrupt=check)
    assert os.listdir(tmp_path) == [] and not job.done


def test_file_stem_follows_the_shared_naming():
    assert build_file_stem("SDXL/base 1.0", "dpmpp_2m", 8, "Align Your Steps", 4.5, "auto") == (
        "SDXL-base-1.0_dpmpp_2m_8steps_align-your-steps_cfg4p5_hauto")
    assert build_file_stem("", "euler", 4, None, None, 2) == "model_euler_4steps_automatic_h2"


def test_a_distill_request_in_the_sampler_function_fits_saves_and_samples_with_the_new_file(tmp_path, K, karras):
    sigmas = karras(5)
    x = noise(seed=5) * sigmas[0]
    job = request()
    context = RunContext(folder=str(tmp_path), distill=job)
    func = make_dode_sampler(spec("D-ODE Euler"), lambda: K.sample_euler, lambda model: context)
    got = func(FakeCFGDenoiser(), x, sigmas, extra_args=dict(EXTRA_ARGS))
    assert job.done and list_lambda_files(str(tmp_path)) == [os.path.basename(job.saved_path)]
    expected = sample(FakeCFGDenoiser(), x, sigmas, K.sample_euler, load_lambdas(job.saved_path),
                      extra_args=dict(EXTRA_ARGS))
    assert torch.equal(got, expected)
    assert context.infotext == infotext_fields(job.saved_path)
