"""scripts/dode_webui.py against a minimal stand-in of the WebUI modules it touches (tests/webui_stub/, each file
naming the real file and version it mirrors): sampler registration, the settings, the script's distill
preparation, and one sampler run through the constructed KDiffusionSampler's function."""

import importlib.util
import json
import os
import sys
import types

import pytest
import torch

from dode_core import load_lambdas, sample
from models import GaussianDenoiser

TESTS = os.path.dirname(os.path.abspath(__file__))
STUB = os.path.join(TESTS, "webui_stub")
SCRIPT = os.path.join(os.path.dirname(TESTS), "scripts", "dode_webui.py")
D_ODE_NAMES = ["D-ODE Euler", "D-ODE DPM++ 2M", "D-ODE Heun", "D-ODE LMS", "D-ODE DPM2"]


def _drop_stub_modules():
    for name in list(sys.modules):
        if name == "modules" or name.startswith("modules.") or name == "dode_webui_script":
            del sys.modules[name]


@pytest.fixture
def webui(tmp_path, K):
    """Puts the stand-in on sys.path; ``load(forge=False, before=None)`` executes the script as WebUI does and
    returns the host's modules. Everything is removed again afterwards. (K: the real k-diffusion, imported
    quietly, which the stand-in uses.)"""
    sys.path.insert(0, STUB)
    _drop_stub_modules()

    def load(forge=False, before=None):
        from modules import paths, sd_samplers, shared

        paths.models_path = str(tmp_path / "models")
        if forge:  # newer Forge has sd_samplers.add_sampler; A1111 does not
            added = []

            def add_sampler(data):
                added.append(data.name)
                sd_samplers.forge_add_sampler(data)

            sd_samplers.add_sampler = add_sampler
            sd_samplers.added = added
        if before is not None:
            before(sd_samplers)
        spec = importlib.util.spec_from_file_location("dode_webui_script", SCRIPT)
        script = importlib.util.module_from_spec(spec)
        sys.modules["dode_webui_script"] = script
        spec.loader.exec_module(script)
        return types.SimpleNamespace(script=script, sd_samplers=sd_samplers, shared=shared,
                                     folder=str(tmp_path / "models" / "dode_lambdas"))

    yield load
    _drop_stub_modules()
    sys.path.remove(STUB)


def test_names_appear_in_every_registry_view(webui):
    host = webui()
    sd_samplers = host.sd_samplers
    names = [data.name for data in sd_samplers.all_samplers]
    assert names[-len(D_ODE_NAMES):] == D_ODE_NAMES
    for name in D_ODE_NAMES:
        assert sd_samplers.all_samplers_map[name].name == name
        assert sd_samplers.samplers_map[name.lower()] == name
        assert name in [data.name for data in sd_samplers.samplers]  # what the dropdown lists
    assert sd_samplers.samplers_map["dode_dpmpp_2m"] == "D-ODE DPM++ 2M"  # aliases too
    assert sd_samplers.get_sampler_and_scheduler("D-ODE DPM++ 2M", "Karras") == ("D-ODE DPM++ 2M", "Automatic")


def test_registering_again_duplicates_nothing(webui):
    host = webui()
    before = list(host.sd_samplers.all_samplers)
    assert host.script.register_samplers() == []
    assert host.sd_samplers.all_samplers == before
    host.sd_samplers.set_samplers()
    assert len(host.sd_samplers.all_samplers_map) == len(before)


def test_a_cached_fallback_answer_is_cleared(webui):
    def ask_early(sd_samplers):  # e.g. an infotext pasted before the extension registered
        assert sd_samplers.get_sampler_and_scheduler("D-ODE Euler", "Automatic")[0] == "DPM++ 2M"

    host = webui(before=ask_early)
    assert host.sd_samplers.get_sampler_and_scheduler("D-ODE Euler", "Automatic") == ("D-ODE Euler", "Automatic")


def test_forge_add_sampler_is_used_when_present(webui):
    host = webui(forge=True)
    assert host.sd_samplers.added == D_ODE_NAMES
    assert all(name in host.sd_samplers.all_samplers_map for name in D_ODE_NAMES)  # Forge rebinds the map
    assert host.script.register_samplers() == []
    assert host.sd_samplers.added == D_ODE_NAMES


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
    sigmas = karras(4)
    from dode_core import distill

    distill(GaussianDenoiser(), torch.randn(4, 1, 2, 2) * 80, sigmas, K.sample_euler, teacher_factor=2).save(
        os.path.join(host.folder, "a.safetensors"))
    assert info.component_args() == {"choices": ["auto", "a.safetensors"]}


class P:
    """The fields of StableDiffusionProcessingTxt2Img the adapter reads (A1111 1.10 modules/processing.py)."""

    def __init__(self, sampler_name="Euler"):
        self.sampler_name, self.scheduler, self.is_hr_pass = sampler_name, "Karras", False
        self.prompts, self.negative_prompts, self.seeds = ["a cat"], ["blurry"], [42]
        self.cfg_scale, self.width, self.height = 6.5, 64, 64
        self.sd_model_name, self.sd_model_hash = "tiny", "abc123"
        self.extra_generation_params = {"Schedule type": "Karras"}


class CFGDenoiser:
    """A denoiser with ``p`` set, as Sampler.initialize leaves WebUI's CFG denoiser."""

    def __init__(self, p):
        self.p, self.inner = p, GaussianDenoiser()

    def __call__(self, x, sigma, cond=None, uncond=None, cond_scale=None, s_min_uncond=None, image_cond=None):
        return self.inner(x, sigma)


EXTRA_ARGS = {"cond": "c", "uncond": "u", "cond_scale": 6.5, "s_min_uncond": 0.0, "image_cond": None}


def run_script(host, p, **ui):
    values = {"override": "", "distill": False, "teacher_factor": 4, "history": "1", **ui}
    script = host.script.DodeScript()
    script.process(p, values["override"], values["distill"], values["teacher_factor"], values["history"])
    return host.sd_samplers.all_samplers_map[p.sampler_name].constructor(object()).func


def test_a_distill_run_then_a_normal_run_through_the_adapter(webui, K, karras):
    host = webui()
    sigmas = karras(5)
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]

    p = P("Euler")
    func = run_script(host, p, distill=True)
    assert p.sampler_name == "D-ODE Euler"  # the base sampler was switched to its D-ODE entry
    first = func(CFGDenoiser(p), x, sigmas, extra_args=dict(EXTRA_ARGS))
    (name,) = os.listdir(host.folder)
    assert name == "tiny_euler_5steps_karras_cfg6p5_h1.safetensors"
    meta = load_lambdas(os.path.join(host.folder, name)).metadata
    assert (meta["prompt"], meta["negative_prompt"], meta["seed"], meta["model_fingerprint"]) == (
        "a cat", "blurry", "42", "abc123")
    assert p.extra_generation_params["D-ODE lambdas"] == name
    assert host.shared.state.sampling_steps == 4 * 5 + 5  # the distill job drove the progress bar

    second = func(CFGDenoiser(p), x, sigmas, extra_args=dict(EXTRA_ARGS))  # the next batch of the same job
    assert os.listdir(host.folder) == [name] and torch.equal(first, second)

    p2 = P("D-ODE Euler")
    plain = run_script(host, p2)(CFGDenoiser(p2), x, sigmas, extra_args=dict(EXTRA_ARGS))  # setting: auto
    expected = sample(GaussianDenoiser(), x, sigmas, K.sample_euler, load_lambdas(os.path.join(host.folder, name)))
    assert torch.equal(plain, expected)
    assert p2.extra_generation_params["D-ODE lambdas hash"] == p.extra_generation_params["D-ODE lambdas hash"]


def test_interrupt_stops_a_distill_run_and_no_file_is_written(webui, karras):
    host = webui()
    from modules import sd_samplers_common

    p = P("D-ODE Euler")
    func = run_script(host, p, distill=True)
    host.shared.state.interrupted = True
    with pytest.raises(sd_samplers_common.InterruptedException):
        func(CFGDenoiser(p), torch.randn(4, 1, 2, 2) * 80, karras(4), extra_args=dict(EXTRA_ARGS))
    assert not os.path.exists(host.folder) or os.listdir(host.folder) == []


def test_a_run_without_a_file_stops_with_the_message_and_the_override_is_used(webui, karras):
    host = webui()
    p = P("D-ODE Heun")
    with pytest.raises(ValueError, match="no D-ODE λ file fits this run"):
        run_script(host, p)(CFGDenoiser(p), torch.randn(1, 1, 2, 2) * 80, karras(4), extra_args=dict(EXTRA_ARGS))
    p = P("D-ODE Heun")
    with pytest.raises(ValueError, match="mine.safetensors is not in"):
        run_script(host, p, override=" mine ")(CFGDenoiser(p), torch.randn(1, 1, 2, 2) * 80, karras(4),
                                               extra_args=dict(EXTRA_ARGS))


def test_distilling_a_sampler_that_cannot_be_distilled_is_refused_before_sampling(webui):
    host = webui()
    with pytest.raises(ValueError, match="'Euler a' cannot be distilled"):
        run_script(host, P("Euler a"), distill=True)
