"""Mirrors modules/sd_samplers_kdiffusion.py of A1111 1.10 (the 1.7+ file with CFGDenoiserKDiffusion and
KDiffusionSampler(sd_samplers_common.Sampler); its 1.10 table as carried into Forge at commit e26abf8 "Gradio 4 +
WebUI 1.10"), Forge (commit dfdcbab) and reForge (commit 3b56b26):

- samplers_k_diffusion: the (label, funcname, aliases, options) table of the host being stood in: A1111 1.10's 15
  rows (Restart's funcname is the callable sd_samplers_extra.restart_sampler); Forge appends HeunPP2, IPNDM,
  IPNDM_V and DEIS; reForge inserts "Euler A2" and appends four samplers of its sd_samplers_kdiffusion_smea module.
  The host is Forge when its ``backend`` package is importable, reForge when its "sd_sampling" setting exists;
- KDiffusionSampler(funcname, sd_model): ``func = funcname if callable(funcname) else getattr(<module>,
  funcname)`` (reForge: the module its setting chose, then sd_samplers_kdiffusion_smea), ``extra_params`` looked up
  by funcname;
- sample(p, x, ...): sigmas from ``p.sampler_noise_scheduler_override`` or the scheduler (here Karras over
  the model's sigma range), ``x = x * sigmas[0]``, initialize(p), then launch_sampling(steps, lambda:
  func(model_wrap_cfg, x, extra_args=..., disable=False, callback=callback_state, sigmas=sigmas, **extra));
- the CFG denoiser raises InterruptedException when ``state.interrupted or state.skipped`` before every model
  call (modules/sd_samplers_cfg_denoiser.py), counts its calls in ``step`` and here calls ``shared.sd_model``."""

import importlib.util

import k_diffusion.sampling

from modules import sd_samplers_common, sd_samplers_extra, shared
from modules.shared import state

FORGE = importlib.util.find_spec("backend") is not None
REFORGE = "sd_sampling" in shared.opts.data

samplers_k_diffusion = [
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("DPM++ SDE", "sample_dpmpp_sde", ["k_dpmpp_sde"], {"scheduler": "karras", "second_order": True,
                                                         "brownian_noise": True}),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", ["k_dpmpp_2m_sde"], {"scheduler": "exponential", "brownian_noise": True}),
    ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", ["k_dpmpp_2m_sde_heun"], {"scheduler": "exponential",
                                                                          "brownian_noise": True,
                                                                          "solver_type": "heun"}),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", ["k_dpmpp_2s_a"], {"scheduler": "karras", "uses_ensd": True,
                                                                   "second_order": True}),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", ["k_dpmpp_3m_sde"], {"scheduler": "exponential",
                                                                 "discard_next_to_last_sigma": True,
                                                                 "brownian_noise": True}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("LMS", "sample_lms", ["k_lms"], {}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
    ("DPM2", "sample_dpm_2", ["k_dpm_2"], {"scheduler": "karras", "discard_next_to_last_sigma": True,
                                           "second_order": True}),
    ("DPM2 a", "sample_dpm_2_ancestral", ["k_dpm_2_a"], {"scheduler": "karras", "discard_next_to_last_sigma": True,
                                                         "uses_ensd": True, "second_order": True}),
    ("DPM fast", "sample_dpm_fast", ["k_dpm_fast"], {"uses_ensd": True}),
    ("DPM adaptive", "sample_dpm_adaptive", ["k_dpm_ad"], {"uses_ensd": True}),
    ("Restart", sd_samplers_extra.restart_sampler, ["restart"], {"scheduler": "karras", "second_order": True}),
]
if FORGE:
    samplers_k_diffusion += [
        ("HeunPP2", "sample_heunpp2", ["heunpp2"], {}),
        ("IPNDM", "sample_ipndm", ["ipndm"], {}),
        ("IPNDM_V", "sample_ipndm_v", ["ipndm_v"], {}),
        ("DEIS", "sample_deis", ["deis"], {}),
    ]
if REFORGE:
    from modules import sd_samplers_kdiffusion_smea

    samplers_k_diffusion.insert(7, ("Euler A2", "sample_euler_a2", ["k_euler_a2"], {"uses_ensd": True}))
    samplers_k_diffusion += [
        ("Euler Dy", "sample_euler_dy", ["k_euler_dy"], {}),
        ("Euler SMEA Dy", "sample_euler_smea_dy", ["k_euler_smea_dy"], {}),
        ("Euler Negative", "sample_euler_negative", ["k_euler_negative"], {}),
        ("Euler Negative Dy", "sample_euler_dy_negative", ["k_euler_dy_negative"], {}),
    ]
else:
    sd_samplers_kdiffusion_smea = None

sampler_extra_params = {
    "sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_heun": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_dpm_2": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
}


def sampling_module():
    return getattr(sd_samplers_common, "sampling", k_diffusion.sampling)


def find_function(funcname):
    """reForge: the chosen sampling module, then sd_samplers_kdiffusion_smea; A1111 / Forge: k_diffusion.sampling."""
    for module in (sampling_module(), sd_samplers_kdiffusion_smea):
        if module is not None and hasattr(module, funcname):
            return getattr(module, funcname)
    return None


class CFGDenoiserKDiffusion:
    def __init__(self, sampler):
        self.sampler = sampler
        self.p = None
        self.step = 0
        self.steps = self.total_steps = None

    def __call__(self, x, sigma, uncond=None, cond=None, cond_scale=None, s_min_uncond=None, image_cond=None):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        denoised = shared.sd_model(x, sigma)
        self.step += 1
        return denoised


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.extra_params = sampler_extra_params.get(funcname, [])
        self.options = options or {}
        self.func = funcname if callable(funcname) else find_function(funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)

    def get_sigmas(self, p, steps):
        if p.sampler_noise_scheduler_override:
            return p.sampler_noise_scheduler_override(steps)
        model = shared.sd_model
        return k_diffusion.sampling.get_sigmas_karras(steps, model.sigma_min, model.sigma_max).double()

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x.double() * sigmas[0]
        extra_params_kwargs = self.initialize(p)
        extra_params_kwargs["sigmas"] = sigmas
        self.last_latent = x
        self.sampler_extra_args = {"cond": conditioning, "image_cond": image_conditioning,
                                   "uncond": unconditional_conditioning, "cond_scale": p.cfg_scale,
                                   "s_min_uncond": 0.0}
        return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args,
                                                             disable=False, callback=self.callback_state,
                                                             **extra_params_kwargs))


samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model),
                                   aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
    if callable(funcname) or find_function(funcname) is not None
]
