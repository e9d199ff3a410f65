"""The function the WebUI calls for a D-ODE sampler: k-diffusion signature, λ chosen per run.

WebUI's ``KDiffusionSampler`` calls ``func(model, x, sigmas=..., extra_args=..., callback=..., disable=False)``
with its CFG denoiser as ``model`` (A1111 1.6-1.10, Forge old and new backends). The function finds the λ file
for the sigmas it is given (or distills one, when the run is a distill job), then runs dode_core.sample. It
draws no random numbers: the base samplers are deterministic and the WebUI seeds the start noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dode_core import probe_call_sigmas, sample
from dode_core.blackbox import sampler_name

from .distill_job import DistillRequest, run_distill_job
from .lambda_files import infotext_fields, resolve_lambdas
from .names import SamplerSpec

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What one sampler run needs from the host.

    folder:          the λ folder (models/dode_lambdas)
    choice:          a file name from the script's override or the setting; None / "auto" = newest match
    distill:         a pending distill request for this run, or None
    infotext:        the dict the infotext keys go to (``p.extra_generation_params``)
    progress:        progress(done, total) during a distill job
    check_interrupt: raises to stop a distill job (Interrupt / Skip)
    """

    folder: str
    choice: str | None = None
    distill: DistillRequest | None = None
    infotext: dict = field(default_factory=dict)
    progress: Callable[[int, int], None] | None = None
    check_interrupt: Callable[[], None] | None = None


def make_dode_sampler(spec: SamplerSpec, base_sampler: Callable[[], Callable], context_for: Callable):
    """A k-diffusion-signature sampler for ``spec``.

    base_sampler(): the host's base function (e.g. its ``k_diffusion.sampling.sample_euler``), looked up per run
    context_for(model): the RunContext of the run the host is doing with this denoiser
    """

    def sample_dode(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        context = context_for(model)
        base = base_sampler()
        request = context.distill
        if request is not None and not request.done:
            path, lam = run_distill_job(model, x, sigmas, base, context.folder, request, extra_args=extra_args,
                                        options=options, progress=context.progress,
                                        check_interrupt=context.check_interrupt)
        else:
            call_sigmas, _ = probe_call_sigmas(model, x, sigmas, base, extra_args=extra_args, options=options)
            path, lam = resolve_lambdas(context.folder, context.choice, sampler_name(base), call_sigmas)
        context.infotext.update(infotext_fields(path))
        return sample(model, x, sigmas, base, lam, extra_args=extra_args, callback=callback, disable=disable,
                      **options)

    sample_dode.__name__ = sample_dode.__qualname__ = f"sample_dode_{spec.base_name}"
    sample_dode.__doc__ = f"{spec.label}: k-diffusion {spec.funcname} with fitted D-ODE λ."
    return sample_dode
