"""The D-ODE nodes on ComfyUI's V3 schema: ComfyUI objects in, dode_core calls, ComfyUI objects out.

    Distill λ (D-ODE)            DODEDistillGuider  NOISE + GUIDER + SIGMAS + LATENT, as SamplerCustomAdvanced
    Distill λ (D-ODE, CFG)       DODEDistill        the simple preset: MODEL + positive/negative + cfg (the 0.1 node)
    D-ODE Sampler                DODESampler        a λ file -> SAMPLER (+ the file's SIGMAS)

The API version is pinned (``comfy_api.v0_0_2``, the newest versioned API ComfyUI 0.3.75 ships; ``latest`` moves).
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

from . import errors, identity, samplers
from ._core import dode_core
from .folder import CONTENT_KEY, full_path, is_shipped, listing_state, ordered_files, save_folder
from .folder import find_by_content_key as find_reusable
from .plot import plot_fit

log = logging.getLogger(__name__)
CATEGORY = "sampling/custom_sampling/samplers"
HISTORY_CHOICES = ("1", "2", "3", "auto")
AUTO_FILE = "auto (newest matching)"
MAX_TEACHER_GRID = 4000  # steps x teacher_factor: each grid point is one teacher call and a kept state
MAX_FIT_VALUES = 1 << 24  # batch x latent values (16.8M: batch 16 of a 16x128x128 Flux latent is 4.2M)
FIT_SEED = 0  # the noise seed of a distill without a NOISE input: the same inputs give the same file

TIPS = {
    "noise": "Optional. The fit batch's start noise (RandomNoise). Unconnected: a fixed seed (0). The seed does not "
             "make a new file: re-queuing with the same guider, sigmas, latent and settings reuses the file.",
    "guider": "What you sample with: CFGGuider, BasicGuider (+ FluxGuidance), DualCFGGuider, PerpNegGuider or any "
              "other GUIDER. The fit follows it exactly.",
    "sigmas": "The schedule to distill for (BasicScheduler, KarrasScheduler, AYS, ...). Sample with the same "
              "SIGMAS, or with this node's sigmas output.",
    "latent_image": "The fit batch: its batch size is how many latents λ are fitted on (4 to 16 is reasonable; "
                    "history 'auto' needs at least 4). Empty latent: text-to-image; a VAE-encoded one: img2img.",
    "sampler_name": "The base sampler D-ODE corrects: the deterministic ODE samplers of this ComfyUI (ancestral, "
                    "SDE and adaptive ones cannot be distilled and are not listed).",
    "teacher_sampler": "The sampler of the fine teacher run the λ are fitted against. 'auto': D-ODE's measured "
                       "default, DPM-Solver++(2M) on the fine grid (more accurate than the student and cheap).",
    "teacher_factor": "Teacher sub-steps per student interval (for Heun, DPM-2 and other two-call samplers: per call "
                      "interval, not per step). A fit costs about steps x factor teacher calls plus one student run, "
                      "each x batch x CFG passes.",
    "history": "Past differences per call: 1 is the paper's single λ; 2 and 3 fit more terms; 'auto' picks 1-3 per "
               "call on held-out latents (needs a batch of at least 4).",
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
    "batch_size": "How many latents λ are fitted on (4 to 16 is reasonable; history 'auto' needs at least 4).",
    "width": "Image width in pixels (the latent is width/8); ignored when a latent is connected.",
    "height": "Image height in pixels (the latent is height/8); ignored when a latent is connected.",
    "latent": "Optional: take the fit batch's size and channels from this latent instead of width/height.",
}
OUT_TIPS = {
    "sampler": "The base sampler with the fitted λ: connect to SamplerCustom / SamplerCustomAdvanced.",
    "sigmas": "The schedule the λ belong to (the fitted one with fit_schedule); sample with it.",
    "lambda_file": "The λ file's name in models/dode_lambdas.",
    "plot": "λ per model call and the fit error per call, before and after, with the held-out figures.",
    "info": "What the file is, its held-out figures and any warning, as text (connect to Preview Any).",
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


def check_cost(steps: int, teacher_factor: int, shape) -> None:
    if steps * teacher_factor > MAX_TEACHER_GRID:
        raise errors.InputError(f"steps x teacher_factor = {steps} x {teacher_factor} = {steps * teacher_factor} "
                                f"teacher sub-steps; at most {MAX_TEACHER_GRID}. Lower teacher_factor to "
                                f"{max(1, MAX_TEACHER_GRID // max(steps, 1))} or fewer.")
    values = math.prod(int(s) for s in shape)
    if values > MAX_FIT_VALUES:
        per_latent = max(1, values // max(int(shape[0]), 1))
        raise errors.InputError(f"the fit batch is {int(shape[0])} latents of {list(shape[1:])} = {values} values; "
                                f"at most {MAX_FIT_VALUES}. Use a batch of at most "
                                f"{max(1, MAX_FIT_VALUES // per_latent)} or a smaller latent.")


def parse_history(history: str):
    return "auto" if history == "auto" else int(history)


def preview_text(lines) -> str:
    """``lines`` as one text that keeps its line breaks where ComfyUI shows it: frontend 1.32.9's Preview as Text
    renders Markdown and joins plain line breaks, a line ending in two spaces is a hard break there; plain text
    elsewhere (logs, frontend 1.58.1's default) looks the same."""
    return "  \n".join(str(line) for line in lines)


def plot_caption(lam) -> str:
    summary = dode_core.rules.proof_summary(lam)
    return f"proof: {summary}" if summary else "no held-out proof in this file (written before fits proved themselves)"


def describe_lines(name: str, lam, note: str = "") -> list[str]:
    """The text the nodes show: the file, what it was fitted for, its held-out figures."""
    schedule = "fitted schedule" if lam.schedule_fitted else f"scheduler {lam.metadata.get('scheduler', '?')}"
    lines = [f"lambda file: {name}{note}",
             f"{lam.metadata.get('comfy_sampler', lam.base_sampler)}, {lam.metadata.get('steps', '?')} steps, "
             f"{lam.calls} model calls, {schedule}, history {lam.metadata.get('history_mode', lam.history)}; "
             f"teacher {lam.metadata.get('teacher_sampler', '?')} x{lam.metadata.get('teacher_factor', '?')} "
             f"({lam.metadata.get('teacher_calls', '?')} calls)"]
    return lines + dode_core.rules.proof_lines(lam)


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

    names: {"checkpoint", "scheduler", "prompt", "negative_prompt"} traced from the prompt (may be None/empty).
    """
    sigmas = check_sigmas(sigmas)
    host = samplers.resolve(sampler_name)
    teacher = None if teacher_sampler == samplers.AUTO else samplers.resolve(teacher_sampler).sampler_function
    history_arg = parse_history(history)
    patcher = guider.model_patcher
    scales = identity.guidance(guider)
    identity.check_guidance(scales)
    samples = comfy.sample.fix_empty_latent_channels(patcher, latent["samples"])
    mask = latent.get("noise_mask")  # inpainting: the fit follows the masked sampling, as SamplerCustomAdvanced does
    check_cost(len(sigmas) - 1, teacher_factor, samples.shape)
    seed = int(getattr(noise, "seed", FIT_SEED) or 0) if noise is not None else FIT_SEED

    fingerprint = identity.model_fingerprint(patcher)
    key = identity.content_key(
        model=fingerprint, guider=identity.guider_fingerprint(guider), sigmas=[float(s) for s in sigmas],
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
    metadata = {
        "model": type(inner).__name__,
        "checkpoint": names.get("checkpoint") or "",
        "prediction": getattr(inner.model_type, "name", str(inner.model_type)),
        "model_sampling": type(patcher.get_model_object("model_sampling")).__mro__[1].__name__,
        "model_fingerprint": fingerprint,
        "guider": type(guider).__name__,
        "guidance": json.dumps(scales, sort_keys=True),
        "comfy_sampler": sampler_name,
        "scheduler": "fitted" if lam.schedule_fitted else (names.get("scheduler") or "custom"),
        "seed": seed,
        "prompt": (names.get("prompt") or "")[:4000],
        "negative_prompt": (names.get("negative_prompt") or "")[:4000],
        "host": "ComfyUI " + _comfy_version(),
        CONTENT_KEY: key,
    }
    if cfg is not None:
        metadata["cfg"] = cfg
    stem = filename.strip() or dode_core.naming.lambda_file_stem(
        names.get("checkpoint") or fingerprint[:8], sampler_name, len(sigmas) - 1, names.get("scheduler") or "custom",
        cfg, history, schedule_fitted=lam.schedule_fitted)
    path = lam.save_new(save_folder(), stem, **metadata)
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


# --- sampling with a file -------------------------------------------------------------------------------------
def mismatch_warnings(lam, guider_like) -> list[str]:
    """Warnings when ``lam`` is used with another model (fingerprint) or other guidance than it was fitted with.
    ``guider_like`` is a guider (CFGGuider and kin) or None (nothing to compare)."""
    if guider_like is None or not hasattr(guider_like, "model_patcher"):
        return []
    warnings = []
    fitted = lam.metadata.get("model_fingerprint")
    if fitted:
        now = identity.model_fingerprint(guider_like.model_patcher)
        if now != fitted:
            warnings.append(f"! model fingerprint {now} differs from the one the λ file was fitted with ({fitted}): "
                            "λ from another model may make images worse; distill for this model.")
    try:
        fitted_scales = json.loads(lam.metadata.get("guidance") or "null")
    except ValueError:
        fitted_scales = None
    if fitted_scales is None and lam.metadata.get("cfg"):
        try:
            fitted_scales = {"cfg": float(lam.metadata["cfg"])}
        except ValueError:
            fitted_scales = None
    if isinstance(fitted_scales, dict):
        scales = identity.guidance(guider_like)
        differing = [f"{k} {scales[k]:g} (fitted with {float(v):g})" for k, v in sorted(fitted_scales.items())
                     if k in scales and isinstance(v, (int, float)) and not math.isclose(scales[k], float(v),
                                                                                          rel_tol=1e-3)]
        if differing:
            warnings.append("! guidance differs from the fit: " + ", ".join(differing) +
                            ": λ fitted for one guidance may make images worse at another; distill for it.")
    return warnings


def dode_sampler(host, lam, name: str, lookup=None, node_id=None):
    """A KSAMPLER running ComfyUI's own sampler ``host`` with ``lam``. With ``lookup(model, x, sigmas, extra_args)
    -> AutoChoice`` (the "auto" choice) the file, and with it the base sampler, is picked at sampling time, and what
    was picked and why is shown on node ``node_id`` (the D-ODE Sampler) and written to the log."""

    def sample_dode(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        file_name, file_lam, file_host = name, lam, host
        if lookup is not None:
            choice = lookup(model, x, sigmas, extra_args)
            file_name, file_lam, file_host = choice.name, choice.lam, choice.host
            options = {**dict(file_host.extra_options or {}), **options}
        warnings = mismatch_warnings(file_lam, getattr(model, "inner_model", None))
        for warning in warnings:
            log.warning("D-ODE Sampler: %s: %s", file_name, warning.lstrip("! "))
        if lookup is not None:
            log.info("D-ODE Sampler (auto): using %s: %s", file_name, choice.why)
            show_on_node(node_id, choice.lines() + warnings)
        inner = dode_core.make_sampler(file_host.sampler_function, file_lam)
        try:
            return inner(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        except dode_core.ScheduleMismatchError as error:
            raise errors.schedule_mismatch(error, file_name) from error

    sample_dode.__name__ = "sample_dode_" + (lam.base_sampler if lam is not None else "auto")
    if lookup is not None:
        return comfy.samplers.KSAMPLER(sample_dode)
    return comfy.samplers.KSAMPLER(sample_dode, extra_options=dict(host.extra_options or {}),
                                   inpaint_options=dict(host.inpaint_options or {}))


def show_on_node(node_id, lines) -> None:
    """Text under the node's widgets (ComfyUI's progress text), sent while the workflow runs: frontend 1.32.9 keeps
    it after the run, 1.58.1 clears it when the run ends (the log keeps it in both)."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_progress_text(preview_text(lines), str(node_id), getattr(server, "client_id", None))
    except Exception as error:  # no server (an in-process run) or an older one: the log has it  # noqa: BLE001
        log.debug("D-ODE Sampler: could not show the choice on node %s: %s", node_id, error)


def file_host_sampler(name: str, lam):
    """ComfyUI's sampler for a file: its ``comfy_sampler`` (ComfyUI files) or ``base_sampler`` name."""
    for candidate in (lam.metadata.get("comfy_sampler"), lam.base_sampler):
        if candidate and samplers.refusal(candidate) is None:
            return samplers.host_sampler(candidate)
    raise errors.LambdaFileError(
        f"λ file '{name}' is for the sampler '{lam.base_sampler}', which D-ODE cannot use in this ComfyUI: pick "
        "another file, or distill for one of the listed samplers.",
        f"supported here: {', '.join(samplers.supported_samplers())}")


class AutoChoice:
    """What "auto" picked at sampling time, and why."""

    def __init__(self, name, lam, host, host_name, call_sigmas, matching: int):
        self.name, self.lam, self.host, self.matching = name, lam, host, matching
        self.host_name, self.call_sigmas = host_name, call_sigmas

    @property
    def why(self) -> str:
        newest = "the only file that matches" if self.matching == 1 else f"the newest of {self.matching} that match"
        return (f"its base sampler '{self.host_name}' calls the model at this run's {len(self.call_sigmas)} sigmas "
                f"{dode_core.lambdas_file.format_sigmas(self.call_sigmas)}, those the file was fitted for (within "
                f"{dode_core.lambdas_file.SIGMA_RTOL:.1%}); {newest}")

    def lines(self) -> list[str]:
        """Two short lines for the node (its text area shows about three)."""
        newest = "the only match" if self.matching == 1 else f"newest of {self.matching} matching"
        shown = self.name.replace("<", "‹").replace(">", "›")  # the frontend shows this text as HTML
        return [f"auto used: {shown}",
                f"({self.host_name}: its {len(self.call_sigmas)} model calls are at this run's sigmas; {newest})"]


def _candidates():
    """``(name, lam, host)`` of every usable file in "auto" order, and entries for an error listing."""
    usable, listed = [], []
    for name, path in ordered_files():
        shipped = is_shipped(path)
        try:
            lam = dode_core.load_lambdas(path)
            host = file_host_sampler(name, lam)
        except Exception as error:  # one bad file must not break "auto"  # noqa: BLE001
            listed.append((name, f"not usable ({errors.what(error, 100)})", shipped))
            continue
        usable.append((name, lam, host))
        listed.append((name, lam.describe(), shipped))
    return usable, listed


def auto_lookup(model, x, sigmas, extra_args) -> AutoChoice:
    """The newest file (user files first, demo files last) whose base sampler calls the model at the sigmas the
    file was fitted for: what "auto" means at sampling time."""
    usable, listed = _candidates()
    probed, matching = {}, []
    for name, lam, host in usable:
        function = host.sampler_function
        if function not in probed:
            probed[function] = dode_core.cached_call_sigmas(model, x, sigmas, function, extra_args=extra_args,
                                                            options=dict(host.extra_options or {}))
        if lam.matches(probed[function]):
            matching.append((name, lam, host))
    if matching:
        name, lam, host = matching[0]
        host_name = lam.metadata.get("comfy_sampler") or lam.base_sampler
        return AutoChoice(name, lam, host, host_name, probed[host.sampler_function], len(matching))
    steps = len(sigmas) - 1
    raise errors.ScheduleMismatchError(
        f"No λ file fits this run ({steps} steps): distill one for this schedule with 'Distill λ (D-ODE)', or pick a "
        "file in the D-ODE Sampler and sample with its sigmas output.",
        f"this run: {steps} steps, sigmas {dode_core.lambdas_file.format_sigmas(sigmas.tolist())}\n"
        "files in models/dode_lambdas (newest first):\n" + "\n".join(errors.listing(listed)))


def file_choices() -> list[str]:
    return [AUTO_FILE, *[name for name, _path in ordered_files()]]


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
            "checkpoint": identity.checkpoint_name(prompt, uid, "guider"),
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
        check_cost(1, 1, [batch_size, *shape])
        samples = torch.zeros([batch_size, *shape])
        prompt, uid = cls.hidden.prompt, cls.hidden.unique_id
        names = {
            "checkpoint": identity.checkpoint_name(prompt, uid, "model"),
            "scheduler": identity.scheduler_name(prompt, uid, "sigmas"),
            "prompt": identity.prompt_text(prompt, uid, "positive"),
            "negative_prompt": identity.prompt_text(prompt, uid, "negative"),
        }
        return distill_node(cls, guider=guider, noise=_SeedNoise(seed), sigmas=sigmas, latent={"samples": samples},
                            sampler_name=sampler_name, teacher_sampler=teacher_sampler, teacher_factor=teacher_factor,
                            history=history, fit_schedule=fit_schedule, filename=filename, names=names)


class _SeedNoise:
    """ComfyUI's noise-source protocol (``seed``, ``generate_noise(latent)``) for the preset's seed widget."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def generate_noise(self, latent):
        return comfy.sample.prepare_noise(latent["samples"], self.seed, latent.get("batch_index"))


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
                       default=samplers.AUTO, tooltip=TIPS["teacher_sampler"]),
        io.Int.Input("teacher_factor", default=10, min=2, max=100, tooltip=TIPS["teacher_factor"]),
        io.Combo.Input("history", options=list(HISTORY_CHOICES), default="1", tooltip=TIPS["history"]),
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


class DODESampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DODESampler",
            display_name="D-ODE Sampler",
            category=CATEGORY,
            description="A λ file's base sampler with its D-ODE correction, for SamplerCustom / SamplerCustomAdvanced. "
                        "Use it with the sigmas output (or the scheduler, steps and denoise the file was distilled "
                        "for); another schedule is refused with both schedules shown.",
            inputs=[
                # the id stays "lambdas" (saved workflows); the label fits beside "auto (newest matching)"
                io.Combo.Input("lambdas", display_name="λ file", options=file_choices(), default=AUTO_FILE,
                               tooltip="A λ file from models/dode_lambdas, newest first (the shipped demo files, "
                                       "made for the embedded digits model, last). 'auto': at sampling time, the "
                                       "newest file whose sampler and schedule match the run, so a file just "
                                       "distilled is used without refreshing this list."),
                io.Guider.Input("guider", optional=True,
                                tooltip="Optional: the guider you sample with, to check the file was fitted for this "
                                        "model and guidance (a warning in info and the log otherwise)."),
            ],
            outputs=[
                io.Sampler.Output("sampler_out", display_name="sampler", tooltip=OUT_TIPS["sampler"]),
                io.Sigmas.Output("sigmas_out", display_name="sigmas",
                                 tooltip="The schedule the file was fitted on ('auto': the newest file's)."),
                io.String.Output("info_out", display_name="info", tooltip=OUT_TIPS["info"]),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, lambdas, guider=None):
        if lambdas == AUTO_FILE:
            return listing_state()
        path = full_path(lambdas)
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        return f"{stat.st_mtime_ns}:{stat.st_size}" if stat else ""

    @classmethod
    def execute(cls, lambdas, guider=None) -> io.NodeOutput:
        if lambdas == AUTO_FILE:
            usable, listed = _candidates()
            if not usable:
                raise errors.LambdaFileError(
                    "No usable λ file in models/dode_lambdas: distill one with 'Distill λ (D-ODE)' first.",
                    "files there:\n" + "\n".join(errors.listing(listed)))
            name, lam, _host = usable[0]
            sampler = dode_sampler(None, None, AUTO_FILE, lookup=auto_lookup, node_id=cls.hidden.unique_id)
            lines = [f"lambda file: auto -> {name} (with this node's sigmas output: the newest of {len(usable)} "
                     "usable files)", *describe_lines(name, lam)[1:],
                     "auto picks at sampling time: the newest file whose base sampler calls the model at the run's "
                     f"sigmas (within {dode_core.lambdas_file.SIGMA_RTOL:.1%}); the file used is shown on this "
                     "node and in the log."]
        else:
            path = full_path(lambdas)
            if path is None:
                raise errors.LambdaFileError(
                    f"λ file '{lambdas}' is not in models/dode_lambdas (renamed or deleted?): pick another file, "
                    "or refresh the list (R).")
            try:
                lam = dode_core.load_lambdas(path)
            except dode_core.LambdaFileError as error:
                raise errors.for_file(error, lambdas) from error
            name = lambdas
            sampler = dode_sampler(file_host_sampler(name, lam), lam, name)
            lines = describe_lines(name, lam)
        warnings = mismatch_warnings(lam, guider)
        for warning in warnings:
            log.warning("D-ODE Sampler: %s: %s", name, warning.lstrip("! "))
        sigmas = lam.schedule.float() if lam.schedule is not None else torch.tensor(
            [*lam.call_sigmas, 0.0], dtype=torch.float32)
        text = preview_text([*lines, *warnings])
        return io.NodeOutput(sampler, sigmas, text, ui={"text": [text]})


NODES = [DODEDistillGuider, DODEDistill, DODESampler]
