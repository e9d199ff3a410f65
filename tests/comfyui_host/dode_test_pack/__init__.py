"""Test-only ComfyUI node pack: a tiny in-memory UNet (no checkpoint) and an empty conditioning.

Never shipped: the test harness links this folder into a temporary ComfyUI's custom_nodes. Every weight is
initialised explicitly from a seed (ComfyUI's layers skip their own init, leaving torch.empty memory).
"""

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
import torch

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
