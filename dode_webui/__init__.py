"""Host-independent logic of the Stable Diffusion WebUI (A1111, Forge, reForge) extension.

Pure python + dode_core: nothing here imports ``modules`` (the WebUI) or gradio, so every piece runs in the
tests. ``scripts/dode_webui.py`` is the thin adapter that feeds WebUI objects into these functions.
The package name is unique on purpose: A1111 module names are global across extensions.
"""

from .distill_job import (
    DistillProgress,
    DistillRefusedError,
    DistillRequest,
    parse_distill_request,
    run_distill_job,
)
from .host_rng import hijack_free
from .lambda_files import (
    LAMBDAS_FOLDER_NAME,
    LambdaResolutionError,
    file_hash,
    infotext_fields,
    list_lambda_files,
    resolve_lambdas,
)
from .logs import show_own_logs
from .messages import one_line, user_message
from .names import (
    DEFAULT_SCHEDULER_NAMES,
    PROBE_MODEL,
    SamplerSpec,
    check_sampler_name,
    offered_samplers,
    sampler_options,
    spec_for_label,
)
from .sampler_fn import RunContext, make_dode_sampler

__all__ = [
    "DEFAULT_SCHEDULER_NAMES",
    "PROBE_MODEL",
    "LAMBDAS_FOLDER_NAME",
    "DistillProgress",
    "DistillRefusedError",
    "DistillRequest",
    "LambdaResolutionError",
    "RunContext",
    "SamplerSpec",
    "check_sampler_name",
    "file_hash",
    "hijack_free",
    "infotext_fields",
    "list_lambda_files",
    "make_dode_sampler",
    "offered_samplers",
    "one_line",
    "parse_distill_request",
    "resolve_lambdas",
    "run_distill_job",
    "sampler_options",
    "show_own_logs",
    "spec_for_label",
    "user_message",
]
