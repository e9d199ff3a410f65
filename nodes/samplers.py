"""Which of ComfyUI's samplers D-ODE can use: read from the running ComfyUI, filtered by dode_core.

One source for the node dropdowns and the opt-in KSampler entries: ``comfy.samplers.KSampler.SAMPLERS`` at run
time, each resolved with ``comfy.samplers.sampler_object(name)`` and kept when ``dode_core.refusal_reason`` finds
nothing wrong with its function. No hand-kept list.
"""

from __future__ import annotations

import functools
import logging

import comfy.samplers

from . import errors
from ._core import dode_core

log = logging.getLogger(__name__)
OWN_PREFIX = "dode_"  # our own opt-in KSampler entries are never a base sampler


def host_sampler(name: str):
    """ComfyUI's SAMPLER object for ``name`` (a KSAMPLER carrying the function and its extra options)."""
    return comfy.samplers.sampler_object(name)


@functools.lru_cache(maxsize=256)
def _refusal(name: str, function) -> str | None:
    sampler = host_sampler(name)
    try:
        return dode_core.refusal_reason(function, options=dict(sampler.extra_options or {}))
    except Exception as error:  # a sampler that cannot even be probed is not offered
        return f"{type(error).__name__}: {error}"


def refusal(name: str) -> str | None:
    """Why D-ODE cannot use ComfyUI's sampler ``name`` (None when it can)."""
    if name.startswith(OWN_PREFIX) or name not in comfy.samplers.KSampler.SAMPLERS:
        return f"'{name}' is not one of this ComfyUI's samplers."
    sampler = host_sampler(name)
    function = getattr(sampler, "sampler_function", None)
    if function is None:
        return f"'{name}' is not a k-diffusion sampler function ({type(sampler).__name__})."
    return _refusal(name, function)


def supported_samplers() -> list[str]:
    """ComfyUI's own sampler names, in its order, that D-ODE can distill."""
    names = [name for name in list(comfy.samplers.KSampler.SAMPLERS) if refusal(name) is None]
    return names or ["euler"]


def resolve(name: str):
    """The KSAMPLER for a supported ``name``; ValueError naming why otherwise."""
    why = refusal(name)
    if why is not None:
        raise errors.InputError(f"D-ODE cannot use the sampler '{name}': {why} Choose one of the sampler list.",
                                f"Supported here: {', '.join(supported_samplers())}.")
    return host_sampler(name)


def teacher_choices() -> list[str]:
    return [dode_core.rules.AUTO, *supported_samplers()]
