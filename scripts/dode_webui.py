"""Stable Diffusion WebUI (A1111, Forge, reForge) entry of the D-ODE extension: the thin host adapter.

WebUI executes this file with the extension root on sys.path, so ``dode_core`` and ``dode_webui`` (the
host-independent logic) are imported here, at load time. This file only translates WebUI objects:

- registers a D-ODE sampler for every sampler of the host's own table that D-ODE can fit (the table is read,
  never copied; ``dode_core.refusal_reason`` decides), idempotently (Reload UI re-executes scripts);
- adds the "D-ODE λ file" setting (on_ui_settings);
- an AlwaysVisible script: the λ file override (txt2img and img2img) and "Distill λ (D-ODE)" (txt2img).

The script runner catches every exception raised in ``Script.process()`` and only logs it
(``ScriptRunner.process``), so nothing the user must see is raised there: a refused distill is recorded on
``p`` and raised by the D-ODE sampler function, inside sampling, where the host reports errors to the user.

Written against (read, not copied):
- A1111 1.10 (commit c19d044): modules/sd_samplers.py (all_samplers, all_samplers_map, set_samplers,
  functools.cache'd get_sampler_and_scheduler), modules/sd_samplers_common.py (commit 044494d: SamplerData,
  Sampler.initialize sets model_wrap_cfg.p and ``k_diffusion.sampling.torch = TorchHijack(p)``,
  launch_sampling, InterruptedException is a BaseException), modules/sd_samplers_kdiffusion.py
  (samplers_k_diffusion; KDiffusionSampler accepts a callable funcname since 1.6), modules/scripts.py
  (ScriptRunner.process: ``except Exception: errors.report(...)``), modules/sd_schedulers.py (commit 02b0092).
- Forge, old backend (commit 30c8d74, modules/sd_samplers.py: no add_sampler, same registry) and the 2024
  backend (commit 0863765, modules/sd_samplers_kdiffusion.py: sample/sample_img2img call sampling_prepare before
  and sampling_cleanup after func, sigmas from the predictor, in [0, 1] for flow models; sd_samplers_common.py
  commit fa9ec8f: the same TorchHijack); newer Forge's sd_samplers.add_sampler is used when present.
- reForge (commit 7fd4d1f, modules/sd_samplers_common.py): its k-diffusion module is ``k_diff.k_diffusion``
  or ``ldm_patched.k_diffusion`` by the "sd_sampling" setting, imported there as ``sampling``; the hijack goes
  on that module, and the D-ODE base functions are looked up in it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types

from modules import script_callbacks, scripts

from dode_core import refusal_reason
from dode_core.file_rules import ModelIdentity
from dode_core.rules import AUTO, DEFAULT_TEACHER_FACTOR, HISTORY_CHOICES, MIN_BATCH, MIN_TEACHER_FACTOR
from dode_webui import (
    LAMBDAS_FOLDER_NAME,
    PROBE_MODEL,
    DistillProgress,
    DistillRefusedError,
    DistillRequest,
    RunContext,
    hijack_free,
    list_lambda_files,
    make_dode_sampler,
    offered_samplers,
    parse_distill_request,
    sampler_options,
    show_own_logs,
    spec_for_label,
)
from dode_webui.messages import not_distillable

log = logging.getLogger("dode_webui")

OPTION_LAMBDAS_FILE = "dode_lambdas_file"
OFFERED: list = []  # the SamplerSpecs registered from this host's table (filled by register_samplers)
REFUSED: dict[str, str] = {}  # host label -> why D-ODE does not offer it


# ---- paths and host facts -------------------------------------------------------------------------------------

def lambdas_folder() -> str:
    """``models/dode_lambdas`` under the WebUI models folder (follows --data-dir / --models-dir)."""
    from modules import paths

    return os.path.join(paths.models_path, LAMBDAS_FOLDER_NAME)


def host_description() -> str:
    """'A1111', 'Forge (backend)' or 'Forge (ldm_patched)', plus the git tag when the host exposes it."""
    if importlib.util.find_spec("modules_forge") is None:
        host = "A1111"
    elif importlib.util.find_spec("backend") is not None:
        host = "Forge (backend)"
    else:
        host = "Forge/reForge (ldm_patched)"
    try:
        from modules import launch_utils

        return f"{host} {launch_utils.git_tag()}"
    except Exception:  # the tag is informative only
        return host


def host_scheduler_names() -> tuple[str, ...]:
    """Names, labels and aliases of the running host's schedulers (empty before 1.9)."""
    try:
        from modules import sd_schedulers
    except ImportError:
        return ()
    names: list[str] = []
    for scheduler in getattr(sd_schedulers, "schedulers", []):
        names += [scheduler.name, scheduler.label, *(getattr(scheduler, "aliases", None) or [])]
    return tuple(names)


def kdiffusion_sampling():
    """The k-diffusion sampling module the host's own samplers use and its TorchHijack patches: reForge's
    ``sd_samplers_common.sampling`` (chosen by its sampling-backend setting) where it exists, else
    ``k_diffusion.sampling`` (A1111's repository copy, Forge's vendored one)."""
    from modules import sd_samplers_common

    chosen = getattr(sd_samplers_common, "sampling", None)
    if isinstance(chosen, types.ModuleType):
        return chosen
    return importlib.import_module("k_diffusion.sampling")


def resolve_function(funcname):
    """The host's function for a sampler table entry, where its KDiffusionSampler finds it: the callable itself, or
    the name in kdiffusion_sampling(), then (reForge, commit 3b56b26) in modules.sd_samplers_kdiffusion_smea."""
    if callable(funcname):
        return funcname
    for module in (kdiffusion_sampling(), sys.modules.get("modules.sd_samplers_kdiffusion_smea")):
        function = getattr(module, str(funcname), None) if module is not None else None
        if function is not None:
            return function
    return None


def base_function(funcname):
    """Looks the base sampler up per run, in the module the host has patched (TorchHijack, to_d)."""
    return lambda: resolve_function(funcname)


def quiet(function):
    """The host's ``function`` run without the job's RNG: its own module's ``torch`` and the one of the k-diffusion
    module the host hijacks (A1111's Restart draws through ``k_diffusion.sampling.torch``) are the real torch."""
    return hijack_free(function, kdiffusion_sampling())


def refusal(function):
    """Why D-ODE cannot fit the host's ``function`` on the registration probe's stand-in (hijack-free: the check must
    not draw from a job's RNG; PROBE_MODEL: what the host's samplers read from their model)."""
    return refusal_reason(quiet(function), model=PROBE_MODEL)


def teacher_function(label: str):
    """The host's function for a teacher label from the accordion; None for "auto" (dode_core chooses)."""
    spec = spec_for_label(label, OFFERED) if label and label != AUTO else None
    return None if spec is None else resolve_function(spec.funcname)


# ---- one sampler run ------------------------------------------------------------------------------------------

def check_interrupt() -> None:
    """Interrupt / Skip stop a distill job the way they stop sampling: with WebUI's InterruptedException."""
    from modules import sd_samplers_common, shared

    if shared.state.interrupted or shared.state.skipped:
        raise sd_samplers_common.InterruptedException


def first(values, fallback):
    return values[0] if values else fallback


def checkpoint_identity(p) -> ModelIdentity:
    """The checkpoint the host samples with, as A1111, Forge and reForge know it (modules/sd_models.py CheckpointInfo):
    its sha256 where the host has computed it, else its short hash (the first 10 hex digits; ``p.sd_model_hash`` is
    the same), and its name. The host caches its hashes; nothing is hashed here."""
    from modules import shared

    checkpoint = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
    return ModelIdentity(
        checkpoint_sha256=getattr(checkpoint, "sha256", None) or getattr(checkpoint, "shorthash", None)
        or getattr(p, "sd_model_hash", None),
        checkpoint_name=getattr(checkpoint, "name", None) or getattr(p, "sd_model_name", None))


def run_metadata(p) -> dict:
    """What the λ file records about the run: checkpoint (dode_core.file_rules' keys), prompts, cfg, seed,
    scheduler, size, host."""
    return {
        **checkpoint_identity(p).fields(),
        "prompt": first(getattr(p, "prompts", None), getattr(p, "prompt", "")),
        "negative_prompt": first(getattr(p, "negative_prompts", None), getattr(p, "negative_prompt", "")),
        "cfg": getattr(p, "cfg_scale", None),
        "seed": first(getattr(p, "seeds", None), getattr(p, "seed", None)),
        "scheduler": p.extra_generation_params.get("Schedule type") or getattr(p, "scheduler", None),
        "width": getattr(p, "width", None),
        "height": getattr(p, "height", None),
        "host": host_description(),
    }


def run_context(model) -> RunContext:
    """The RunContext of the run WebUI is doing with ``model`` (its CFG denoiser; ``model.p`` is set by
    Sampler.initialize since 1.6)."""
    from modules import shared

    p = getattr(model, "p", None)
    choice = getattr(p, "dode_lambdas", None) or shared.opts.data.get(OPTION_LAMBDAS_FILE, AUTO)
    request = getattr(p, "dode_distill", None)
    if request is not None and getattr(p, "is_hr_pass", False) and not request.refused:
        request = None  # the hires pass samples with λ for its own schedule; it is not distilled
    if request is not None and request.done:
        choice, request = os.path.basename(request.saved_path), None  # later batches use the new file
    if request is not None:
        request.metadata.update(run_metadata(p))
    infotext = p.extra_generation_params if p is not None else {}
    progress = DistillProgress(shared.state)
    first_pass = p is not None and not getattr(p, "is_hr_pass", False)
    return RunContext(folder=lambdas_folder(), choice=choice, distill=request, infotext=infotext,
                      progress=progress, end_progress=progress.restore, check_interrupt=check_interrupt,
                      teacher_for=teacher_function, hijack_free=quiet,
                      steps_requested=getattr(p, "steps", None) if first_pass else None,
                      model=checkpoint_identity(p) if p is not None else None)


def host_log_level() -> str | None:
    """The level the user gave the host (A1111 1.10 --loglevel, or SD_WEBUI_LOG_LEVEL), None if none."""
    from modules import shared

    return getattr(getattr(shared, "cmd_opts", None), "loglevel", None) or os.environ.get("SD_WEBUI_LOG_LEVEL")


# ---- registration ---------------------------------------------------------------------------------------------

def make_constructor(func):
    """SamplerData.constructor: WebUI calls it with the model; the sampler function is passed as a callable."""

    def construct(model, func=func):
        from modules import sd_samplers_kdiffusion

        return sd_samplers_kdiffusion.KDiffusionSampler(func, model)

    return construct


def register_samplers() -> list[str]:
    """Add a D-ODE sampler for every entry of the host's sampler table that D-ODE can fit; return the names
    registered now. The table (``sd_samplers_kdiffusion.samplers_k_diffusion``) is read here, never copied.

    Idempotent: names already present are left alone. Uses sd_samplers.add_sampler where it exists (newer
    Forge); else appends to all_samplers, rebuilds all_samplers_map in place and calls set_samplers(). Clears
    get_sampler_and_scheduler's cache (>= 1.9) so no earlier fallback answer for these names stays cached.
    """
    from modules import sd_samplers, sd_samplers_common

    if not hasattr(sd_samplers_common, "Sampler"):
        log.error("D-ODE samplers need A1111 1.6 or newer (or Forge / reForge); none registered.")
        return []
    from modules import sd_samplers_kdiffusion

    specs, refused = offered_samplers(sd_samplers_kdiffusion.samplers_k_diffusion, resolve_function, refusal,
                                      host_scheduler_names())
    OFFERED[:] = specs
    REFUSED.clear()
    REFUSED.update(refused)
    present = {data.name for data in sd_samplers.all_samplers}
    new = []
    for spec in specs:
        if spec.label in present:
            continue
        func = make_dode_sampler(spec, base_function(spec.funcname), run_context)
        new.append(sd_samplers_common.SamplerData(spec.label, make_constructor(func), list(spec.aliases),
                                                  sampler_options(spec)))

    add_sampler = getattr(sd_samplers, "add_sampler", None)
    if callable(add_sampler):
        for data in new:
            add_sampler(data)
    elif new:
        sd_samplers.all_samplers.extend(new)
        rebuilt = {data.name: data for data in sd_samplers.all_samplers}
        sd_samplers.all_samplers_map.clear()  # in place: other modules may hold the dict
        sd_samplers.all_samplers_map.update(rebuilt)
        sd_samplers.set_samplers()
    cache_clear = getattr(getattr(sd_samplers, "get_sampler_and_scheduler", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    if new:
        log.info("D-ODE: registered %s", ", ".join(data.name for data in new))
    if refused:
        log.info("D-ODE: no D-ODE entry for %s (not deterministic ODE samplers here; reasons at DEBUG level)",
                 ", ".join(refused))
    for label, reason in refused.items():
        log.debug("D-ODE: no D-ODE entry for %s: %s", label, reason)
    return [data.name for data in new]


# ---- settings -------------------------------------------------------------------------------------------------

def lambda_file_choices() -> dict:
    return {"choices": [AUTO, *list_lambda_files(lambdas_folder())]}


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    shared.opts.add_option(OPTION_LAMBDAS_FILE, shared.OptionInfo(
        AUTO,
        "D-ODE λ file (models/dode_lambdas; auto = the newest file whose sampler and schedule match the run)",
        gr.Dropdown, lambda_file_choices, refresh=lambda: None, section=("dode", "D-ODE"),
    ))


# ---- the script: λ override and the distill job ---------------------------------------------------------------

def distill_request(p, teacher_factor, history, teacher, fit_schedule, img2img=False) -> DistillRequest:
    """Turn this txt2img run into a distill job: the sampler becomes the D-ODE one of its base.

    Never raises: what cannot run becomes ``request.refused`` and the run is pointed at a D-ODE sampler whose
    function raises it inside sampling, where the host shows errors (the script runner only logs errors from
    ``process()``). The bounds and defaults apply to the API's values as much as to the accordion's.
    """
    sampler = getattr(p, "sampler_name", None) or ""
    spec = spec_for_label(sampler, OFFERED)
    try:
        if img2img:
            raise DistillRefusedError("Distill λ (D-ODE) runs in txt2img: the fit starts from pure noise. Untick it "
                                      "here (the API: send false) and distill in txt2img; no λ file was written.")
        if spec is None:
            raise DistillRefusedError(not_distillable(sampler, REFUSED.get(sampler), [s.base_label for s in OFFERED]))
        request = parse_distill_request(getattr(p, "steps", None), teacher_factor, history, teacher, fit_schedule,
                                        [s.base_label for s in OFFERED], getattr(p, "batch_size", None))
    except DistillRefusedError as error:
        log.error("%s", error)
        request = DistillRequest(refused=str(error))
        spec = spec or (OFFERED[0] if OFFERED else None)
        if spec is None:
            return request  # no D-ODE sampler on this host: nothing can carry the message; the log has it
    if p.sampler_name != spec.label:
        log.info("D-ODE: distilling %s as %s", p.sampler_name, spec.label)
        p.sampler_name = spec.label
    if not request.refused:
        schedule = ", fitted schedule" if request.fit_schedule else ""
        p.extra_generation_params["D-ODE distill"] = (f"teacher {request.teacher} x{request.teacher_factor}, "
                                                      f"history {request.history}{schedule}")
    return request


class DodeScript(scripts.Script):
    """The accordion: λ file override (both tabs) and "Distill λ (D-ODE)" (txt2img).

    Script args (UI and ``alwayson_scripts``): [λ file, distill, teacher sub-steps, history, teacher,
    fit schedule]; missing or None values take the defaults.
    """

    def title(self):
        return "D-ODE"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        with gr.Accordion("Distill λ (D-ODE)" if not is_img2img else "D-ODE λ", open=False):
            override = gr.Textbox(label="λ file for D-ODE samplers (a name in models/dode_lambdas; empty = the "
                                        "setting, 'auto' = newest matching file)", value="")
            distill = gr.Checkbox(label="Distill λ on this run (prompt, CFG, size, scheduler and steps of this "
                                        f"run; Batch size = fit batch, at least {MIN_BATCH})", value=False,
                                  visible=not is_img2img)
            teacher_factor = gr.Slider(minimum=MIN_TEACHER_FACTOR, maximum=20, step=1, value=DEFAULT_TEACHER_FACTOR,
                                       label="Teacher sub-steps per step", visible=not is_img2img)
            history = gr.Dropdown(list(HISTORY_CHOICES), value="1", label="History terms per call",
                                  visible=not is_img2img)
            teacher = gr.Dropdown([AUTO, *[spec.base_label for spec in OFFERED]], value=AUTO, label="Teacher",
                                  visible=not is_img2img)
            fit_schedule = gr.Checkbox(label="Fit the schedule too (the λ file then carries its own sigmas)",
                                       value=False, visible=not is_img2img)
        self.infotext_fields = [(override, "D-ODE lambdas")]
        return [override, distill, teacher_factor, history, teacher, fit_schedule]

    def process(self, p, override="", distill=False, teacher_factor=DEFAULT_TEACHER_FACTOR, history="1", teacher=AUTO,
                fit_schedule=False, *_more):
        p.dode_lambdas = str(override or "").strip() or None
        wanted = bool(distill) and str(distill).lower() != "false"
        p.dode_distill = (distill_request(p, teacher_factor, history, teacher, fit_schedule, self.is_img2img)
                          if wanted else None)


show_own_logs(host_log_level())
try:
    register_samplers()
except Exception:  # a broken registry must not stop WebUI from starting; the log says why
    log.exception("D-ODE: registering the samplers failed")
script_callbacks.on_ui_settings(on_ui_settings)
