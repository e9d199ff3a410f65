"""Errors as the WebUI shows them: one short first line (what is wrong, what to do), then the details.

A1111 1.10 (``modules/call_queue.py`` wrap_gradio_call; Forge and reForge keep it) shows an exception raised while
generating as ``<div class='error'>`` + ``html.escape(f"{type(e).__name__}: {e}")``, with no white-space rule: every
newline of the message shows as a space, so a message laid out in lines runs together. The console (the host's
``errors.report``) and the API (``detail`` of the JSON answer) keep the newlines. So a message for the user is
``<summary>\\nDetails: <everything else on one line>``: its first sentence says what is wrong and what to do in
either view, and the details read as one line in the error box.
"""

from __future__ import annotations

from dode_core import SamplerRefusedError

DETAILS = "Details: "


def one_line(text: str) -> str:
    """The lines of ``text`` as one line: stripped, joined with "; " where a line does not end a clause already."""
    parts = [line.strip() for line in str(text).splitlines() if line.strip()]
    joined = ""
    for part in parts:
        if joined:
            joined += " " if joined[-1] in ".:;,([" else "; "
        joined += part
    return joined


def user_message(summary: str, details: str = "") -> str:
    """``summary`` (made one line), then the details on one line after "Details: " (if any)."""
    summary = one_line(summary)
    details = one_line(details)
    return f"{summary}\n{DETAILS}{details}" if details else summary


def restated(error: Exception, message: str) -> Exception:
    """An exception of ``error``'s type (a ValueError where the type cannot be built from a message) saying
    ``message``."""
    try:
        return type(error)(message)
    except Exception:  # noqa: BLE001 - an error type with another constructor: the message matters, not the type
        return ValueError(message)


def for_the_error_box(error: Exception, label: str) -> Exception:
    """``error`` with its first line prefixed by ``label`` (the D-ODE sampler it came from, unless it names it) and
    the rest of its message as one line of details."""
    first, _, rest = str(error).partition("\n")
    if rest.startswith(DETAILS):
        rest = rest[len(DETAILS):]
    if label not in first and not first.startswith("Distill λ (D-ODE)"):
        first = f"{label}: {first}"
    return restated(error, user_message(first, rest))


def refusal_kind(reason: str) -> str:
    """What a dode_core refusal says the sampler does, in a few words."""
    if "injects noise" in reason:
        return "injects noise"
    if "adapts its steps" in reason or "own steps" in reason:
        return "chooses its own steps"
    if "non-finite" in reason:
        return "produces non-finite values"
    if "stage sigmas rise" in reason:
        return "calls the model at rising sigmas within a step"
    return "is not a deterministic ODE sampler with fixed steps"


def schedule_refusal(error: SamplerRefusedError, label: str, base_label: str, steps: int, distilling: bool
                     ) -> SamplerRefusedError:
    """The refusal of the base sampler at the run's own step count (``dode_core.cached_call_sigmas``), for the user:
    which D-ODE sampler, what its base does at how many steps, what to do; dode_core's reason as the details."""
    job = "distill" if distilling else "sample"
    summary = (f"{label} cannot {job} at {steps} steps: {base_label} {refusal_kind(str(error))} at {steps} steps. "
               "Choose another step count, or another D-ODE sampler (docs/webui.md lists them).")
    return restated(error, user_message(summary, str(error)))


def not_distillable(sampler: str, reason: str | None, offered) -> str:
    """Why the distill job cannot take ``sampler`` (``reason``: why the host list has no D-ODE entry for it, None if
    the host's table lacks it) and what to pick instead (``offered``: base labels)."""
    what = f"it {refusal_kind(reason)}" if reason else "it is not in this host's sampler table"
    names = ", ".join(offered) or "none on this host"
    return user_message(f"Distill λ (D-ODE): {sampler!r} cannot be distilled: {what}. Pick one of {names} (or its "
                        "D-ODE entry); no λ file was written.", reason or "")
