"""ComfyUI's own frontend (the comfyui_frontend_package the server ships) in headless Chromium, driven by selenium.

Chromium and its driver come from Debian (``apt-get install chromium chromium-driver``; .ci/run installs them);
selenium is told where they are, so it never downloads a browser. Everything runs through the page's own objects
(``window.app``, ``LiteGraph``): loading a workflow is what opening a file does, queueing is the Queue button.
"""

from __future__ import annotations

import json
import os
import shutil
import time

CHROMIUM = os.environ.get("DODE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DODE_CHROMEDRIVER", "/usr/bin/chromedriver")
# first-run dialogs that would cover the canvas in screenshots
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True, "Comfy.Minimap.Visible": False}

BUILD_JS = """
const spec = arguments[0];
app.graph.clear();
const made = {};
for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error("no node type " + n.type);
    node.pos = n.pos;
    app.graph.add(node);
    if (n.size) node.size = n.size;
    if (n.title) node.title = n.title;
    for (const [name, value] of Object.entries(n.widgets || {})) {
        const widget = (node.widgets || []).find(w => w.name === name);
        if (!widget) throw new Error(n.type + " has no widget " + name);
        widget.value = value;
    }
    made[n.key] = node;
}
for (const [a, out, b, inp] of spec.links) {
    const src = made[a], dst = made[b];
    const o = src.outputs.findIndex(s => s.name === out);
    const i = dst.inputs.findIndex(s => s.name === inp);
    if (o < 0 || i < 0) throw new Error("no slot " + a + "." + out + " -> " + b + "." + inp);
    src.connect(o, dst, i);
}
app.graph.setDirtyCanvas(true, true);
return JSON.stringify(app.graph.serialize());
"""


# The example workflows on the test pack's tiny model (no checkpoint here): the checkpoint loader and the prompts
# are replaced in the page, the image decode and save dropped, the sizes and steps made small.
TEST_MODEL_JS = """
const g = app.graph;
const nodes = t => g._nodes.filter(n => n.type === t);
const link = id => (g.links.get ? g.links.get(id) : g.links[id]);
function add(type, pos, widgets) {
    const node = LiteGraph.createNode(type); node.pos = [...pos]; g.add(node);
    for (const [k, v] of Object.entries(widgets || {})) node.widgets.find(w => w.name === k).value = v;
    return node;
}
function replace(old, type, widgets, outputs) {
    const node = add(type, old.pos, widgets);
    for (const [oldName, newName] of Object.entries(outputs)) {
        const slot = old.outputs.find(o => o.name === oldName);
        const targets = (slot.links || []).map(link).filter(Boolean).map(l => [l.target_id, l.target_slot]);
        const index = node.outputs.findIndex(o => o.name === newName);
        for (const [id, targetSlot] of targets) node.connect(index, g.getNodeById(id), targetSlot);
    }
    g.remove(old);
}
for (const n of nodes("CLIPTextEncode"))
    replace(n, "DODETestConditioning", {value: n.title === "Negative" ? -0.5 : 0.5}, {CONDITIONING: "CONDITIONING"});
for (const n of nodes("CheckpointLoaderSimple"))  // one model: the same weights in every run (seed fixed)
    replace(n, "DODETestTinyModel", {model_type: "eps", seed: 0, control_after_generate: "fixed"}, {MODEL: "MODEL"});
const sampler = nodes("SamplerCustomAdvanced")[0];
for (const n of [...nodes("VAEDecode"), ...nodes("SaveImage")]) g.remove(n);
const stats = add("DODETestLatentStats", [sampler.pos[0] + 320, sampler.pos[1]]);
sampler.connect(0, stats, 0);
for (const n of nodes("EmptyLatentImage")) {
    n.widgets.find(w => w.name === "width").value = 64; n.widgets.find(w => w.name === "height").value = 64;
    n.widgets.find(w => w.name === "batch_size").value = n.title === "Fit batch" ? 4 : 1;
}
for (const n of nodes("BasicScheduler")) n.widgets.find(w => w.name === "steps").value = 4;
for (const n of nodes("DODEDistillGuider")) n.widgets.find(w => w.name === "teacher_factor").value = 4;
g.setDirtyCanvas(true, true);
return g._nodes.map(n => n.type);
"""

# A schedule no λ file fits, fed to the sampler of workflow 2 ("auto"): the error a user meets first.
NO_MATCH_JS = """
const g = app.graph;
const sampler = g._nodes.find(n => n.type === "SamplerCustomAdvanced");
const model = g._nodes.find(n => n.type === "DODETestTinyModel");
const scheduler = LiteGraph.createNode("BasicScheduler");
scheduler.pos = [sampler.pos[0], sampler.pos[1] + 320]; g.add(scheduler);
scheduler.widgets.find(w => w.name === "steps").value = 7;
model.connect(0, scheduler, 0);
scheduler.connect(0, sampler, sampler.inputs.findIndex(i => i.name === "sigmas"));
g.setDirtyCanvas(true, true);
"""


def available() -> str | None:
    """None when headless Chromium can run here, else why not."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) or shutil.which(path)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-comfy-test.txt)"
    return None


class Browser:
    def __init__(self, server, width: int = 1800, height: int = 1000):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for key, value in SETTINGS.items():
            server.request(f"/settings/{key}", value)
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={width},{height}", "--hide-scrollbars"):
            options.add_argument(arg)
        options.binary_location = CHROMIUM
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.server = server
        self.driver.get(server.url)
        self.wait_for("!!(window.app && window.app.graph && window.LiteGraph && window.app.canvas)", 120)
        self.js("document.querySelectorAll('.p-dialog-mask').forEach(e => e.remove())")

    def close(self) -> None:
        self.driver.quit()

    def js(self, code: str, *args):
        return self.driver.execute_script(code, *args)

    def wait_for(self, condition: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(f"return {condition}")
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"the page never satisfied: {condition}")

    def build(self, spec: dict) -> dict:
        """Create nodes and links in the page (as a user would from the node menu) and return the workflow the
        page serialises (the format ComfyUI saves)."""
        return json.loads(self.js(BUILD_JS, spec))

    def load(self, workflow: dict) -> None:
        """What opening a workflow file does: app.loadGraphData."""
        self.driver.set_script_timeout(60)
        self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "app.loadGraphData(arguments[0], true, true, 'test').then(() => done(true), e => done(String(e)));",
            workflow)
        time.sleep(0.5)

    def missing_node_types(self) -> list[str]:
        return self.js("return app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                       ".map(n => n.type)")

    def node_types(self) -> list[str]:
        return self.js("return app.graph._nodes.map(n => n.type)")

    def queue(self, timeout: float = 300.0) -> tuple[dict | None, str | None]:
        """Press Queue (app.queuePrompt); returns (node errors the server reported, the new prompt's id)."""
        before = set(self.server.get("/history"))
        self.driver.set_script_timeout(60)
        self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "app.queuePrompt(0, 1).then(() => done(true), e => done(String(e)));")
        errors = self.js("return app.lastNodeErrors || null")
        if errors:
            return errors, None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = set(self.server.get("/history")) - before
            if new:
                prompt_id = new.pop()
                return None, prompt_id
            time.sleep(0.25)
        raise TimeoutError("the queued workflow never reached the history")

    def fit_view(self, scale: float | None = None) -> None:
        """Zoom to show every node (the canvas' own bounds), then redraw."""
        self.js("""
            const nodes = app.graph._nodes;
            const xs = nodes.flatMap(n => [n.pos[0], n.pos[0] + n.size[0]]);
            const ys = nodes.flatMap(n => [n.pos[1] - 30, n.pos[1] + n.size[1]]);
            const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
            const canvas = app.canvas.canvas;
            const [left, top] = [80, 130];  // the side bar, the tab bar and the banner cover the canvas there
            const width = canvas.clientWidth - left - 20, height = canvas.clientHeight - top - 20;
            const scale = arguments[0] || Math.min(width / (x1 - x0), height / (y1 - y0), 1);
            app.canvas.ds.scale = scale;
            app.canvas.ds.offset = [-x0 + left / scale, -y0 + top / scale];
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
        """, scale)
        time.sleep(0.5)

    def dismiss_dialogs(self) -> None:
        """Escape closes the error / info dialogs the page opens (as a user would)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        for _ in range(3):
            if not self.js("return document.querySelectorAll('.p-dialog-mask').length"):
                return
            ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()
            time.sleep(0.3)

    def screenshot(self, path: str) -> None:
        self.dismiss_dialogs()
        self.driver.save_screenshot(path)

    def show_nodes(self, types: list[str], pad: float = 16.0, scale: float = 1.0,
                   square: bool = False) -> tuple[int, int, int, int]:
        """Put the nodes of ``types`` (with their titles; ``square``: in a square around them) at the top left of
        the canvas at ``scale`` (less if they would not fit), redraw, and return their box in screenshot pixels
        (left, top, right, bottom). The canvas' own info text (frame times) is hidden."""
        box = self.js("""
            const [types, pad, wanted, square] = arguments;
            const nodes = app.graph._nodes.filter(n => types.includes(n.type));
            if (!nodes.length) throw new Error("no node of " + types);
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            let x0 = Math.min(...nodes.map(n => n.pos[0])) - pad;
            let y0 = Math.min(...nodes.map(n => n.pos[1])) - title - pad;
            let x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + pad;
            let y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + pad;
            if (square) {
                const side = Math.max(x1 - x0, y1 - y0), cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
                [x0, x1, y0, y1] = [cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2];
            }
            const [left, top] = [80, 140];
            const room = app.canvas.canvas.getBoundingClientRect();
            const scale = Math.min(wanted, (room.width - left - 20) / (x1 - x0), (room.height - top - 20) / (y1 - y0));
            app.canvas.show_info = false;
            app.canvas.ds.scale = scale;
            app.canvas.ds.offset = [-x0 + left / scale, -y0 + top / scale];
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
            const r = app.canvas.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
            return [r.left + left, r.top + top, r.left + left + (x1 - x0) * scale, r.top + top + (y1 - y0) * scale]
                .map(v => Math.round(v * dpr));
        """, types, pad, scale, square)
        time.sleep(0.8)
        return tuple(box)

    def dialog_box(self) -> tuple[int, int, int, int] | None:
        """The open dialog's box in screenshot pixels, or None."""
        box = self.js("""
            const d = [...document.querySelectorAll('.p-dialog')].find(e => e.getClientRects().length);
            if (!d) return null;
            const r = d.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
            return [r.left, r.top, r.right, r.bottom].map(v => Math.round(v * dpr));
        """)
        return tuple(box) if box else None

    def dialog_text(self) -> str:
        return self.js("const d = [...document.querySelectorAll('.p-dialog')].find(e => e.getClientRects().length);"
                       "return d ? d.innerText : ''")

    def save_crop(self, path: str, box, size: int | None = None, colors: int | None = 128) -> None:
        """A screenshot cut to ``box``, scaled to fit ``size`` (if given), saved as PNG (quantized) or JPEG."""
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB").crop(box)
        if size:
            image.thumbnail((size, size), Image.LANCZOS)
        if path.endswith(".jpg"):
            image.save(path, quality=88, optimize=True)
        else:
            (image.quantize(colors=colors) if colors else image).save(path, optimize=True)
