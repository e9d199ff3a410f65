"""The shipped example workflows (ComfyUI shows example_workflows/ as templates) are well-formed UI graphs."""

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
        assert any(node["type"] in ("DODEDistill", "DODESampler") for node in nodes.values()), path
        for link_id, src, src_slot, dst, dst_slot, kind in graph["links"]:
            assert nodes[src]["outputs"][src_slot]["type"] == kind, (path, link_id)
            assert link_id in nodes[src]["outputs"][src_slot]["links"], (path, link_id)
            assert nodes[dst]["inputs"][dst_slot]["link"] == link_id, (path, link_id)
            assert nodes[dst]["inputs"][dst_slot]["type"] == kind, (path, link_id)
