"""Rules both hosts follow, defined once: what a λ file's proof says, in the words users read."""

from __future__ import annotations

from .lambdas_file import printable


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
