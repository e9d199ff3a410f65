"""An IMAGE of a fit, made to be read on the node: λ per model call above the fit error per call (before, with
λ = 0, and after), call numbers on the shared x axis, a few y ticks, legends beside the panel titles (never over
the curves) and the held-out figures as a caption. PIL only (no matplotlib in ComfyUI's environment).

Sized for where ComfyUI shows it: a node's image preview is the node's width (270 px for a new node) by about 205
px, and an image is never drawn larger than its own size. The image has that shape at twice the resolution, so the
text is about 11 screen px at 100 % zoom and stays sharp on high-DPI screens or when zoomed in.
"""

from __future__ import annotations

import functools
import math
import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BOX = (270, 205)  # display px: a new node's image preview (frontend 1.32.9: node width x (220 - 15))
SCALE = 2  # image px per display px with a scalable font; 1 with PIL's fixed bitmap font
TEXT, SMALL = 11, 10  # display px: titles and caption, tick labels
BACKGROUND, FRAME, INK, DIM = (24, 24, 24), (110, 110, 110), (235, 235, 235), (175, 175, 175)
TERM_COLORS = [(90, 170, 255), (255, 170, 60), (200, 120, 255)]
BEFORE, AFTER = (255, 95, 95), (80, 210, 120)
# fonts with the Greek letters the text uses, tried before PIL's own (whose bundled font has no λ)
FONT_FILES = ("DejaVuSans.ttf", "Arial.ttf", "arial.ttf", "LiberationSans-Regular.ttf", "Helvetica.ttc",
              "NotoSans-Regular.ttf", "Verdana.ttf", "verdana.ttf")
ASCII_FALLBACK = {"λ": "lambda", "σ": "sigma", "→": "->", "×": "x", "±": "+/-", "—": "-", "–": "-"}


@functools.lru_cache(maxsize=8)
def fonts(size: int):
    """``(font, scale, has_greek)`` for text ``size`` display px: a TrueType font at ``SCALE`` x when one can be
    loaded (a system font with λ first, then PIL's bundled one), else PIL's fixed bitmap font at 1x."""
    for name in FONT_FILES:
        try:
            font = ImageFont.truetype(name, size * SCALE)
        except OSError:
            continue
        if _has(font, "λ"):
            return font, SCALE, True
    try:
        font = ImageFont.load_default(size=size * SCALE)  # Pillow >= 10.1 with FreeType
        return font, SCALE, _has(font, "λ")
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default(), 1, False


def _has(font, character: str) -> bool:
    """Whether ``font`` draws ``character`` rather than its missing-glyph box."""

    def pixels(text):
        image = Image.new("L", (64, 64))
        ImageDraw.Draw(image).text((4, 4), text, font=font, fill=255)
        return image.tobytes()

    try:
        return pixels(character) != pixels("\U0010fffd")
    except Exception:  # noqa: BLE001 - a font that cannot even say is treated as lacking it
        return False


class _Canvas:
    def __init__(self, width: int, height: int):
        self.font, self.scale, greek = fonts(TEXT)
        self.small = fonts(SMALL)[0]
        self.greek = greek
        self.image = Image.new("RGB", (width * self.scale, height * self.scale), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def s(self, value: float) -> float:
        return value * self.scale

    def clean(self, text: str) -> str:
        if self.greek:
            return text
        for char, replacement in ASCII_FALLBACK.items():
            text = text.replace(char, replacement)
        return text

    def width(self, text: str, small: bool = False) -> float:
        """Display px."""
        return (self.small if small else self.font).getlength(self.clean(text)) / self.scale

    def text(self, x, y, text, fill=INK, small=False, anchor="la"):
        font = self.small if small else self.font
        try:
            self.draw.text((self.s(x), self.s(y)), self.clean(text), font=font, fill=fill, anchor=anchor)
        except (TypeError, ValueError):  # the bitmap font has no anchors
            self.draw.text((self.s(x), self.s(y)), self.clean(text), font=font, fill=fill)

    def line(self, points, fill, width=1.0):
        self.draw.line([(self.s(x), self.s(y)) for x, y in points], fill=fill, width=max(1, round(self.s(width))))

    def rect(self, box, outline):
        self.draw.rectangle([self.s(v) for v in box], outline=outline, width=max(1, round(self.s(0.5))))

    def dot(self, x, y, r, fill):
        self.draw.ellipse([self.s(x - r), self.s(y - r), self.s(x + r), self.s(y + r)], fill=fill)


def tick(value: float) -> str:
    if value == 0:
        return "0"
    text = f"{value:.2g}"
    return text.replace("e-0", "e-").replace("e+0", "e")


def x_ticks(n: int, width: float) -> list[int]:
    """Call numbers 1..n to label, spaced so that the labels do not touch."""
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if n / step * 16 <= width:
            break
    return sorted({1, *range(step, n + 1, step)} | ({n} if n % step and n - (n // step) * step > step / 2 else set()))


def _range(series, include_zero: bool):
    values = [v for s in series for v in s if math.isfinite(v)] or [0.0]
    low, high = min(values), max(values)
    if include_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    if high - low < 1e-12:
        low, high = low - 1.0, high + 1.0
    pad = 0.08 * (high - low)
    return low - (pad if low < 0 else 0.0), high + pad


def _ticks(low: float, high: float) -> list[float]:
    return [low, 0.0, high] if low < 0 < high else [0.0, high] if low == 0 else [low, high]


def _panel(c: _Canvas, box, series, colors, n: int, span) -> None:
    x0, y0, x1, y1 = box
    low, high = span
    c.rect(box, FRAME)
    placed = []
    for value in sorted(_ticks(low, high), key=lambda v: v not in (low, high)):  # the extremes first
        y = y1 - (y1 - y0) * (value - low) / (high - low)
        c.line([(x0 - 3, y), (x0, y)], FRAME)
        # the extreme labels inside the frame's height, a middle one only where it does not touch them
        top = min(max(y - SMALL / 2, y0 - 1), y1 + 1 - SMALL)
        if any(abs(top - other) < SMALL for other in placed):
            continue
        placed.append(top)
        c.text(x0 - 4, top + SMALL / 2, tick(value), fill=DIM, small=True, anchor="rm")
    if low < 0 < high:
        zy = y1 - (y1 - y0) * (0 - low) / (high - low)
        c.line([(x0, zy), (x1, zy)], (70, 70, 70))

    def point(i, v):
        return x0 + 5 + (x1 - x0 - 10) * (i / max(n - 1, 1)), y1 - (y1 - y0) * (v - low) / (high - low)

    for values, color in zip(series, colors, strict=False):
        points = [point(i, v) for i, v in enumerate(values) if math.isfinite(v)]
        if len(points) > 1:
            c.line(points, color, width=1.2)
        for x, y in points:
            c.dot(x, y, 1.8, color)


def _legend(c: _Canvas, right: float, y: float, entries) -> float:
    """Entries (label, color) right-aligned at ``right``, each after a short line in its color; returns the left
    edge."""
    x = right
    for label, color in reversed(entries):
        x -= c.width(label)
        c.text(x, y, label, fill=color)
        x -= 12
        c.line([(x, y + TEXT * 0.6), (x + 9, y + TEXT * 0.6)], color, width=1.6)
        x -= 8
    return x


def plot_fit(lam, caption: str | None = None) -> torch.Tensor:
    """(1, H, W, 3) float image in [0, 1] of ``lam``; ``caption`` below (the held-out figures), wrapped."""
    width, height = BOX
    c = _Canvas(width, height)
    lambdas = lam.lambdas.float()
    channels = lambdas.shape[-1] if lambdas.dim() == 3 else 0
    lambdas = lambdas.mean(-1) if lambdas.dim() == 3 else lambdas
    terms = [lambdas[:, j].tolist() for j in range(lambdas.shape[1])]
    before, after = lam.fit_rmse()
    n = max(len(terms[0]) if terms else 0, len(before), len(after), 1)

    # the caption decides how much height the panels get
    chars = max(20, int((width - 8) / max(c.width("x" * 20) / 20, 1)))
    lines = textwrap.wrap(caption or "", chars)[:4]
    line_height = TEXT + 2
    caption_top = height - 3 - line_height * len(lines)
    ticks_row = caption_top - (SMALL + 5)
    span_a, span_b = _range(terms, True), _range([before, after], True)
    left = 6 + max(c.width(tick(v), small=True) for span in (span_a, span_b) for v in _ticks(*span))
    right = width - 4
    title_height = TEXT + 6
    panel_height = (ticks_row - 2 - 2 * title_height - 4) / 2
    top_a = title_height
    box_a = (left, top_a, right, top_a + panel_height)
    top_b = box_a[3] + 4 + title_height
    box_b = (left, top_b, right, top_b + panel_height)

    # panel A: λ per call; its legend (history > 1) beside the title
    sampler = lam.metadata.get("comfy_sampler") or lam.base_sampler or ""
    entries = [(f"λ{j + 1}", TERM_COLORS[j % len(TERM_COLORS)]) for j in range(len(terms))] if len(terms) > 1 else []
    legend_left = _legend(c, right, 1, entries) if entries else right
    title = "λ per model call" + (" (channel mean)" if channels else "")
    candidates = [f"{title}, {sampler}", title, "λ per call", "λ"]
    c.text(2, 1, next((t for t in candidates if c.width(t) <= legend_left - 8), candidates[-1]))
    _panel(c, box_a, terms, [TERM_COLORS[j % len(TERM_COLORS)] for j in range(len(terms))], n, span_a)

    # panel B: fit error per call, before and after; legend beside the title
    legend_left = _legend(c, right, box_a[3] + 4, [("λ = 0", BEFORE), ("fitted", AFTER)])
    candidates = ["fit RMSE to teacher", "fit RMSE", "RMSE"]
    c.text(2, box_a[3] + 4, next((t for t in candidates if c.width(t) <= legend_left - 8), candidates[-1]))
    if before or after:
        _panel(c, box_b, [before, after], [BEFORE, AFTER], n, span_b)
    else:
        c.rect(box_b, FRAME)
        c.text((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2, "not recorded", fill=DIM, anchor="mm")

    # the shared x axis: call numbers under panel B
    inner = box_b[2] - box_b[0] - 10
    for k in x_ticks(n, inner):
        x = box_b[0] + 5 + inner * ((k - 1) / max(n - 1, 1))
        c.line([(x, box_b[3]), (x, box_b[3] + 2)], FRAME)
        c.text(x, box_b[3] + 2, str(k), fill=DIM, small=True, anchor="ma")
    c.text(2, box_b[3] + 2, "call", fill=DIM, small=True)

    for i, line in enumerate(lines):
        c.text(3, caption_top + i * line_height, line)
    return torch.from_numpy(np.asarray(c.image, dtype=np.float32) / 255.0)[None]

