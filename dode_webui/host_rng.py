"""Running a host's k-diffusion sampler without its ``TorchHijack``: probes, replays and the fit draw no host noise.

A1111, Forge and reForge replace the ``torch`` global of their k-diffusion sampling module with a
``TorchHijack(p)`` whose ``randn_like`` returns ``p.rng.next()`` (``modules/sd_samplers_common.py``,
``Sampler.initialize``): a full batch of the job's noise, whatever the shape asked for. k-diffusion's Euler, Heun
and DPM-2 call ``torch.randn_like`` on every step even when they add no noise, and a sampler written elsewhere can
draw through that module too: A1111's Restart (``modules/sd_samplers_extra.py``) re-adds noise with
``k_diffusion.sampling.torch.randn_like(x)``, the module attribute, not its own ``torch``. Every probe and replay
D-ODE makes would then advance the job's random stream, and a probe on a one-element latent would be handed a
full-size noise tensor (a tensor-size error instead of a refusal).

``hijack_free(sampler, *modules)`` runs ``sampler`` with the real ``torch`` in its own module and in ``modules`` (the
host's k-diffusion sampling module, where the hijack is installed) and puts the host's objects back afterwards, so
only the one real sampling run draws from ``p.rng``, exactly as the base sampler does, and noise a probe meets is
drawn from torch's own generators, which dode_core forks and seeds per probe (two seeds: it is seen and refused).
"""

from __future__ import annotations

import functools
import inspect
import types

import torch


def sampler_globals(sampler) -> dict | None:
    """The module namespace whose ``torch`` the sampler's code reads (functions and bound methods)."""
    function = inspect.unwrap(getattr(sampler, "__func__", sampler))  # past decorators such as @torch.no_grad()
    namespace = getattr(function, "__globals__", None)
    return namespace if isinstance(namespace, dict) and "torch" in namespace else None


def hijack_free(sampler, *modules):
    """``sampler`` running with ``torch`` set to the real torch in its own module and in ``modules`` for the duration
    of each call."""
    namespaces = [sampler_globals(sampler)] + [vars(module) for module in modules
                                                if isinstance(module, types.ModuleType)]
    unique = {id(namespace): namespace for namespace in namespaces if namespace is not None and "torch" in namespace}
    if not unique:
        return sampler

    @functools.wraps(sampler)
    def run_without_host_rng(*args, **kwargs):
        saved = [(namespace, namespace["torch"]) for namespace in unique.values()]
        for namespace, _ in saved:
            namespace["torch"] = torch
        try:
            return sampler(*args, **kwargs)
        finally:
            for namespace, host_torch in saved:
                namespace["torch"] = host_torch

    return run_without_host_rng
