#!/usr/bin/env python
"""What sampling with λ costs over the base sampler: ``dode_core.sample`` vs the k-diffusion sampler itself.

Two figures per sampler and step count, measured in the same run:

- direct: the median, over alternating pairs (base then D-ODE, D-ODE then base, ...), of the wall-time ratio
  sample() / base on a conv-net denoiser that costs at least ``MIN_CALL_MS`` of CPU time a call (float32, a
  batch of 2 latents 4x48x48). On a shared machine this carries the machine's noise, so the ratio of the fastest
  D-ODE run to the fastest base run is printed beside it (other processes only ever add time).
- implied: 1 + D-ODE's own time / the base run's time, where D-ODE's own time is sample() minus the base
  sampler on a free denoiser (it returns ``x * 0.5``) with the same latent: the correction, the history, the
  per-call checks and the schedule check (the probe is cached after the first run of a schedule, so a
  repeated schedule pays only its key). CPU time: the fastest D-ODE run minus the fastest base run over many
  alternating pairs, over the base run's median on the conv net.

    python bench/overhead.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # raised by k_diffusion's clip import

import torch  # noqa: E402
from k_diffusion import sampling as ks  # noqa: E402

from dode_core import Lambdas, sample  # noqa: E402
from dode_core.blackbox import probe_call_sigmas, sampler_name  # noqa: E402

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SAMPLERS = (ks.sample_euler, ks.sample_dpmpp_2m, ks.sample_heun)
STEPS = (8, 30)
LATENT_SHAPE = (2, 4, 48, 48)
MIN_CALL_MS = 10.0
PAIRS, QUICK_PAIRS = 15, 3
FREE_PAIRS, FREE_BUDGET_S = 300, 3.0  # pairs on the free model, for D-ODE's own time (fewer once the budget is spent)
IMPLIED_TARGET, DIRECT_TARGET, DIRECT_TARGET_STEPS = 1.005, 1.01, 30
LAMBDA = 0.1  # any non-zero λ: zero would skip the correction and time nothing


class ConvDenoiser:
    """A k-diffusion-style denoiser over a random conv net: ``D(x, sigma) = x - net(c_in x) * sigma``.

    ReLU, not SiLU: this random net's SiLU runs slower on some inputs than on others (its exp, on the large
    activations of an untrained net), and D-ODE changes the states the net sees. With SiLU, euler at 30 steps
    measured a direct ratio of 1.0145, but 0.9998 when the correction was computed and then discarded (same
    states as the base); with ReLU, 1.0020. The benchmark times D-ODE, not that artefact.
    """

    def __init__(self, depth: int, channels: int = 64, latent_channels: int = LATENT_SHAPE[1]):
        torch.manual_seed(0)
        layers = [torch.nn.Conv2d(latent_channels, channels, 3, padding=1)]
        for _ in range(depth):
            layers += [torch.nn.ReLU(), torch.nn.Conv2d(channels, channels, 3, padding=1)]
        layers += [torch.nn.ReLU(), torch.nn.Conv2d(channels, latent_channels, 3, padding=1)]
        self.net = torch.nn.Sequential(*layers).eval()
        self.depth = depth

    @torch.no_grad()
    def __call__(self, x, sigma, **extra_args):
        sigma = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return x - self.net(x / (1 + sigma**2).sqrt()) * sigma


def free_model(x, sigma, **extra_args):
    """A denoiser that costs next to nothing, to time what D-ODE adds around the model alone."""
    return x * 0.5


def karras(steps: int) -> torch.Tensor:
    return ks.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX).float()


def start_latent() -> torch.Tensor:
    return torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(1)) * SIGMA_MAX


def seconds(fn) -> tuple[float, float]:
    """(wall time, this process's CPU time) of one ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def build_model(min_call_ms: float = MIN_CALL_MS) -> tuple[ConvDenoiser, float]:
    """A conv denoiser, deepened until its fastest of 9 calls costs at least ``min_call_ms`` of CPU time (so that a
    busy machine does not pick a model that is cheaper than the target on a quiet one); (model, ms)."""
    x, sigma = start_latent(), torch.full((LATENT_SHAPE[0],), SIGMA_MAX)
    depth = 1
    while True:
        model = ConvDenoiser(depth)
        call = functools.partial(model, x, sigma)
        for _ in range(10):  # warm-up: the first calls allocate and are slower
            call()
        call_ms = 1e3 * min(seconds(call)[1] for _ in range(9))
        if call_ms >= 1.2 * min_call_ms:  # a margin: calls inside a run measured up to 20% faster
            return model, call_ms
        depth += max(1, depth // 2)


def alternating_pairs(run_base, run_dode, pairs: int, budget_s: float = math.inf) -> list[tuple]:
    """``(base wall, dode wall, base CPU, dode CPU)`` per pair, the order alternating from pair to pair so that
    neither always runs second; one warm-up of each first; stops early (after 3 pairs) once ``budget_s`` is spent."""
    run_base(), run_dode()
    times, deadline = [], time.perf_counter() + budget_s
    while len(times) < pairs and (len(times) < 3 or time.perf_counter() < deadline):
        if len(times) % 2 == 0:
            base = seconds(run_base)
            dode = seconds(run_dode)
        else:
            dode = seconds(run_dode)
            base = seconds(run_base)
        times.append((base[0], dode[0], base[1], dode[1]))
    return times


def fixed_lambdas(sampler, x, sigmas) -> Lambdas:
    """λ = LAMBDA at every call after the first, for the calls ``sampler`` makes on ``sigmas`` (a fit would time
    the same: the cost does not depend on the values, only on whether they are 0)."""
    call_sigmas, _ = probe_call_sigmas(free_model, x, sigmas, sampler)
    lambdas = torch.full((len(call_sigmas), 1), LAMBDA)
    lambdas[0] = 0.0
    return Lambdas(lambdas, tuple(call_sigmas), {"base_sampler": sampler_name(sampler), "steps": str(len(sigmas) - 1)})


def overhead_row(model, x, sampler, steps: int, pairs: int) -> dict:
    """Direct and implied ratios for one sampler at one step count."""
    sigmas = karras(steps)
    lam = fixed_lambdas(sampler, x, sigmas)

    def runner(denoiser, dode: bool):
        if dode:
            return lambda: sample(denoiser, x, sigmas, sampler, lam, disable=True)
        return lambda: sampler(denoiser, x, sigmas, disable=True)

    probe_s = min(seconds(lambda: probe_call_sigmas(free_model, x, sigmas, sampler))[1] for _ in range(5))
    direct = alternating_pairs(runner(model, False), runner(model, True), pairs)
    free = alternating_pairs(runner(free_model, False), runner(free_model, True), FREE_PAIRS, FREE_BUDGET_S)
    base_cpu = statistics.median(t[2] for t in direct)
    own = max(min(t[3] for t in free) - min(t[2] for t in free), 0.0)
    return {"sampler": sampler_name(sampler), "steps": steps, "calls": lam.calls,
            "base": statistics.median(t[0] for t in direct), "base_cpu": base_cpu,
            "ratio": statistics.median(t[1] / t[0] for t in direct),
            "min_ratio": min(t[1] for t in direct) / min(t[0] for t in direct), "pairs": len(direct),
            "own": own, "free_pairs": len(free), "probe": probe_s, "implied": 1.0 + own / base_cpu}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def meets_targets(row: dict) -> bool:
    """implied <= IMPLIED_TARGET everywhere; direct <= DIRECT_TARGET at DIRECT_TARGET_STEPS."""
    return row["implied"] <= IMPLIED_TARGET and (row["steps"] != DIRECT_TARGET_STEPS or row["ratio"] <= DIRECT_TARGET)


def overhead_section(quick: bool = False, threads: int = 1) -> tuple[str, list[dict]]:
    """The overhead table and its rows (keys: sampler, steps, calls, base, ratio, own, probe, implied, ...).

    ``threads``: torch threads while it runs (1 by default: on a shared machine a multi-threaded conv waits for
    descheduled threads, which is noise, not overhead); restored afterwards.
    """
    load_before, threads_before = os.getloadavg()[0], torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            model, call_ms = build_model()
            x = start_latent()
            rows = [overhead_row(model, x, sampler, steps, QUICK_PAIRS if quick else PAIRS)
                    for sampler in SAMPLERS for steps in ((8,) if quick else STEPS)]
    finally:
        torch.set_num_threads(threads_before)
    header = ["sampler", "steps", "model calls", "model ms/call", "base s (median)", "direct ratio, wall",
              "fastest / fastest", "D-ODE own ms/run (CPU)", "implied ratio", "probe ms (once per schedule)",
              "within target"]
    body = [[row["sampler"], str(row["steps"]), str(row["calls"]), f"{1e3 * row['base_cpu'] / row['calls']:.1f}",
             f"{row['base']:.3f}", f"{row['ratio']:.4f}", f"{row['min_ratio']:.4f}", f"{1e3 * row['own']:.3f}",
             f"{row['implied']:.4f}", f"{1e3 * row['probe']:.2f}", "yes" if meets_targets(row) else "**NO**"]
            for row in rows]
    note = (f"conv net: depth {model.depth} x 64 channels, {call_ms:.1f} ms of CPU a call (fastest of 9), latent "
            f"{LATENT_SHAPE} float32, torch {torch.__version__}, {threads} thread(s) on {os.cpu_count()} CPUs, load "
            f"average {load_before:.1f} -> {os.getloadavg()[0]:.1f}. Direct: median of the per-pair wall-time ratios "
            f"over {rows[0]['pairs']} alternating pairs; fastest / fastest: the same runs' minima; own: fastest D-ODE "
            f"minus fastest base run (CPU time) over {min(row['free_pairs'] for row in rows)}+ pairs on a free "
            f"model (x * 0.5). Targets: implied <= {IMPLIED_TARGET}, direct (wall) <= {DIRECT_TARGET} at "
            f"{DIRECT_TARGET_STEPS} steps.")
    return markdown_table(header, body) + "\n\n" + note, rows


def half_precision_section(samplers=(ks.sample_euler, ks.sample_dpmpp_2m), calls: int = 8) -> str:
    """How far the correction rounded once to the model's dtype (one lerp in float16/bfloat16) lands from the
    same correction formed and kept in float32, on the embedded demo model whose outputs are cast to the half dtype
    (as a GPU model under autocast answers); float32 latents, λ fitted on the half-precision model.

    Next to it, for scale: what the half-precision model itself changes (float32 model, same λ), what D-ODE
    changes (D-ODE vs base), and the RMSE of both paths to a 60-step Heun reference of the float32 model.
    This is what chose ROUNDED_ONCE_DTYPES in dode_core/correction.py.
    """
    from dode_core import correction, distill
    from dode_demo.job import karras_sigmas
    from dode_demo.model import load_demo_model

    def rms(a, b):
        return float((a.double() - b.double()).square().mean().sqrt())

    def kept_in_float32(denoised, previous, weights):
        return denoised if not weights else correction._corrected_wide(denoised, previous, weights)

    def rounded_in_dtype(denoised, previous, weights):
        return denoised if not weights else correction._corrected_wide(denoised, previous, weights).to(denoised.dtype)

    def sample_with(correct, *args):
        original, correction.corrected_output = correction.corrected_output, correct
        try:
            return sample(*args, disable=True)
        finally:
            correction.corrected_output = original

    model = load_demo_model()
    generator = torch.Generator().manual_seed(0)
    fit_noise = torch.randn(32, 1, 16, 16, generator=generator) * SIGMA_MAX
    eval_noise = torch.randn(64, 1, 16, 16, generator=generator) * SIGMA_MAX
    body = []
    with torch.no_grad():
        reference = ks.sample_heun(model, eval_noise, karras_sigmas(60), disable=True)
        for dtype in (torch.float16, torch.bfloat16):
            def half_model(x, sigma, dtype=dtype, **extra_args):
                return model(x, sigma, **extra_args).to(dtype)

            for sampler in samplers:
                sigmas = karras_sigmas(calls)
                lam = distill(half_model, fit_noise, sigmas, sampler, teacher_factor=10)
                in_dtype = sample_with(rounded_in_dtype, half_model, eval_noise, sigmas, sampler, lam)
                in_float32 = sample_with(kept_in_float32, half_model, eval_noise, sigmas, sampler, lam)
                float32_model = sample(model, eval_noise, sigmas, sampler, lam, disable=True)
                base = sampler(half_model, eval_noise, sigmas, disable=True)
                body.append([str(dtype).removeprefix("torch."), sampler_name(sampler), str(lam.calls),
                             f"{rms(in_dtype, in_float32):.2e}", f"{rms(in_float32, float32_model):.2e}",
                             f"{rms(in_float32, base):.2e}", f"{rms(in_dtype, reference):.5f}",
                             f"{rms(in_float32, reference):.5f}", f"{rms(base, reference):.5f}"])
    header = ["model output", "sampler", "calls", "RMS corrected in dtype - in float32",
              "RMS half model - float32 model", "RMS D-ODE - base", "RMSE to ref (in dtype)",
              "RMSE to ref (float32)", "RMSE to ref (base)"]
    note = "64 held-out latents (1, 16, 16) of the demo model; final states in [-1, 1] data units."
    return markdown_table(header, body) + "\n\n" + note


def summary(rows: list[dict]) -> str:
    """One line for bench.py's summary."""
    at_target = [row for row in rows if row["steps"] == DIRECT_TARGET_STEPS] or rows
    steps = "/".join(sorted({str(row["steps"]) for row in at_target}))
    return (f"sample() overhead: implied <= {max(row['implied'] for row in rows):.4f} (target {IMPLIED_TARGET}), "
            f"direct median ratio <= {max(row['ratio'] for row in at_target):.4f} at {steps} steps (target "
            f"{DIRECT_TARGET} at {DIRECT_TARGET_STEPS}); "
            f"within target in {sum(map(meets_targets, rows))}/{len(rows)} rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 steps, 3 pairs: a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    parser.add_argument("--half", action="store_true",
                        help="instead: float16/bfloat16 correction vs float32 on the embedded demo model")
    args = parser.parse_args(argv)
    if args.half:
        print(f"## Correction in the model's half dtype vs in float32\n\n{half_precision_section()}")
        return 0
    table, rows = overhead_section(args.quick, args.threads)
    print(f"## Wall time of sample() vs the base sampler\n\n{table}\n\n{summary(rows)}")
    return 0 if all(map(meets_targets, rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
