"""The D-ODE samplers the WebUI shows, derived from the host's own sampler table: names, base functions, options.

A1111 (>= 1.9) splits a trailing scheduler label, name or alias off a sampler name
(``modules/sd_samplers.py: get_sampler_and_scheduler``, checked at commit c19d044) and silently falls back
to the default sampler when the rest is unknown, so no name here may end with one.
"""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass, field

from dode_core.blackbox import sampler_name

# (name, label, aliases) of every scheduler in A1111's modules/sd_schedulers.py (commit 02b0092, 1.10 era),
# flattened; the host adapter adds whatever the running host lists in sd_schedulers.schedulers.
DEFAULT_SCHEDULER_NAMES: tuple[str, ...] = (
    "automatic", "Automatic",
    "uniform", "Uniform",
    "karras", "Karras",
    "exponential", "Exponential",
    "polyexponential", "Polyexponential",
    "sgm_uniform", "SGM Uniform", "SGMUniform",
    "kl_optimal", "KL Optimal",
    "align_your_steps", "Align Your Steps",
    "simple", "Simple",
    "normal", "Normal",
    "ddim", "DDIM",
    "beta", "Beta",
    "karras_exponential", "Karras Exponential",
)

# Sampler options the D-ODE entries may carry (all JSON-safe; /sdapi/v1/samplers returns them verbatim).
# Options that make the host pass noise (brownian_noise) or change infotext semantics (uses_ensd) are left out.
ALLOWED_OPTION_KEYS = ("scheduler", "second_order", "discard_next_to_last_sigma")


LABEL_PREFIX = "D-ODE "

# The model the registration probe hands the host's samplers (dode_core.refusal_reason's ``model``). WebUI samplers
# read attributes of the CFG denoiser they get: Forge's vendored k_diffusion (commit dfdcbab) sample_euler_ancestral
# and sample_dpm_2_ancestral read ``model.inner_model.predictor`` to send flow models (PredictionFlux) down another
# branch. No checkpoint is loaded when the list is built, so the probe's denoiser has a predictor of no special type:
# the branch SD 1.x / SDXL checkpoints take. At sampling time the probes see the host's own denoiser.
PROBE_MODEL = types.SimpleNamespace(inner_model=types.SimpleNamespace(predictor=None))


@dataclass(frozen=True)
class SamplerSpec:
    """One D-ODE sampler: what the dropdown shows and which of the host's deterministic samplers it corrects.

    funcname is the host's own entry: a k-diffusion function name, resolved in the host's sampling module at
    every run, or the host's callable. base_name is what λ files record as ``base_sampler``.
    """

    label: str  # display name, e.g. "D-ODE Euler"
    base_label: str  # the host's own name for the base sampler, e.g. "Euler"
    funcname: object  # "sample_euler", or a callable from the host's table
    base_name: str  # "euler"
    aliases: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)


def offered_samplers(host_entries, resolve, refusal, scheduler_names=()) -> tuple[list[SamplerSpec], dict[str, str]]:
    """The D-ODE samplers for the host's own sampler table, and why each other entry is not offered.

    host_entries: ``(label, funcname, aliases, options)`` rows as in the host's
    ``sd_samplers_kdiffusion.samplers_k_diffusion``, read at run time (never a copied list).
    resolve(funcname): the host's function for the entry, or None when its k-diffusion lacks it.
    refusal(function): why D-ODE cannot fit it (``dode_core.refusal_reason``), or None.
    Entries whose function is already offered (e.g. "LMS" and "LMS Karras") are offered once, under the first
    label. Returns ``(specs, {label: reason})``.
    """
    specs: list[SamplerSpec] = []
    refused: dict[str, str] = {}
    offered_functions: list = []
    for label, funcname, _aliases, options in host_entries:
        function = resolve(funcname)
        if function is None:
            refused[label] = "this host's k-diffusion has no such function"
            continue
        if any(function is seen for seen in offered_functions):
            continue
        if not takes_a_schedule(function):
            refused[label] = ("it takes no sigma schedule (sigma_min, sigma_max and a step count instead) and chooses "
                              "its own steps")
            continue
        try:
            reason = refusal(function)
        except Exception as error:  # a host sampler that breaks on the stand-in is not offered; the log says why
            reason = f"it failed on a stand-in denoiser ({type(error).__name__}: {error})"
        if reason:
            refused[label] = reason
            continue
        name = LABEL_PREFIX + label
        try:
            check_sampler_name(name, scheduler_names)
        except ValueError as error:
            refused[label] = str(error)
            continue
        base_name = sampler_name(function)
        offered_functions.append(function)
        specs.append(SamplerSpec(name, label, funcname, base_name, (f"dode_{base_name}",),
                                 {key: value for key, value in dict(options or {}).items()
                                  if key in ALLOWED_OPTION_KEYS}))
    return specs, refused


def takes_a_schedule(function) -> bool:
    """Whether the host calls ``function`` with ``sigmas`` (k-diffusion's DPM fast / adaptive take
    ``sigma_min, sigma_max[, n]`` and pick their steps)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True  # no signature to read: let the probe decide
    return "sigmas" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_sampler_name(name: str, scheduler_names=()) -> str:
    """Return ``name`` if the WebUI will keep it whole; raise ValueError if it ends with a scheduler label.

    ``scheduler_names``: extra labels, names and aliases (the running host's), checked with the defaults.
    """
    if not name or name != name.strip():
        raise ValueError(f"sampler name {name!r} is empty or has surrounding spaces.")
    lowered = name.lower()
    for label in (*DEFAULT_SCHEDULER_NAMES, *scheduler_names):
        if label and lowered.endswith(" " + label.lower()):
            raise ValueError(
                f"sampler name {name!r} ends with the scheduler label {label!r}: the WebUI would split it off as "
                "a scheduler and silently fall back to the default sampler. Choose another name."
            )
    return name


def sampler_options(spec: SamplerSpec) -> dict:
    """The options of a D-ODE entry (the host entry's, limited to ALLOWED_OPTION_KEYS); ValueError unless the
    result is JSON-serialisable (``/sdapi/v1/samplers`` returns it verbatim)."""
    options = {key: value for key, value in spec.options.items() if key in ALLOWED_OPTION_KEYS}
    try:
        json.dumps(options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"options of {spec.label!r} are not JSON-serialisable: {error}") from None
    return options


def spec_for_label(label: str, specs) -> SamplerSpec | None:
    """The D-ODE spec whose display name or base sampler name is ``label`` ("D-ODE Euler" or "Euler")."""
    for spec in specs:
        if label in (spec.label, spec.base_label):
            return spec
    return None
