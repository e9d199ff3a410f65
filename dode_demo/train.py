"""Train the embedded demo denoiser (``digits16.safetensors``) from scratch, reproducibly, on a CPU.

    python -m dode_demo.train [--steps N] [--seed S] [--out PATH] [--batch B] [--threads T]

EDM training (Karras et al. 2022): sigma log-normal with P_mean = -1.2, P_std = 1.2, loss weight
(sigma^2 + sd^2) / (sigma * sd)^2 on |D(y + sigma n, sigma) - y|^2, Adam (lr 2e-3, a short warm-up, then a
cosine decay), batch 64, no augmentation (digits are never flipped). The saved weights are an exponential
moving average of the trained ones, stored as float16 (the model loads them as float32).

The shipped file: seed 0, 2000 steps (batch 64, about 71 epochs), 536 s (about 9 minutes) on the 2-core CPU of
the build machine with 2 threads and OMP_WAIT_POLICY=passive, while other jobs shared the CPU (torch 2.14.1,
CPU; final loss 0.144). A second run of the same command gave bit-identical weights (617 s, busier machine).

On a busy machine with 2 threads, OpenMP's busy waiting can make each step many times slower; setting
``OMP_WAIT_POLICY=passive`` in the environment (before Python starts) avoids that. Results depend on the torch
version and CPU only through floating-point rounding.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time

import torch

from .model import SIGMA_DATA, WEIGHTS_PATH, DemoDenoiser, demo_data

log = logging.getLogger("dode_demo.train")

P_MEAN, P_STD = -1.2, 1.2
DEFAULT_STEPS = 2000
DEFAULT_SEED = 0
BATCH = 64
LR = 2e-3
WARMUP = 50
EMA_DECAY = 0.995
DATA_DESCRIPTION = (
    "scikit-learn load_digits (1797 images, 8x8, 0..16) scaled to [-1, 1], bilinearly upsampled to 16x16 "
    "(align_corners=False)"
)


def edm_loss(model: DemoDenoiser, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The EDM loss on a batch: sigma = exp(P_mean + P_std * z), weight (sigma^2 + sd^2) / (sigma * sd)^2."""
    sigma = (P_MEAN + P_STD * torch.randn(len(images), generator=generator)).exp()
    noise = torch.randn(images.shape, generator=generator)
    s = sigma[:, None, None, None]
    denoised = model(images + s * noise, sigma)
    weight = (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2
    return (weight * (denoised - images).square()).mean()


def learning_rate(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, batch_size: int = BATCH, log_every: int = 100):
    """Returns (the EMA model, final loss averaged over the last log_every steps, seconds spent)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = demo_data()
    model = DemoDenoiser().train()
    ema = DemoDenoiser().eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    log.info("training %d parameters for %d steps (seed %d, batch %d) on %d images",
             sum(p.numel() for p in model.parameters()), steps, seed, batch_size, len(data))

    order, position = torch.randperm(len(data), generator=generator), 0
    running, recent = 0.0, 0.0
    start = time.perf_counter()
    for step in range(steps):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(data), generator=generator), 0
        batch = data[order[position:position + batch_size]]
        position += batch_size

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        loss = edm_loss(model, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)

        running += float(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            count = (step % log_every) + 1
            recent, running = running / count, 0.0
            elapsed = time.perf_counter() - start
            log.info("step %d/%d  loss %.4f  lr %.2e  %.0f s (%.2f s/step)", step + 1, steps, recent,
                     learning_rate(step, steps), elapsed, elapsed / (step + 1))
    return ema, recent, time.perf_counter() - start


def save(model: DemoDenoiser, path: str, metadata: dict[str, str]) -> None:
    """Writes float16 safetensors atomically: a temporary file in the same folder, then os.replace."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".digits16-", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        save_file(state, temporary, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dode_demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed (default %(default)s)")
    parser.add_argument("--out", default=WEIGHTS_PATH, help="where to write the weights (default: the shipped file)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    model, loss, seconds = train(args.steps, args.seed, args.batch)
    metadata = {
        "seed": str(args.seed),
        "steps": str(args.steps),
        "batch": str(args.batch),
        "training_time_s": f"{seconds:.1f}",
        "threads": str(args.threads),
        "final_loss": f"{loss:.5f}",
        "torch_version": torch.__version__,
        "data": DATA_DESCRIPTION,
        "sigma_min": "0.002",
        "sigma_max": "80",
        "sigma_data": str(SIGMA_DATA),
        "weights": "EMA, float16",
    }
    save(model, args.out, metadata)
    log.info("saved %s (%d bytes); %d steps in %.0f s, final loss %.4f", args.out, os.path.getsize(args.out),
             args.steps, seconds, loss)


if __name__ == "__main__":
    main()
