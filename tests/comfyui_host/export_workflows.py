"""Re-export the example workflows through the real frontend: the nodes are created and linked in the page and the
page's own serialisation is written to example_workflows/ (so the files are exactly what ComfyUI saves).

    .venv/bin/python tests/comfyui_host/export_workflows.py      # needs ComfyUI (harness) and Chromium

Also writes docs/workflow_distill.png, the README's picture of workflow 1, and then runs both workflows in the page on
the test pack's tiny model (tests/comfyui_host/dode_test_pack; there is no checkpoint here) to take what the
frontend shows after a real run:
    example_workflows/<name>.jpg          the template thumbnails (ComfyUI's template browser shows these)
    docs/comfyui_plot.png                 the distill node with its plot, at 100 % zoom
    docs/comfyui_info.png                 the D-ODE Sampler ('auto' and the file it used) and Preview as Text
    docs/comfyui_error.png                the error dialog when no λ file fits ("auto", 7 steps)
With DODE_FRONTEND_ROOT=<a frontend's static folder> (e.g. comfyui-frontend-package 1.58.1 unpacked) the error is
also taken there, as docs/comfyui_error_frontend_<DODE_FRONTEND_NAME or "other">.png.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
POSITIVE = "a photo of a lighthouse on a cliff at sunset, detailed, sharp"
NEGATIVE = "blurry, low quality"

_COMMON_NODES = [
    {"key": "ckpt", "type": "CheckpointLoaderSimple", "pos": [0, 200], "widgets": {"ckpt_name": CHECKPOINT}},
    {"key": "pos", "type": "CLIPTextEncode", "pos": [360, 0], "size": [340, 170], "title": "Positive",
     "widgets": {"text": POSITIVE}},
    {"key": "neg", "type": "CLIPTextEncode", "pos": [360, 220], "size": [340, 170], "title": "Negative",
     "widgets": {"text": NEGATIVE}},
    {"key": "guider", "type": "CFGGuider", "pos": [740, 0], "widgets": {"cfg": 7.0}},
    {"key": "noise", "type": "RandomNoise", "pos": [740, 540], "widgets": {"noise_seed": 42}},
    {"key": "latent", "type": "EmptyLatentImage", "pos": [740, 700], "title": "Image size",
     "widgets": {"width": 512, "height": 512, "batch_size": 1}},
    {"key": "sample", "type": "SamplerCustomAdvanced", "pos": [1480, 120]},
    {"key": "decode", "type": "VAEDecode", "pos": [1800, 120]},
    {"key": "save", "type": "SaveImage", "pos": [1800, 240], "size": [300, 300],
     "widgets": {"filename_prefix": "dode"}},
]
_COMMON_LINKS = [
    ["ckpt", "CLIP", "pos", "clip"], ["ckpt", "CLIP", "neg", "clip"],
    ["ckpt", "MODEL", "guider", "model"], ["pos", "CONDITIONING", "guider", "positive"],
    ["neg", "CONDITIONING", "guider", "negative"],
    ["noise", "NOISE", "sample", "noise"], ["guider", "GUIDER", "sample", "guider"],
    ["latent", "LATENT", "sample", "latent_image"], ["sample", "output", "decode", "samples"],
    ["ckpt", "VAE", "decode", "vae"], ["decode", "IMAGE", "save", "images"],
]

DISTILL_THEN_SAMPLE = {
    "nodes": [*_COMMON_NODES,
              {"key": "sched", "type": "BasicScheduler", "pos": [740, 180],
               "widgets": {"scheduler": "karras", "steps": 8, "denoise": 1.0}},
              {"key": "fit_latent", "type": "EmptyLatentImage", "pos": [740, 370], "title": "Fit batch",
               "widgets": {"width": 512, "height": 512, "batch_size": 8}},
              {"key": "distill", "type": "DODEDistillGuider", "pos": [1090, 0],
               "widgets": {"sampler_name": "dpmpp_2m", "teacher_sampler": "auto", "teacher_factor": 10,
                           "history": "1", "fit_schedule": False, "filename": ""}},
              {"key": "info", "type": "PreviewAny", "pos": [1480, 380], "size": [300, 300]}],
    "links": [*_COMMON_LINKS,
              ["ckpt", "MODEL", "sched", "model"], ["guider", "GUIDER", "distill", "guider"],
              ["sched", "SIGMAS", "distill", "sigmas"], ["fit_latent", "LATENT", "distill", "latent_image"],
              ["distill", "sampler", "sample", "sampler"], ["distill", "sigmas", "sample", "sigmas"],
              ["distill", "info", "info", "source"]],
}

SAMPLE_WITH_LAMBDA_FILE = {
    "nodes": [*_COMMON_NODES,
              {"key": "dode", "type": "DODESampler", "pos": [1090, 160], "size": [340, 190],
               "widgets": {"lambdas": "auto (newest matching)"}},
              {"key": "info", "type": "PreviewAny", "pos": [1480, 380], "size": [300, 300]}],
    "links": [*_COMMON_LINKS,
              ["guider", "GUIDER", "dode", "guider"], ["dode", "sampler", "sample", "sampler"],
              ["dode", "sigmas", "sample", "sigmas"], ["dode", "info", "info", "source"]],
}

WORKFLOWS = {
    "dode_distill_then_sample.json": DISTILL_THEN_SAMPLE,
    "dode_sample_with_lambda_file.json": SAMPLE_WITH_LAMBDA_FILE,
}


THUMBNAIL = 512  # px, square: the template browser crops its cards to a square
RUN_VIEWS = {  # the nodes each template's thumbnail shows after its run
    "dode_distill_then_sample.json": ["DODEDistillGuider", "SamplerCustomAdvanced", "PreviewAny"],
    "dode_sample_with_lambda_file.json": ["DODESampler", "SamplerCustomAdvanced", "PreviewAny"],
}


def viewport(browser) -> tuple[int, int]:
    return tuple(browser.js("return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio].map(Math.floor)"))


def run_with_test_model(browser, name: str) -> None:
    from comfyui_host.browser import TEST_MODEL_JS
    from comfyui_host.harness import error_message

    with open(os.path.join(ROOT, "example_workflows", name), encoding="utf-8") as f:
        browser.load(json.load(f))
    browser.js(TEST_MODEL_JS)
    errors, prompt_id = browser.queue()
    if errors:
        raise RuntimeError(f"{name}: {errors}")
    entry = browser.server.wait(prompt_id)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"{name}: {error_message(entry)}")
    time.sleep(1.5)  # the previews arrive over the websocket


def take_runs(browser) -> None:
    """Both templates run for real; their thumbnails and the docs' pictures of the plot and the info."""
    docs = os.path.join(ROOT, "docs")
    for name, types in RUN_VIEWS.items():
        run_with_test_model(browser, name)
        browser.dismiss_dialogs()
        box = browser.show_nodes(types, square=True)
        browser.save_crop(os.path.join(ROOT, "example_workflows", name.replace(".json", ".jpg")), box, size=THUMBNAIL)
        print("wrote", name.replace(".json", ".jpg"))
        if name == "dode_distill_then_sample.json":
            browser.save_crop(os.path.join(docs, "comfyui_plot.png"), browser.show_nodes(["DODEDistillGuider"]))
            print("wrote docs/comfyui_plot.png")
        else:
            browser.save_crop(os.path.join(docs, "comfyui_info.png"), browser.show_nodes(["DODESampler", "PreviewAny"]))
            print("wrote docs/comfyui_info.png")


def take_error(browser, path: str) -> None:
    """Workflow 2 ("auto") with a 7-step schedule no λ file fits: the error as the frontend shows it."""
    from comfyui_host.browser import NO_MATCH_JS, TEST_MODEL_JS

    browser.dismiss_dialogs()
    with open(os.path.join(ROOT, "example_workflows", "dode_sample_with_lambda_file.json"), encoding="utf-8") as f:
        browser.load(json.load(f))
    browser.js(TEST_MODEL_JS)
    browser.js(NO_MATCH_JS)
    _errors, prompt_id = browser.queue()
    browser.server.wait(prompt_id)
    time.sleep(2.0)
    box = browser.dialog_box()
    if box is None:  # frontend 1.58.1: a toast, and the message in the node's error panel ("View details")
        buttons = [b for b in browser.driver.find_elements("xpath", "//button") if "View details" in b.text]
        if buttons:
            buttons[0].click()
            time.sleep(1.5)
        width, height = viewport(browser)
        box = (int(width * 0.45), 0, int(width), int(height))
    browser.save_crop(path, box, colors=64)
    print("wrote", os.path.relpath(path, ROOT))


def main() -> None:
    sys.path.insert(0, os.path.dirname(HERE))
    from PIL import Image

    from comfyui_host.browser import Browser
    from comfyui_host.harness import ComfyServer

    server = ComfyServer(tempfile.mkdtemp(prefix="dode-export-"))
    browser = None
    try:
        os.makedirs(os.path.join(server.base, "models", "checkpoints"), exist_ok=True)
        open(os.path.join(server.base, "models", "checkpoints", CHECKPOINT), "wb").close()  # a name to select
        browser = Browser(server)
        for name, spec in WORKFLOWS.items():
            workflow = browser.build(spec)
            with open(os.path.join(ROOT, "example_workflows", name), "w", encoding="utf-8") as f:
                json.dump(workflow, f, indent=1, ensure_ascii=False)
                f.write("\n")
            print("wrote", name)
        browser.build(DISTILL_THEN_SAMPLE)
        browser.fit_view()
        shot = os.path.join(server.base, "shot.png")
        browser.screenshot(shot)
        os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
        image = Image.open(shot).convert("RGB")
        image = image.crop((60, 60, image.width, image.height))  # the side bar and the banner above the canvas
        image.thumbnail((1200, 1200))
        image = image.quantize(colors=128)
        image.save(os.path.join(ROOT, "docs", "workflow_distill.png"), optimize=True)
        print("wrote docs/workflow_distill.png")
        take_runs(browser)
        take_error(browser, os.path.join(ROOT, "docs", "comfyui_error.png"))
    finally:
        if browser is not None:
            browser.close()
        server.stop()

    other = os.environ.get("DODE_FRONTEND_ROOT")
    if other:
        server = ComfyServer(tempfile.mkdtemp(prefix="dode-export-"), extra_args=["--front-end-root", other])
        browser = None
        try:
            browser = Browser(server)
            run_with_test_model(browser, "dode_distill_then_sample.json")  # a file for "auto" to miss
            label = os.environ.get("DODE_FRONTEND_NAME", "other")
            take_error(browser, os.path.join(ROOT, "docs", f"comfyui_error_frontend_{label}.png"))
        finally:
            if browser is not None:
                browser.close()
            server.stop()


if __name__ == "__main__":
    main()
