"""scripts/dode_webui.py inside a stand-in of the WebUI (tests/webui_stub/): registration from the host's own
sampler table, the settings, and whole jobs through the mirrored ScriptRunner, processing loop, ImageRNG,
KDiffusionSampler and TorchHijack.

A real A1111, Forge or reForge cannot be installed in CI: none is on PyPI and each clones GitHub repositories
when it first starts. The stand-in mirrors what those hosts do where it matters to the extension, each file
naming the source file and commit it mirrors (tests/webui_stub/README.md): the script runner swallows errors
raised in process(), launch_sampling sets the progress fields, initialize installs TorchHijack(p) on the
k-diffusion module (reForge: the module its setting chose), and every batch gets a fresh ImageRNG.
"""

import contextlib
import json
import os
import sys
import types

import pytest
import torch
from webui_host import A1111_SIGMA_MIN, FORGE_SIGMA_MIN, REFORGE_MODULES, SIGMA_MAX, SDModel, stand_in_host

from dode_core import Lambdas, distill, load_lambdas, sample
from dode_core.rules import MAX_TEACHER_STEPS, proof_summary
from dode_webui import DistillRefusedError
from models import GaussianDenoiser

# the host table's deterministic samplers, in the host's order (tests/webui_stub/modules/sd_samplers_kdiffusion.py)
D_ODE_NAMES = ["D-ODE DPM++ 2M", "D-ODE Euler", "D-ODE LMS", "D-ODE Heun", "D-ODE DPM2", "D-ODE Restart"]
FORGE_D_ODE_NAMES = [*D_ODE_NAMES, "D-ODE IPNDM", "D-ODE IPNDM_V", "D-ODE DEIS"]  # HeunPP2: its stage sigmas rise


@pytest.fixture
def webui(tmp_path):
    """``load(forge=False, reforge=None, before=None, loglevel=None)`` executes the script as WebUI does against the
    stand-in (tests/webui_host.py) and returns the host; everything is restored afterwards."""
    with contextlib.ExitStack() as stack:

        def load(forge=False, reforge=None, before=None, loglevel=None):
            kind = "Forge" if forge else "reForge" if reforge is not None else "A1111"
            return stack.enter_context(stand_in_host(kind, str(tmp_path / "models"), backend=reforge or "A1111",
                                                     before=before, loglevel=loglevel))

        yield load


def files(host):
    return sorted(os.listdir(host.folder)) if os.path.isdir(host.folder) else []


# ---- registration from the host's table -------------------------------------------------------------------------

def test_the_offered_samplers_are_the_hosts_deterministic_ones_in_every_registry_view(webui):
    host = webui()
    sd_samplers = host.sd_samplers
    names = [data.name for data in sd_samplers.all_samplers]
    assert names[-len(D_ODE_NAMES):] == D_ODE_NAMES and len(names) == 15 + len(D_ODE_NAMES)
    for name in D_ODE_NAMES:
        assert sd_samplers.all_samplers_map[name].name == name
        assert sd_samplers.samplers_map[name.lower()] == name
        assert name in [data.name for data in sd_samplers.samplers]  # what the dropdown lists
    assert sd_samplers.samplers_map["dode_dpmpp_2m"] == "D-ODE DPM++ 2M"  # aliases too
    assert sd_samplers.get_sampler_and_scheduler("D-ODE DPM++ 2M", "Karras") == ("D-ODE DPM++ 2M", "Automatic")
    refused = host.script.REFUSED
    assert set(refused) == {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                            "Euler a", "DPM2 a", "DPM fast", "DPM adaptive"}
    assert "noise" in refused["Euler a"]


def test_the_offer_follows_the_hosts_table_not_a_list_of_ours(webui):
    def edit_table(kdiffusion, sd_samplers):  # a host without LMS, with an extra deterministic entry
        table = kdiffusion.samplers_k_diffusion
        table[:] = [row for row in table if row[0] != "LMS"] + [("iPNDM", "sample_lms", ["k_ipndm"], {})]

    host = webui(before=edit_table)
    names = [spec.label for spec in host.script.OFFERED]
    assert "D-ODE LMS" not in names and "D-ODE iPNDM" in names


def test_registering_again_duplicates_nothing(webui):
    host = webui()
    before = list(host.sd_samplers.all_samplers)
    assert host.script.register_samplers() == []
    assert host.sd_samplers.all_samplers == before
    host.sd_samplers.set_samplers()
    assert len(host.sd_samplers.all_samplers_map) == len(before)


def test_a_cached_fallback_answer_is_cleared(webui):
    def ask_early(kdiffusion, sd_samplers):  # e.g. an infotext pasted before the extension registered
        assert sd_samplers.get_sampler_and_scheduler("D-ODE Euler", "Automatic")[0] == "DPM++ 2M"

    host = webui(before=ask_early)
    assert host.sd_samplers.get_sampler_and_scheduler("D-ODE Euler", "Automatic") == ("D-ODE Euler", "Automatic")


def test_forge_add_sampler_is_used_when_present(webui):
    host = webui(forge=True)
    assert host.sd_samplers.added == FORGE_D_ODE_NAMES
    assert all(name in host.sd_samplers.all_samplers_map for name in FORGE_D_ODE_NAMES)  # Forge rebinds the map
    assert host.script.register_samplers() == []
    assert host.sd_samplers.added == FORGE_D_ODE_NAMES


def test_options_are_json_serialisable_and_mirror_the_base(webui):
    sd_samplers = webui().sd_samplers
    json.dumps([{"name": d.name, "aliases": d.aliases, "options": d.options} for d in sd_samplers.all_samplers])
    config = sd_samplers.all_samplers_map
    assert config["D-ODE DPM++ 2M"].options == {"scheduler": "karras"}
    assert config["D-ODE Heun"].total_steps(10) == 20  # second_order, as the host's Heun
    assert config["D-ODE Euler"].options == {}


def test_the_constructor_passes_a_callable_funcname(webui):
    host = webui()
    sampler = host.sd_samplers.all_samplers_map["D-ODE Euler"].constructor(object())
    assert callable(sampler.funcname) and sampler.func is sampler.funcname
    assert sampler.func.__name__ == "sample_dode_euler"
    assert sampler.extra_params == []  # no s_churn etc. reach it


def test_settings_offer_auto_and_the_files_in_the_folder(webui, monkeypatch, K, karras):
    host = webui()
    monkeypatch.setitem(sys.modules, "gradio", types.SimpleNamespace(Dropdown="Dropdown"))
    host.script.on_ui_settings()
    info = host.shared.opts.data_labels["dode_lambdas_file"]
    assert info.default == "auto" and info.component == "Dropdown"
    assert info.component_args() == {"choices": ["auto"]}
    os.makedirs(host.folder)
    distill(GaussianDenoiser(), torch.randn(4, 1, 2, 2) * 80, karras(4), K.sample_euler, teacher_factor=4).save(
        os.path.join(host.folder, "a.safetensors"))
    assert info.component_args() == {"choices": ["auto", "a.safetensors"]}


# ---- jobs through the mirrored processing loop ------------------------------------------------------------------

def test_a_distill_then_a_plain_d_ode_run(webui, K):
    host = webui()
    p = host.P(sampler_name="Euler", steps=5, batch_size=4)
    (first,) = host.run(p, "", True, 4, "1")
    assert p.sampler_name == "D-ODE Euler"  # the base sampler was switched to its D-ODE entry
    (name,) = files(host)
    assert name == "tiny_euler_5steps_karras_cfg7_h1.safetensors"
    lam = load_lambdas(os.path.join(host.folder, name))
    meta = lam.metadata
    assert (meta["prompt"], meta["negative_prompt"], meta["seed"], meta["checkpoint_sha256"]) == (
        "a cat", "blurry", "1234", "abc1234567")
    assert p.extra_generation_params["D-ODE lambdas"] == name
    assert p.extra_generation_params["D-ODE distill"] == "teacher auto x4, history 1"
    heldout = p.extra_generation_params["D-ODE held-out RMSE"]  # the fit's proof, in the job's infotext
    base, dode, count = lam.heldout()
    assert heldout == proof_summary(lam) and f"{count} latents" in heldout and count == 4 and dode < base

    p2 = host.P(sampler_name="D-ODE Euler", steps=5, batch_size=4)
    (plain,) = host.run(p2, "")  # the setting: auto
    x = host.rng.ImageRNG(p.latent_shape, p2.seeds).next().double()
    sigmas = K.get_sigmas_karras(5, A1111_SIGMA_MIN, SIGMA_MAX).double()
    assert torch.equal(plain, sample(GaussianDenoiser(), x * sigmas[0], sigmas, K.sample_euler, lam))
    assert torch.equal(first, plain)  # the distill batch was sampled with the new file
    assert p2.extra_generation_params["D-ODE lambdas hash"] == p.extra_generation_params["D-ODE lambdas hash"]


def test_a_refused_distill_reaches_the_user_instead_of_a_silent_base_run(webui):
    # issue 11, point 1: {"sampler_name": "Euler a", "steps": 2, ..., "alwayson_scripts": {"D-ODE": {"args":
    # ["", true, 2, "1"]}}} returned an "Euler a" image and no file: the runner swallowed process()'s error
    host = webui()
    with pytest.raises(ValueError, match=r"'Euler a' cannot be distilled: it injects noise. Pick one of DPM\+\+ 2M, "
                                         r"Euler, LMS, Heun, DPM2, Restart.*no λ file was written"):
        host.run(host.P(sampler_name="Euler a", steps=2, batch_size=1), "", True, 2, "1")
    assert files(host) == [] and host.shared.sd_model.calls == 0


def test_a_distill_asked_of_img2img_is_refused_not_ignored(webui):
    host = webui()
    instance = host.script.DodeScript()
    instance.is_img2img = True
    p = host.P(sampler_name="D-ODE Euler", steps=4)
    instance.process(p, "", True, 4, "1")
    assert p.dode_distill.refused.startswith("Distill λ (D-ODE) runs in txt2img")


@pytest.mark.parametrize(("args", "facts"), [
    (("", True, 10**9, "1"), ("teacher sub-steps", "2 to 100", "'1000000000'")),
    (("", True, "٤", "1"), ("teacher sub-steps", "'٤'")),
    (("", True, 4, "9"), ("history", "1 to 8", "'9'")),
    (("", True, 4, "1", "Euler a"), ("teacher 'Euler a'", "DPM++ 2M, Euler, LMS, Heun, DPM2, Restart")),
])
def test_bad_distill_arguments_stop_the_job_with_a_message(webui, args, facts):
    host = webui()
    with pytest.raises(DistillRefusedError) as refused:
        host.run(host.P(sampler_name="Euler", steps=5, batch_size=4), *args)
    assert all(fact in str(refused.value) for fact in facts), str(refused.value)
    assert files(host) == [] and host.shared.sd_model.calls == 0


def test_a_distill_at_webuis_default_batch_size_stops_before_any_model_call(webui):
    host = webui()
    with pytest.raises(DistillRefusedError, match=r"Batch size of at least 4 .* This run has batch size 1; raise "
                                                  r"Batch size"):
        host.run(host.P(sampler_name="Euler", steps=5, batch_size=1), "", True, 4, "1")
    assert files(host) == [] and host.shared.sd_model.calls == 0


def test_the_teacher_bound_scales_with_the_steps(webui):
    host = webui()
    with pytest.raises(DistillRefusedError) as refused:
        host.run(host.P(sampler_name="Euler", steps=500, batch_size=1), "", True, 10, "1")
    message = str(refused.value)
    assert "500 steps x 10" in message and f"at most {MAX_TEACHER_STEPS}" in message and "at most 8" in message


def test_none_script_arguments_take_the_defaults(webui):
    host = webui()
    p = host.P(sampler_name="Euler", steps=3, batch_size=4)
    host.run(p, None, True, None, None, None, None)  # the API may send nulls for every argument
    (name,) = files(host)
    meta = load_lambdas(os.path.join(host.folder, name)).metadata
    assert (meta["teacher_factor"], meta["history_mode"]) == ("10", "1")
    host.run(host.P(sampler_name="D-ODE Euler", steps=3, batch_size=4), None, None, None, None, None, None)


def test_the_teacher_is_selectable(webui):
    host = webui()
    host.run(host.P(sampler_name="Euler", steps=3, batch_size=4), "", True, 2, "1", "Heun")
    (name,) = files(host)
    assert load_lambdas(os.path.join(host.folder, name)).metadata["teacher_sampler"] == "heun"


def test_progress_after_a_distill_is_the_sampling_runs(webui):
    # issue 11, point 2: the step total and text stayed at the distill's ("model call 18/18") while sampling
    host = webui()
    seen = []
    p = host.P(sampler_name="Euler", steps=5, batch_size=4)
    original = host.common.Sampler.callback_state

    def watch(sampler, d):
        original(sampler, d)
        seen.append((host.state.sampling_step, host.state.sampling_steps, host.state.textinfo))

    host.common.Sampler.callback_state = watch
    host.run(p, "", True, 4, "1")
    assert seen == [(i, 5, None) for i in range(5)]
    assert host.state.job_no == 1 and host.state.job_count == 1


def counting_draws(host):
    draws = []
    original = host.rng.ImageRNG.next

    def next_(rng):
        draws.append(rng.seeds[0])
        return original(rng)

    host.rng.ImageRNG.next = next_
    return draws


def test_d_ode_runs_and_distills_draw_the_hosts_noise_exactly_as_the_base_sampler(webui):
    # issue 11, point 6: TorchHijack hands p.rng.next() to every torch.randn_like of k-diffusion, and Euler draws
    # one per step; the probe, the teacher and every replay used to draw too
    host = webui()
    draws = counting_draws(host)
    base = host.run(host.P(sampler_name="Euler", steps=5, batch_size=4, n_iter=2))
    base_draws = list(draws)
    assert base_draws == [1234] * 6 + [1238] * 6  # per batch: the start noise and one per step

    draws.clear()
    distilled = host.run(host.P(sampler_name="Euler", steps=5, batch_size=4, n_iter=2), "", True, 4, "1")
    assert draws == base_draws
    draws.clear()
    again = host.run(host.P(sampler_name="D-ODE Euler", steps=5, batch_size=4, n_iter=2), "")
    assert draws == base_draws
    assert torch.equal(distilled[1], again[1])  # later batches: the same images from the same seeds
    assert not torch.equal(base[1], again[1])  # (and D-ODE did change them)


def test_refusal_checks_at_startup_leave_the_hosts_rng_alone(webui, K):
    host = webui()
    p = host.P(sampler_name="Euler", steps=3, batch_size=1)
    host.run(p)
    assert isinstance(K.torch, host.common.TorchHijack)  # the hijack stays installed after a run, as in WebUI
    draws = counting_draws(host)
    assert host.script.register_samplers() == [] and draws == []


@pytest.mark.parametrize("backend", ["A1111", "ldm patched (Comfy)"])
def test_reforge_d_ode_corrects_the_sampler_of_the_module_its_setting_chose(webui, K, backend):
    # issue 11, point 4: reForge's samplers come from k_diff.k_diffusion or ldm_patched.k_diffusion by a setting,
    # not from repositories/k-diffusion's k_diffusion.sampling
    host = webui(reforge=backend)
    chosen = sys.modules[REFORGE_MODULES[backend]]
    assert host.script.kdiffusion_sampling() is chosen
    spec = host.script.spec_for_label("Euler", host.script.OFFERED)
    assert host.script.resolve_function(spec.funcname) is chosen.sample_euler is not K.sample_euler
    draws = counting_draws(host)
    host.run(host.P(sampler_name="Euler", steps=4, batch_size=4), "", True, 4, "1")
    assert isinstance(chosen.torch, host.common.TorchHijack) and K.torch is torch
    assert draws == [1234] * 5  # the chosen module's hijack saw exactly the base sampler's draws


def test_a_file_from_a1111_runs_in_forge_on_its_own_schedule(webui, K):
    # issue 11, point 5: A1111 computes SD1.5's sigma_min from the fp16 table (0.03127), Forge recomputes it
    # (0.02917); the same checkpoint, scheduler and steps must still find the file
    host = webui()
    host.run(host.P(sampler_name="Euler", steps=6, batch_size=4), "", True, 4, "1")
    (name,) = files(host)
    lam = load_lambdas(os.path.join(host.folder, name))
    host.shared.sd_model = SDModel(sigma_min=FORGE_SIGMA_MIN)  # "Forge"
    p = host.P(sampler_name="D-ODE Euler", steps=6, batch_size=4, seed=99)
    (got,) = host.run(p, "")
    note = p.extra_generation_params["D-ODE schedule"]
    assert note == "schedule of the λ file (this host's sigmas differ by up to 6.7%)"
    x = host.rng.ImageRNG(p.latent_shape, p.seeds).next().double()
    forge_sigmas = K.get_sigmas_karras(6, FORGE_SIGMA_MIN, SIGMA_MAX).double()
    assert torch.equal(got, sample(GaussianDenoiser(), x * forge_sigmas[0], lam.schedule, K.sample_euler, lam))


def test_a_file_for_another_scheduler_is_still_refused(webui, K):
    host = webui()
    host.run(host.P(sampler_name="Euler", steps=6, batch_size=4), "", True, 4, "1")
    exponential = K.get_sigmas_exponential(6, A1111_SIGMA_MIN, SIGMA_MAX).double()
    p = host.P(sampler_name="D-ODE Euler", steps=6, batch_size=4)
    p.sampler_noise_scheduler_override = lambda steps: exponential
    with pytest.raises(ValueError, match="no D-ODE λ file fits this run"):
        host.run(p, "")


def test_a_named_file_with_a_fitted_schedule_samples_on_it(webui, K):
    # issue 9: a file whose schedule the fit chose is self-contained; the run takes its sigmas and says so
    host = webui()
    own = K.get_sigmas_exponential(4, 0.1, SIGMA_MAX).double()  # 4 steps, the host's sigma_max
    x0 = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * own[0]
    lam = distill(GaussianDenoiser(), x0, own, K.sample_euler, teacher_factor=4)
    os.makedirs(host.folder)
    path = os.path.join(host.folder, "fitted.safetensors")
    Lambdas(lam.lambdas, lam.call_sigmas, {**lam.metadata, "schedule_source": "fitted"}).save(path)
    p = host.P(sampler_name="D-ODE Euler", steps=10, batch_size=4)
    (got,) = host.run(p, "fitted")
    assert p.extra_generation_params["D-ODE schedule"] == "fitted schedule of the λ file (4 steps)"
    x = host.rng.ImageRNG(p.latent_shape, p.seeds).next().double()
    host_sigmas = K.get_sigmas_karras(10, A1111_SIGMA_MIN, SIGMA_MAX).double()
    assert torch.equal(got, sample(GaussianDenoiser(), x * host_sigmas[0], own, K.sample_euler, load_lambdas(path)))


def test_a_distill_job_can_ask_for_the_schedule_fit(webui, monkeypatch):
    host = webui()
    asked = {}
    import dode_webui.distill_job as job

    real = job.distill

    def spy(*args, **kwargs):
        asked.update(kwargs)
        kwargs.pop("fit_schedule", None)
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "distill", spy)
    p = host.P(sampler_name="Euler", steps=3, batch_size=4)
    host.run(p, "", True, 4, "1", "auto", True)
    assert asked["fit_schedule"] is True and asked["teacher_sampler"] is None
    assert p.extra_generation_params["D-ODE distill"] == "teacher auto x4, history 1, fitted schedule"


def test_a_fit_that_does_not_beat_the_base_reaches_the_user_and_writes_no_file(webui, monkeypatch):
    import dode_webui.distill_job as job
    from dode_core import NoGainError

    def no_gain(*args, callback=None, **kwargs):
        callback(1, 30)
        raise NoGainError("no λ fit beat the base sampler on the 1 held-out latent; no λ file is delivered.")

    monkeypatch.setattr(job, "distill", no_gain)
    host = webui()
    with pytest.raises(NoGainError, match="no λ fit beat the base sampler on the 1 held-out latent"):
        host.run(host.P(sampler_name="Euler", steps=4, batch_size=4), "", True, 4, "1")
    assert files(host) == []
    assert (host.state.sampling_steps, host.state.textinfo) == (4, None)  # the progress bar was handed back


def test_a_distilled_file_is_written_with_the_users_umask(webui):
    # issue 11, point 3: files were written 0600 whatever the umask (the private temp file was renamed)
    host = webui()
    old = os.umask(0o022)
    try:
        host.run(host.P(sampler_name="Euler", steps=3, batch_size=4), "", True, 4, "1")
    finally:
        os.umask(old)
    (name,) = files(host)
    assert os.stat(os.path.join(host.folder, name)).st_mode & 0o777 == 0o644


def test_interrupt_stops_a_distill_and_no_file_is_written(webui):
    host = webui()
    model = host.shared.sd_model
    real = type(model).__call__

    def interrupt_at_the_seventh_call(x, sigma, **extra_args):
        if model.calls == 6:
            host.state.interrupt()  # the Interrupt button, during the teacher run
        return real(model, x, sigma)

    model.__call__ = interrupt_at_the_seventh_call
    host.shared.sd_model = interrupt_at_the_seventh_call
    interrupt_at_the_seventh_call.sigma_min, interrupt_at_the_seventh_call.sigma_max = model.sigma_min, model.sigma_max
    (latent,) = host.run(host.P(sampler_name="Euler", steps=4, batch_size=4), "", True, 4, "1")
    assert files(host) == [] and model.calls == 7
    assert latent.shape == (4, 1, 4, 4)  # launch_sampling returned its last latent, as WebUI does


def test_a_run_without_a_file_stops_with_the_message_and_the_override_is_used(webui):
    host = webui()
    with pytest.raises(ValueError, match="no D-ODE λ file fits this run"):
        host.run(host.P(sampler_name="D-ODE Heun", steps=4, batch_size=1), "")
    with pytest.raises(ValueError, match="mine.safetensors is not in"):
        host.run(host.P(sampler_name="D-ODE Heun", steps=4, batch_size=1), " mine ")


# ---- issue 16: samplers refused at the user's step count; issue 19 and the error box, logs, infotext -----------------

def first_line(error) -> str:
    return str(error).split("\n", 1)[0]


@pytest.mark.parametrize("job", ["distill", "sample"])
def test_restart_is_refused_at_20_steps_before_any_model_call_and_draws_nothing(webui, job):
    # issue 16: A1111's Restart re-adds noise (from the job's RNG, through TorchHijack) only from 20 steps on, so the
    # 8-step check that built the list passed it, and a distill at 20 steps crashed with "The size of tensor a (40)
    # must match the size of tensor b (4)": the probe's one-element latent got p.rng.next(), a full batch of noise
    from dode_core import SamplerRefusedError

    host = webui()
    assert "D-ODE Restart" in host.sd_samplers.all_samplers_map  # deterministic below 20 steps: offered
    draws = counting_draws(host)
    p = host.P(sampler_name="Restart" if job == "distill" else "D-ODE Restart", steps=20, batch_size=4)
    with pytest.raises(SamplerRefusedError) as caught:
        host.run(p, "", *((True, 4, "1") if job == "distill" else ()))
    assert "D-ODE Restart" in first_line(caught.value) and "injects noise at 20 steps" in first_line(caught.value)
    assert host.shared.sd_model.calls == 0 and files(host) == []
    assert draws == [1234]  # the start noise only: no probe drew from the job's random stream


def test_restart_below_20_steps_distills_and_samples(webui):
    host = webui()
    host.run(host.P(sampler_name="Restart", steps=6, batch_size=4), "", True, 4, "1")
    (name,) = files(host)
    assert load_lambdas(os.path.join(host.folder, name)).base_sampler == "restart_sampler"
    host.run(host.P(sampler_name="D-ODE Restart", steps=6, batch_size=4, seed=7), "")


def test_forge_refuses_euler_a_for_its_noise_not_for_an_attribute_it_reads(webui):
    # Forge's sample_euler_ancestral reads model.inner_model.predictor (flow models take another branch): the
    # registration probe's stand-in had no such attribute, and the list said "AttributeError"
    host = webui(forge=True)
    for label in ("Euler a", "DPM2 a"):
        assert "injects noise" in host.script.REFUSED[label] and "AttributeError" not in host.script.REFUSED[label]


def visible_error(host, run):
    """What the WebUI's error box shows: A1111's wrap_gradio_call output as a browser renders it (newlines and runs
    of spaces collapse to one space)."""
    import html
    import re

    from modules import call_queue

    *_, box = call_queue.wrap_gradio_call(run)()
    assert box.startswith("<div class='error'>")
    return re.sub(r"\s+", " ", html.unescape(box[len("<div class='error'>"):-len("</div>")]))


def test_errors_reach_the_error_box_with_what_is_wrong_and_what_to_do_first(webui):
    host = webui()
    shown = visible_error(host, lambda: host.run(host.P(sampler_name="D-ODE Heun", steps=4, batch_size=1), ""))
    summary = shown.split(". ", 1)[0]  # the first sentence, as the user reads the box
    assert summary.startswith("LambdaResolutionError: D-ODE Heun: no λ file fits this run") and len(summary) < 160
    assert "Distill" in shown.split(". ", 2)[1]  # what to do comes next, before the details
    assert "Files there" in shown  # the details follow
    shown = visible_error(host, lambda: host.run(host.P(sampler_name="D-ODE Restart", steps=24, batch_size=1), ""))
    summary = shown.split(". ", 1)[0]
    assert "D-ODE Restart" in summary and "injects noise at 24 steps" in summary and len(summary) < 160


@pytest.mark.parametrize(("loglevel", "shown"), [(None, True), ("WARNING", False)])
def test_the_distill_result_and_the_file_used_reach_the_console_at_the_hosts_default_level(webui, capsys, loglevel,
                                                                                          shown):
    # A1111 1.10 (modules/logging_config.py setup_logging) configures logging only for --loglevel or
    # SD_WEBUI_LOG_LEVEL; by default Python shows WARNING and above only, and the extension's INFO lines were lost
    import logging

    root = logging.getLogger()
    assert root.getEffectiveLevel() == logging.WARNING
    host = webui(loglevel=loglevel)
    host.run(host.P(sampler_name="Euler", steps=4, batch_size=4), "", True, 4, "1")
    host.run(host.P(sampler_name="D-ODE Euler", steps=4, batch_size=4, seed=5), "")
    err = capsys.readouterr().err
    assert ("final-state RMSE to the teacher: base" in err and "λ file tiny_euler_4steps" in err) is shown
    assert root.getEffectiveLevel() == logging.WARNING and not any(
        type(handler).__module__.startswith("dode") for handler in root.handlers)  # the host's config untouched


@pytest.mark.parametrize("forge", [False, True])
def test_the_infotext_gives_the_steps_sampled_on_a_fitted_schedule_and_the_steps_asked(webui, K, forge):
    host = webui(forge=forge)
    own = K.get_sigmas_exponential(4, 0.1, SIGMA_MAX).double()
    x0 = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * own[0]
    lam = distill(GaussianDenoiser(), x0, own, K.sample_euler, teacher_factor=4)
    os.makedirs(host.folder)
    Lambdas(lam.lambdas, lam.call_sigmas, {**lam.metadata, "schedule_source": "fitted"}).save(
        os.path.join(host.folder, "fitted.safetensors"))
    p = host.P(sampler_name="D-ODE Euler", steps=10, batch_size=4)
    host.run(p, "fitted")
    infotext = host.processing.create_infotext(p)
    assert "Steps: 4," in infotext and "Steps: 10" not in infotext
    assert "D-ODE steps requested: 10" in infotext
    plain = host.P(sampler_name="Euler", steps=10, batch_size=1)
    host.run(plain)
    assert "Steps: 10," in host.processing.create_infotext(plain)
