"""The nodes on a real ComfyUI 0.3.75 server (CPU, loopback), with tiny in-memory test models.

Skips when ComfyUI's requirements are not installed (pip install -r requirements-comfy-test.txt); under CI=true
that is a failure instead (see tests/comfyui_host/harness.py).
"""

import asyncio
import glob
import json
import math
import os
import shutil
import time
import urllib.request
import uuid

import aiohttp
import pytest

from comfyui_host.harness import error_message, start_server
from dode_core import load_lambdas, rules

STEPS = 4
SIZE = 64  # pixels: an 8x8 latent
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTO = "auto (newest matching)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy = start_server(str(tmp_path_factory.mktemp("comfy_base")))
    yield comfy
    comfy.stop()


def lambdas_dir(server):
    return os.path.join(server.base, "models", "dode_lambdas")


def files(server):
    folder = lambdas_dir(server)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def base_graph(model_type="eps", steps=STEPS, scheduler="karras", model_seed=0, denoise=1.0):
    return {
        "model": {"class_type": "DODETestTinyModel", "inputs": {"model_type": model_type, "seed": model_seed}},
        "pos": {"class_type": "DODETestConditioning", "inputs": {"value": 0.5}},
        "neg": {"class_type": "DODETestConditioning", "inputs": {"value": -0.5}},
        "sigmas": {"class_type": "BasicScheduler",
                   "inputs": {"model": ["model", 0], "scheduler": scheduler, "steps": steps, "denoise": denoise}},
    }


def add_guider(graph, guider="cfg", cfg=2.0):
    if guider == "cfg":
        graph["guider"] = {"class_type": "CFGGuider", "inputs": {
            "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "cfg": cfg}}
    else:  # Flux style: BasicGuider on a conditioning with FluxGuidance
        graph["flux_guidance"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0],
                                                                           "guidance": cfg}}
        graph["guider"] = {"class_type": "BasicGuider", "inputs": {"model": ["model", 0],
                                                                   "conditioning": ["flux_guidance", 0]}}
    return graph


def distill_graph(filename, model_type="eps", sampler="euler", steps=STEPS, teacher_factor=4, batch=4,
                  history="1", guider="cfg", cfg=2.0, model_seed=0, **extra):
    graph = add_guider(base_graph(model_type, steps, model_seed=model_seed), guider, cfg)
    graph["fit_latent"] = {"class_type": "EmptyLatentImage",
                           "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}}
    graph["distill"] = {"class_type": "DODEDistillGuider", "inputs": {
        "guider": ["guider", 0], "sigmas": ["sigmas", 0], "latent_image": ["fit_latent", 0],
        "sampler_name": sampler, "teacher_sampler": "auto", "teacher_factor": teacher_factor, "history": history,
        "fit_schedule": False, "filename": filename, **extra}}
    graph["name"] = {"class_type": "DODETestShowText", "inputs": {"text": ["distill", 2]}}
    graph["plot"] = {"class_type": "DODETestImageStats", "inputs": {"image": ["distill", 3]}}
    graph["info"] = {"class_type": "DODETestShowText", "inputs": {"text": ["distill", 4]}}
    return graph


def sample_graph(sampler_node, model_type="eps", steps=STEPS, scheduler="karras", seed=7, guider="cfg", cfg=2.0,
                 model_seed=0):
    graph = add_guider(base_graph(model_type, steps, scheduler, model_seed=model_seed), guider, cfg)
    graph["sampler"] = sampler_node
    graph["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    graph["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 2}}
    graph["sample"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
        "latent_image": ["latent", 0]}}
    graph["stats"] = {"class_type": "DODETestLatentStats", "inputs": {"samples": ["sample", 0]}}
    return graph


def dode_sampler(name, guider=False):
    node = {"class_type": "DODESampler", "inputs": {"lambdas": name}}
    if guider:
        node["inputs"]["guider"] = ["guider", 0]
    return node


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


def run_ok(server, graph):
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + server.log_tail()
    return entry


def run_error(server, graph) -> str:
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "error", entry["status"]
    assert server.get("/system_stats")  # still serving
    return error_message(entry)


def distilled_name(entry):
    return entry["outputs"]["name"]["text"][0]


def lambdas_choices(server):
    spec = server.get("/object_info/DODESampler")["DODESampler"]["input"]["required"]["lambdas"]
    return spec[1]["options"]


def test_nodes_schema_tooltips_and_sampler_list_from_the_host(server):
    info = server.get("/object_info")
    for node_id in ("DODEDistillGuider", "DODEDistill", "DODESampler"):
        node = info[node_id]
        assert node["category"] == "sampling/custom_sampling/samplers"
        assert node["description"]
        for section in ("required", "optional"):
            for name, (_kind, options) in node["input"].get(section, {}).items():
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(node["output_tooltips"]), f"{node_id} has an output without tooltip"
    guider_node = info["DODEDistillGuider"]
    assert guider_node["display_name"] == "Distill λ (D-ODE)"
    assert guider_node["output"] == ["SAMPLER", "SIGMAS", "STRING", "IMAGE", "STRING"]
    required = guider_node["input"]["required"]
    assert [required[k][0] for k in ("guider", "sigmas", "latent_image")] == ["GUIDER", "SIGMAS", "LATENT"]
    assert guider_node["input"]["optional"]["noise"][0] == "NOISE"
    assert required["fit_schedule"][0] == "BOOLEAN"

    # the 0.1 node id keeps its input names (saved workflows keep loading); its seed is fixed, not randomized
    preset = info["DODEDistill"]["input"]
    for name in ("model", "positive", "negative", "sigmas", "sampler_name", "cfg", "seed", "batch_size", "width",
                 "height", "teacher_factor", "history", "filename"):
        assert name in preset["required"], name
    assert preset["required"]["seed"][1]["control_after_generate"] is True  # as in 0.1: old widget values fit

    # the dropdown: ComfyUI's own list, in its order, filtered by dode_core at run time
    offered = required["sampler_name"][1]["options"]
    host = info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert offered == [name for name in host if name in offered], "not in the host's order"
    assert "test_euler_copy" in offered, "a sampler another pack adds at run time is not offered"
    assert "test_noisy_euler" not in offered, "a noise-injecting sampler is offered"
    for name in ("euler", "heun", "dpmpp_2m", "lms", "dpm_2"):
        assert name in offered
    assert not [s for s in offered if "ancestral" in s or "sde" in s]
    assert "dpm_adaptive" not in offered
    assert required["teacher_sampler"][1]["options"] == ["auto", *offered]
    # the plain KSampler dropdown is untouched unless opted in
    assert not [s for s in host if s.startswith("dode_")]


def test_node_help_pages_are_served_where_the_frontend_reads_them(server):
    """The frontend's help panel (NodeHelpService) fetches /extensions/<pack>/docs/<node id>.md, <pack> being the
    second part of the node's python_module; the pack's WEB_DIRECTORY (web/) is served there."""
    info = server.get("/object_info")
    for node_id in ("DODEDistillGuider", "DODEDistill", "DODESampler"):
        module = info[node_id]["python_module"]
        assert module.split(".")[0] == "custom_nodes", module
        url = f"{server.url}/extensions/{module.split('.')[1]}/docs/{node_id}.md"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode("utf-8")
        assert text.startswith(f"# {info[node_id]['display_name']}\n"), text[:200]
        for section in ("required", "optional"):
            for name in info[node_id]["input"].get(section, {}):
                assert f"**{name}**" in text, f"{node_id}.md does not describe its input {name}"


@pytest.mark.parametrize(("model_type", "guider"), [("eps", "cfg"), ("flow", "cfg"), ("flux", "basic")])
def test_guider_distill_then_sample_is_closer_to_the_reference(server, model_type, guider):
    filename = f"g_{model_type}_{guider}"
    entry = run_ok(server, distill_graph(filename, model_type=model_type, guider=guider))
    name = distilled_name(entry)
    assert name == f"{filename}.safetensors"
    lam = load_lambdas(os.path.join(lambdas_dir(server), name))
    meta = lam.metadata
    assert meta["base_sampler"] == "euler" and meta["comfy_sampler"] == "euler" and lam.calls == STEPS
    assert meta["guider"] == {"cfg": "CFGGuider", "basic": "Guider_Basic"}[guider]
    assert json.loads(meta["guidance"]) == ({"cfg": 2.0} if guider == "cfg" else {"guidance": 2.0})
    assert len(meta["weights_digest"]) == 16 and len(meta["content_key"]) == 32
    assert "checkpoint_sha256" not in meta and "model_fingerprint" not in meta  # no checkpoint loader in the graph
    assert meta["scheduler"] == "karras" and meta["seed"] == "0" and meta["batch_size"] == "4"
    assert meta["host"].startswith("ComfyUI 0.3.75")
    info = entry["outputs"]["info"]["text"][0]
    assert info.startswith(f"lambda file: {name}  (new fit)"), info
    held_base, held_dode, held_count = lam.heldout()
    assert held_dode < held_base and held_count == 4  # batch 4: every latent, judged with λ fitted on the others
    assert rules.proof_lines(lam)[0] in info and f"base sampler on your schedule {held_base:.4g}" in info, info
    distill_ui = entry["outputs"]["distill"]
    assert distill_ui["lambda_file"] == [name]
    assert distill_ui["images"][0]["type"] == "temp"  # the plot with the file name, shown on the node
    plot = entry["outputs"]["plot"]["image"][0]
    assert plot["shape"][0] == 1 and plot["shape"][3] == 3 and plot["std"] > 0.01

    # held-out noise (seed 7, not the fit's seed 0), the same guider
    kwargs = {"model_type": model_type, "guider": guider}
    dode = latent_values(server, sample_graph(dode_sampler(name), **kwargs))
    base = latent_values(server, sample_graph(base_sampler(), **kwargs))
    reference = latent_values(server, sample_graph(base_sampler(), steps=STEPS * 8, **kwargs))
    assert rmse(dode, base) > 1e-4, "D-ODE changed nothing"
    assert rmse(dode, reference) < 0.9 * rmse(base, reference), (rmse(dode, reference), rmse(base, reference))


def test_cfg_preset_accepts_a_0_1_api_prompt(server):
    graph = base_graph()
    graph["distill"] = {"class_type": "DODEDistill", "inputs": {  # exactly the inputs of version 0.1
        "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "sigmas": ["sigmas", 0],
        "sampler_name": "euler", "cfg": 2.0, "seed": 1, "batch_size": 4, "width": SIZE, "height": SIZE,
        "teacher_factor": 4, "history": "1", "filename": ""}}
    graph["name"] = {"class_type": "DODETestShowText", "inputs": {"text": ["distill", 2]}}
    graph["info"] = {"class_type": "DODETestShowText", "inputs": {"text": ["distill", 4]}}
    name = distilled_name(run_ok(server, graph))
    # <fingerprint (no checkpoint loader in the graph)>_<sampler>_<steps>steps_<scheduler>_cfg<cfg>_h<history>
    lam = load_lambdas(os.path.join(lambdas_dir(server), name))
    assert name == f"{lam.metadata['weights_digest'][:8]}_euler_4steps_karras_cfg2_h1.safetensors"
    assert lam.metadata["seed"] == "1" and json.loads(lam.metadata["guidance"]) == {"cfg": 2.0}
    # a randomized seed widget does not refit: same model, prompts, cfg, sigmas and settings reuse the file
    graph["distill"]["inputs"]["seed"] = 123456
    entry = run_ok(server, graph)
    assert distilled_name(entry) == name and "(reused: same inputs, no new fit)" in entry["outputs"]["info"]["text"][0]


def test_requeue_after_another_workflow_reuses_the_file_without_fitting(server):
    graph = distill_graph("", cfg=2.5)
    first = run_ok(server, graph)
    name = distilled_name(first)
    path = os.path.join(lambdas_dir(server), name)
    stamp, before = os.stat(path).st_mtime_ns, files(server)
    run_ok(server, sample_graph(base_sampler()))  # another workflow: ComfyUI drops the distill's cached outputs

    client_id = f"dode-reuse-{uuid.uuid4().hex}"
    prompt_id, events, final = asyncio.run(_progress_events(server, graph, client_id))
    entry = server.wait(prompt_id)
    assert final == "execution_success", error_message(entry)
    assert distilled_name(entry) == name
    assert entry["outputs"]["info"]["text"][0].startswith(f"lambda file: {name}  (reused: same inputs, no new fit)")
    assert [e for e in events if e["node"] == "distill"] == [], "the re-queued distill called the model"
    assert files(server) == before and os.stat(path).st_mtime_ns == stamp  # no new file, nothing rewritten

    # another input (cfg) is another fit, in another file: never the same name overwritten
    other = distilled_name(run_ok(server, distill_graph("", cfg=3.0)))
    assert other != name and os.stat(path).st_mtime_ns == stamp


def test_new_file_is_listed_first_and_auto_uses_it_without_a_refresh(server):
    name = distilled_name(run_ok(server, distill_graph("listed_now", sampler="dpmpp_2m")))
    choices = lambdas_choices(server)
    assert choices[0] == AUTO and choices[1] == name, choices[:3]
    assert not [c for c in choices if c.startswith("demo-")], "the demo model's files are offered for checkpoints"
    spec = server.get("/object_info/DODESampler")["DODESampler"]["input"]["required"]["lambdas"][1]
    assert spec["default"] == AUTO

    named = latent_values(server, sample_graph(dode_sampler(name)))
    auto = latent_values(server, sample_graph(dode_sampler(AUTO)))
    assert auto == named, "auto did not pick the file just written"
    assert f"D-ODE Sampler (auto): using {name}: its base sampler 'dpmpp_2m'" in server.log_tail(20000)


def test_sampler_node_outputs_the_files_schedule(server):
    name = distilled_name(run_ok(server, distill_graph("own_sigmas", steps=5)))
    with_scheduler = latent_values(server, sample_graph(dode_sampler(name), steps=5))
    graph = sample_graph(dode_sampler(name), steps=9)  # the scheduler node now says 9 steps; it is not used
    graph["sample"]["inputs"]["sigmas"] = ["sampler", 1]
    assert latent_values(server, graph) == with_scheduler


def test_fit_schedule_outputs_the_fitted_sigmas_for_the_sampler(server):
    entry = run_ok(server, distill_graph("", fit_schedule=True, cfg=2.25))
    name = distilled_name(entry)
    lam = load_lambdas(os.path.join(lambdas_dir(server), name))
    assert lam.schedule_fitted and "_euler_4steps_fitted_cfg2p25_h1" in name, name
    assert lam.metadata["scheduler"] == "fitted"
    graph = sample_graph(dode_sampler(name), cfg=2.25)
    graph["sample"]["inputs"]["sigmas"] = ["sampler", 1]  # the file's own (fitted) schedule
    fitted = latent_values(server, graph)
    assert fitted != latent_values(server, sample_graph(base_sampler(), cfg=2.25))


def test_mismatch_warning_for_another_model_and_guidance(server):
    name = distilled_name(run_ok(server, distill_graph("warn_me", cfg=2.0)))
    graph = sample_graph(dode_sampler(name, guider=True), cfg=4.0, model_seed=1)  # other weights, other cfg
    graph["sampler_info"] = {"class_type": "DODETestShowText", "inputs": {"text": ["sampler", 2]}}
    entry = run_ok(server, graph)
    info = entry["outputs"]["sampler_info"]["text"][0]
    assert "! the weights differ" in info, info
    assert "! guidance differs" in info and "cfg 4 (fitted with 2)" in info, info
    log = server.log_tail(50000)
    assert f"D-ODE Sampler: {name}: the weights differ" in log and f"D-ODE Sampler: {name}: guidance differs" in log

    # the same model and guidance: no warning
    graph = sample_graph(dode_sampler(name, guider=True), cfg=2.0)
    graph["sampler_info"] = {"class_type": "DODETestShowText", "inputs": {"text": ["sampler", 2]}}
    assert "!" not in run_ok(server, graph)["outputs"]["sampler_info"]["text"][0]


def test_no_gain_is_the_node_error_and_writes_no_file(server):
    graph = distill_graph("no_gain")
    graph["model"]["inputs"]["weight_scale"] = 0.0  # the net predicts no noise: the base sampler is already exact
    message = run_error(server, graph)
    assert "NoGainError" in message and "did not beat the base sampler 'euler'" in message, message
    assert "no λ file was written" in message
    assert not [f for f in files(server) if f.startswith("no_gain")]


def test_schedule_mismatch_is_a_clear_node_error(server):
    name = distilled_name(run_ok(server, distill_graph("mismatch")))
    message = run_error(server, sample_graph(dode_sampler(name), steps=STEPS + 2))
    assert "ScheduleMismatchError" in message and name in message
    assert "λ file" in message and "this run" in message and "distill" in message.lower()


def test_bad_inputs_are_clear_errors_before_any_model_call(server):
    graph = distill_graph("empty")
    graph["sigmas"]["inputs"]["denoise"] = 0.0
    assert "SIGMAS is empty" in run_error(server, graph)

    message = run_error(server, distill_graph("nan", cfg=float("nan")))
    assert "guidance is not a number (cfg=nan)" in message, message

    message = run_error(server, distill_graph("long", steps=100, teacher_factor=100))
    assert "InputError" in message and "100 steps x 100" in message, message
    assert f"at most {rules.MAX_TEACHER_STEPS}" in message, message

    graph = distill_graph("huge")
    graph["fit_latent"]["inputs"].update(width=2048, height=2048, batch_size=80)
    message = run_error(server, graph)
    assert "InputError" in message and "80 latents of [4, 256, 256]" in message and "at most 64" in message, message

    message = run_error(server, distill_graph("noisy", sampler="test_noisy_euler"))
    assert "InputError" in message and "cannot use the sampler 'test_noisy_euler'" in message, message
    assert not [f for f in files(server) if f.startswith(("empty", "nan", "long", "huge", "noisy"))]


def test_corrupt_file_is_refused_with_the_loaders_error(server):
    os.makedirs(lambdas_dir(server), exist_ok=True)
    with open(os.path.join(lambdas_dir(server), "corrupt.safetensors"), "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    message = run_error(server, sample_graph(dode_sampler("corrupt.safetensors")))
    assert "LambdaFileError" in message and "corrupt.safetensors" in message
    # one bad file, a FIFO or a dangling link does not break "auto" or the list for the others (nor hang)
    os.mkfifo(os.path.join(lambdas_dir(server), "fifo.safetensors"))
    os.symlink("/nonexistent/x.safetensors", os.path.join(lambdas_dir(server), "dangling.safetensors"))
    name = distilled_name(run_ok(server, distill_graph("beside_corrupt")))
    assert lambdas_choices(server)[1] == name
    corrupt = os.path.join(lambdas_dir(server), "corrupt.safetensors")
    os.utime(corrupt, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # the broken file is the newest
    assert latent_values(server, sample_graph(dode_sampler(AUTO))) == latent_values(
        server, sample_graph(dode_sampler(name)))
    for junk in ("corrupt", "fifo", "dangling"):
        os.remove(os.path.join(lambdas_dir(server), junk + ".safetensors"))


def test_interrupt_during_distill_leaves_no_file(server):
    graph = distill_graph("interrupted", steps=20, teacher_factor=100, batch=4)
    interrupted = {}

    def interrupt_once_the_fit_runs(event):  # the distill's first progress: its cost is known, its runs start
        if event["node"] == "distill" and not interrupted:
            server.request("/interrupt", {})
            interrupted["at"] = time.monotonic()

    client_id = f"dode-interrupt-{uuid.uuid4().hex}"
    prompt_id, events, final = asyncio.run(_progress_events(server, graph, client_id,
                                                            on_progress=interrupt_once_the_fit_runs))
    entry = server.wait(prompt_id, timeout=60)
    assert interrupted and final == "execution_interrupted", (final, events[:3])
    assert time.monotonic() - interrupted["at"] < 10, "Cancel was not prompt"
    assert events[-1]["value"] < events[-1]["max"], "the fit ran to its end"
    assert entry["status"]["status_str"] == "error"
    assert not [f for f in files(server) if f.startswith("interrupted")]


async def _progress_events(server, graph, client_id, timeout=300.0, on_progress=None):
    """Posts ``graph`` as ``client_id`` over an open /ws connection; the prompt's ``progress`` events and its
    final message type (execution_success / execution_error / execution_interrupted). ``on_progress(event)`` is
    called on each progress event as it arrives."""
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
                        if on_progress is not None:
                            await asyncio.to_thread(on_progress, body)
                    elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                        return prompt_id, events, kind
    raise AssertionError(f"the websocket closed before prompt {prompt_id} finished:\n{server.log_tail()}")


def test_distill_reports_progress_over_the_websocket(server):
    client_id = f"dode-progress-{uuid.uuid4().hex}"
    prompt_id, events, final = asyncio.run(_progress_events(server, distill_graph("progress", batch=4), client_id))
    entry = server.wait(prompt_id)
    assert final == "execution_success", error_message(entry) + "\n" + server.log_tail()
    lam = load_lambdas(os.path.join(lambdas_dir(server), distilled_name(entry)))
    # teacher + the student run + the base run on the held-out latents (+ any shrunk-λ check)
    total = int(lam.metadata["teacher_calls"]) + lam.calls + int(lam.metadata["proof_calls"])
    values = [e["value"] for e in events if e["node"] == "distill"]
    assert values, f"no progress events for the distill node: {events}"
    assert all(e["max"] == total for e in events if e["node"] == "distill")
    # one event per model call, none dropped (and a 0 of total before the first, where dode_core reports it)
    assert [v for v in values if v > 0] == list(range(1, total + 1)), values


def test_opt_in_ksampler_entries(tmp_path):
    comfy = start_server(str(tmp_path), env={"DODE_KSAMPLER_ENTRIES": "1"})
    try:
        info = comfy.get("/object_info")
        plain = info["KSampler"]["input"]["required"]["sampler_name"][0]
        select = info["KSamplerSelect"]["input"]["required"]["sampler_name"]
        select = select[1]["options"] if select[0] == "COMBO" else select[0]  # a V3 node
        offered = info["DODEDistillGuider"]["input"]["required"]["sampler_name"][1]["options"]
        for name in ("dode_euler", "dode_dpmpp_2m"):
            assert plain.count(name) == 1 and select.count(name) == 1  # in place, once
        assert plain[0] == "euler"  # appended, nothing reordered
        # the same source as the nodes' dropdown (the test pack's sampler is added after D-ODE's entries)
        entries = {s.removeprefix("dode_") for s in plain if s.startswith("dode_")}
        assert entries == set(offered) - {"test_euler_copy"}, entries ^ set(offered)
    finally:
        comfy.stop()


def test_a_fresh_install_offers_no_demo_file_and_keeps_the_users_extra_folder(tmp_path):
    demo = sorted(glob.glob(os.path.join(ROOT, "dode_demo", "lambdas", "*.safetensors")))
    assert demo, "no demo λ file to copy"
    extra_root = tmp_path / "extra_root"
    extra = extra_root / "my_lambdas"
    extra.mkdir(parents=True)
    shutil.copy(demo[0], extra / "user_extra.safetensors")  # a demo file a user copied in, under another name
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"dode_test_user:\n    base_path: {extra_root}\n    dode_lambdas: my_lambdas\n")
    base = tmp_path / "base"
    base.mkdir()
    comfy = start_server(str(base), extra_args=["--extra-model-paths-config", str(config)])
    try:
        assert "Adding extra search path dode_lambdas" in comfy.log_tail(100000)
        assert lambdas_choices(comfy) == [AUTO, "user_extra.safetensors"]  # the demo's own files are not listed
        # workflow 2 on an SD-like model: the digits demo's file is never used, named or "auto", and the error says so
        entry = comfy.run(sample_graph(dode_sampler("user_extra.safetensors")))
        assert entry["status"]["status_str"] == "error"
        message = error_message(entry)
        assert "LambdaFileError" in message and "user_extra.safetensors" in message and "1 channel" in message
        entry = comfy.run(sample_graph(dode_sampler(AUTO)))
        message = error_message(entry)
        assert "ScheduleMismatchError" in message and "user_extra.safetensors" in message and "1 channel" in message

        entry = comfy.run(distill_graph("saved_here"))
        assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.log_tail()
        assert distilled_name(entry) == "saved_here.safetensors"
        assert os.path.isfile(base / "models" / "dode_lambdas" / "saved_here.safetensors")
        assert sorted(os.listdir(extra)) == ["user_extra.safetensors"]  # nothing written to the user's folder
    finally:
        comfy.stop()
