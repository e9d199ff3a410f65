"""The nodes on a real ComfyUI 0.3.75 server (CPU, loopback), with a tiny in-memory test model.

Skips (does not fail) when ComfyUI's requirements are not installed: pip install -r requirements-comfy-test.txt.
See tests/comfyui_host/harness.py for the environment variables.
"""

import asyncio
import glob
import json
import math
import os
import shutil
import time
import uuid

import aiohttp
import pytest

from comfyui_host.harness import ComfyServer, Unavailable, error_message
from dode_core import load_lambdas

MODEL_TYPES = ["eps", "v_prediction", "edm", "flow", "flux"]
STEPS = 4
SIZE = 64  # pixels: an 8x8 latent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        comfy = ComfyServer(str(tmp_path_factory.mktemp("comfy_base")))
    except Unavailable as why:
        pytest.skip(f"ComfyUI tests skipped: {why}")
    yield comfy
    comfy.stop()


def lambdas_dir(server):
    return os.path.join(server.base, "models", "dode_lambdas")


def base_graph(model_type, steps=STEPS, scheduler="karras"):
    return {
        "model": {"class_type": "DODETestTinyModel", "inputs": {"model_type": model_type, "seed": 0}},
        "pos": {"class_type": "DODETestConditioning", "inputs": {"value": 0.5}},
        "neg": {"class_type": "DODETestConditioning", "inputs": {"value": -0.5}},
        "sigmas": {"class_type": "BasicScheduler",
                   "inputs": {"model": ["model", 0], "scheduler": scheduler, "steps": steps, "denoise": 1.0}},
    }


def distill_graph(model_type, filename, sampler="euler", steps=STEPS, teacher_factor=4, batch=4, history="1"):
    graph = base_graph(model_type, steps)
    graph["distill"] = {"class_type": "DODEDistill", "inputs": {
        "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "sigmas": ["sigmas", 0],
        "sampler_name": sampler, "cfg": 2.0, "seed": 1, "batch_size": batch, "width": SIZE, "height": SIZE,
        "teacher_factor": teacher_factor, "history": history, "filename": filename}}
    graph["name"] = {"class_type": "DODETestShowText", "inputs": {"text": ["distill", 1]}}
    graph["plot"] = {"class_type": "DODETestImageStats", "inputs": {"image": ["distill", 2]}}
    return graph


def sample_graph(model_type, sampler_node, steps=STEPS, scheduler="karras", seed=7):
    graph = base_graph(model_type, steps, scheduler)
    graph["sampler"] = sampler_node
    graph["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 2}}
    graph["sample"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["model", 0], "add_noise": True, "noise_seed": seed, "cfg": 2.0, "positive": ["pos", 0],
        "negative": ["neg", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
    graph["stats"] = {"class_type": "DODETestLatentStats", "inputs": {"samples": ["sample", 0]}}
    return graph


def dode_sampler(name):
    return {"class_type": "DODESampler", "inputs": {"lambdas": name}}


def base_sampler(name="euler"):
    return {"class_type": "KSamplerSelect", "inputs": {"sampler_name": name}}


def latent_values(server, graph):
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + server.log_tail()
    stats = entry["outputs"]["stats"]["latent"][0]
    assert stats["finite"]
    return stats["values"]


def rmse(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / len(a))


def distill(server, model_type, filename, **kwargs):
    entry = server.run(distill_graph(model_type, filename, **kwargs))
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + server.log_tail()
    return entry


def test_nodes_in_object_info(server):
    info = server.get("/object_info")
    distill_inputs = info["DODEDistill"]["input"]["required"]
    for name in ("model", "positive", "negative", "sigmas", "sampler_name", "cfg", "seed", "batch_size", "width",
                 "height", "teacher_factor", "history", "filename"):
        assert name in distill_inputs, name
    samplers = distill_inputs["sampler_name"][0]
    for name in ("euler", "heun", "dpmpp_2m", "ipndm", "deis", "lms", "dpm_2", "res_multistep"):
        assert name in samplers
    assert not [s for s in samplers if "ancestral" in s or "sde" in s]
    assert info["DODEDistill"]["output"] == ["SAMPLER", "STRING", "IMAGE"]
    assert info["DODEDistill"]["display_name"] == "Distill λ (D-ODE)"
    assert info["DODEDistill"]["category"].startswith("sampling/custom_sampling")
    assert info["DODESampler"]["output"] == ["SAMPLER"]
    assert info["DODESampler"]["display_name"] == "D-ODE Sampler"
    assert "lambdas" in info["DODESampler"]["input"]["required"]
    # the plain KSampler dropdown is untouched unless opted in
    assert not [s for s in info["KSampler"]["input"]["required"]["sampler_name"][0] if s.startswith("dode_")]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_distill_then_sample(server, model_type):
    entry = distill(server, model_type, f"t_{model_type}")
    name = entry["outputs"]["name"]["text"][0]
    assert name == f"t_{model_type}.safetensors"
    path = os.path.join(lambdas_dir(server), name)
    lam = load_lambdas(path)
    meta = lam.metadata
    assert meta["base_sampler"] == "euler" and lam.calls == STEPS
    assert meta["model"] == "BaseModel"
    assert meta["prediction"] == {"eps": "EPS", "v_prediction": "V_PREDICTION", "edm": "EDM",
                                  "flow": "FLOW", "flux": "FLUX"}[model_type]
    assert len(meta["model_fingerprint"]) == 16
    assert float(meta["cfg"]) == 2.0 and meta["seed"] == "1" and meta["batch_size"] == "4"
    assert meta["teacher_factor"] == "4" and meta["plugin_version"]
    assert len(json.loads(meta["call_sigmas"])) == STEPS
    assert meta["host"].startswith("ComfyUI 0.3.75")
    plot = entry["outputs"]["plot"]["image"][0]
    assert plot["shape"][0] == 1 and plot["shape"][3] == 3 and plot["std"] > 0.01

    # held-out noise (seed 7, not the fit's seed 1)
    dode = latent_values(server, sample_graph(model_type, dode_sampler(name)))
    base = latent_values(server, sample_graph(model_type, base_sampler()))
    reference = latent_values(server, sample_graph(model_type, base_sampler(), steps=STEPS * 8))
    assert rmse(dode, base) > 1e-4, "D-ODE changed nothing"
    assert rmse(dode, reference) < rmse(base, reference), (rmse(dode, reference), rmse(base, reference))


def test_taken_name_gets_a_counter_and_cannot_escape(server):
    first = distill(server, "eps", "same")["outputs"]["name"]["text"][0]
    # another input (an identical prompt is served from ComfyUI's cache without running the node)
    second = distill(server, "eps", "same", batch=3)["outputs"]["name"]["text"][0]
    assert (first, second) == ("same.safetensors", "same_2.safetensors")
    escaped = distill(server, "eps", "../../escape")["outputs"]["name"]["text"][0]
    assert escaped == "escape.safetensors"
    assert os.path.exists(os.path.join(lambdas_dir(server), escaped))
    assert not os.path.exists(os.path.join(server.base, "escape.safetensors"))


def test_schedule_mismatch_is_a_clear_node_error(server):
    name = distill(server, "eps", "mismatch")["outputs"]["name"]["text"][0]
    entry = server.run(sample_graph("eps", dode_sampler(name), steps=STEPS + 2))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "ScheduleMismatchError" in message and name in message
    assert "λ file" in message and "this run" in message and "distill" in message.lower()
    assert server.get("/system_stats")  # still serving


def test_corrupt_file_is_refused_with_the_loaders_error(server):
    os.makedirs(lambdas_dir(server), exist_ok=True)
    with open(os.path.join(lambdas_dir(server), "corrupt.safetensors"), "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    entry = server.run(sample_graph("eps", dode_sampler("corrupt.safetensors")))
    assert entry["status"]["status_str"] == "error"
    assert "LambdaFileError" in error_message(entry)
    assert "corrupt.safetensors" in error_message(entry)
    assert server.get("/system_stats")


def test_interrupt_during_distill_leaves_no_file(server):
    graph = distill_graph("eps", "interrupted", steps=20, teacher_factor=100, batch=2)
    prompt_id = server.post_prompt(graph)
    time.sleep(3.0)
    server.request("/interrupt", {})
    started = time.monotonic()
    entry = server.wait(prompt_id, timeout=60)
    assert time.monotonic() - started < 10, "Cancel was not prompt"
    assert entry["status"]["status_str"] == "error"
    messages = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in messages
    assert not [f for f in os.listdir(lambdas_dir(server)) if f.startswith("interrupted")]


def test_opt_in_ksampler_entries(tmp_path):
    try:
        comfy = ComfyServer(str(tmp_path), env={"DODE_KSAMPLER_ENTRIES": "1"})
    except Unavailable as why:
        pytest.skip(f"ComfyUI tests skipped: {why}")
    try:
        info = comfy.get("/object_info")
        plain = info["KSampler"]["input"]["required"]["sampler_name"][0]
        select = info["KSamplerSelect"]["input"]["required"]["sampler_name"]
        select = select[1]["options"] if select[0] == "COMBO" else select[0]  # a V3 node
        for name in ("dode_euler", "dode_dpmpp_2m"):
            assert plain.count(name) == 1 and select.count(name) == 1  # in place, once
        assert plain[0] == "euler"  # appended, nothing reordered
    finally:
        comfy.stop()


async def _progress_events(server, graph, client_id, timeout=300.0):
    """Posts ``graph`` as ``client_id`` over an open /ws connection; the prompt's ``progress`` events and its
    final message type (execution_success / execution_error / execution_interrupted)."""
    events = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
            prompt_id = await asyncio.to_thread(server.post_prompt, graph, client_id)
            async with asyncio.timeout(timeout):
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary previews
                    data = json.loads(message.data)
                    kind, body = data.get("type"), data.get("data") or {}
                    if body.get("prompt_id") != prompt_id:
                        continue
                    if kind == "progress":
                        events.append(body)
                    elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                        return prompt_id, events, kind
    raise AssertionError(f"the websocket closed before prompt {prompt_id} finished:\n{server.log_tail()}")


def test_distill_reports_progress_over_the_websocket(server):
    client_id = f"dode-progress-{uuid.uuid4().hex}"
    graph = distill_graph("eps", "progress", batch=3)
    prompt_id, events, final = asyncio.run(_progress_events(server, graph, client_id))
    entry = server.wait(prompt_id)
    assert final == "execution_success", error_message(entry) + "\n" + server.log_tail()
    lam = load_lambdas(os.path.join(lambdas_dir(server), entry["outputs"]["name"]["text"][0]))
    total = int(lam.metadata["teacher_calls"]) + lam.calls
    assert total == STEPS * 4 + STEPS  # euler: 4 teacher sub-steps per step, one call each
    distill_events = [e for e in events if e["node"] == "distill"]
    assert distill_events, f"no progress events for the distill node: {events}"
    values = [e["value"] for e in distill_events]
    assert all(e["max"] == total for e in distill_events), {e["max"] for e in distill_events}
    assert max(values) == total and values[-1] == total, values
    assert all(b > a for a, b in zip(values[:-1], values[1:], strict=True)), values
    assert len(values) == total  # one per model call, none dropped


def test_extra_model_paths_yaml_keeps_users_folder(tmp_path):
    shipped = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                            "lambdas", "*.safetensors")))
    assert shipped, "no shipped λ file to copy"
    extra_root = tmp_path / "extra_root"
    extra = extra_root / "my_lambdas"
    extra.mkdir(parents=True)
    shutil.copy(shipped[0], extra / "user_extra.safetensors")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"dode_test_user:\n    base_path: {extra_root}\n    dode_lambdas: my_lambdas\n")
    base = tmp_path / "base"
    base.mkdir()
    try:
        comfy = ComfyServer(str(base), extra_args=["--extra-model-paths-config", str(config)])
    except Unavailable as why:
        pytest.skip(f"ComfyUI tests skipped: {why}")
    try:
        assert "Adding extra search path dode_lambdas" in comfy.log_tail(100000)
        choices = comfy.get("/object_info/DODESampler")["DODESampler"]["input"]["required"]["lambdas"][0]
        assert "user_extra.safetensors" in choices, choices
        assert os.path.basename(shipped[0]) in choices, choices  # the shipped folder is still listed too
        # the file resolves from the user's folder: it loads and is then refused for this (other) schedule
        entry = comfy.run(sample_graph("eps", dode_sampler("user_extra.safetensors")))
        assert entry["status"]["status_str"] == "error"
        assert "ScheduleMismatchError" in error_message(entry) and "user_extra.safetensors" in error_message(entry)

        entry = comfy.run(distill_graph("eps", "saved_here"))
        assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.log_tail()
        assert entry["outputs"]["name"]["text"][0] == "saved_here.safetensors"
        assert os.path.isfile(base / "models" / "dode_lambdas" / "saved_here.safetensors")
        assert sorted(os.listdir(extra)) == ["user_extra.safetensors"]  # nothing written to the user's folder
        choices = comfy.get("/object_info/DODESampler")["DODESampler"]["input"]["required"]["lambdas"][0]
        assert {"saved_here.safetensors", "user_extra.safetensors"} <= set(choices), choices
    finally:
        comfy.stop()
