"""Rules both hosts follow, defined once: how large a fit may be, the history choices, how much host text a file
keeps, the sigma tolerances, and what a λ file's proof says in the words users read.

ComfyUI's nodes (``nodes/``), the WebUI extension (``dode_webui/``, ``scripts/``) and dode_core itself read these
names; no host defines its own (tests/test_rules.py fails if one does). Which file a run uses and which model a file
belongs to are in file_rules.py.
"""

from __future__ import annotations

import math
import re

from .text import printable

# --- the size of a fit ----------------------------------------------------------------------------------------
MIN_BATCH = 4  # every latent is judged by λ fitted on the others: fewer cannot show a gain beyond chance
MIN_TEACHER_FACTOR = 2  # the teacher's error is measured against its own run at half the factor
DEFAULT_TEACHER_FACTOR = 10
MAX_TEACHER_FACTOR = 100
# steps x teacher_factor: each is a teacher model call (with fit_schedule a kept state); a fit that needs more is a
# mistake, not a wish. 20 steps x 100, or 400 steps x 10.
MAX_TEACHER_STEPS = 4000
MAX_FIT_VALUES = 1 << 24  # batch x latent values (16.8M: a batch of 16 Flux latents of 16x128x128 is 4.2M)

# --- history: terms per model call ------------------------------------------------------------------------------
AUTO = "auto"
MAX_HISTORY = 8  # the most terms a file holds, and a fit can be asked for
AUTO_MAX_HISTORY = 3  # "auto" uses 0 to this many terms per call, whichever proves best
HISTORY_CHOICES = ("1", "2", "3", AUTO)  # what the hosts' menus offer

# --- host text kept in a file -----------------------------------------------------------------------------------
MAX_TEXT_CHARS = 4000  # a prompt or other host text, for reference only (the format allows 64 KiB per value)

# --- sigma tolerances -------------------------------------------------------------------------------------------
SIGMA_RTOL = 1e-3  # a run's model calls are the ones a file was fitted for
START_RTOL = 1e-3  # a file's own schedule may stand in only where it starts at the run's first sigma
# A file's schedule may stand in for a host's when it is the same schedule computed by another host: A1111 takes
# SD's noise table from its fp16 alphas_cumprod, Forge, reForge and ComfyUI recompute it, which moves SD1.5's
# smallest sigma from 0.0292 to 0.0313 (7%) and every Karras or exponential sigma by less (tests/test_file_rules.py
# measures both); two schedulers at the same steps differ by 21% or more.
HOST_SIGMA_RTOL = 0.10

_WHOLE_NUMBER = re.compile(r"[0-9]{1,3}(?:\.0*)?")


def parse_history(value) -> int | str:
    """``"auto"`` or a whole number of terms from 1 to MAX_HISTORY, from a menu (``"2"``), an API (``2``, ``2.0``)
    or a flag; ValueError naming the value otherwise."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if isinstance(value, bool) or not _WHOLE_NUMBER.fullmatch(text) or not 1 <= int(float(text)) <= MAX_HISTORY:
        raise ValueError(f"history must be a whole number from 1 to {MAX_HISTORY} or '{AUTO}'; got "
                         f"{printable(str(value))[:40]!r}.")
    return int(float(text))


def fit_size_problem(steps: int, teacher_factor: int, shape=None) -> str | None:
    """Why a fit over ``steps`` steps with ``teacher_factor`` sub-steps per step, on a batch of ``shape`` (batch,
    ...; None: not known yet), is too large, with what to use instead; None when it is not."""
    if steps * teacher_factor > MAX_TEACHER_STEPS:
        return (f"{steps} steps x {teacher_factor} teacher sub-steps per step = {steps * teacher_factor} teacher "
                f"steps; at most {MAX_TEACHER_STEPS}. Use at most {max(1, MAX_TEACHER_STEPS // max(steps, 1))} "
                f"teacher sub-steps for {steps} steps, or fewer steps.")
    if shape is not None:
        values = math.prod(int(s) for s in shape)
        if values > MAX_FIT_VALUES:
            per_latent = max(1, values // max(int(shape[0]), 1))
            return (f"the fit batch is {int(shape[0])} latents of {list(shape[1:])} = {values} values; at most "
                    f"{MAX_FIT_VALUES}. Use a batch of at most {max(1, MAX_FIT_VALUES // per_latent)} or a smaller "
                    "latent.")
    return None


def host_fields(values: dict, reserved=()) -> dict[str, str]:
    """What a host records in a λ file about the run, as strings: None values left out, texts cut to
    MAX_TEXT_CHARS, a seed that is not a whole number left out, and keys in ``reserved`` (what the fit itself
    wrote) never overridden."""
    fields = {}
    for key, value in values.items():
        if value is None or key in reserved:
            continue
        text = str(value)
        if key == "seed":
            try:
                text = str(int(value))
            except (TypeError, ValueError):
                continue
        fields[key] = text[:MAX_TEXT_CHARS]
    return fields


def proof_lines(lam) -> list[str]:
    """The proof a λ file carries, as the hosts and ``inspect`` show it: one line, plus one for a fitted schedule
    and one for the teacher where the file records them; empty for a file that carries no proof."""
    figures = lam.heldout()
    if figures is None:
        return []
    base, dode, count = figures
    metadata = lam.metadata
    ratio = ""
    if base > 0:
        spread = metadata.get("heldout_ratio_se")
        ratio = f" ({dode / base:.2f}x" + (f" ± {float(spread):.2f}" if spread else "") + ")"
    how = ("each judged with λ fitted on the others" if metadata.get("heldout_method") == "leave-one-out"
           else "held out of the fit")
    typical = metadata.get("heldout_typical_ratio")
    typical = f"; a typical latent {float(typical):.2f}x" if typical else ""
    lines = [f"proof on {count} latents, {how}: final-state RMSE to the teacher, base sampler on your schedule "
             f"{base:.4g} -> D-ODE {dode:.4g}{ratio}{typical}"]
    schedule_fields = ("heldout_rmse_dode_user", "heldout_rmse_dode_fitted", "heldout_rmse_base_fitted")
    if all(key in metadata for key in schedule_fields):  # a file from a stranger may hold some of them only
        user, fitted, base_fitted = (float(metadata[key]) for key in schedule_fields)
        chosen = "the fitted schedule" if lam.schedule_fitted else "your schedule (the fitted one did not beat it)"
        lines.append(f"schedule: {chosen}; D-ODE on your schedule {user:.4g}, on the fitted one {fitted:.4g} (base "
                     f"on it {base_fitted:.4g})")
    if "teacher_error" in metadata:  # validated as a number when present
        teacher = printable(metadata.get("teacher_sampler", "?"))[:64]
        lines.append(f"teacher: {teacher} x{printable(metadata.get('teacher_factor', '?'))[:8]}, estimated error "
                     f"{float(metadata['teacher_error']):.2g} (against itself at half the factor); "
                     f"{printable(metadata.get('model_calls', '?'))[:12]} model calls in all")
    return lines


def proof_summary(lam) -> str | None:
    """The proof in one short line for an infotext or a log: ``base 0.1234 -> D-ODE 0.05678 (0.46x ± 0.05, 8
    latents, each with λ fitted on the others)``; None for a file that carries no proof."""
    figures = lam.heldout()
    if figures is None:
        return None
    base, dode, count = figures
    ratio = f"{dode / base:.2f}x, " if base > 0 else ""
    spread = lam.metadata.get("heldout_ratio_se")
    if spread and base > 0:
        ratio = f"{dode / base:.2f}x ± {float(spread):.2f}, "
    how = ("each with λ fitted on the others" if lam.metadata.get("heldout_method") == "leave-one-out"
           else "held out of the fit")
    return f"base {base:.4g} -> D-ODE {dode:.4g} ({ratio}{count} latents, {how})"

# --- correction limit ---------------------------------------------------------------------------------------------
# A correction may reach this many times the largest size it had on the fit batch (crossfit.bound_call). The largest
# of 8 is a low estimate of what fresh seeds reach: at 1.0 ordinary latents were cut too (KDE digits, heun 6 calls,
# history auto: D-ODE / base 0.104 -> 0.122); at 1.25 they were not, and latents far past it still are.
LIMIT_MARGIN = 1.25
