"""Running a host's k-diffusion sampler without its ``TorchHijack``: probes, replays and the fit draw no host noise.

A1111, Forge and reForge replace the ``torch`` global of their k-diffusion sampling module with a
``TorchHijack(p)`` whose ``randn_like`` returns ``p.rng.next()`` (``modules/sd_samplers_common.py``,
``Sampler.initialize``), and k-diffusion's Euler, Heun and DPM-2 call ``torch.randn_like`` on every step
even when they add no noise. Every probe and replay D-ODE makes would then advance the job's random
stream. ``hijack_free(sampler)`` runs ``sampler`` with the real ``torch`` in that global and puts the
host's object back afterwards, so only the one real sampling run draws from ``p.rng``, exactly as the
base sampler does. (dode_core forks torch's own generators around its work, so the real ``torch`` is safe.)
"""

from __future__ import annotations

import functools
import inspect

import torch


def sampler_globals(sampler) -> dict | None:
    """The module namespace whose ``torch`` the sampler's code reads (functions and bound methods)."""
    function = inspect.unwrap(getattr(sampler, "__func__", sampler))  # past decorators such as @torch.no_grad()
    namespace = getattr(function, "__globals__", None)
    return namespace if isinstance(namespace, dict) and "torch" in namespace else None


def hijack_free(sampler):
    """``sampler`` running with ``torch`` in its module set to the real torch for the duration of each call."""
    namespace = sampler_globals(sampler)
    if namespace is None:
        return sampler

    @functools.wraps(sampler)
    def run_without_host_rng(*args, **kwargs):
        saved = namespace["torch"]
        namespace["torch"] = torch
        try:
            return sampler(*args, **kwargs)
        finally:
            namespace["torch"] = saved

    return run_without_host_rng
