"""What a λ file was fitted for, as ComfyUI objects say it: the model (dode_core.file_rules' identity: the checkpoint
file's sha256 and the loaded weights' digest), guidance, the inputs' content key, and names traced through the API
prompt (checkpoint, scheduler, prompts); and the warnings when a file is used with another model or guidance."""

from __future__ import annotations

import hashlib
import json
import logging
import math

import torch

from . import errors
from ._core import dode_core

log = logging.getLogger(__name__)
file_rules = dode_core.file_rules

SAMPLE_VALUES = 4096
# guider attributes that hold guidance scales (CFGGuider.cfg, DualCFGGuider.cfg1/cfg2, PerpNeg.neg_scale, ...)
SCALAR_TYPES = (bool, int, float, str)
_fingerprints: dict = {}


def _hash_tensor(digest, tensor: torch.Tensor, limit: int | None = SAMPLE_VALUES) -> None:
    digest.update(f"{tuple(tensor.shape)}:{tensor.dtype}".encode())
    flat = tensor.detach().reshape(-1)
    if flat.numel():
        if limit is not None:
            flat = flat[:: max(1, flat.numel() // limit)][:limit]
        digest.update(flat.to("cpu", torch.float32).numpy().tobytes())


def weights_digest(model_patcher) -> str:
    """sha256 (16 hex) over the weights' names, shapes, dtypes and a strided sample of their values, plus the
    patches (LoRAs) applied; cheap on multi-GB checkpoints, different for different weights in practice.
    Cached per loaded model and patch set (ModelPatcher.patches_uuid changes when patches do)."""
    key = (id(model_patcher.model), getattr(model_patcher, "patches_uuid", None),
           tuple(sorted(getattr(model_patcher, "patches", {}) or {})))
    if key in _fingerprints:
        return _fingerprints[key]
    digest = hashlib.sha256()
    for name, tensor in sorted(model_patcher.model.state_dict().items()):
        digest.update(name.encode())
        _hash_tensor(digest, tensor)
    for patch_key in sorted(getattr(model_patcher, "patches", {}) or {}):
        strengths = [(p[0], p[2]) for p in model_patcher.patches[patch_key]]
        digest.update(f"patch:{patch_key}:{strengths}".encode())
    _fingerprints[key] = digest.hexdigest()[:file_rules.WEIGHTS_DIGEST_DIGITS]
    return _fingerprints[key]


def run_identity(model_patcher, checkpoint: str | None, checkpoint_path: str | None, *, weights: bool = True,
                 checkpoint_hash: bool = True) -> dode_core.file_rules.ModelIdentity:
    """The model of a run: the loaded weights' digest (``weights``), the checkpoint file's sha256 (``checkpoint_hash``,
    where the file is known: computed once per file version, a few seconds for a multi-GB file) and its name."""
    sha256 = None
    if checkpoint_hash and checkpoint_path:
        try:
            sha256 = file_rules.file_sha256(checkpoint_path)
        except OSError as error:
            log.info("D-ODE: cannot hash the checkpoint %s (%s); its λ files record the weights' digest only",
                     checkpoint_path, error)
    return file_rules.ModelIdentity(checkpoint_sha256=sha256, checkpoint_name=checkpoint,
                                    weights_digest=weights_digest(model_patcher) if weights else None)


def mismatch_warnings(lam, guider_like, checkpoint_path: str | None = None) -> list[str]:
    """Warnings when ``lam`` is used with another model than it was fitted for (file_rules.model_mismatch: like with
    like, so a file the WebUI made for the same checkpoint passes) or other guidance. ``guider_like`` is a guider
    (CFGGuider and kin) or None (nothing to compare); ``checkpoint_path`` the checkpoint it was traced to, if any:
    hashed only for a file that records a checkpoint hash and no weights digest."""
    if guider_like is None or not hasattr(guider_like, "model_patcher"):
        return []
    warnings = []
    fitted = file_rules.model_identity(lam.metadata)
    run = run_identity(guider_like.model_patcher, None, checkpoint_path, weights=bool(fitted.weights_digest),
                       checkpoint_hash=bool(fitted.checkpoint_sha256 and not fitted.weights_digest))
    why = file_rules.model_mismatch(fitted, run)
    if why:
        warnings.append(f"! {why}: λ from another model may make images worse; distill for this model.")
    try:
        fitted_scales = json.loads(lam.metadata.get("guidance") or "null")
    except ValueError:
        fitted_scales = None
    if fitted_scales is None and lam.metadata.get("cfg"):
        try:
            fitted_scales = {"cfg": float(lam.metadata["cfg"])}
        except ValueError:
            fitted_scales = None
    if isinstance(fitted_scales, dict):
        scales = guidance(guider_like)
        differing = [f"{k} {scales[k]:g} (fitted with {float(v):g})" for k, v in sorted(fitted_scales.items())
                     if k in scales and isinstance(v, (int, float)) and not math.isclose(scales[k], float(v),
                                                                                          rel_tol=1e-3)]
        if differing:
            warnings.append("! guidance differs from the fit: " + ", ".join(differing) +
                            ": λ fitted for one guidance may make images worse at another; distill for it.")
    return warnings


def _hash_value(digest, value, depth: int = 0) -> None:
    """Conditioning content: tensors by value, containers recursively, anything else by its type only."""
    if depth > 12:
        return
    if isinstance(value, torch.Tensor):
        _hash_tensor(digest, value, limit=None if value.numel() <= 1 << 20 else SAMPLE_VALUES)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(f"k:{key}".encode())
            _hash_value(digest, value[key], depth + 1)
    elif isinstance(value, (list, tuple)):
        digest.update(f"[{len(value)}".encode())
        for item in value:
            _hash_value(digest, item, depth + 1)
    elif value is None or isinstance(value, SCALAR_TYPES):
        digest.update(repr(value).encode())
    else:
        digest.update(type(value).__qualname__.encode())


def guidance(guider) -> dict[str, float]:
    """The guider's guidance scales (its float attributes: cfg, cfg1, cfg2, ...) and, for Flux-style models, the
    ``guidance`` value in its positive conditioning. Only what this guider actually uses: a BasicGuider's
    inherited ``cfg`` of 1.0 is not guidance."""
    import comfy.samplers

    scales = {}
    # a guider class with its own set_conds (BasicGuider, DualCFGGuider) keeps CFGGuider's unused cfg = 1.0
    own_conds = type(guider).set_conds is not comfy.samplers.CFGGuider.set_conds
    unused_cfg = own_conds and getattr(guider, "cfg", None) == 1.0
    for name, value in sorted(vars(guider).items()):
        if isinstance(value, float) and not (unused_cfg and name == "cfg"):
            scales[name] = float(value)
    for entry in (getattr(guider, "original_conds", {}) or {}).get("positive", []) or []:
        value = entry.get("guidance") if isinstance(entry, dict) else None
        if isinstance(value, (int, float)):
            scales["guidance"] = float(value)
            break
    return scales


def check_guidance(scales: dict[str, float]) -> None:
    bad = {name: value for name, value in scales.items() if not math.isfinite(value)}
    if bad:
        raise errors.InputError(f"the guider's guidance is not a number "
                                f"({', '.join(f'{k}={v}' for k, v in bad.items())}); set a finite cfg on the guider "
                                "node.")


def guider_fingerprint(guider) -> str:
    """sha256 (16 hex) of the guider's class, its scalar settings and its conditionings' values."""
    digest = hashlib.sha256(type(guider).__qualname__.encode())
    for name, value in sorted(vars(guider).items()):
        if isinstance(value, SCALAR_TYPES) or value is None:
            digest.update(f"{name}={value!r}".encode())
    _hash_value(digest, getattr(guider, "original_conds", {}) or {})
    return digest.hexdigest()[:16]


def content_key(**parts) -> str:
    """sha256 (32 hex) of the JSON of ``parts`` (sorted keys): equal inputs, equal key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def latent_digest(samples: torch.Tensor) -> str:
    digest = hashlib.sha256()
    _hash_tensor(digest, samples, limit=None if samples.numel() <= 1 << 22 else SAMPLE_VALUES)
    return digest.hexdigest()[:16]


# --- the API prompt ------------------------------------------------------------------------------------------
TEXT_KEYS = ("text", "text_g", "t5xxl", "clip_l")
# loader input -> the model folders (folder_paths) its file is looked up in
MODEL_NAME_KEYS = {"ckpt_name": ("checkpoints",), "unet_name": ("diffusion_models", "unet_gguf"),
                   "model_name": (), "gguf_name": ("unet_gguf", "diffusion_models")}


def _upstream(prompt, link, wanted, limit: int = 64):
    """Breadth-first over the nodes feeding ``link`` ([node id, slot]); the first value ``wanted(inputs)``
    returns that is not None."""
    seen, frontier = set(), [link]
    while frontier and len(seen) < limit:
        link = frontier.pop(0)
        if not isinstance(link, list) or len(link) != 2 or str(link[0]) in seen:
            continue
        seen.add(str(link[0]))
        node = prompt.get(str(link[0])) if isinstance(prompt, dict) else None
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs") or {}
        found = wanted(node.get("class_type", ""), inputs)
        if found is not None:
            return found
        frontier.extend(v for v in inputs.values() if isinstance(v, list) and len(v) == 2)
    return None


def traced(prompt, unique_id, input_name: str, wanted):
    try:
        link = prompt[str(unique_id)]["inputs"][input_name]
    except (KeyError, TypeError, IndexError):
        return None
    return _upstream(prompt, link, wanted)


def checkpoint_file(prompt, unique_id, input_name: str) -> tuple[str | None, str | None]:
    """The checkpoint / UNet file upstream of ``input_name`` (ckpt_name, unet_name, ...): ``(name, path)``, the path
    None where the file is not in a known model folder; ``(None, None)`` where no loader is upstream."""
    def wanted(_class_type, inputs):
        for key, folders in MODEL_NAME_KEYS.items():
            if isinstance(inputs.get(key), str):
                return inputs[key], folders
        return None

    found = traced(prompt, unique_id, input_name, wanted)
    if found is None:
        return None, None
    name, folders = found
    import folder_paths

    for folder in folders:
        try:
            path = folder_paths.get_full_path(folder, name)
        except (TypeError, ValueError, OSError):
            path = None
        if path:
            return name, path
    return name, None


def scheduler_name(prompt, unique_id, input_name: str):
    """The scheduler upstream of the SIGMAS input: BasicScheduler's ``scheduler`` widget, else the scheduler
    node's class (``KarrasScheduler`` -> ``karras``, ``AlignYourStepsScheduler`` -> ``alignyoursteps``)."""
    def wanted(class_type, inputs):
        if isinstance(inputs.get("scheduler"), str):
            return inputs["scheduler"]
        if class_type.endswith("Scheduler"):
            return class_type.removesuffix("Scheduler").lower() or None
        return None

    return traced(prompt, unique_id, input_name, wanted)


def prompt_text(prompt, unique_id, input_name: str) -> str:
    """The text of the first text-encode node upstream of ``input_name``, where the prompt has one."""
    def wanted(_class_type, inputs):
        for key in TEXT_KEYS:
            if isinstance(inputs.get(key), str):
                return inputs[key]
        return None

    return traced(prompt, unique_id, input_name, wanted) or ""
