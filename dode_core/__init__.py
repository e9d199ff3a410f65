"""dode_core: D-ODE (Kim, Tang, Yu, CVPR 2024) for k-diffusion-style samplers, in pure torch.

    from dode_core import distill, sample, make_sampler, Lambdas, load_lambdas, refusal_reason, NoGainError

No host (ComfyUI, A1111, Forge) is imported here; hosts pass their own sampler functions in.
"""

from .blackbox import SamplerRefusedError, probe_call_sigmas, refusal_reason
from .correction import DODEDenoiser, cached_call_sigmas, make_sampler, sample
from .fit import NoGainError, TeacherNotConvergedError, distill
from .lambdas_file import LambdaFileError, Lambdas, ScheduleMismatchError, load_lambdas, newest_matching
from .version import __version__

__all__ = [
    "DODEDenoiser",
    "LambdaFileError",
    "NoGainError",
    "Lambdas",
    "SamplerRefusedError",
    "ScheduleMismatchError",
    "TeacherNotConvergedError",
    "__version__",
    "cached_call_sigmas",
    "distill",
    "load_lambdas",
    "make_sampler",
    "newest_matching",
    "probe_call_sigmas",
    "refusal_reason",
    "sample",
]
