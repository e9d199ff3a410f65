"""Test-only ComfyUI node pack: a tiny in-memory UNet (no checkpoint), an exact Gaussian-mixture model and an
empty conditioning, plus output nodes that report latents and sigmas to the tests.

Never shipped: the test harness links this folder into a temporary ComfyUI's custom_nodes. Every weight is
initialised explicitly from a seed (ComfyUI's layers skip their own init, leaving torch.empty memory).
"""

import base64

import comfy.k_diffusion.sampling
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.supported_models_base
import torch

from . import gmm

MODEL_TYPES = {
    "eps": comfy.model_base.ModelType.EPS,
    "v_prediction": comfy.model_base.ModelType.V_PREDICTION,
    "edm": comfy.model_base.ModelType.EDM,
    "flow": comfy.model_base.ModelType.FLOW,
    "flux": comfy.model_base.ModelType.FLUX,
}

CONTEXT_DIM = 64


class _TinyConfig(comfy.supported_models_base.BASE):
    latent_format = comfy.latent_formats.SD15
    unet_extra_config = {}
    sampling_settings = {"sigma_data": 1.0}  # EDM: sigma_min/max default to 0.002/120


def tiny_unet_config():
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2],
        "num_res_blocks": [1, 1], "transformer_depth": [1, 0], "transformer_depth_output": [1, 1, 0, 0],
        "transformer_depth_middle": 0, "use_spatial_transformer": True, "context_dim": CONTEXT_DIM,
        "num_head_channels": 16, "num_heads": -1, "use_linear_in_transformer": True, "dtype": torch.float32,
        "adm_in_channels": None,
    }


def build_tiny_model(model_type: str, seed: int, weight_scale: float = 0.5):
    config = _TinyConfig(tiny_unet_config())
    model = comfy.model_base.BaseModel(config, model_type=MODEL_TYPES[model_type], device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.diffusion_model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # norm scales: 1, or the output is exactly 0
                param.fill_(1.0)
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) * (weight_scale / fan_in ** 0.5))
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


# --- the exact Gaussian-mixture model ---------------------------------------------------------------------------
GMM_MODEL_TYPES = ("eps", "flow")
GMM_SHAPE = (4, 8, 8)  # the latent of EmptyLatentImage 64x64
# model calls (apply_model invocations, each one batch) since the server started, for GET /dode_test/gmm_calls
GMM_CALLS = {"apply_model": 0}


class _GMMConfig(_TinyConfig):
    latent_format = comfy.latent_formats.LatentFormat  # scale 1, no shift: latents are data values


class _GMMNet(torch.nn.Module):
    """Holds the mixture as buffers: they are the model's state dict (its fingerprint) and move with it."""

    def __init__(self, mixture):
        super().__init__()
        self.dtype = torch.float32
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("stds", mixture.stds.clone())
        self.register_buffer("weight_logits", mixture.weight_logits.clone())

    def mixture(self):
        return gmm.Mixture(self.means.double(), self.stds.double(), self.weight_logits.double())


class GMMModel(comfy.model_base.BaseModel):
    """A ComfyUI BaseModel whose denoised output is the exact posterior mean E[x0 | x_sigma] of a Gaussian mixture
    (tests/comfyui_host/dode_test_pack/gmm.py); the mixture weights follow the conditioning's value."""

    def __init__(self, model_type: str, seed: int, mixture: str = "separated"):
        config = _GMMConfig({"disable_unet_model_creation": True})
        super().__init__(config, model_type=MODEL_TYPES[model_type], device=torch.device("cpu"))
        self.diffusion_model = _GMMNet(gmm.named_mixture(mixture, int(torch.tensor(GMM_SHAPE).prod()), seed))

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        GMM_CALLS["apply_model"] += 1
        sigma = t.reshape(-1).to(torch.float64)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        flow = isinstance(self.model_sampling, comfy.model_sampling.CONST)
        alpha = 1.0 - sigma if flow else torch.ones_like(sigma)
        if c_crossattn is None:
            cond = torch.zeros(x.shape[0], dtype=torch.float64)
        else:
            cond = c_crossattn.reshape(c_crossattn.shape[0], -1).to(torch.float64).mean(1)
        net = self.diffusion_model
        denoised = gmm.posterior_mean(net.mixture(), x.cpu(), sigma.cpu(), alpha.cpu(), cond.cpu())
        return denoised.to(x.device)


def build_gmm_model(model_type: str, seed: int, mixture: str = "separated"):
    model = GMMModel(model_type, seed, mixture)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class DODETestGMMModel:
    """MODEL: the exact denoiser of a 4x8x8 Gaussian mixture (8 components) conditioned on the conditioning value."""

    CATEGORY = "testing/dode"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_type": (list(GMM_MODEL_TYPES),), "seed": ("INT", {"default": 0, "min": 0})},
                "optional": {"mixture": (list(gmm.MIXTURES),)}}

    def build(self, model_type, seed, mixture="separated"):
        return (build_gmm_model(model_type, seed, mixture),)


class DODETestTinyModel:
    CATEGORY = "testing/dode"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_type": (list(MODEL_TYPES),), "seed": ("INT", {"default": 0, "min": 0})},
                # 0: every matrix is zero, the net predicts no noise, and every ODE sampler is exact
                "optional": {"weight_scale": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 4.0})}}

    def build(self, model_type, seed, weight_scale=0.5):
        return (build_tiny_model(model_type, seed, weight_scale),)


class DODETestConditioning:
    CATEGORY = "testing/dode"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0})}}

    def build(self, value):
        return ([[torch.full((1, 4, CONTEXT_DIM), float(value)), {}]],)


class DODETestLatentStats:
    """Output node: puts the latent's values (and finiteness) into the history entry for the tests to read."""

    CATEGORY = "testing/dode"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def report(self, samples):
        x = samples["samples"].float()
        return {"ui": {"latent": [{"shape": list(x.shape), "finite": bool(torch.isfinite(x).all()),
                                   "values": x.flatten().tolist()}]}}


class DODETestLatentPacked:
    """Output node: the latent's values as base64 of little-endian float32 (compact for 64-latent batches)."""

    CATEGORY = "testing/dode"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def report(self, samples):
        x = samples["samples"].detach().to("cpu", torch.float32).contiguous()
        data = base64.b64encode(x.numpy().astype("<f4").tobytes()).decode("ascii")
        return {"ui": {"latent": [{"shape": list(x.shape), "finite": bool(torch.isfinite(x).all()), "f32": data}]}}


class DODETestLatentAfter:
    """Passes ``samples`` through once ``after_latent`` / ``after_text`` exist: orders independent branches of one
    prompt (ComfyUI runs a node only after all its inputs)."""

    CATEGORY = "testing/dode"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "passthrough"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)},
                "optional": {"after_latent": ("LATENT",), "after_text": ("STRING", {"forceInput": True})}}

    def passthrough(self, samples, after_latent=None, after_text=None):
        return (samples,)


class DODETestSigmas:
    """Output node: the values of a SIGMAS tensor as this node reads them (after ``after``, when connected)."""

    CATEGORY = "testing/dode"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",)}, "optional": {"after": ("LATENT",)}}

    def report(self, sigmas, after=None):
        return {"ui": {"sigmas": [float(s) for s in sigmas.reshape(-1).tolist()]}}


class DODETestReferenceSigmas:
    """SIGMAS for a converged reference run: ComfyUI's Karras schedule of ``steps`` steps from the first sigma of
    ``sigmas`` down to the model's own smallest sigma, then 0 (a fresh tensor)."""

    CATEGORY = "testing/dode"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "sigmas": ("SIGMAS",),
                             "steps": ("INT", {"default": 500, "min": 2, "max": 100000}),
                             "rho": ("FLOAT", {"default": 7.0, "min": 0.1, "max": 100.0})}}

    def build(self, model, sigmas, steps, rho):
        sigma_min = float(model.get_model_object("model_sampling").sigma_min)
        return (comfy.k_diffusion.sampling.get_sigmas_karras(steps, sigma_min, float(sigmas[0]), rho=rho),)


class DODETestShowText:
    CATEGORY = "testing/dode"
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    def show(self, text):
        return {"ui": {"text": [text]}}


class DODETestImageStats:
    CATEGORY = "testing/dode"
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def show(self, image):
        return {"ui": {"image": [{"shape": list(image.shape), "min": float(image.min()), "max": float(image.max()),
                                  "std": float(image.std())}]}}


NODE_CLASS_MAPPINGS = {
    "DODETestTinyModel": DODETestTinyModel,
    "DODETestGMMModel": DODETestGMMModel,
    "DODETestLatentPacked": DODETestLatentPacked,
    "DODETestLatentAfter": DODETestLatentAfter,
    "DODETestSigmas": DODETestSigmas,
    "DODETestReferenceSigmas": DODETestReferenceSigmas,
    "DODETestConditioning": DODETestConditioning,
    "DODETestLatentStats": DODETestLatentStats,
    "DODETestShowText": DODETestShowText,
    "DODETestImageStats": DODETestImageStats,
}


# Two extra sampler names in ComfyUI's own lists (in place, as node packs do), to show that the D-ODE dropdown is
# read from the host at run time and filtered by dode_core: a deterministic copy of Euler must be offered, a
# noise-injecting one must not.
def _register_test_samplers():
    import comfy.k_diffusion.sampling as sampling
    import comfy.samplers

    def sample_test_euler_copy(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return sampling.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    def sample_test_noisy_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        seed = (extra_args or {}).get("seed") or 0
        generator = torch.Generator().manual_seed(int(seed) + 17)
        x = x + 0.01 * torch.randn(x.shape, generator=generator).to(x)
        return sampling.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    for function in (sample_test_euler_copy, sample_test_noisy_euler):
        setattr(sampling, function.__name__, function)
        name = function.__name__.removeprefix("sample_")
        for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
            if name not in names:
                names.append(name)


_register_test_samplers()


def _register_routes():
    """GET /dode_test/gmm_calls: how many times the Gaussian-mixture models were called (apply_model, one batch
    each) since the server started; a test reads it before and after a prompt."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # imported outside a server
        return
    if getattr(PromptServer, "instance", None) is None:
        return

    @PromptServer.instance.routes.get("/dode_test/gmm_calls")
    async def gmm_calls(request):
        return web.json_response(dict(GMM_CALLS))


_register_routes()
