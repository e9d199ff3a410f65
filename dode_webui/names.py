"""The D-ODE samplers the WebUI shows: display names, k-diffusion base functions and sampler options.

A1111 (>= 1.9) splits a trailing scheduler label, name or alias off a sampler name
(``modules/sd_samplers.py: get_sampler_and_scheduler``, checked at commit c19d044) and silently falls back
to the default sampler when the rest is unknown, so no name here may end with one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class SamplerSpec:
    """One D-ODE sampler: what the dropdown shows and which deterministic k-diffusion function it corrects."""

    label: str  # display name, e.g. "D-ODE Euler"
    funcname: str  # k-diffusion function, e.g. "sample_euler"
    base_label: str  # the host's own name for the base sampler, e.g. "Euler"
    aliases: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)

    @property
    def base_name(self) -> str:
        """The name λ files record as ``base_sampler`` (``sample_euler`` -> ``euler``)."""
        return self.funcname.removeprefix("sample_")


# Options mirror the host's own entries for the base (A1111 1.10 modules/sd_samplers_kdiffusion.py).
SAMPLER_TABLE: tuple[SamplerSpec, ...] = (
    SamplerSpec("D-ODE Euler", "sample_euler", "Euler", ("dode_euler",), {}),
    SamplerSpec("D-ODE DPM++ 2M", "sample_dpmpp_2m", "DPM++ 2M", ("dode_dpmpp_2m",), {"scheduler": "karras"}),
    SamplerSpec("D-ODE Heun", "sample_heun", "Heun", ("dode_heun",), {"second_order": True}),
    SamplerSpec("D-ODE LMS", "sample_lms", "LMS", ("dode_lms",), {}),
    SamplerSpec("D-ODE DPM2", "sample_dpm_2", "DPM2", ("dode_dpm_2",),
                {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
)


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


def sampler_options(spec: SamplerSpec, host_options: dict | None = None) -> dict:
    """The options of a D-ODE entry: the spec's, overridden by the host's own entry for the base sampler,
    limited to ALLOWED_OPTION_KEYS; raises ValueError unless the result is JSON-serialisable."""
    merged = {key: value for key, value in spec.options.items() if key in ALLOWED_OPTION_KEYS}
    merged.update({key: value for key, value in (host_options or {}).items() if key in ALLOWED_OPTION_KEYS})
    try:
        json.dumps(merged)
    except (TypeError, ValueError) as error:
        raise ValueError(f"options of {spec.label!r} are not JSON-serialisable: {error}") from None
    return merged


def spec_for_label(label: str, table=SAMPLER_TABLE) -> SamplerSpec | None:
    """The D-ODE spec whose display name or base sampler name is ``label`` ("D-ODE Euler" or "Euler")."""
    for spec in table:
        if label in (spec.label, spec.base_label):
            return spec
    return None
