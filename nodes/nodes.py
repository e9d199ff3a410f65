"""DODEDistill and DODESampler: ComfyUI objects in, dode_core calls, ComfyUI objects out."""

from __future__ import annotations

import hashlib
import logging
import os

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch

from ._core import dode_core
from .folder import FOLDER, save_folder
from .plot import plot_fit

log = logging.getLogger(__name__)
LambdaFileError = dode_core.LambdaFileError
ScheduleMismatchError = dode_core.ScheduleMismatchError
load_lambdas = dode_core.load_lambdas

# Deterministic ODE samplers of ComfyUI whose output is affine in the denoised outputs. Never an ancestral or
# SDE one (dode_core refuses them anyway); names missing from this ComfyUI are left out of the dropdown.
BASE_SAMPLERS = ("euler", "heun", "dpmpp_2m", "ipndm", "ipndm_v", "deis", "lms", "dpm_2", "res_multistep",
                 "gradient_estimation")
HISTORY_CHOICES = ("1", "2", "3", "auto")


def available_samplers() -> list[str]:
    return [name for name in BASE_SAMPLERS if hasattr(comfy.k_diffusion.sampling, "sample_" + name)]


def base_function(name: str):
    if name not in BASE_SAMPLERS:
        raise ValueError(f"'{name}' is not a sampler D-ODE can use; choose one of {', '.join(available_samplers())}.")
    fn = getattr(comfy.k_diffusion.sampling, "sample_" + name, None)
    if fn is None:
        raise ValueError(f"this ComfyUI has no sampler '{name}'.")
    return fn


def model_fingerprint(model) -> str:
    """sha256 (16 hex) over the weights' names, shapes, dtypes and a strided sample of their values, plus the
    patches (LoRAs) applied; cheap on multi-GB checkpoints, different for different weights in practice."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            sample = flat[:: max(1, flat.numel() // 4096)][:4096]
            digest.update(sample.to("cpu", torch.float32).numpy().tobytes())
    for key in sorted(getattr(model, "patches", {}) or {}):
        strengths = [(p[0], p[2]) for p in model.patches[key]]
        digest.update(f"patch:{key}:{strengths}".encode())
    return digest.hexdigest()[:16]


def prompt_texts(prompt, unique_id, input_name: str) -> str:
    """The text of the first text-encode node upstream of ``input_name`` in the API prompt, where available."""
    try:
        link = prompt[str(unique_id)]["inputs"][input_name]
        seen = set()
        frontier = [link]
        while frontier:
            link = frontier.pop(0)
            if not isinstance(link, list) or link[0] in seen:
                continue
            seen.add(link[0])
            inputs = prompt[link[0]]["inputs"]
            for key in ("text", "text_g", "t5xxl", "clip_l"):
                if isinstance(inputs.get(key), str):
                    return inputs[key]
            frontier.extend(v for v in inputs.values() if isinstance(v, list) and len(v) == 2)
    except (KeyError, TypeError, IndexError):
        pass
    return ""


class _Cancelled(Exception):
    pass


class DODEDistill:
    """Runs the teacher and the student through a CFGGuider with the user's conditioning, fits λ with
    dode_core, saves them to models/dode_lambdas and returns a ready SAMPLER."""

    CATEGORY = "sampling/custom_sampling/samplers"
    RETURN_TYPES = ("SAMPLER", "STRING", "IMAGE")
    RETURN_NAMES = ("sampler", "lambda_file", "plot")
    FUNCTION = "distill"
    OUTPUT_NODE = True
    DESCRIPTION = ("Fits one D-ODE λ per model call of the base sampler on these sigmas against a finer teacher run "
                   "of the same model and conditioning, saves them in models/dode_lambdas and outputs the sampler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "sigmas": ("SIGMAS", {"tooltip": "The schedule to distill for (any scheduler node)."}),
                "sampler_name": (available_samplers(), {"default": "euler"}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256,
                                       "tooltip": "Noise latents the λ are fitted on (4 to 16 is reasonable)."}),
                "width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                "teacher_factor": ("INT", {"default": 10, "min": 1, "max": 100,
                                           "tooltip": "Teacher sub-steps per student step."}),
                "history": (list(HISTORY_CHOICES), {"default": "1"}),
                "filename": ("STRING", {"default": "", "tooltip": "File name in models/dode_lambdas (empty: "
                                        "automatic); a taken name gets a counter, never an overwrite."}),
            },
            "optional": {"latent": ("LATENT", {"tooltip": "Take width, height and channels from this latent."})},
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    def distill(self, model, positive, negative, sigmas, sampler_name, cfg, seed, batch_size, width, height,
                teacher_factor, history, filename, latent=None, prompt=None, unique_id=None):
        base = base_function(sampler_name)
        history_arg = history if history == "auto" else int(history)
        if latent is not None:
            shape = list(latent["samples"].shape[1:])
        else:
            shape = [4, height // 8, width // 8]
        empty = comfy.sample.fix_empty_latent_channels(model, torch.zeros([batch_size] + shape))
        noise = comfy.sample.prepare_noise(empty, seed)
        sigmas = sigmas.detach().cpu().float()

        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)

        result = {}
        bar = {}

        def progress(done, total):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if "bar" not in bar:
                bar["bar"] = comfy.utils.ProgressBar(total)
            bar["bar"].update_absolute(done, total)

        def fit(model_k, x, sigmas_k, extra_args=None, callback=None, disable=None):
            result["lambdas"] = dode_core.distill(model_k, x, sigmas_k, base, extra_args=extra_args,
                                                  teacher_factor=teacher_factor, history=history_arg,
                                                  callback=progress)
            return x

        guider.sample(noise, empty, comfy.samplers.KSAMPLER(fit), sigmas, disable_pbar=True, seed=seed)
        lam = result["lambdas"]
        comfy.model_management.throw_exception_if_processing_interrupted()

        inner = model.model
        metadata = {
            "model": type(inner).__name__,
            "prediction": getattr(inner.model_type, "name", str(inner.model_type)),
            "model_sampling": type(model.get_model_object("model_sampling")).__mro__[1].__name__,
            "model_fingerprint": model_fingerprint(model),
            "cfg": float(cfg),
            "seed": int(seed),
            "prompt": prompt_texts(prompt, unique_id, "positive"),
            "negative_prompt": prompt_texts(prompt, unique_id, "negative"),
            "host": "ComfyUI " + _comfy_version(),
        }
        stem = dode_core.lambdas_file.file_stem(filename, f"{metadata['model']}_{sampler_name}_"
                                                          f"{len(sigmas) - 1}steps_h{history}")
        path = lam.save_new(save_folder(), stem, **metadata)
        name = os.path.basename(path)
        log.info("D-ODE: saved λ for %s (%d calls) to %s", sampler_name, lam.calls, path)
        sampler = comfy.samplers.KSAMPLER(_dode_function(base, lam, name))
        return {"ui": {"lambda_file": [name]}, "result": (sampler, name, plot_fit(lam))}


def _comfy_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "unknown"


def _dode_function(base, lam, name: str):
    """The base sampler with ``lam`` applied; a schedule that does not match the file fails with both schedules."""
    inner = dode_core.make_sampler(base, lam)

    def sample_dode(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        try:
            return inner(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        except ScheduleMismatchError as error:
            raise ScheduleMismatchError(f"D-ODE Sampler: λ file '{name}': {error}") from None

    sample_dode.__name__ = inner.__name__
    return sample_dode


class DODESampler:
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced from a λ file in models/dode_lambdas."""

    CATEGORY = "sampling/custom_sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    DESCRIPTION = ("The λ file's base sampler with its D-ODE correction. Use it with the scheduler, steps and "
                   "denoise the file was distilled for; another schedule is refused with both schedules shown.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lambdas": (folder_paths.get_filename_list(FOLDER),
                                         {"tooltip": "A λ file from models/dode_lambdas."})}}

    @classmethod
    def IS_CHANGED(cls, lambdas):
        path = folder_paths.get_full_path(FOLDER, lambdas)
        try:
            stat = os.stat(path)
        except (OSError, TypeError):
            return ""
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def get_sampler(self, lambdas):
        path = folder_paths.get_full_path_or_raise(FOLDER, lambdas)
        lam = load_lambdas(path)
        try:
            base = base_function(lam.base_sampler)
        except ValueError as error:
            raise LambdaFileError(f"{lambdas}: base sampler: {error}") from None
        return (comfy.samplers.KSAMPLER(_dode_function(base, lam, lambdas)),)
