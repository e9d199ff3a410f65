"""The host-independent WebUI logic (dode_webui), on the real dode_core with small models: sampler names and
options, λ file resolution, infotext fields, the D-ODE sampler function and the distill job."""

import hashlib
import json
import os
import re
import types

import pytest
import torch

from dode_core import Lambdas, ScheduleMismatchError, distill, load_lambdas, sample
from dode_core.rules import MAX_TEACHER_STEPS, MIN_BATCH, proof_summary
from dode_webui import (
    DistillProgress,
    DistillRefusedError,
    DistillRequest,
    LambdaResolutionError,
    RunContext,
    check_sampler_name,
    file_hash,
    hijack_free,
    infotext_fields,
    list_lambda_files,
    make_dode_sampler,
    offered_samplers,
    parse_distill_request,
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
    return distill(GaussianDenoiser(), noise() * sigmas[0], sigmas, getattr(K, sampler), teacher_factor=10)


HOST_TABLE = [  # rows shaped like a host's sd_samplers_kdiffusion.samplers_k_diffusion
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras", "brownian_noise": True}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Euler Karras", "sample_euler", ["k_euler_ka"], {"scheduler": "karras"}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
    ("Missing", "sample_nothing", [], {}),
]


@pytest.fixture
def specs(K):
    def refusal(function):
        return "injects noise" if "ancestral" in function.__name__ else None

    return offered_samplers(HOST_TABLE, lambda name: getattr(K, name, None), refusal)[0]


def spec(label):
    import k_diffusion.sampling as sampling

    found, _ = offered_samplers(HOST_TABLE, lambda name: getattr(sampling, name, None), lambda function: None)
    return spec_for_label(label, found)


# ---- names and options -----------------------------------------------------------------------------------------

def test_the_offer_is_the_hosts_table_minus_what_d_ode_cannot_fit(K):
    def refusal(function):
        return "injects noise" if "ancestral" in function.__name__ else None

    found, refused = offered_samplers(HOST_TABLE, lambda name: getattr(K, name, None), refusal,
                                      scheduler_names=("karras", "Karras"))
    assert [(s.label, s.base_label, s.base_name, s.aliases) for s in found] == [
        ("D-ODE DPM++ 2M", "DPM++ 2M", "dpmpp_2m", ("dode_dpmpp_2m",)),
        ("D-ODE Euler", "Euler", "euler", ("dode_euler",)),  # "Euler Karras" is the same function: offered once
        ("D-ODE Heun", "Heun", "heun", ("dode_heun",)),
    ]
    assert refused == {"Euler a": "injects noise", "Missing": "this host's k-diffusion has no such function"}


def test_a_sampler_that_breaks_on_the_stand_in_is_not_offered(K):
    def refusal(function):
        raise RuntimeError("boom")

    found, refused = offered_samplers(HOST_TABLE[2:3], lambda name: getattr(K, name), refusal)
    assert found == [] and refused == {"Euler": "it failed on a stand-in denoiser (RuntimeError: boom)"}


@pytest.mark.parametrize("name", ["D-ODE Euler Karras", "D-ODE Euler simple", "D-ODE SGMUniform",
                                  "D-ODE Heun Align Your Steps", "D-ODE Euler Automatic"])
def test_a_name_ending_with_a_scheduler_label_is_refused(name):
    with pytest.raises(ValueError, match="scheduler label"):
        check_sampler_name(name)


def test_the_hosts_own_scheduler_labels_are_checked_too():
    check_sampler_name("D-ODE Euler Turbo")
    with pytest.raises(ValueError, match="'turbo'"):
        check_sampler_name("D-ODE Euler Turbo", scheduler_names=("turbo", "Turbo"))


def test_options_are_json_safe_and_follow_the_hosts_entry_for_the_base(specs):
    heun = spec_for_label("Heun", specs)
    assert sampler_options(heun) == {"second_order": True}
    assert sampler_options(spec_for_label("DPM++ 2M", specs)) == {"scheduler": "karras"}  # never brownian_noise
    json.dumps([sampler_options(s) for s in specs])
    with pytest.raises(ValueError, match="JSON"):
        sampler_options(type(heun)(heun.label, heun.base_label, heun.funcname, heun.base_name, (),
                                   {"scheduler": object()}))


def test_spec_lookup_by_d_ode_name_or_base_name(specs):
    assert spec_for_label("Euler", specs).label == "D-ODE Euler"
    assert spec_for_label("D-ODE DPM++ 2M", specs).base_name == "dpmpp_2m"
    assert spec_for_label("Euler a", specs) is None


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
    found = resolve_lambdas(folder, "auto", "euler", karras(6)[:-1].tolist())
    assert os.path.basename(found.path) == "euler_6.safetensors" and found.lam.calls == 6 and found.schedule is None
    found = resolve_lambdas(folder, None, "dpmpp_2m", karras(6)[:-1].tolist())
    assert os.path.basename(found.path) == "dpmpp_2m_6.safetensors"


def test_auto_takes_the_newest_of_several_matches(folder, karras):
    newer = os.path.join(folder, "euler_6_again.safetensors")
    with open(os.path.join(folder, "euler_6.safetensors"), "rb") as source, open(newer, "wb") as target:
        target.write(source.read())
    os.utime(newer, ns=(2_000_000_000 * 10**9,) * 2)
    assert resolve_lambdas(folder, "", "euler", karras(6)[:-1].tolist()).path == newer


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
    base = {"checkpoint_name": "sd15 test", "prompt": "a cat", "negative_prompt": "blurry", "cfg": 7.0, "seed": 1234,
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
            meta["scheduler"], meta["checkpoint_name"]) == ("euler", "5", "a cat", "blurry", "7.0", "1234", "Karras",
                                                            "sd15 test")
    total = progress[-1][1]
    # dode_core reports 0 of total before the first model call, then every call (teacher, student, held-out runs)
    assert progress == [(done, total) for done in range(total + 1)] and total > 4 * 5 + 5
    assert job.done and job.saved_path == path


def test_the_distill_job_refuses_a_batch_too_large_for_any_host(tmp_path, K, karras, monkeypatch):
    import dode_core.rules

    monkeypatch.setattr(dode_core.rules, "MAX_FIT_VALUES", 100)
    model = FakeCFGDenoiser()
    with pytest.raises(DistillRefusedError) as refused:
        run_distill_job(model, noise() * 80, karras(4), K.sample_euler, str(tmp_path), request())
    assert "latents of" in str(refused.value) and "at most 100" in str(refused.value)
    assert model.calls == 0 and os.listdir(tmp_path) == []


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


def test_a_distill_request_in_the_sampler_function_fits_saves_and_samples_with_the_new_file(tmp_path, K, karras):
    sigmas = karras(5)
    x = noise(seed=5) * sigmas[0]
    job = request()
    context = RunContext(folder=str(tmp_path), distill=job)
    func = make_dode_sampler(spec("D-ODE Euler"), lambda: K.sample_euler, lambda model: context)
    got = func(FakeCFGDenoiser(), x, sigmas, extra_args=dict(EXTRA_ARGS))
    assert job.done and list_lambda_files(str(tmp_path)) == [os.path.basename(job.saved_path)]
    job_file = load_lambdas(job.saved_path)
    expected = sample(FakeCFGDenoiser(), x, sigmas, K.sample_euler, job_file, extra_args=dict(EXTRA_ARGS))
    assert torch.equal(got, expected)
    assert context.infotext == {**infotext_fields(job.saved_path), "D-ODE held-out RMSE": proof_summary(job_file)}
    count = job_file.heldout()[2]
    assert re.fullmatch(rf"base 0\.\d+ -> D-ODE \S+ \(0\.\d\dx ± 0\.\d\d, {count} latents, each with λ fitted on the "
                        r"others\)", proof_summary(job_file))


# ---- distill arguments, progress, the host's random stream -----------------------------------------------------------

def test_distill_arguments_take_defaults_for_none_and_are_bounded():
    request = parse_distill_request(20, None, None, None, None, ["Euler", "Heun"])
    fields = ("teacher_factor", "history", "teacher", "fit_schedule")
    assert [getattr(request, name) for name in fields] == [10, 1, "auto", False]
    request = parse_distill_request(8, "12", "auto", "Heun", True, ["Euler", "Heun"])
    assert [getattr(request, name) for name in fields] == [12, "auto", "Heun", True]
    for factor in (0, 1, 101, 2.5, True, "٤", "1e400", "nan", 10**400):
        with pytest.raises(DistillRefusedError, match="sub-steps per step must be a whole number from 2 to 100"):
            parse_distill_request(20, factor, 1, "auto", False, [])
    with pytest.raises(DistillRefusedError) as refused:  # the limit every host applies (dode_core.rules)
        parse_distill_request(50, 100, 1, "auto", False, [])
    assert "50 steps x 100" in str(refused.value) and f"at most {MAX_TEACHER_STEPS}" in str(refused.value)
    with pytest.raises(DistillRefusedError, match="teacher 'DDIM' is not one of"):
        parse_distill_request(20, 10, 1, "DDIM", False, ["Euler"])
    assert parse_distill_request(20, None, None, None, None, [], batch_size=4).teacher_factor == 10


@pytest.mark.parametrize("batch_size", [1, "3", 3.0])
def test_a_distill_with_webuis_default_batch_size_is_refused_in_its_words_before_the_run(batch_size):
    """WebUI's Batch size defaults to 1; the leave-one-out proof needs MIN_BATCH images of one batch, and Batch count
    does not add any: the refusal names the slider to raise, before any model call."""
    with pytest.raises(DistillRefusedError) as refused:
        parse_distill_request(20, None, None, None, None, ["Euler"], batch_size=batch_size)
    message = str(refused.value)
    assert f"Batch size of at least {MIN_BATCH}" in message and f"batch size {int(float(batch_size))};" in message
    assert "Batch count" in message and "No λ file was written" in message


def test_progress_is_handed_back_after_a_distill():
    state = types.SimpleNamespace(sampling_steps=6, sampling_step=0, textinfo=None)
    progress = DistillProgress(state)
    progress(3, 30)
    assert (state.sampling_step, state.sampling_steps) == (3, 30)
    assert state.textinfo == "Distilling λ (D-ODE): model call 3/30"
    progress.restore()
    assert (state.sampling_step, state.sampling_steps, state.textinfo) == (0, 6, None)
    progress.restore()  # idempotent
    assert state.sampling_steps == 6


def test_hijack_free_runs_the_sampler_on_the_real_torch_and_puts_the_hosts_object_back(K):
    class Hijack:  # WebUI's TorchHijack: randn_like from the job's generator
        def __init__(self):
            self.draws = 0

        def __getattr__(self, name):
            return getattr(torch, name)

        def randn_like(self, x):
            self.draws += 1
            return torch.zeros_like(x)

    hijack = Hijack()
    K.torch = hijack
    try:
        quiet = hijack_free(K.sample_euler)
        assert quiet.__name__ == "sample_euler"
        x = torch.ones(1, 1, 2, 2)
        quiet(GaussianDenoiser(), x, torch.tensor([1.0, 0.5, 0.0]), disable=True)
        assert hijack.draws == 0 and K.torch is hijack
        K.sample_euler(GaussianDenoiser(), x, torch.tensor([1.0, 0.5, 0.0]), disable=True)
        assert hijack.draws == 2  # the host's own run draws once per step
        with pytest.raises(TypeError):
            quiet(GaussianDenoiser(), x, None, disable=True)
        assert K.torch is hijack
    finally:
        K.torch = torch


def test_held_out_figures_are_shown_when_the_file_has_them(K, karras):
    lam = fitted(K, karras(4))
    plain = Lambdas(lam.lambdas, lam.call_sigmas,
                    {key: value for key, value in lam.metadata.items() if not key.startswith("heldout")})
    assert proof_summary(plain) is None
    proved = Lambdas(lam.lambdas, lam.call_sigmas, {**plain.metadata, "heldout_rmse_base": "0.25",
                                                    "heldout_rmse_dode": "0.05", "heldout_count": "2"})
    assert proof_summary(proved) == "base 0.25 -> D-ODE 0.05 (0.20x, 2 latents, held out of the fit)"


def test_a_refused_request_raises_in_the_sampler_function_before_any_model_call(tmp_path, K, karras):
    model = FakeCFGDenoiser()
    context = RunContext(folder=str(tmp_path), distill=DistillRequest(refused="Distill λ (D-ODE): no."))
    func = make_dode_sampler(spec("D-ODE Euler"), lambda: K.sample_euler, lambda model: context)
    with pytest.raises(DistillRefusedError, match=r"^Distill λ \(D-ODE\): no\.$"):
        func(model, noise() * 80, karras(4), extra_args=dict(EXTRA_ARGS))
    assert model.calls == 0 and os.listdir(tmp_path) == []


def test_a_file_shared_between_hosts_is_as_good_as_a_refit(K):
    """Issue 11 point 5, measured on the digits KDE denoiser: an A1111-fitted file (SD1.5 sigma_min 0.03127) used
    in Forge (0.02917) samples on its own schedule; held-out RMSE to a converged run is within 5% of a Forge
    refit's, and below the base sampler's on Forge's sigmas (6 Euler steps, fit batch 8: 0.1266 shared, 0.1269
    refit, 0.1692 base). Bandwidth 0.3: at 0.05 the KDE is nearly the empirical digits, and the RMSE of 8 fit
    latents measures which training digit each lands on."""
    from models import KDEDenoiser, digits_data

    model = KDEDenoiser(digits_data(), bandwidth=0.3)
    generator = torch.Generator().manual_seed(0)
    fit_noise = torch.randn(8, 1, 8, 8, generator=generator, dtype=torch.float64) * 14.6146
    test_noise = torch.randn(32, 1, 8, 8, generator=generator, dtype=torch.float64) * 14.6146
    reference = K.sample_heun(model, test_noise, K.get_sigmas_karras(100, 0.002, 14.6146).double(), disable=True)
    a1111, forge = (K.get_sigmas_karras(6, low, 14.6146).double() for low in (0.03127, 0.02917))

    def rmse(out):
        return float((out - reference).pow(2).mean().sqrt())

    shared = rmse(sample(model, test_noise, a1111, K.sample_euler,
                         distill(model, fit_noise, a1111, K.sample_euler, sigma_min=0.03127)))
    refit = rmse(sample(model, test_noise, forge, K.sample_euler,
                        distill(model, fit_noise, forge, K.sample_euler, sigma_min=0.02917)))
    base = rmse(K.sample_euler(model, test_noise, forge, disable=True))
    assert abs(shared - refit) < 0.05 * refit and shared < 0.9 * base, (shared, refit, base)


