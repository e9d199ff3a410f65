"""Mirrors the parts of A1111 1.10 modules/processing.py (process_images_inner, read at commit 0027ce1) that
decide what a user sees from an extension: ``p.scripts.process(p)`` (errors swallowed by the runner), then per
batch (``n_iter``): the batch's seeds, a fresh ``p.rng = ImageRNG(shape, seeds)``, the start noise
``p.rng.next()``, ``create_sampler(p.sampler_name)``, ``sampler.sample(p, x, ...)`` (errors from it propagate
to the caller: the API answers with them, the UI shows them), ``state.nextjob()``. No conditioning, VAE,
saving or hires pass; ``latent_shape`` stands in for (channels, height // 8, width // 8).

``create_infotext(p)`` mirrors the generation-parameters line of create_infotext (the same in A1111 1.10, Forge
@dfdcbab and reForge @3b56b26): ``{"Steps": p.steps, "Sampler": ..., **p.extra_generation_params, ...}`` joined
as ``Key: value``, so an extension's key overrides a core key's value in the core key's place."""

import json
from dataclasses import dataclass, field

from modules import rng, sd_samplers, shared
from modules.shared import state


@dataclass
class StableDiffusionProcessingTxt2Img:
    sampler_name: str = "Euler"
    scheduler: str = "Karras"
    steps: int = 5
    batch_size: int = 4
    n_iter: int = 1
    seed: int = 1234
    cfg_scale: float = 7.0
    width: int = 64
    height: int = 64
    prompt: str = "a cat"
    negative_prompt: str = "blurry"
    latent_shape: tuple = (1, 4, 4)
    scripts: object = None
    script_args: list = field(default_factory=list)
    sampler_noise_scheduler_override: object = None
    is_hr_pass: bool = False
    sd_model_name: str = "tiny"
    sd_model_hash: str = "abc1234567"  # the checkpoint's short hash: 10 hex digits
    extra_generation_params: dict = field(default_factory=dict)

    def __post_init__(self):
        self.all_seeds = [self.seed + i for i in range(self.n_iter * self.batch_size)]
        self.all_prompts = [self.prompt] * len(self.all_seeds)
        self.all_negative_prompts = [self.negative_prompt] * len(self.all_seeds)


def process_images(p):
    """Returns the sampled latents of every batch (the real one decodes them into images)."""
    if p.scripts is not None:
        p.scripts.process(p)
    state.job_count = p.n_iter
    batches = []
    for n in range(p.n_iter):
        p.iteration = n
        if state.skipped:
            state.skipped = False
        if state.interrupted:
            break
        p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
        p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        p.rng = rng.ImageRNG(p.latent_shape, p.seeds)
        x = p.rng.next()
        p.sampler = sd_samplers.create_sampler(p.sampler_name, shared.sd_model)
        batches.append(p.sampler.sample(p, x, None, None))
        state.nextjob()
    return batches


def create_infotext(p, index=0):
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    text = ", ".join(f"{key}: {quote(value)}" for key, value in generation_params.items() if value is not None)
    return f"{p.all_prompts[index]}\nNegative prompt: {p.all_negative_prompts[index]}\n{text}"


def quote(text):
    # modules/infotext_utils.py quote(): JSON-quotes a value holding ',', ':' or '"'
    text = str(text)
    return text if "," not in text and "\n" not in text and ":" not in text else json.dumps(text, ensure_ascii=False)
