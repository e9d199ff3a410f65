"""How a D-ODE error reaches a ComfyUI user: one short first line (what is wrong, what to do), a blank line, then
the details; under a short exception type.

ComfyUI 0.3.75 reports an exception as ``exception_type`` = ``<module>.<class>`` and ``exception_message`` =
``str(error)`` (execution.py ``full_type_name``). A custom node's module is named after its folder's full path, so
dode_core's own classes arrive as ``/home/me/ComfyUI/custom_nodes/dode.dode_core.fit.NoGainError``. Frontend 1.32.9
shows the message in a dialog titled with the node type (``SamplerCustomAdvanced`` for an error while sampling) and
keeps its line breaks; frontend 1.58.1 shows a generic toast and writes ``<exception_type>: <message>`` into the
node's error panel. The classes here keep dode_core's class names (and are dode_core's classes too, for
``isinstance``) under the module name ``D-ODE``: ``D-ODE.NoGainError: No gain: ...``.
"""

from __future__ import annotations

import textwrap

from ._core import dode_core

MODULE = "D-ODE"
MAX_LISTED = 10  # files listed in an error; the rest are counted
FIRST_LINE = 240  # characters: a first line longer than this is cut (the whole text follows as details)


class DODEError(Exception):
    """A D-ODE node error: ``str()`` is the first line, a blank line and the details."""

    __module__ = MODULE

    def __init__(self, first_line: str, details: str = ""):
        self.first_line = shorten(first_line, FIRST_LINE)
        self.details = details.strip("\n")
        super().__init__(self.first_line + (f"\n\n{self.details}" if self.details else ""))


class InputError(DODEError, ValueError):
    """A node input D-ODE cannot work with (found before any model call)."""

    __module__ = MODULE


class NoGainError(DODEError, dode_core.NoGainError):
    __module__ = MODULE


class TeacherNotConvergedError(DODEError, dode_core.fit.TeacherNotConvergedError):
    __module__ = MODULE


class SamplerRefusedError(DODEError, dode_core.SamplerRefusedError):
    __module__ = MODULE


class ScheduleMismatchError(DODEError, dode_core.ScheduleMismatchError):
    __module__ = MODULE


class LambdaFileError(DODEError, dode_core.LambdaFileError):
    __module__ = MODULE


def shorten(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else textwrap.shorten(text, limit, placeholder=" …")


def what(error: BaseException, limit: int = 140) -> str:
    """The part of dode_core's message that says what is wrong: its first clause (up to ';', '.' + space or a
    line break), without a leading 'name: ' when ``error`` names a file first."""
    text = str(error).strip()
    for stop in ("\n", "; ", ". "):
        text = text.split(stop)[0]
    return shorten(text.rstrip("."), limit)


def listing(entries, limit: int = MAX_LISTED) -> list[str]:
    """Lines for ``(name, description)`` entries: at most ``limit``, then a count."""
    lines = [f"  {name}: {description}" for name, description in entries[:limit]]
    if len(entries) > limit:
        lines.append(f"  ... and {len(entries) - limit} more")
    return lines or ["  (no λ files)"]


def capped(message: str) -> str:
    """dode_core's message with its file listing (lines '  name: description') capped as ``listing`` does."""
    head, entries = [], []
    for line in message.splitlines():
        if line.startswith("  ") and ": " in line:
            entries.append(tuple(line.strip().split(": ", 1)))
        else:
            head.append(line)
    return "\n".join(head + (listing(entries) if entries else []))


def for_distill(error: Exception, sampler_name: str, history: str, teacher_factor: int) -> Exception:
    """A distill node's error from dode_core as the user should read it; anything else unchanged."""
    if isinstance(error, DODEError):
        return error
    if isinstance(error, dode_core.NoGainError):
        other = "'auto'" if str(history) != "auto" else "1"
        return NoGainError(f"No gain: D-ODE did not beat '{sampler_name}' on this schedule, so no λ file was "
                           f"written. Keep '{sampler_name}' as it is, or try history {other} or other steps.",
                           str(error))
    if isinstance(error, dode_core.fit.TeacherNotConvergedError):
        return TeacherNotConvergedError(
            f"The teacher run is not accurate enough to prove a gain, so no λ file was written. Raise "
            f"teacher_factor (now {teacher_factor}) or use more steps.", str(error))
    if isinstance(error, dode_core.SamplerRefusedError):
        message = str(error)
        if "fit_schedule" in message:
            todo = "turn fit_schedule off, or use euler, heun, dpmpp_2m or lms"
        elif "teacher" in what(error):
            todo = "choose another teacher_sampler ('auto' always works)"
        else:
            todo = "choose a deterministic ODE sampler (euler, heun, dpmpp_2m, ...)"
        return SamplerRefusedError(f"Cannot distill this: {what(error)}. {todo[0].upper()}{todo[1:]}.", message)
    if isinstance(error, dode_core.LambdaFileError):
        return LambdaFileError(f"The λ file could not be written or read back: {what(error)}.", str(error))
    return error


def for_file(error: Exception, name: str) -> Exception:
    """A λ file that cannot be used, as the user should read it."""
    if isinstance(error, DODEError) or not isinstance(error, dode_core.LambdaFileError):
        return error
    reason = str(error).strip()
    prefix = reason.split(": ", 1)
    reason = prefix[1] if len(prefix) == 2 and name in prefix[0] else reason
    return LambdaFileError(f"λ file '{name}' cannot be used: {what(reason)}. Pick another file, or distill again.",
                           str(error))


def schedule_mismatch(error: Exception, name: str) -> Exception:
    """A chosen λ file used with another schedule."""
    return ScheduleMismatchError(
        f"λ file '{name}' was fitted for another schedule: sample with the D-ODE Sampler's sigmas output (or the "
        "scheduler, steps and denoise it was distilled for), or distill for this schedule.", str(error))
