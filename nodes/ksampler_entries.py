"""Opt-in (DODE_KSAMPLER_ENTRIES=1): "dode_<sampler>" entries in the plain KSampler dropdown.

Off by default: it mutates ComfyUI's global sampler lists, which other packs snapshot (COMBO links then break
with "Return type mismatch"), and the plain KSampler cannot say which λ file to use; these entries use the file
"auto" picks in models/dode_lambdas for their base sampler (dode_core.file_rules.choose_file). The entries are the
samplers the nodes offer (nodes/samplers.py: ComfyUI's own list filtered by dode_core), never a hand-kept list.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
ENV = "DODE_KSAMPLER_ENTRIES"


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _auto_function(base_name: str):
    from . import errors, samplers
    from ._core import dode_core
    from .folder import ordered_files

    base = samplers.host_sampler(base_name).sampler_function

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        call_sigmas = dode_core.cached_call_sigmas(model, x, sigmas, base, extra_args=extra_args, options=options)
        paths = [path for _name, path in ordered_files()]
        try:
            choice = dode_core.choose_file(paths, dode_core.same_sampler(base_name, call_sigmas), sigmas.tolist(),
                                           latent_shape=tuple(x.shape))
        except dode_core.ScheduleMismatchError as error:
            raise errors.ScheduleMismatchError(
                f"dode_{base_name}: no λ file fits this run. Distill one for this schedule with 'Distill λ (D-ODE)' "
                f"(sampler {base_name}), or use the D-ODE Sampler with a file and its sigmas output.",
                errors.capped(str(error))) from error
        if choice.schedule is not None:
            sigmas = choice.schedule.to(device=sigmas.device, dtype=sigmas.dtype)
        log.info("dode_%s: using %s%s", base_name, os.path.basename(choice.path),
                 f", sampling on the {choice.note}" if choice.note else "")
        return dode_core.sample(model, x, sigmas, base, choice.lam, extra_args=extra_args, callback=callback,
                                disable=disable, **options)

    sample.__name__ = f"sample_dode_{base_name}"
    return sample


def install_if_enabled() -> list[str]:
    """Add the entries in place (never rebinding the lists) and idempotently; returns the names added."""
    if not enabled():
        return []
    import comfy.k_diffusion.sampling
    import comfy.samplers

    from .samplers import supported_samplers

    added = []
    for base_name in supported_samplers():
        name = "dode_" + base_name
        if not hasattr(comfy.k_diffusion.sampling, "sample_" + name):
            setattr(comfy.k_diffusion.sampling, "sample_" + name, _auto_function(base_name))
        for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
            if name not in names:
                names.append(name)
                added.append(name)
    if added:
        log.info("D-ODE: added %s to the KSampler dropdown (%s=1)", sorted(set(added)), ENV)
    return added
