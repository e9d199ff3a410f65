"""The shipped example workflows (ComfyUI shows example_workflows/ as templates) are well-formed UI graphs.
They are exported by the real frontend (tests/comfyui_host/export_workflows.py); tests/test_comfy_frontend.py
loads and queues them there."""

import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))


def test_there_are_example_workflows():
    names = [os.path.basename(path) for path in WORKFLOWS]
    assert "dode_distill_then_sample.json" in names and "dode_sample_with_lambda_file.json" in names


def test_workflows_are_consistent_graphs():
    for path in WORKFLOWS:
        with open(path, encoding="utf-8") as f:
            graph = json.load(f)
        nodes = {node["id"]: node for node in graph["nodes"]}
        assert any(node["type"] in ("DODEDistillGuider", "DODESampler") for node in nodes.values()), path
        for link_id, src, src_slot, dst, dst_slot, kind in graph["links"]:
            src_type, dst_type = nodes[src]["outputs"][src_slot]["type"], nodes[dst]["inputs"][dst_slot]["type"]
            # a link into an any-type input ("*", Preview Any) is typed "*"
            assert kind == src_type == dst_type or kind == dst_type == "*", (path, link_id, src_type, dst_type)
            assert link_id in nodes[src]["outputs"][src_slot]["links"], (path, link_id)
            assert nodes[dst]["inputs"][dst_slot]["link"] == link_id, (path, link_id)


def test_every_template_has_its_thumbnail():
    """ComfyUI's template browser shows example_workflows/<name>.jpg (/api/workflow_templates/<pack>/<name>.jpg,
    square cards); tests/comfyui_host/export_workflows.py takes them from a real run of each template."""
    import numpy as np
    from PIL import Image

    for path in WORKFLOWS:
        thumbnail = path[: -len(".json")] + ".jpg"
        assert os.path.isfile(thumbnail), f"no thumbnail for {os.path.basename(path)}"
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and image.width == image.height >= 256
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
        assert pixels.std() > 10, "a blank thumbnail"
