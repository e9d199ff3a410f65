"""dode_core: D-ODE (Kim, Tang, Yu, CVPR 2024) for k-diffusion-style samplers, in pure torch.

    from dode_core import distill, sample, make_sampler, Lambdas, load_lambdas, choose_file, refusal_reason

No host (ComfyUI, A1111, Forge) is imported here; hosts pass their own sampler functions in. The rules both hosts
share are in rules.py (limits, choices, tolerances, the proof's text) and file_rules.py (which file, which model).
"""

from .blackbox import SamplerRefusedError, probe_call_sigmas, refusal_reason
from .correction import DODEDenoiser, cached_call_sigmas, make_sampler, sample
from .file_format import LambdaFileError
from .file_rules import FileChoice, choose_file, same_sampler, use_file
from .fit import NoGainError, TeacherNotConvergedError, distill
from .lambdas_file import Lambdas, ModelMismatchError, ScheduleMismatchError, load_lambdas
from .version import __version__

__all__ = [
    "DODEDenoiser",
    "FileChoice",
    "LambdaFileError",
    "Lambdas",
    "ModelMismatchError",
    "NoGainError",
    "SamplerRefusedError",
    "ScheduleMismatchError",
    "TeacherNotConvergedError",
    "__version__",
    "cached_call_sigmas",
    "choose_file",
    "distill",
    "load_lambdas",
    "make_sampler",
    "probe_call_sigmas",
    "refusal_reason",
    "same_sampler",
    "sample",
    "use_file",
]
