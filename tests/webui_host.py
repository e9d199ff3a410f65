"""A stand-in WebUI host (tests/webui_stub/) with scripts/dode_webui.py loaded into it, as WebUI loads it.

``stand_in_host(kind, models_path)`` is a context manager yielding the host: "A1111" (1.10), "Forge" (the 2024
backend: its table, its vendored k_diffusion.sampling, sd_samplers.add_sampler) or "reForge" (its table and the
sampling module its "sd_sampling" setting chose: ``backend`` = "A1111" or "ldm patched (Comfy)"). Everything it
changes (sys.path, sys.modules, k-diffusion's ``torch`` global, the dode loggers) is put back on exit, so the tests
and tests/webui_doc.py (the generated sampler tables of docs/webui.md) can load one host after another.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import types

import torch

from models import GaussianDenoiser

TESTS = os.path.dirname(os.path.abspath(__file__))
STUB = os.path.join(TESTS, "webui_stub")
FORGE_STUB = os.path.join(STUB, "forge")
SCRIPT = os.path.join(os.path.dirname(TESTS), "scripts", "dode_webui.py")
REFORGE_MODULES = {"A1111": "k_diff.k_diffusion.sampling", "ldm patched (Comfy)": "ldm_patched.k_diffusion.sampling"}
HOSTS = ("A1111", "Forge", "reForge")
A1111_SIGMA_MIN, FORGE_SIGMA_MIN, SIGMA_MAX = 0.03127, 0.02917, 14.6146  # SD1.5: fp16 table vs recomputed
DODE_LOGGERS = ("dode_webui", "dode_core")


class SDModel(GaussianDenoiser):
    """shared.sd_model of the stand-in: an exact denoiser with an SD1.5-like sigma range."""

    def __init__(self, sigma_min=A1111_SIGMA_MIN, sigma_max=SIGMA_MAX):
        super().__init__()
        self.sigma_min, self.sigma_max, self.calls = sigma_min, sigma_max, 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        return super().__call__(x, sigma)


def _stub_module(name: str) -> bool:
    return (name == "modules" or name.startswith("modules.") or name == "dode_webui_script"
            or name in REFORGE_MODULES.values() or name == "backend" or name.startswith("backend.")
            or name == "forge_k_diffusion")


def _drop_stub_modules():
    for name in list(sys.modules):
        if _stub_module(name):
            del sys.modules[name]


def separate_sampling_module(name, kdiffusion_sampling):
    """A fresh copy of k-diffusion's sampling.py under ``name`` (own globals, own functions), as reForge ships its own
    k-diffusion forks next to repositories/k-diffusion and Forge vendors its own ``k_diffusion``."""
    spec = importlib.util.spec_from_file_location(name, kdiffusion_sampling.__file__)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "k_diffusion"  # its `from . import utils` resolves in the real package
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _logging_restored():
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate,
                    list(logging.getLogger(name).handlers)) for name in DODE_LOGGERS}
    try:
        yield
    finally:
        for name, (level, propagate, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers[:] = handlers


@contextlib.contextmanager
def stand_in_host(kind: str = "A1111", models_path: str = "/nonexistent/models", *, backend: str = "A1111",
                  before=None, loglevel=None):
    """The stand-in host ``kind`` with the D-ODE script loaded. before(kdiffusion, sd_samplers): called before the
    script is executed (to edit the host's table, ...). loglevel: the host's ``--loglevel`` (None: not given)."""
    if kind not in HOSTS:
        raise ValueError(f"kind must be one of {HOSTS}")
    import k_diffusion
    import k_diffusion.sampling as real_sampling

    paths = [STUB] + ([FORGE_STUB] if kind == "Forge" else [])
    sys.path[:0] = paths
    _drop_stub_modules()
    try:
        with _logging_restored():
            if kind == "Forge":  # Forge's own k_diffusion package shadows k-diffusion's
                import forge_k_diffusion

                forge = forge_k_diffusion.install(separate_sampling_module("k_diffusion.sampling", real_sampling))
                sys.modules["k_diffusion.sampling"] = k_diffusion.sampling = forge
            from modules import shared

            shared.cmd_opts.loglevel = loglevel
            if kind == "reForge":
                for name in REFORGE_MODULES.values():
                    sys.modules[name] = separate_sampling_module(name, real_sampling)
                shared.opts.data["sd_sampling"] = backend
            from modules import paths as host_paths
            from modules import processing, rng, scripts, sd_samplers, sd_samplers_common

            host_paths.models_path = models_path
            shared.sd_model = SDModel()
            if kind == "Forge":  # the 2024 Forge has sd_samplers.add_sampler; A1111 and reForge do not
                added = []

                def add_sampler(data):
                    added.append(data.name)
                    sd_samplers.forge_add_sampler(data)

                sd_samplers.add_sampler = add_sampler
                sd_samplers.added = added
            if before is not None:
                before(sys.modules["modules.sd_samplers_kdiffusion"], sd_samplers)
            spec = importlib.util.spec_from_file_location("dode_webui_script", SCRIPT)
            script = importlib.util.module_from_spec(spec)
            sys.modules["dode_webui_script"] = script
            spec.loader.exec_module(script)

            def run(p, *script_args):
                """process_images(p) with the D-ODE script's args (the API's alwayson_scripts args)."""
                instance = script.DodeScript()
                instance.args_from, instance.args_to = 0, len(script_args)
                p.scripts, p.script_args = scripts.ScriptRunner([instance]), list(script_args)
                return processing.process_images(p)

            yield types.SimpleNamespace(
                kind=kind, script=script, sd_samplers=sd_samplers, shared=shared, state=shared.state,
                folder=os.path.join(models_path, "dode_lambdas"), run=run, rng=rng,
                P=processing.StableDiffusionProcessingTxt2Img, processing=processing, common=sd_samplers_common,
                sampling=script.kdiffusion_sampling(), kdiffusion=sys.modules["modules.sd_samplers_kdiffusion"])
    finally:
        sys.modules["k_diffusion.sampling"] = k_diffusion.sampling = real_sampling
        real_sampling.torch = torch
        _drop_stub_modules()
        for path in paths:
            sys.path.remove(path)
