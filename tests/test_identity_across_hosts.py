"""A λ file made by one host for a checkpoint is that checkpoint's in the other host (issue 18): the WebUI's identity
code runs in its stand-in host (tests/webui_host.py), ComfyUI's in nodes/identity.py, and neither warns about a file
made for the same checkpoint by the other; a file for another checkpoint is still called that."""

import hashlib
import os
import sys
import types

import pytest
import torch
from nodes_stand_in import nodes_module
from webui_host import stand_in_host

from dode_core import load_lambdas
from dode_core.file_rules import ModelIdentity, model_identity, model_mismatch

identity = nodes_module("identity")


@pytest.fixture
def checkpoints(tmp_path):
    """Two checkpoint files and A1111's CheckpointInfo of the first (modules/sd_models.py: ``sha256`` once the host
    has hashed the file, else None; ``shorthash`` its first 10 hex digits)."""
    paths = []
    for name, content in (("sd15.safetensors", b"sd15 weights" * 1000), ("other.safetensors", b"other weights")):
        path = tmp_path / name
        path.write_bytes(content)
        paths.append(str(path))
    sha = hashlib.sha256(open(paths[0], "rb").read()).hexdigest()
    info = types.SimpleNamespace(name="sd15.safetensors", model_name="sd15", sha256=None, shorthash=sha[:10])
    return paths, info


class Patcher:
    """What nodes/identity.py reads of ComfyUI's ModelPatcher: the model's weights and the patches (LoRAs)."""

    def __init__(self, seed=0):
        self.model = torch.nn.Linear(3, 3)
        torch.nn.init.normal_(self.model.weight, generator=torch.Generator().manual_seed(seed))
        self.patches, self.patches_uuid = {}, None


@pytest.fixture
def comfy_guider(monkeypatch):
    """A CFGGuider at cfg 7 over a model, with the ``comfy.samplers`` that identity.guidance consults."""
    class CFGGuider:
        def set_conds(self, positive, negative):
            pass

    comfy = types.ModuleType("comfy")
    comfy.samplers = types.SimpleNamespace(CFGGuider=CFGGuider)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.samplers", comfy.samplers)
    guider = CFGGuider()
    guider.model_patcher, guider.cfg, guider.original_conds = Patcher(), 7.0, {}
    return guider


def distill_in_the_webui(tmp_path, info):
    with stand_in_host("A1111", str(tmp_path / "models")) as host:
        host.shared.sd_model.sd_checkpoint_info = info
        host.run(host.P(sampler_name="Euler", steps=5, batch_size=4, cfg_scale=7.0), "", True, 4, "1")
        (name,) = os.listdir(host.folder)
        return load_lambdas(os.path.join(host.folder, name))


def test_a_webui_file_is_the_same_checkpoints_in_comfyui(tmp_path, checkpoints, comfy_guider):
    (sd15, other), info = checkpoints
    lam = distill_in_the_webui(tmp_path, info)
    assert lam.metadata["checkpoint_sha256"] == info.shorthash and lam.metadata["checkpoint_name"] == "sd15.safetensors"
    assert "model_fingerprint" not in lam.metadata

    # ComfyUI sampling with the checkpoint traced upstream of the guider: hashed, compared on the short hash's digits
    assert identity.mismatch_warnings(lam, comfy_guider, sd15) == []
    warnings = identity.mismatch_warnings(lam, comfy_guider, other)
    assert len(warnings) == 1 and "checkpoint differs" in warnings[0] and info.shorthash in warnings[0]
    # no checkpoint traced (a model from another loader): nothing to compare like with like, so no claim either way
    assert identity.mismatch_warnings(lam, comfy_guider, None) == []


def test_the_webui_warns_only_about_a_file_for_another_checkpoint(tmp_path, checkpoints, capsys):
    (_sd15, other), info = checkpoints
    with stand_in_host("A1111", str(tmp_path / "models")) as host:
        host.shared.sd_model.sd_checkpoint_info = info
        host.run(host.P(sampler_name="Euler", steps=5, batch_size=4), "", True, 4, "1")
        host.run(host.P(sampler_name="D-ODE Euler", steps=5, batch_size=4), "")  # auto: the file just made
        assert "checkpoint differs" not in capsys.readouterr().err
        other_sha = hashlib.sha256(open(other, "rb").read()).hexdigest()
        host.shared.sd_model.sd_checkpoint_info = types.SimpleNamespace(name="other.safetensors", sha256=other_sha)
        host.run(host.P(sampler_name="D-ODE Euler", steps=5, batch_size=4, sd_model_hash=None), "")
        err = capsys.readouterr().err
    assert "WARNING" in err and "checkpoint differs" in err and info.shorthash in err


def test_a_comfyui_file_is_the_same_checkpoints_in_the_webui(checkpoints):
    (sd15, other), info = checkpoints
    comfy_file = identity.run_identity(Patcher(), "sd15.safetensors", sd15)
    assert len(comfy_file.checkpoint_sha256) == 64 and len(comfy_file.weights_digest) == 16
    metadata = comfy_file.fields()
    webui_run = ModelIdentity(checkpoint_sha256=info.shorthash, checkpoint_name=info.name)
    assert model_mismatch(model_identity(metadata), webui_run) is None
    other_run = ModelIdentity(checkpoint_sha256=hashlib.sha256(open(other, "rb").read()).hexdigest()[:10])
    assert "checkpoint differs" in model_mismatch(model_identity(metadata), other_run)


def test_in_comfyui_the_weights_decide_between_comfyui_files(checkpoints, comfy_guider):
    (sd15, _other), _info = checkpoints
    fitted = identity.run_identity(comfy_guider.model_patcher, "sd15.safetensors", sd15)
    lam = types.SimpleNamespace(metadata={**fitted.fields(), "cfg": "7.0"})
    assert identity.mismatch_warnings(lam, comfy_guider) == []
    comfy_guider.model_patcher = Patcher(seed=1)  # other weights (another checkpoint, or a LoRA on this one)
    (warning,) = identity.mismatch_warnings(lam, comfy_guider, sd15)
    assert "weights differ" in warning


def test_a_plugin_0_1_webui_file_counts_as_its_checkpoints(checkpoints, comfy_guider):
    (sd15, other), info = checkpoints
    lam = types.SimpleNamespace(metadata={"model_fingerprint": info.shorthash, "cfg": "7.0"})
    assert identity.mismatch_warnings(lam, comfy_guider, sd15) == []
    assert identity.mismatch_warnings(lam, comfy_guider, other)
