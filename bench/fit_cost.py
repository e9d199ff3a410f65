#!/usr/bin/env python
"""What a fit costs besides the model: its own time as a fraction of model time, and its peak extra memory.

For euler, dpmpp_2m and heun at 30 steps on a batch of 8 latents of 4x128x128 (float32), ``distill`` runs with
a cheap stand-in model; the time spent inside the model is subtracted from the wall time, which leaves the fit's
own time (probes, teacher and sampler arithmetic, the λ fit, the held-out proof). Times are the process's CPU
time on one thread, so other load on the machine does not count. The fraction is that own time
over the model time the same calls would take at 50 ms a call. Peak memory is the growth of the process's
peak RSS during the fit (each sampler in its own process, glibc returning every freed batch at once), in MiB and in
full-batch tensors; on a GPU the teacher targets (one full-batch state per call, listed separately) live on the
CPU, the rest on the GPU. Euler also runs at twice the steps: what is not a target must not grow with the calls.

    python bench/fit_cost.py            # the table
    python bench/fit_cost.py --one euler  # one sampler, JSON (what the table runs in a subprocess)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402
from k_diffusion import sampling as ks  # noqa: E402

from dode_core import distill  # noqa: E402

SAMPLERS = {"euler": ks.sample_euler, "dpmpp_2m": ks.sample_dpmpp_2m, "heun": ks.sample_heun}
STEPS, BATCH, SHAPE = 30, 8, (4, 128, 128)
MODEL_MS = 50.0
TARGET = 0.10


class TimedModel:
    """A cheap, smooth denoiser (D = x / (1 + sigma^2), per latent) that adds up the time spent inside it."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0

    def __call__(self, x, sigma, **extra_args):
        start = time.process_time()
        scale = 1.0 / (1.0 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2)
        out = x * scale
        self.seconds += time.process_time() - start
        self.calls += 1
        return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(name: str, steps: int = STEPS) -> dict:
    torch.set_num_threads(1)
    sampler = SAMPLERS[name]
    steps = (steps + 1) // 2 if name == "heun" else steps
    sigmas = ks.get_sigmas_karras(steps, 0.0292, 14.61)
    x = torch.randn((BATCH,) + SHAPE, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    model = TimedModel()
    model(x, sigmas[:1].expand(BATCH))  # warm up, and the baseline holds one model output
    model.seconds, model.calls = 0.0, 0
    baseline = peak_rss_mib()
    start = time.process_time()
    lam = distill(model, x, sigmas, sampler, teacher_factor=10)
    wall = time.process_time() - start
    own = wall - model.seconds
    batch_mib = x.numel() * x.element_size() / 2**20
    return {"sampler": name, "steps": steps, "calls": lam.calls, "model_calls": model.calls,
            "teacher_calls": int(lam.metadata["teacher_calls"]), "own_s": own,
            "fraction": own / (model.calls * MODEL_MS / 1000), "peak_mib": peak_rss_mib() - baseline,
            "targets_mib": lam.calls * batch_mib, "batch_mib": batch_mib}


def section() -> tuple[str, list[dict]]:
    """Each sampler in a fresh process (peak RSS only grows); returns the markdown table and the rows."""
    def run(name, steps, env=None) -> dict:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(steps)], capture_output=True,
                             text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = []
    # memory in a run where every freed batch goes back to the OS at once (peak RSS then counts live tensors, not
    # heap fragmentation); time in a plain run, since that setting makes every allocation a system call
    returning = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for name, steps in [(name, STEPS) for name in SAMPLERS] + [("euler", 2 * STEPS)]:
        row = run(name, steps, returning)
        timed = run(name, steps)
        row.update(own_s=timed["own_s"], fraction=timed["fraction"])
        rows.append(row)
    lines = ["| sampler | steps | model calls (teacher + student + proof) | fit's own s | own / model time at "
             f"{MODEL_MS:.0f} ms a call | peak extra MiB | of which teacher targets | full-batch tensors besides |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        besides = (row["peak_mib"] - row["targets_mib"]) / row["batch_mib"]
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['model_calls']} ({row['teacher_calls']} + "
                     f"{row['calls']} + {row['model_calls'] - row['teacher_calls'] - row['calls']}) | "
                     f"{row['own_s']:.2f} | {row['fraction']:.3f} | {row['peak_mib']:.0f} | "
                     f"{row['targets_mib']:.0f} | {besides:.1f} |")
    worst = max(row["fraction"] for row in rows)
    lines.append(f"\nLatent batch {BATCH} x {SHAPE} float32 ({rows[0]['batch_mib']:.0f} MiB), teacher_factor 10, "
                 f"1 CPU thread. Worst own/model fraction {worst:.3f} (target <= {TARGET}): "
                 f"{'within target' if worst <= TARGET else 'OVER TARGET'}.")
    return "\n".join(lines), rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", choices=sorted(SAMPLERS))
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return 0
    table, _ = section()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
