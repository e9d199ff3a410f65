"""Mirrors modules/sd_samplers_common.py of A1111 1.10 (commit 044494d), Forge (commit fa9ec8f) and reForge
(commit 7fd4d1f), which agree on what is kept here:

- SamplerData (a namedtuple with total_steps), InterruptedException (a BaseException);
- TorchHijack(p): ``randn_like(x)`` returns ``p.rng.next()`` (a full batch of the job's noise, whatever x is);
- Sampler.initialize(p): sets ``self.p``, ``model_wrap_cfg.p`` and ``model_wrap_cfg.step = 0`` and replaces the
  ``torch`` global of the k-diffusion sampling module with TorchHijack(p); passes ``s_churn`` & co. only to
  functions whose name has them in ``extra_params`` (a callable funcname has none);
- Sampler.launch_sampling(steps, func): sets ``state.sampling_steps = steps``, ``state.sampling_step = 0``,
  runs func and returns ``last_latent`` on InterruptedException (any other exception propagates);
- Sampler.callback_state(d): ``state.sampling_step = d["i"]``.

reForge picks the sampling module at import by its "sd_sampling" setting: "A1111" -> ``k_diff.k_diffusion``,
"ldm patched (Comfy)" -> ``ldm_patched.k_diffusion``, imported as ``sampling``; it patches that module. Here the
setting is ``shared.opts.data["sd_sampling"]`` (absent on A1111 / Forge) and the tests provide the modules."""

import importlib
import inspect
from collections import namedtuple

import torch

from modules import shared
from modules.shared import state

REFORGE_MODULES = {"A1111": "k_diff.k_diffusion.sampling", "ldm patched (Comfy)": "ldm_patched.k_diffusion.sampling"}
if shared.opts.data.get("sd_sampling") in REFORGE_MODULES:
    sampling = importlib.import_module(REFORGE_MODULES[shared.opts.data["sd_sampling"]])
    patched_module = sampling
else:
    import k_diffusion.sampling as patched_module


class SamplerData(namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


class InterruptedException(BaseException):
    pass


class TorchHijack:
    def __init__(self, p):
        self.rng = p.rng

    def __getattr__(self, item):
        if item == "randn_like":
            return self.randn_like
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def randn_like(self, x):
        return self.rng.next()


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.config = None
        self.last_latent = None
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = 0.0, 0.0, float("inf"), 1.0
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        state.sampling_step = d["i"]
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0
        patched_module.torch = TorchHijack(p)
        extra_params_kwargs = {}
        for param_name in self.extra_params:
            if hasattr(p, param_name) and param_name in inspect.signature(self.func).parameters:
                extra_params_kwargs[param_name] = getattr(p, param_name)
        return extra_params_kwargs
