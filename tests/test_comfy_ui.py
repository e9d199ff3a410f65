"""What a ComfyUI user reads, checked without a server: the plot on the node (size, legends outside the curves,
numbers on the axes, the caption), and the errors (a short first line, the details after, a short type, capped
lists). tests/test_comfy_frontend.py checks the same in the real frontend."""


import numpy as np
import pytest
import torch
from nodes_stand_in import nodes_module

import dode_core
from dode_core.lambdas_file import Lambdas

plot = nodes_module("plot")
errors = nodes_module("errors")


def lam_for(calls=8, history=1, recorded=True):
    torch.manual_seed(calls)
    lambdas = torch.randn(calls, history) * 0.5
    lambdas[0] = 0
    sigmas = torch.linspace(10, 0.1, calls).tolist()
    metadata = {"base_sampler": "euler", "steps": str(calls), "heldout_rmse_base": "0.2", "heldout_rmse_dode": "0.1",
                "heldout_count": "8", "heldout_method": "leave-one-out", "heldout_ratio_se": "0.03"}
    if recorded:
        metadata["fit_rmse_before"] = str([0.5 / (k + 1) for k in range(calls)])
        metadata["fit_rmse_after"] = str([0.2 / (k + 1) for k in range(calls)])
    return Lambdas(lambdas, tuple(sigmas), metadata)


def image_of(lam, caption="proof: base 0.2 -> D-ODE 0.1 (0.50x ± 0.03, 8 latents, each with λ fitted on the others)"):
    tensor = plot.plot_fit(lam, caption)
    assert tensor.shape[0] == 1 and tensor.shape[3] == 3 and tensor.dtype == torch.float32
    return (tensor[0].numpy() * 255).round().astype(np.uint8)


def rows_of(image, color, min_fraction):
    hits = np.all(image == np.array(color, dtype=np.uint8), axis=2)
    return [y for y in range(image.shape[0]) if hits[y].sum() >= min_fraction * image.shape[1]], hits


def frames(image):
    """The y of the panels' horizontal frame lines: (top A, bottom A, top B, bottom B)."""
    rows, _ = rows_of(image, plot.FRAME, 0.6)
    groups = [rows[0]] + [y for previous, y in zip(rows, rows[1:], strict=False) if y != previous + 1]
    assert len(groups) == 4, groups
    return groups


def test_the_plot_fills_a_new_nodes_preview_at_twice_its_resolution():
    font, scale, greek = plot.fonts(plot.TEXT)
    assert scale == 2 and greek, "this machine has FreeType and a font with λ: the plot must use them"
    image = image_of(lam_for())
    height, width = image.shape[:2]
    assert (width, height) == (plot.BOX[0] * 2, plot.BOX[1] * 2)
    # in the node's 270 x 205 preview it is drawn at half size: its text is TEXT (11) and SMALL (10) screen px
    shown = min(plot.BOX[0] / width, plot.BOX[1] / height)
    assert font.size * shown >= 10.5 and plot.fonts(plot.SMALL)[0].size * shown >= 10


@pytest.mark.parametrize("history", [1, 3])
def test_legends_sit_outside_the_curves_and_the_axes_have_numbers(history):
    image = image_of(lam_for(history=history))
    top_a, bottom_a, top_b, bottom_b = frames(image)
    # the error panel's legend ("λ = 0" in the before colour): only above its frame, in the title row
    _, before = rows_of(image, plot.BEFORE, 1.0)
    ys = np.nonzero(before)[0]
    legend, curve = ys[ys < top_b], ys[ys >= top_b]
    assert len(legend) and legend.min() > bottom_a, "the legend is not beside the panel title"
    assert len(curve) and curve.max() <= bottom_b, "the curve is not inside its panel"
    if history > 1:  # λ1..λ3 named above panel A
        _, third = rows_of(image, plot.TERM_COLORS[2], 1.0)
        ys = np.nonzero(third)[0]
        assert len(ys[ys < top_a]) and ys.max() <= bottom_a
    # call numbers under panel B: one label per call for 8 calls (and the axis name)
    _, dim = rows_of(image, plot.DIM, 1.0)
    band = dim[bottom_b + 2: bottom_b + 2 + 2 * plot.SMALL + 4]
    columns = np.nonzero(band.any(axis=0))[0]
    clusters = 1 + int((np.diff(columns) > 6).sum()) if len(columns) else 0
    assert clusters >= 8 + 1, clusters
    # y tick labels left of both panels
    left = dim[:, : int(image.shape[1] * 0.12)]
    assert left[top_a:bottom_a].any() and left[top_b:bottom_b].any()


def test_the_caption_is_below_the_panels_and_wrapped_to_the_width():
    image = image_of(lam_for())
    bottom_b = frames(image)[3]
    _, ink = rows_of(image, plot.INK, 1.0)
    caption_rows = np.nonzero(ink[bottom_b + 2 * plot.SMALL:].any(axis=1))[0]
    assert len(caption_rows) > 2 * plot.TEXT, "no caption text under the x axis"
    without = image_of(lam_for(), caption=None)
    assert frames(without)[3] > bottom_b, "without a caption the panels take its room"


def test_a_file_without_recorded_errors_and_many_calls_still_draws():
    image = image_of(lam_for(calls=60, recorded=False))
    assert len(frames(image)) == 4
    image = image_of(lam_for(calls=1))
    assert len(frames(image)) == 4


def test_without_a_greek_font_the_text_is_spelled_out():
    canvas = plot._Canvas(10, 10)
    canvas.greek = False
    assert canvas.clean("λ per model call, 0.5x ± 0.1") == "lambda per model call, 0.5x +/- 0.1"


# --- errors ----------------------------------------------------------------------------------------------
def full_type_name(klass):
    """ComfyUI 0.3.75's execution.full_type_name: what the frontend shows as the exception type."""
    return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"


def test_distill_errors_have_a_short_first_line_a_short_type_and_the_details_after():
    original = dode_core.NoGainError("D-ODE did not beat the base sampler 'euler' on the user's schedule by more "
                                     "than chance on the 8 latents ...; no λ file was written. " + "x" * 400)
    error = errors.for_distill(original, "euler", "1", 10)
    assert isinstance(error, dode_core.NoGainError) and isinstance(error, errors.DODEError)
    assert full_type_name(type(error)) == "D-ODE.NoGainError"
    first, _, details = str(error).partition("\n\n")
    assert len(first) <= errors.FIRST_LINE and "\n" not in first
    assert "'euler'" in first and "no λ file was written" in first and "history 'auto'" in first
    assert details == str(original)

    error = errors.for_distill(dode_core.fit.TeacherNotConvergedError("the teacher is not clearly closer ..."),
                               "euler", "1", 7)
    assert full_type_name(type(error)) == "D-ODE.TeacherNotConvergedError" and "teacher_factor (now 7)" in str(error)

    refused = dode_core.SamplerRefusedError("sampler 'x' injects noise; D-ODE needs a deterministic ODE sampler")
    first = str(errors.for_distill(refused, "x", "1", 10)).split("\n")[0]
    assert first.startswith("Cannot distill this: sampler 'x' injects noise.") and "euler" in first

    other = RuntimeError("not ours")
    assert errors.for_distill(other, "euler", "1", 10) is other


def test_file_errors_name_the_file_and_what_to_do():
    error = errors.for_file(dode_core.LambdaFileError("bad.safetensors: field 'lambdas' is missing; expected ..."),
                            "bad.safetensors")
    first = str(error).split("\n")[0]
    assert "'bad.safetensors'" in first and "field 'lambdas' is missing" in first and "distill" in first
    assert "bad.safetensors:" not in first  # the loader's path prefix is not repeated
    assert full_type_name(type(error)) == "D-ODE.LambdaFileError"
    mismatch = errors.schedule_mismatch(dode_core.ScheduleMismatchError("these λ were fitted for another schedule"),
                                        "a.safetensors")
    assert isinstance(mismatch, dode_core.ScheduleMismatchError)
    assert "sigmas output" in str(mismatch).split("\n")[0]


def test_file_lists_are_capped():
    entries = [(f"mine_{i}.safetensors", "euler, 4 steps") for i in range(25)]
    lines = errors.listing(entries)
    assert len(lines) == errors.MAX_LISTED + 1
    assert "15 more" in lines[errors.MAX_LISTED]
    assert errors.listing([]) == ["  (no λ files)"]

    message = "no D-ODE λ file fits this run (euler, 4 calls at [1]).\nFiles there:\n" + "\n".join(
        f"  {name}: {description}" for name, description in entries)
    capped = errors.capped(message)
    assert capped.splitlines()[:2] == message.splitlines()[:2]
    assert len(capped.splitlines()) == 2 + errors.MAX_LISTED + 1
