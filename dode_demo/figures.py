"""The demo report's pictures: an image grid (PIL) and a plot of λ and of the fit error per call (matplotlib)."""

from __future__ import annotations

import torch

SCALE = 3  # each 16x16 digit is drawn at 48x48
GAP = 4
LABEL_WIDTH = 150
HEADER = 18


def image_grid(rows, path: str) -> None:
    """One line per (sampler, budget, schedule): reference | base | D-ODE, the same noise in each column; base and
    D-ODE run on the line's schedule (Karras, or the fitted one)."""
    from PIL import Image, ImageDraw

    panels = ["reference", "base", "D-ODE"]
    count = rows[0].images["base"].shape[0]
    tile = 16 * SCALE
    panel_width = count * tile + GAP * (count - 1)
    width = LABEL_WIDTH + len(panels) * (panel_width + 3 * GAP)
    height = HEADER + len(rows) * (tile + GAP)
    canvas = Image.new("L", (width, height), color=255)
    draw = ImageDraw.Draw(canvas)
    for p, panel in enumerate(panels):
        draw.text((LABEL_WIDTH + p * (panel_width + 3 * GAP), 3), panel, fill=0)
    for r, row in enumerate(rows):
        top = HEADER + r * (tile + GAP)
        draw.text((4, top + tile // 2 - 18), f"{row.sampler}\n{row.calls} calls\n{row.schedule}", fill=0)
        for p, panel in enumerate(panels):
            for i, image in enumerate(row.images[panel]):
                left = LABEL_WIDTH + p * (panel_width + 3 * GAP) + i * (tile + GAP)
                canvas.paste(_to_pil(image).resize((tile, tile), Image.NEAREST), (left, top))
    canvas.save(path)


def _to_pil(image: torch.Tensor):
    from PIL import Image

    pixels = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(255 - pixels.numpy())  # dark ink on white paper, as the digits were written


def lambda_plot(rows, path: str) -> None:
    """Per sampler: λ per model call (one line per budget, schedule and term; fitted schedules dashed, with squares),
    and the fit error per call before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = list(dict.fromkeys(row.sampler for row in rows))
    figure, axes = plt.subplots(2, len(samplers), figsize=(5 * len(samplers), 7), squeeze=False)
    for column, name in enumerate(samplers):
        lam_axis, error_axis = axes[0][column], axes[1][column]
        budgets = list(dict.fromkeys(r.calls for r in rows if r.sampler == name))
        for row in (r for r in rows if r.sampler == name):
            color, fitted = f"C{budgets.index(row.calls)}", row.schedule == "fitted"
            marker, style = ("s", "--") if fitted else ("o", "-")
            tag = f"{row.calls} calls, {row.schedule}"
            calls = range(row.calls)
            for term in range(len(row.lambdas[0])):
                values = [row.lambdas[k][term] for k in calls]
                lam_axis.plot(calls, values, marker=marker, color=color, linestyle=style, alpha=1.0 - 0.3 * term,
                              label=tag + (f", term {term + 1}" if len(row.lambdas[0]) > 1 else ""))
            error_axis.semilogy(calls, row.fit_rmse_before, marker="x", linestyle=":", color=color,
                                label=f"{tag}, λ = 0")
            error_axis.semilogy(calls, row.fit_rmse_after, marker=marker, linestyle=style, color=color,
                                label=f"{tag}, λ fitted")
        lam_axis.axhline(0, color="grey", linewidth=0.5)
        lam_axis.set(title=f"{name}: λ per model call", xlabel="model call", ylabel="λ")
        error_axis.set(title=f"{name}: fit error per call", xlabel="model call",
                       ylabel="RMSE of the next state to the teacher")
        lam_axis.legend(fontsize=7)
        error_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
