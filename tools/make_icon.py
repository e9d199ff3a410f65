"""Draw docs/icon.png, the pack's icon in the Comfy Registry ([tool.comfy] Icon in pyproject.toml).

What it shows: a fine teacher trajectory (the thin curve), the few-step base sampler falling off it (grey) and the
same few steps with D-ODE's correction landing on it (orange); underneath, the λ fitted for each model call of the
shipped demo file (Euler, 8 calls, Karras), first history term. Run from the repository root:

    .venv/bin/python tools/make_icon.py
"""

import math
import os

from PIL import Image, ImageDraw, ImageFont
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "icon.png")
LAMBDAS = os.path.join(ROOT, "dode_demo", "lambdas", "demo-digits16_euler_8steps_karras_hauto.safetensors")
SIZE = 400
SCALE = 4  # drawn large, then downsampled: smooth edges without an antialiasing backend
BACKGROUND = (22, 27, 45)
TEACHER = (235, 238, 245)
BASE = (120, 128, 150)
DODE = (255, 150, 40)
BARS = (64, 200, 190)
RATE = 3.0  # the toy ODE dy/dx = -RATE * y, y(0) = 1: exp(-RATE x) is its exact trajectory
STEPS = 4


def font(size: int):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
                 "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def main() -> None:
    s = SCALE
    image = Image.new("RGB", (SIZE * s, SIZE * s), BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60 * s, 360 * s, 70 * s, 250 * s

    def point(x: float, y: float):
        return left + x * (right - left), bottom - y * (bottom - top)

    teacher = [point(i / 200, math.exp(-RATE * i / 200)) for i in range(201)]

    h = 1.0 / STEPS
    base, dode = [point(0, 1.0)], [point(0, 1.0)]
    y = 1.0
    for k in range(1, STEPS + 1):
        y = y * (1 - RATE * h)  # Euler on the coarse grid
        base.append(point(k * h, max(y, -0.25)))
        dode.append(point(k * h, math.exp(-RATE * k * h)))  # corrected: on the teacher's curve at every step
    draw.line(base, fill=BASE, width=6 * s, joint="curve")
    for cx, cy in base[1:]:
        r = 8 * s
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=BASE)
    draw.line(teacher, fill=TEACHER, width=5 * s, joint="curve")  # over the base, under the corrected steps
    for cx, cy in dode:
        r = 13 * s
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=DODE, outline=BACKGROUND, width=3 * s)

    lambdas = load_file(LAMBDAS)["lambdas"][:, 0]
    peak = float(abs(lambdas).max()) or 1.0
    axis, height, width = 345 * s, 60 * s, (right - left) / len(lambdas)
    draw.line((left, axis, right, axis), fill=BASE, width=2 * s)
    for k, value in enumerate(lambdas):
        x0 = left + k * width + 6 * s
        x1 = left + (k + 1) * width - 6 * s
        y1 = axis - float(value) / peak * height
        draw.rectangle((x0, min(axis, y1), x1, max(axis, y1)), fill=BARS)

    draw.text((300 * s, 70 * s), "λ", font=font(110 * s), fill=DODE, anchor="mm")
    image.resize((SIZE, SIZE), Image.LANCZOS).save(OUT, optimize=True)
    print(f"wrote {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
