"""The λ file: fitted D-ODE coefficients plus the schedule they belong to, in safetensors.

``Lambdas`` is what a fit returns and a host samples with; ``load_lambdas`` reads one from a file, however hostile
(file_read.py), and ``save`` / ``save_new`` write one (saving.py says what a save guarantees). The format, its fields
and limits are in file_format.py and lambdas/README.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import save as st_save

from . import saving
from .file_format import (
    EXTENSION,
    FORMAT,
    FORMAT_VERSION,
    LIST_FIELDS,
    REQUIRED_FIELDS,
    TENSOR_NAME,
    LambdaFileError,
    validate,
)
from .file_read import read_checked
from .naming import file_stem
from .rules import SIGMA_RTOL
from .text import format_sigmas, printable
from .version import __version__

log = logging.getLogger(__name__)


class ScheduleMismatchError(ValueError):
    """λ were fitted for other model-call sigmas than the run that wants to use them."""


class ModelMismatchError(LambdaFileError):
    """A valid λ file made for another model's latents than the run's (e.g. a demo file for a Stable Diffusion run)."""


@dataclass(frozen=True)
class Lambdas:
    """Fitted D-ODE coefficients for one sampler and one schedule.

    lambdas:     float32 tensor (calls, history) or (calls, history, channels).
    call_sigmas: the sigma of every model call of the student run, in call order.
    metadata:    string -> string; the fields the fit and the hosts record (see lambdas/README.md).
    """

    lambdas: torch.Tensor
    call_sigmas: tuple[float, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return self.lambdas.shape[0]

    @property
    def history(self) -> int:
        return self.lambdas.shape[1]

    @property
    def base_sampler(self) -> str:
        return self.metadata.get("base_sampler", "")

    @property
    def schedule(self) -> torch.Tensor | None:
        """The schedule (``steps + 1`` sigmas, float64, ending in 0) the λ were fitted on, if the file records it."""
        if not self.metadata.get("schedule"):
            return None
        return torch.tensor(json.loads(self.metadata["schedule"]), dtype=torch.float64)

    @property
    def schedule_fitted(self) -> bool:
        """Whether the schedule was chosen by the fit (``distill(..., fit_schedule=True)``), not given by the user:
        such a file is self-contained, and hosts sample on ``schedule`` instead of their scheduler's."""
        return self.metadata.get("schedule_source") == "fitted"

    @property
    def correction_limits(self) -> list[float] | None:
        """Per call, the largest RMS a latent's correction may reach (what it reached on the fit batch); None for a
        file without them (written before they existed): its corrections are not limited."""
        if not self.metadata.get("correction_limit"):
            return None
        return [float(v) for v in json.loads(self.metadata["correction_limit"])]

    @property
    def latent_shape(self) -> list[int] | None:
        """The shape of one latent of the fit batch (channels first), where the file records it."""
        try:
            shape = json.loads(self.metadata["latent_shape"])
        except (KeyError, ValueError):
            return None
        return shape if isinstance(shape, list) and shape and all(type(d) is int for d in shape) else None

    def to_file_dict(self, **extra_metadata) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The (tensors, metadata) pair written to disk, with ``extra_metadata`` merged in as strings."""
        fitted = [key for key in extra_metadata if key in REQUIRED_FIELDS or key in LIST_FIELDS]
        if fitted:
            raise LambdaFileError(f"fields {fitted} are written by the fit and cannot be set when saving; "
                                  "put host information under other names (model, cfg, seed, prompt, ...).")
        metadata = dict(self.metadata)
        metadata.update({key: _as_string(value) for key, value in extra_metadata.items()})
        metadata["format"] = FORMAT
        metadata["format_version"] = FORMAT_VERSION
        metadata["calls"] = str(self.calls)
        metadata["history"] = str(self.history)
        metadata["call_sigmas"] = json.dumps([float(s) for s in self.call_sigmas])
        metadata.setdefault("plugin_version", __version__)
        tensors = {TENSOR_NAME: self.lambdas.detach().to("cpu", torch.float32).contiguous()}
        return tensors, metadata

    def save(self, path: str | os.PathLike, **metadata) -> str:
        """Validate, then write atomically to ``path``, replacing a file there (saving.py). Returns the path."""
        return saving.write_replacing(self._file_bytes(**metadata), os.fspath(path))

    def save_new(self, folder: str | os.PathLike, stem: str, **metadata) -> str:
        """Validate, then write atomically as ``folder/<stem>.safetensors``, or ``<stem>_2``, ... if taken: never
        overwrites (saving.py). ``stem`` is reduced to a bare file stem (naming.file_stem), so a name cannot leave
        ``folder``. Returns the path."""
        return saving.write_new(self._file_bytes(**metadata), os.fspath(folder), file_stem(stem), EXTENSION)

    def _file_bytes(self, **metadata) -> bytes:
        """The whole file, validated: nothing invalid is ever written."""
        tensors, meta = self.to_file_dict(**metadata)
        validate(tensors, meta, source="lambdas to save")
        return st_save(tensors, metadata=meta)

    def fit_rmse(self) -> tuple[list[float], list[float]]:
        """The fit error per call, with this call's λ = 0 and with the fitted λ; empty lists if not recorded."""
        return tuple([float(v) for v in json.loads(self.metadata.get(key) or "[]")]
                     for key in ("fit_rmse_before", "fit_rmse_after"))

    def heldout(self) -> tuple[float, float, int] | None:
        """``(rmse_base, rmse_dode, count)``: the final-state RMSE to the teacher of the base sampler on the user's
        schedule and of D-ODE as delivered, on ``count`` latents, each judged with λ fitted without it (files of
        plugin 0.1: latents held out of the fit); None for files written before fits proved themselves."""
        try:
            return (float(self.metadata["heldout_rmse_base"]), float(self.metadata["heldout_rmse_dode"]),
                    int(self.metadata["heldout_count"]))
        except (KeyError, ValueError):
            return None

    def matches(self, call_sigmas, rtol: float = SIGMA_RTOL) -> bool:
        """Whether a run whose model calls are at ``call_sigmas`` is the one these λ were fitted for."""
        call_sigmas = [float(s) for s in call_sigmas]
        return len(call_sigmas) == len(self.call_sigmas) and all(
            math.isclose(a, b, rel_tol=rtol, abs_tol=1e-8) for a, b in zip(call_sigmas, self.call_sigmas, strict=True)
        )

    def describe(self) -> str:
        """One line for messages: base sampler, steps, calls and the sigma of every call."""
        return (f"{self.base_sampler or '?'}, {self.metadata.get('steps', '?')} steps, {self.calls} calls at "
                f"{format_sigmas(self.call_sigmas)}")

    def check_call_sigmas(self, call_sigmas, rtol: float = SIGMA_RTOL) -> None:
        """Raise ScheduleMismatchError unless ``call_sigmas`` match the fitted ones within ``rtol``."""
        if self.matches(call_sigmas, rtol):
            return
        call_sigmas = [float(s) for s in call_sigmas]
        steps = self.metadata.get("steps", "?")
        raise ScheduleMismatchError(
            "these λ were fitted for another schedule.\n"
            f"  λ file ({self.base_sampler or 'unknown sampler'}, {steps} steps, {self.calls} model calls): "
            f"{format_sigmas(self.call_sigmas)}\n"
            f"  this run ({len(call_sigmas)} model calls): {format_sigmas(call_sigmas)}\n"
            "Use the scheduler, step count and denoise the λ file was made with, "
            "or distill λ for this schedule."
        )


def load_lambdas(path: str | os.PathLike) -> Lambdas:
    """Read and validate a λ file; raise LambdaFileError naming what is wrong and what was expected.

    LambdaFileError is the only exception it raises, whatever the file holds or is (FIFO, device, folder).
    """
    path = os.fspath(path)
    shown = printable(os.fsdecode(path))

    def fail(what: str):
        raise LambdaFileError(f"{shown}: {what}")

    try:
        tensor, metadata, fields = read_checked(path, fail)
    except LambdaFileError:
        raise
    except Exception as error:  # noqa: BLE001 - a loader bug must not take a host down; the fuzz test hunts these
        log.warning("unexpected error reading λ file %s", shown, exc_info=True)
        raise LambdaFileError(f"{shown}: unexpected error while reading the λ file ({type(error).__name__}: "
                              f"{printable(str(error))[:200]}); please report it.") from error
    return Lambdas(lambdas=tensor, call_sigmas=tuple(fields["call_sigmas"]), metadata=metadata)


def _as_string(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps([v if isinstance(v, (int, float, str)) else float(v) for v in value])
    return str(value)
