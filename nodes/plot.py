"""An IMAGE of a fit: a few text lines (file name, held-out figures, warnings), λ per model call, and the fit
error per call before (λ = 0) and after. PIL only. ComfyUI shows it on the node as a preview."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, PAD = 768, 320, 36


def _panel(draw, box, series, title, colors, labels, zero_line=False):
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(90, 90, 90))
    draw.text((x0 + 4, y0 - 16), title, fill=(230, 230, 230))
    values = [v for s in series for v in s] or [0.0]
    low, high = min(min(values), 0.0), max(max(values), 0.0)
    if high - low < 1e-12:
        high = low + 1.0
    draw.text((x0 - PAD + 2, y0), f"{high:.3g}", fill=(180, 180, 180))
    draw.text((x0 - PAD + 2, y1 - 12), f"{low:.3g}", fill=(180, 180, 180))

    def point(i, v, n):
        px = x0 + 6 + (x1 - x0 - 12) * (i / max(n - 1, 1))
        py = y1 - 4 - (y1 - y0 - 8) * (v - low) / (high - low)
        return px, py

    if zero_line:
        zy = point(0, 0.0, 1)[1]
        draw.line([(x0, zy), (x1, zy)], fill=(120, 120, 120))
    for k, (s, color, label) in enumerate(zip(series, colors, labels, strict=False)):
        pts = [point(i, v, len(s)) for i, v in enumerate(s)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        draw.text((x1 - 150, y0 + 4 + 14 * k), label, fill=color)


LINE = 20


def plot_fit(lam, lines=()) -> torch.Tensor:
    """(1, H, W, 3) float image in [0, 1]; ``lines`` of text above the two panels (warnings start with '!')."""
    lines = [(piece, str(line).startswith("!")) for line in lines
             for piece in textwrap.wrap(str(line), 92, subsequent_indent="  ")][:12]
    header = LINE * len(lines) + (8 if lines else 0)
    image = Image.new("RGB", (WIDTH, HEIGHT + header), (24, 24, 24))
    text = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    for i, (line, warning) in enumerate(lines):
        text.text((8, 6 + LINE * i), line, font=font, fill=(255, 200, 80) if warning else (235, 235, 235))
    panels = Image.new("RGB", (WIDTH, HEIGHT), (24, 24, 24))
    draw = ImageDraw.Draw(panels)
    lambdas = lam.lambdas.float()
    lambdas = lambdas.mean(-1) if lambdas.dim() == 3 else lambdas
    series = [lambdas[:, j].tolist() for j in range(lambdas.shape[1])]
    half = WIDTH // 2
    _panel(draw, (PAD, 28, half - 8, HEIGHT - 24), series, f"lambda per model call ({lam.base_sampler})",
           [(90, 170, 255), (255, 170, 60), (120, 220, 120)][: len(series)] + [(200, 200, 200)] * 8,
           [f"lambda term {j + 1}" for j in range(len(series))], zero_line=True)
    before, after = lam.fit_rmse()
    _panel(draw, (half + PAD, 28, WIDTH - 8, HEIGHT - 24), [before, after], "fit RMSE to teacher per call",
           [(255, 100, 100), (90, 200, 120)], ["before (lambda = 0)", "after (fitted)"])
    draw.text((PAD, HEIGHT - 18), "model call ->", fill=(180, 180, 180))
    image.paste(panels, (0, header))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
