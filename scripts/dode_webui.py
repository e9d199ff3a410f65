"""Stable Diffusion WebUI (A1111, Forge, reForge) entry of the D-ODE extension: the thin host adapter.

WebUI executes this file with the extension root on sys.path, so ``dode_core`` and ``dode_webui`` (the
host-independent logic) are imported here, at load time. This file only translates WebUI objects:

- registers the D-ODE samplers at import (idempotent: Reload UI re-executes scripts, the registry stays);
- adds the "D-ODE λ file" setting (on_ui_settings);
- an AlwaysVisible script: the λ file override (txt2img and img2img) and "Distill λ (D-ODE)" (txt2img).

Written against (read, not copied):
- A1111 1.10 (commit c19d044): modules/sd_samplers.py (all_samplers, all_samplers_map, set_samplers,
  functools.cache'd get_sampler_and_scheduler), modules/sd_samplers_common.py (SamplerData, Sampler.initialize
  sets model_wrap_cfg.p, InterruptedException is a BaseException), modules/sd_samplers_kdiffusion.py
  (KDiffusionSampler accepts a callable funcname since 1.6), modules/sd_schedulers.py (commit 02b0092).
- Forge, old backend (commit 30c8d74, modules/sd_samplers.py: no add_sampler, same registry) and the 2024
  backend (commit 0863765, modules/sd_samplers_kdiffusion.py: sample/sample_img2img call sampling_prepare before
  and sampling_cleanup after func, sigmas from the predictor, in [0, 1] for flow models); newer Forge's
  sd_samplers.add_sampler (dedupes by name, rebuilds the map, calls set_samplers) is used when present.
- reForge: not read file by file here; it keeps A1111's registry and KDiffusionSampler(funcname, model) and
  resolves *string* funcnames in a module chosen by a setting, which is why callables are passed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os

from modules import script_callbacks, scripts

from dode_webui import (
    LAMBDAS_FOLDER_NAME,
    SAMPLER_TABLE,
    DistillRequest,
    RunContext,
    check_sampler_name,
    list_lambda_files,
    make_dode_sampler,
    sampler_options,
    spec_for_label,
)

log = logging.getLogger("dode_webui")

OPTION_LAMBDAS_FILE = "dode_lambdas_file"
HISTORY_CHOICES = ["1", "2", "3", "auto"]


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
    """The host's ``k_diffusion.sampling`` (A1111's repository copy, or Forge's vendored one)."""
    return importlib.import_module("k_diffusion.sampling")


def base_function(funcname: str):
    """Looks the base sampler up per run, in the module the host has patched (TorchHijack, to_d)."""
    return lambda: getattr(kdiffusion_sampling(), funcname)


# ---- one sampler run ------------------------------------------------------------------------------------------

def check_interrupt() -> None:
    """Interrupt / Skip stop a distill job the way they stop sampling: with WebUI's InterruptedException."""
    from modules import sd_samplers_common, shared

    if shared.state.interrupted or shared.state.skipped:
        raise sd_samplers_common.InterruptedException


def report_progress(done: int, total: int) -> None:
    """Drives WebUI's progress bar over the teacher + student model calls of a distill job."""
    from modules import shared

    shared.state.sampling_steps = total
    shared.state.sampling_step = done
    shared.state.textinfo = f"Distilling λ (D-ODE): model call {done}/{total}"


def first(values, fallback):
    return values[0] if values else fallback


def run_metadata(p) -> dict:
    """What the λ file records about the run: checkpoint, prompts, cfg, seed, scheduler, size, host."""
    from modules import shared

    checkpoint = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
    return {
        "model": getattr(checkpoint, "model_name", None) or getattr(p, "sd_model_name", None),
        "model_fingerprint": getattr(checkpoint, "shorthash", None) or getattr(p, "sd_model_hash", None),
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
    choice = getattr(p, "dode_lambdas", None) or shared.opts.data.get(OPTION_LAMBDAS_FILE, "auto")
    request = getattr(p, "dode_distill", None)
    if request is not None and getattr(p, "is_hr_pass", False):
        request = None  # the hires pass samples with λ for its own schedule; it is not distilled
    if request is not None and request.done:
        choice, request = os.path.basename(request.saved_path), None  # later batches use the new file
    if request is not None:
        request.metadata.update(run_metadata(p))
    infotext = p.extra_generation_params if p is not None else {}
    return RunContext(folder=lambdas_folder(), choice=choice, distill=request, infotext=infotext,
                      progress=report_progress, check_interrupt=check_interrupt)


# ---- registration ---------------------------------------------------------------------------------------------

def make_constructor(func):
    """SamplerData.constructor: WebUI calls it with the model; the sampler function is passed as a callable."""

    def construct(model, func=func):
        from modules import sd_samplers_kdiffusion

        return sd_samplers_kdiffusion.KDiffusionSampler(func, model)

    return construct


def host_base_options(all_samplers, base_label: str) -> dict:
    """The options of the host's own entry for the base sampler ("Euler", "DPM++ 2M", ...), if it has one."""
    for data in all_samplers:
        if data.name == base_label:
            return dict(data.options or {})
    return {}


def register_samplers() -> list[str]:
    """Add the D-ODE samplers WebUI's k-diffusion provides to the registry; return the names registered now.

    Idempotent: names already present are left alone. Uses sd_samplers.add_sampler where it exists (newer
    Forge); else appends to all_samplers, rebuilds all_samplers_map in place and calls set_samplers(). Clears
    get_sampler_and_scheduler's cache (>= 1.9) so no earlier fallback answer for these names stays cached.
    """
    from modules import sd_samplers, sd_samplers_common

    if not hasattr(sd_samplers_common, "Sampler"):
        log.error("D-ODE samplers need A1111 1.6 or newer (or Forge / reForge); none registered.")
        return []
    sampling = kdiffusion_sampling()
    scheduler_names = host_scheduler_names()
    present = {data.name for data in sd_samplers.all_samplers}
    new = []
    for spec in SAMPLER_TABLE:
        if not hasattr(sampling, spec.funcname):
            log.info("D-ODE: this host's k-diffusion has no %s; %s not offered", spec.funcname, spec.label)
            continue
        check_sampler_name(spec.label, scheduler_names)
        if spec.label in present:
            continue
        func = make_dode_sampler(spec, base_function(spec.funcname), run_context)
        options = sampler_options(spec, host_base_options(sd_samplers.all_samplers, spec.base_label))
        new.append(sd_samplers_common.SamplerData(spec.label, make_constructor(func), list(spec.aliases), options))

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
    return [data.name for data in new]


# ---- settings -------------------------------------------------------------------------------------------------

def lambda_file_choices() -> dict:
    return {"choices": ["auto", *list_lambda_files(lambdas_folder())]}


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    shared.opts.add_option(OPTION_LAMBDAS_FILE, shared.OptionInfo(
        "auto",
        "D-ODE λ file (models/dode_lambdas; auto = the newest file whose sampler and schedule match the run)",
        gr.Dropdown, lambda_file_choices, refresh=lambda: None, section=("dode", "D-ODE"),
    ))


# ---- the script: λ override and the distill job ---------------------------------------------------------------

def parse_history(value) -> int | str:
    return "auto" if str(value) == "auto" else int(value)


def prepare_distill(p, teacher_factor, history) -> DistillRequest:
    """Turn this txt2img run into a distill job: the sampler becomes the D-ODE one of its base."""
    spec = spec_for_label(p.sampler_name)
    if spec is None:
        names = ", ".join(f"{s.label} / {s.base_label}" for s in SAMPLER_TABLE)
        raise ValueError(f"Distill λ (D-ODE): sampler {p.sampler_name!r} cannot be distilled; pick one of {names}.")
    if p.sampler_name != spec.label:
        log.info("D-ODE: distilling %s as %s", p.sampler_name, spec.label)
        p.sampler_name = spec.label
    request = DistillRequest(teacher_factor=int(teacher_factor), history=parse_history(history))
    p.extra_generation_params["D-ODE distill"] = f"teacher x{request.teacher_factor}, history {request.history}"
    return request


class DodeScript(scripts.Script):
    """The accordion: λ file override (both tabs) and "Distill λ (D-ODE)" (txt2img)."""

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
                                        "run; batch size = fit batch)", value=False, visible=not is_img2img)
            teacher_factor = gr.Slider(minimum=2, maximum=20, step=1, value=10, label="Teacher sub-steps per step",
                                       visible=not is_img2img)
            history = gr.Dropdown(HISTORY_CHOICES, value="1", label="History terms per call", visible=not is_img2img)
        self.infotext_fields = [(override, "D-ODE lambdas")]
        return [override, distill, teacher_factor, history]

    def process(self, p, override="", distill=False, teacher_factor=10, history="1"):
        p.dode_lambdas = (override or "").strip() or None
        p.dode_distill = prepare_distill(p, teacher_factor, history) if distill and not self.is_img2img else None


try:
    register_samplers()
except Exception:  # a broken registry must not stop WebUI from starting; the log says why
    log.exception("D-ODE: registering the samplers failed")
script_callbacks.on_ui_settings(on_ui_settings)
