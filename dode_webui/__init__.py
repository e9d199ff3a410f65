"""Host-independent logic of the Stable Diffusion WebUI (A1111, Forge, reForge) extension.

Pure python + dode_core: nothing here imports ``modules`` (the WebUI) or gradio, so every piece runs in the
tests. ``scripts/dode_webui.py`` is the thin adapter that feeds WebUI objects into these functions.
The package name is unique on purpose: A1111 module names are global across extensions.
"""

from .distill_job import DistillRequest, build_file_stem, run_distill_job
from .lambda_files import (
    LAMBDAS_FOLDER_NAME,
    LambdaResolutionError,
    file_hash,
    infotext_fields,
    list_lambda_files,
    resolve_lambdas,
)
from .names import (
    DEFAULT_SCHEDULER_NAMES,
    SAMPLER_TABLE,
    SamplerSpec,
    check_sampler_name,
    sampler_options,
    spec_for_label,
)
from .sampler_fn import RunContext, make_dode_sampler

__all__ = [
    "DEFAULT_SCHEDULER_NAMES",
    "LAMBDAS_FOLDER_NAME",
    "SAMPLER_TABLE",
    "DistillRequest",
    "LambdaResolutionError",
    "RunContext",
    "SamplerSpec",
    "build_file_stem",
    "check_sampler_name",
    "file_hash",
    "infotext_fields",
    "list_lambda_files",
    "make_dode_sampler",
    "resolve_lambdas",
    "run_distill_job",
    "sampler_options",
    "spec_for_label",
]
