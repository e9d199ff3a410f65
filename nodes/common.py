"""What both kinds of D-ODE node share: their menu category, the tooltips of their common outputs, and the text they
show about a λ file (what it is, its proof)."""

from __future__ import annotations

from ._core import dode_core

CATEGORY = "sampling/custom_sampling/samplers"
OUT_TIPS = {
    "sampler": "The base sampler with the fitted λ: connect to SamplerCustom / SamplerCustomAdvanced.",
    "sigmas": "The schedule the λ belong to (the fitted one with fit_schedule); sample with it.",
    "lambda_file": "The λ file's name in models/dode_lambdas.",
    "plot": "λ per model call and the fit error per call, before and after, with the held-out figures.",
    "info": "What the file is, its held-out figures and any warning, as text (connect to Preview Any).",
}


def preview_text(lines) -> str:
    """``lines`` as one text that keeps its line breaks where ComfyUI shows it: frontend 1.32.9's Preview as Text
    renders Markdown and joins plain line breaks, a line ending in two spaces is a hard break there; plain text
    elsewhere (logs, frontend 1.58.1's default) looks the same."""
    return "  \n".join(str(line) for line in lines)


def plot_caption(lam) -> str:
    summary = dode_core.rules.proof_summary(lam)
    return f"proof: {summary}" if summary else "no held-out proof in this file (written before fits proved themselves)"


def describe_lines(name: str, lam, note: str = "") -> list[str]:
    """The text the nodes show: the file, what it was fitted for, its held-out figures."""
    schedule = "fitted schedule" if lam.schedule_fitted else f"scheduler {lam.metadata.get('scheduler', '?')}"
    lines = [f"lambda file: {name}{note}",
             f"{lam.metadata.get('comfy_sampler', lam.base_sampler)}, {lam.metadata.get('steps', '?')} steps, "
             f"{lam.calls} model calls, {schedule}, history {lam.metadata.get('history_mode', lam.history)}; "
             f"teacher {lam.metadata.get('teacher_sampler', '?')} x{lam.metadata.get('teacher_factor', '?')} "
             f"({lam.metadata.get('teacher_calls', '?')} calls)"]
    return lines + dode_core.rules.proof_lines(lam)
