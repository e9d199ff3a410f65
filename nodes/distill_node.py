"""The two distill nodes on ComfyUI's V3 schema: a guider (or the preset's model, prompts and cfg), sigmas and a fit
batch in; one fit through ComfyUI's own sampling (dode_core.distill), a λ file in models/dode_lambdas, and the
corrected sampler, its sigmas, the file's name, a plot and the text out.

    Distill λ (D-ODE)            DODEDistillGuider  NOISE + GUIDER + SIGMAS + LATENT, as SamplerCustomAdvanced
    Distill λ (D-ODE, CFG)       DODEDistill        the simple preset: MODEL + positive/negative + cfg (the 0.1 node)
"""

from __future__ import annotations

import json
import logging
import math
import os

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.v0_0_2 import io, ui
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

from . import errors, identity, samplers
from ._core import dode_core
from .common import CATEGORY, OUT_TIPS, describe_lines, plot_caption, preview_text
from .folder import CONTENT_KEY, save_folder
from .folder import find_by_content_key as find_reusable
from .plot import plot_fit
from .sampler_node import dode_sampler

log = logging.getLogger(__name__)
rules = dode_core.rules
FIT_SEED = 0  # the noise seed of a distill without a NOISE input: the same inputs give the same file
BATCH_TIP = f"at least {rules.MIN_BATCH}: every latent is judged with λ fitted on the others; 8 to 16 prove sharper"

TIPS = {
    "noise": "Optional. The fit batch's start noise (RandomNoise). Unconnected: a fixed seed (0). The seed does not "
             "make a new file: re-queuing with the same guider, sigmas, latent and settings reuses the file.",
    "guider": "What you sample with: CFGGuider, BasicGuider (+ FluxGuidance), DualCFGGuider, PerpNegGuider or any "
              "other GUIDER. The fit follows it exactly.",
    "sigmas": "The schedule to distill for (BasicScheduler, KarrasScheduler, AYS, ...). Sample with the same "
              "SIGMAS, or with this node's sigmas output.",
    "latent_image": f"The fit batch: its batch size is how many latents λ are fitted on ({BATCH_TIP}). Empty latent: "
                    "text-to-image; a VAE-encoded one: img2img.",
    "sampler_name": "The base sampler D-ODE corrects: the deterministic ODE samplers of this ComfyUI (ancestral, "
                    "SDE and adaptive ones cannot be distilled and are not listed).",
    "teacher_sampler": "The sampler of the fine teacher run the λ are fitted against. 'auto': D-ODE's measured "
                       "default, DPM-Solver++(2M) on the fine grid (more accurate than the student and cheap).",
    "teacher_factor": "Teacher sub-steps per student interval (for Heun, DPM-2 and other two-call samplers: per call "
                      "interval, not per step). A fit costs about steps x factor teacher calls plus one student run, "
                      "each x batch x CFG passes.",
    "history": f"Past differences per call: 1 is the paper's single λ; 2 and 3 fit more terms; 'auto' picks 0 to "
               f"{rules.AUTO_MAX_HISTORY} per call, whichever proves best on held-out latents.",
    "fit_schedule": "Also choose the step sigmas from the teacher run (GITS-style); the sigmas output then carries "
                    "them and the file is self-contained. Off: λ for the SIGMAS given.",
    "filename": "File name in models/dode_lambdas. Empty: <checkpoint>_<sampler>_<steps>steps_<scheduler>_cfg<cfg>_"
                "h<history>. A taken name gets _2, _3, ...: nothing is overwritten.",
    "model": "The model to distill for (as for SamplerCustom).",
    "positive": "Positive conditioning, as for SamplerCustom.",
    "negative": "Negative conditioning, as for SamplerCustom.",
    "cfg": "Classifier-free guidance scale: use the same value in the sampler node.",
    "seed": "Noise seed of the fit batch (0 for a new node). It does not make a new file: re-queuing with the same "
            "model, prompts, cfg, sigmas and settings reuses the file even when the seed was randomized.",
    "batch_size": f"How many latents λ are fitted on ({BATCH_TIP}).",
    "width": "Image width in pixels (the latent is width/8); ignored when a latent is connected.",
    "height": "Image height in pixels (the latent is height/8); ignored when a latent is connected.",
    "latent": "Optional: take the fit batch's size and channels from this latent instead of width/height.",
}

# --- checks that fail before the first model call ------------------------------------------------------------
def check_sigmas(sigmas) -> torch.Tensor:
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1:
        raise errors.InputError("SIGMAS must be a 1-D list of sigmas from a scheduler node.")
    if sigmas.numel() < 2:
        raise errors.InputError("SIGMAS is empty: the scheduler gave no step (BasicScheduler with denoise 0?). "
                                "D-ODE needs at least 2 steps: raise denoise or steps.")
    if not torch.isfinite(sigmas).all():
        raise errors.InputError("SIGMAS holds non-finite values: check the scheduler node.",
                                f"sigmas: {sigmas.tolist()}")
    return sigmas.detach().to("cpu", torch.float32)


def check_fit_size(steps: int, teacher_factor: int, shape=None) -> None:
    """The size limits every host applies (dode_core.rules.fit_size_problem), as a node input error."""
    too_large = rules.fit_size_problem(steps, teacher_factor, shape)
    if too_large:
        raise errors.InputError(too_large)


# --- the fit --------------------------------------------------------------------------------------------------
def run_fit(guider, noise, latent_samples, sigmas, host, teacher, teacher_factor: int, history, fit_schedule: bool,
            seed: int, denoise_mask=None):
    """One teacher run and one student run through ``guider`` (ComfyUI's own model loading, conds, hooks and
    wrappers); returns the fitted Lambdas. The progress bar counts every model call; Cancel stops the fit."""
    result, bar = {}, {}

    def progress(done, total):
        comfy.model_management.throw_exception_if_processing_interrupted()
        if "bar" not in bar:
            bar["bar"] = comfy.utils.ProgressBar(total)
        bar["bar"].update_absolute(done, total)

    # the teacher sub-steps the last interval down to the model's own smallest sigma (a shift patch included)
    sigma_min = float(guider.model_patcher.get_model_object("model_sampling").sigma_min)

    def fit(model_k, x, sigmas_k, extra_args=None, callback=None, disable=None, **options):
        result["lambdas"] = dode_core.distill(model_k, x, sigmas_k, host.sampler_function, extra_args=extra_args,
                                              teacher_factor=teacher_factor, history=history, callback=progress,
                                              options=options, sigma_min=sigma_min, teacher_sampler=teacher,
                                              fit_schedule=fit_schedule)
        return x

    fit_sampler = comfy.samplers.KSAMPLER(fit, extra_options=dict(host.extra_options or {}),
                                          inpaint_options=dict(host.inpaint_options or {}))
    guider.sample(noise, latent_samples, fit_sampler, sigmas, denoise_mask=denoise_mask, disable_pbar=True, seed=seed)
    comfy.model_management.throw_exception_if_processing_interrupted()
    return result["lambdas"]


def distill_node(cls, *, guider, noise, sigmas, latent, sampler_name, teacher_sampler, teacher_factor, history,
                 fit_schedule, filename, names) -> io.NodeOutput:
    """What both distill nodes do once they hold a guider, a noise source and a latent dict.

    names: {"checkpoint": (name, path), "scheduler", "prompt", "negative_prompt"} traced from the prompt (may be
    None/empty).
    """
    sigmas = check_sigmas(sigmas)
    host = samplers.resolve(sampler_name)
    teacher = None if teacher_sampler == rules.AUTO else samplers.resolve(teacher_sampler).sampler_function
    history_arg = rules.parse_history(history)
    patcher = guider.model_patcher
    scales = identity.guidance(guider)
    identity.check_guidance(scales)
    samples = comfy.sample.fix_empty_latent_channels(patcher, latent["samples"])
    mask = latent.get("noise_mask")  # inpainting: the fit follows the masked sampling, as SamplerCustomAdvanced does
    check_fit_size(len(sigmas) - 1, teacher_factor, samples.shape)
    seed = int(getattr(noise, "seed", FIT_SEED) or 0) if noise is not None else FIT_SEED

    weights = identity.weights_digest(patcher)
    key = identity.content_key(
        model=weights, guider=identity.guider_fingerprint(guider), sigmas=[float(s) for s in sigmas],
        sampler=sampler_name, teacher=teacher_sampler, teacher_factor=int(teacher_factor), history=str(history),
        fit_schedule=bool(fit_schedule), latent=list(samples.shape), latent_content=identity.latent_digest(samples),
        mask=identity.latent_digest(mask) if mask is not None else None,
        # not the noise seed: λ do not depend on which noise they were fitted on, and a randomized seed widget
        # must not refit on every queue
        options=repr(sorted((host.extra_options or {}).items())), filename=filename.strip())
    found = find_reusable(key)
    if found is not None:
        name, path, lam = found
        log.info("D-ODE: unchanged inputs, reusing %s (no new fit)", path)
        return _distill_output(cls, name, lam, sigmas, host, reused=True)

    noise_tensor = noise.generate_noise({**latent, "samples": samples}) if noise is not None else \
        comfy.sample.prepare_noise(samples, FIT_SEED)
    try:
        lam = run_fit(guider, noise_tensor, samples, sigmas, host, teacher, int(teacher_factor), history_arg,
                      bool(fit_schedule), seed, denoise_mask=mask)
    except Exception as error:
        readable = errors.for_distill(error, sampler_name, history, int(teacher_factor))
        if readable is error:
            raise
        raise readable from error

    inner = patcher.model
    cfg = scales.get("cfg")
    checkpoint, checkpoint_path = names.get("checkpoint") or (None, None)
    model = identity.run_identity(patcher, checkpoint, checkpoint_path)
    metadata = {
        **model.fields(),
        "model_class": type(inner).__name__,
        "prediction": getattr(inner.model_type, "name", str(inner.model_type)),
        "model_sampling": type(patcher.get_model_object("model_sampling")).__mro__[1].__name__,
        "guider": type(guider).__name__,
        "guidance": json.dumps(scales, sort_keys=True),
        "comfy_sampler": sampler_name,
        "scheduler": "fitted" if lam.schedule_fitted else (names.get("scheduler") or "custom"),
        "seed": seed,
        "prompt": names.get("prompt"),
        "negative_prompt": names.get("negative_prompt"),
        "host": "ComfyUI " + _comfy_version(),
        "cfg": cfg,
        CONTENT_KEY: key,
    }
    stem = filename.strip() or dode_core.naming.lambda_file_stem(
        checkpoint or weights[:8], sampler_name, len(sigmas) - 1, names.get("scheduler") or "custom", cfg, history,
        schedule_fitted=lam.schedule_fitted)
    path = lam.save_new(save_folder(), stem, **rules.host_fields(metadata, reserved=lam.metadata))
    name = os.path.basename(path)
    log.info("D-ODE: saved λ for %s (%d calls) to %s", sampler_name, lam.calls, path)
    return _distill_output(cls, name, dode_core.load_lambdas(path), sigmas, host, reused=False)


def _distill_output(cls, name: str, lam, sigmas, host, reused: bool) -> io.NodeOutput:
    lines = describe_lines(name, lam, "  (reused: same inputs, no new fit)" if reused else "  (new fit)")
    for line in lines:
        log.info("D-ODE: %s", line)
    plot = plot_fit(lam, plot_caption(lam))
    # a copy: ComfyUI's uni_pc writes 0.001 into the last sigma of the tensor it samples with
    out_sigmas = lam.schedule.float() if lam.schedule_fitted and lam.schedule is not None else sigmas.clone()
    sampler = dode_sampler(host, lam, name)
    images = ui.PreviewImage(plot, cls=cls).as_dict()
    text = preview_text(lines)
    return io.NodeOutput(sampler, out_sigmas, name, plot, text,
                         ui={**images, "text": [text], "lambda_file": [name]})


def _comfy_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "unknown"


class DODEDistillGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DODEDistillGuider",
            display_name="Distill λ (D-ODE)",
            category=CATEGORY,
            description="Fits one D-ODE λ per model call of the base sampler against a finer teacher run of the same "
                        "guider, saves them in models/dode_lambdas (or reuses the file of an earlier fit with the "
                        "same inputs) and outputs the corrected sampler and its sigmas.",
            is_output_node=True,
            inputs=[
                io.Noise.Input("noise", optional=True, tooltip=TIPS["noise"]),
                io.Guider.Input("guider", tooltip=TIPS["guider"]),
                io.Sigmas.Input("sigmas", tooltip=TIPS["sigmas"]),
                io.Latent.Input("latent_image", tooltip=TIPS["latent_image"]),
                *_fit_widgets(),
            ],
            outputs=_distill_outputs(),
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, guider, sigmas, latent_image, sampler_name, teacher_sampler, teacher_factor, history,
                fit_schedule, filename, noise=None) -> io.NodeOutput:
        prompt, uid = cls.hidden.prompt, cls.hidden.unique_id
        guider_link = _link(prompt, uid, "guider")
        names = {
            "checkpoint": identity.checkpoint_file(prompt, uid, "guider"),
            "scheduler": identity.scheduler_name(prompt, uid, "sigmas"),
            "prompt": _guider_text(prompt, guider_link, ("positive", "conditioning", "cond1")),
            "negative_prompt": _guider_text(prompt, guider_link, ("negative",)),
        }
        return distill_node(cls, guider=guider, noise=noise, sigmas=sigmas, latent=latent_image,
                            sampler_name=sampler_name, teacher_sampler=teacher_sampler, teacher_factor=teacher_factor,
                            history=history, fit_schedule=fit_schedule, filename=filename, names=names)


class DODEDistill(io.ComfyNode):
    """The simple preset (the node id of version 0.1, same input names): a CFGGuider from model, positive,
    negative and cfg, and a batch of empty latents of width x height (or the shape of ``latent``)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DODEDistill",
            display_name="Distill λ (D-ODE, CFG)",
            category=CATEGORY,
            description="Distill λ (D-ODE) with a plain CFG guider built from model, positive, negative and cfg, on a "
                        "batch of empty latents. For Flux, DualCFG or any other guider use 'Distill λ (D-ODE)'.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip=TIPS["model"]),
                io.Conditioning.Input("positive", tooltip=TIPS["positive"]),
                io.Conditioning.Input("negative", tooltip=TIPS["negative"]),
                io.Sigmas.Input("sigmas", tooltip=TIPS["sigmas"]),
                _sampler_widget(),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=TIPS["cfg"]),
                # with its "control after generate" widget, as in 0.1: saved workflows store a value for it
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip=TIPS["seed"]),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip=TIPS["batch_size"]),
                io.Int.Input("width", default=512, min=16, max=16384, step=8, tooltip=TIPS["width"]),
                io.Int.Input("height", default=512, min=16, max=16384, step=8, tooltip=TIPS["height"]),
                *_fit_widgets()[2:4],
                io.String.Input("filename", default="", tooltip=TIPS["filename"]),
                io.Latent.Input("latent", optional=True, tooltip=TIPS["latent"]),
                # new in 0.2; optional so that API prompts written for 0.1 still validate
                *[_optional(widget) for widget in (_fit_widgets()[1], _fit_widgets()[4])],
            ],
            outputs=_distill_outputs(),
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, negative, sigmas, sampler_name, cfg, seed, batch_size, width, height,
                teacher_factor, history, filename, teacher_sampler="auto", fit_schedule=False,
                latent=None) -> io.NodeOutput:
        if not math.isfinite(cfg):
            raise errors.InputError(f"cfg is {cfg}; set a number (7 is typical for SD 1.5).")
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        shape = list(latent["samples"].shape[1:]) if latent is not None else [4, height // 8, width // 8]
        check_fit_size(1, 1, [batch_size, *shape])
        samples = torch.zeros([batch_size, *shape])
        prompt, uid = cls.hidden.prompt, cls.hidden.unique_id
        names = {
            "checkpoint": identity.checkpoint_file(prompt, uid, "model"),
            "scheduler": identity.scheduler_name(prompt, uid, "sigmas"),
            "prompt": identity.prompt_text(prompt, uid, "positive"),
            "negative_prompt": identity.prompt_text(prompt, uid, "negative"),
        }
        return distill_node(cls, guider=guider, noise=Noise_RandomNoise(seed), sigmas=sigmas,
                            latent={"samples": samples},
                            sampler_name=sampler_name, teacher_sampler=teacher_sampler, teacher_factor=teacher_factor,
                            history=history, fit_schedule=fit_schedule, filename=filename, names=names)


def _sampler_widget():
    choices = samplers.supported_samplers()
    # display names (also in locales/en/nodeDefs.json, which frontend 1.32.9 reads) keep the ids of saved workflows
    return io.Combo.Input("sampler_name", display_name="sampler", options=choices,
                          default="euler" if "euler" in choices else choices[0], tooltip=TIPS["sampler_name"])


def _fit_widgets():
    """sampler_name, teacher_sampler, teacher_factor, history, fit_schedule, filename."""
    return [
        _sampler_widget(),
        io.Combo.Input("teacher_sampler", display_name="teacher", options=samplers.teacher_choices(),
                       default=rules.AUTO, tooltip=TIPS["teacher_sampler"]),
        io.Int.Input("teacher_factor", default=rules.DEFAULT_TEACHER_FACTOR, min=rules.MIN_TEACHER_FACTOR,
                     max=rules.MAX_TEACHER_FACTOR, tooltip=TIPS["teacher_factor"]),
        io.Combo.Input("history", options=list(rules.HISTORY_CHOICES), default="1", tooltip=TIPS["history"]),
        io.Boolean.Input("fit_schedule", default=False, tooltip=TIPS["fit_schedule"]),
        io.String.Input("filename", default="", tooltip=TIPS["filename"]),
    ]


def _optional(widget):
    widget.optional = True
    return widget


def _distill_outputs():
    return [
        io.Sampler.Output("sampler_out", display_name="sampler", tooltip=OUT_TIPS["sampler"]),
        io.Sigmas.Output("sigmas_out", display_name="sigmas", tooltip=OUT_TIPS["sigmas"]),
        io.String.Output("lambda_file_out", display_name="lambda_file", tooltip=OUT_TIPS["lambda_file"]),
        io.Image.Output("plot_out", display_name="plot", tooltip=OUT_TIPS["plot"]),
        io.String.Output("info_out", display_name="info", tooltip=OUT_TIPS["info"]),
    ]


def _link(prompt, unique_id, input_name):
    try:
        return prompt[str(unique_id)]["inputs"][input_name]
    except (KeyError, TypeError, IndexError):
        return None


def _guider_text(prompt, guider_link, input_names) -> str:
    """The prompt text feeding one of the guider node's ``input_names``."""
    if not isinstance(guider_link, list) or len(guider_link) != 2:
        return ""
    for input_name in input_names:
        text = identity.prompt_text(prompt, guider_link[0], input_name)
        if text:
            return text
    return ""
