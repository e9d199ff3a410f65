"""The example workflows in ComfyUI's real frontend (headless Chromium): they load with no missing node, queue from
the page with no validation error, and, with the checkpoint swapped for the tiny test model in the page, run; what
a user then reads there: the plot drawn large enough on the node, the info with its line breaks, the file "auto"
used, labels that fit a new node, the preset's fixed seed, and an error's short first line.

Needs Debian's chromium + chromium-driver and selenium (requirements-comfy-test.txt); skips without them, fails
under CI=true (.ci/run installs them).
"""

import json
import os

import pytest

from comfyui_host.browser import NO_MATCH_JS, TEST_MODEL_JS, Browser, available
from comfyui_host.export_workflows import CHECKPOINT
from comfyui_host.harness import error_message, on_ci, start_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = ("dode_distill_then_sample.json", "dode_sample_with_lambda_file.json")
SCREENSHOTS = os.environ.get("DODE_SCREENSHOTS")  # a folder to keep the screenshots in (to look at them)
# frontend 1.32.9 (LiteGraph's BaseWidget.drawTruncatingText): the room a combo or number widget has for its label,
# a gap and its value in a node of width w is w - 85 px (margins 15, paddings 5 and 20, gap 5)
WIDGET_CHROME = 85
TEXT_PREVIEW = "$$node-text-preview"  # the frontend's widget for a node's progress text

@pytest.fixture(scope="module")
def page(tmp_path_factory):
    why = available()
    if why:
        if on_ci():
            pytest.fail(f"the frontend test cannot run under CI=true: {why}", pytrace=False)
        pytest.skip(f"frontend test skipped: {why}")
    server = start_server(str(tmp_path_factory.mktemp("comfy_frontend")))
    checkpoints = os.path.join(server.base, "models", "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    open(os.path.join(checkpoints, CHECKPOINT), "wb").close()  # a placeholder: validation needs the name listed
    browser = Browser(server)
    yield browser
    browser.close()
    server.stop()


def load_example(page, name):
    with open(os.path.join(ROOT, "example_workflows", name), encoding="utf-8") as f:
        page.load(json.load(f))


def shot(page, name):
    if SCREENSHOTS:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        page.fit_view()
        page.screenshot(os.path.join(SCREENSHOTS, name))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_loads_and_queues_from_the_page_without_missing_nodes_or_validation_errors(page, name):
    load_example(page, name)
    assert page.missing_node_types() == []
    types = page.node_types()
    assert {"DODEDistillGuider", "PreviewAny"} <= set(types) or {"DODESampler", "PreviewAny"} <= set(types), types
    node_errors, prompt_id = page.queue()
    assert node_errors is None, f"validation errors from the page's queue: {node_errors}"
    entry = page.server.wait(prompt_id)
    # everything validated; the run stops where the placeholder checkpoint is loaded, not in a D-ODE node
    assert entry["status"]["status_str"] == "error"
    failed = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert [data["node_type"] for data in failed] == ["CheckpointLoaderSimple"], error_message(entry)
    shot(page, name.replace(".json", "_loaded.png"))


def test_workflows_saved_by_version_0_1_load_with_their_values_in_place(page):
    with open(os.path.join(ROOT, "tests", "comfyui_host", "workflows_0_1", WORKFLOWS[0]), encoding="utf-8") as f:
        page.load(json.load(f))
    assert page.missing_node_types() == []
    widgets = dict(page.js("return app.graph._nodes.find(n => n.type === 'DODEDistill').widgets"
                           ".map(w => [w.name, w.value])"))
    assert widgets == {"sampler_name": "dpmpp_2m", "cfg": 7, "seed": 0, "control_after_generate": "fixed",
                       "batch_size": 8, "width": 512, "height": 512, "teacher_factor": 10, "history": "1",
                       "filename": "sd15_dpmpp_2m_8steps_karras_cfg7_h1", "teacher_sampler": "auto",
                       "fit_schedule": False}, widgets
    with open(os.path.join(ROOT, "tests", "comfyui_host", "workflows_0_1", WORKFLOWS[1]), encoding="utf-8") as f:
        page.load(json.load(f))
    assert page.missing_node_types() == [] and "DODESampler" in page.node_types()


def test_a_new_preset_node_starts_with_a_fixed_seed_and_a_saved_choice_is_kept(page):
    page.js("app.graph.clear()")
    control = page.js("const n = LiteGraph.createNode('DODEDistill'); app.graph.add(n);"
                      "return n.widgets.find(w => w.name === 'control_after_generate').value")
    assert control == "fixed"  # queueing again reuses the λ file instead of a new seed each time
    with open(os.path.join(ROOT, "tests", "comfyui_host", "workflows_0_1", WORKFLOWS[0]), encoding="utf-8") as f:
        workflow = json.load(f)
    preset = next(n for n in workflow["nodes"] if n["type"] == "DODEDistill")
    preset["widgets_values"][3] = "randomize"
    page.load(workflow)
    assert page.js("return app.graph._nodes.find(n => n.type === 'DODEDistill').widgets"
                   ".find(w => w.name === 'control_after_generate').value") == "randomize"


def test_labels_and_values_fit_a_new_node(page):
    page.js("app.graph.clear()")
    overflowing = page.js("""
        const c = document.createElement('canvas').getContext('2d');
        c.font = app.canvas.inner_text_font;
        const out = [];
        for (const type of ['DODEDistillGuider', 'DODEDistill', 'DODESampler']) {
            const n = LiteGraph.createNode(type); app.graph.add(n);
            for (const w of n.widgets) {
                if (w.name === 'control_after_generate') continue;  // ComfyUI's own widget and label
                const values = ['sampler_name', 'teacher_sampler'].includes(w.name) ? w.options.values : [w.value];
                for (const v of values) {
                    const need = c.measureText(w.label || w.name).width + 5 + c.measureText(String(v)).width;
                    if (need > n.size[0] - arguments[0]) out.push([type, w.label || w.name, String(v), need]);
                }
            }
        }
        return out;""", WIDGET_CHROME)
    assert overflowing == [], overflowing
    labels = page.js("return app.graph._nodes.find(n => n.type === 'DODESampler').widgets.map(w => w.label)")
    assert labels == ["λ file"]  # not "lambd…" beside "auto (newest matching)"


def node_value(page, node_type, widget):
    return page.js("const n = app.graph._nodes.find(n => n.type === arguments[0]);"
                   "const w = n && (n.widgets || []).find(w => w.name === arguments[1]);"
                   "return w ? String(w.value) : null", node_type, widget)


def test_examples_run_from_the_page_with_the_test_model(page):
    results = {}
    for name in WORKFLOWS:  # workflow 2 uses the file workflow 1 writes ("auto")
        load_example(page, name)
        types = page.js(TEST_MODEL_JS)
        assert "DODETestTinyModel" in types and "CheckpointLoaderSimple" not in types
        node_errors, prompt_id = page.queue()
        assert node_errors is None, node_errors
        entry = page.server.wait(prompt_id)
        assert entry["status"]["status_str"] == "success", error_message(entry) + page.server.log_tail()
        page.wait_for("app.graph._nodes.some(n => n.type === 'PreviewAny' && "
                      "(n.widgets || []).some(w => w.name === 'preview' && String(w.value).includes('lambda file')))")
        results[name] = node_value(page, "PreviewAny", "preview")
        # Preview as Text keeps the info's line breaks (1.32.9 renders it as Markdown)
        shown = page.js("return app.graph._nodes.find(n => n.type === 'PreviewAny').widgets"
                        ".find(w => w.name === 'preview').element.innerText")
        assert len([line for line in shown.splitlines() if line.strip()]) >= 4, shown
        shot(page, name.replace(".json", "_ran.png"))
        if name == WORKFLOWS[0]:
            # the plot is drawn at half its size or more in the node's preview: its 22 px text is >= 11 px there
            preview = page.js("""
                const n = app.graph._nodes.find(n => n.type === 'DODEDistillGuider');
                const w = n.widgets.find(w => w.name === '$$canvas-image-preview');
                const img = n.imgs && n.imgs[0];
                return img && w ? [n.size[0], w.computedHeight, img.naturalWidth, img.naturalHeight] : null;""")
            assert preview, "the distill node shows no plot"
            width, height, image_width, image_height = preview
            scale = min(width / image_width, (height - 15) / image_height, 1.0)  # 15: the size caption
            assert scale >= 0.49, preview
    first = results["dode_distill_then_sample.json"]
    assert "(new fit)" in first and "proof on 4 latents" in first, first
    file_name = first.split("lambda file: ")[1].split()[0]
    assert file_name.endswith("_dpmpp_2m_4steps_karras_cfg7_h1.safetensors"), file_name
    second = results["dode_sample_with_lambda_file.json"]
    assert f"lambda file: auto -> {file_name}" in second and "picks at sampling time" in second, second
    # what "auto" used, on the D-ODE Sampler itself (1.32.9 keeps it after the run) and in the log
    used = node_value(page, "DODESampler", TEXT_PREVIEW)
    assert used and used.startswith(f"auto used: {file_name}") and "the only match" in used, used
    assert f"D-ODE Sampler (auto): using {file_name}: its base sampler 'dpmpp_2m'" in page.server.log_tail(20000)


def test_an_error_says_what_is_wrong_and_what_to_do_first(page):
    page.dismiss_dialogs()  # an earlier test's
    load_example(page, WORKFLOWS[1])
    page.js(TEST_MODEL_JS)
    page.js(NO_MATCH_JS)  # 7 steps: no λ file fits
    node_errors, prompt_id = page.queue()
    assert node_errors is None, node_errors
    entry = page.server.wait(prompt_id)
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert error["exception_type"] == "D-ODE.ScheduleMismatchError"  # not the plugin folder's path
    page.wait_for("[...document.querySelectorAll('.p-dialog')].some(d => d.innerText.includes('No λ file'))")
    text = page.dialog_text()
    message = text[text.index("No λ file"):]
    first = message.splitlines()[0]
    assert first.startswith("No λ file fits this run (7 steps): distill one for this schedule") and len(first) < 200
    listed = [line for line in message.splitlines() if ".safetensors" in line]
    assert len(listed) <= 10 and "demo-digits16" not in message, message  # capped; no demo file offered
    if SCREENSHOTS:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        page.driver.save_screenshot(os.path.join(SCREENSHOTS, "error.png"))
    page.dismiss_dialogs()
