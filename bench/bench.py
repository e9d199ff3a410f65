#!/usr/bin/env python
"""Benchmark of dode_core, all numbers measured in one run.

1. Accuracy: held-out RMSE to a 40x teacher, base sampler vs D-ODE (history 1, 2, auto), on the exact
   denoiser of a kernel density estimate of scikit-learn's digits (float64).
2. Overhead: wall time of ``dode_core.sample`` over the base sampler on a conv-net denoiser that costs
   at least 20 ms per call on this CPU (float32).
3. Fit cost: the fit's own time as a fraction of model time, and its peak extra memory (bench/fit_cost.py).

    python bench/bench.py [--quick] [--out report.md]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # raised by k_diffusion's clip import

import torch  # noqa: E402
from k_diffusion import sampling as ks  # noqa: E402

from dode_core import NoGainError, distill, sample  # noqa: E402
from dode_core.blackbox import probe_call_sigmas, sampler_name  # noqa: E402
from dode_core.teacher import teacher_sigmas  # noqa: E402
from models import KDEDenoiser, digits_data  # noqa: E402  (tests/models.py)

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
REFERENCE_FACTOR = 40
FIT_TEACHER_FACTOR = 10
ACCURACY_SAMPLERS = (ks.sample_euler, ks.sample_dpmpp_2m, ks.sample_heun, ks.sample_lms)
TIMING_SAMPLERS = (ks.sample_euler, ks.sample_dpmpp_2m)
HISTORIES = (1, 2, "auto")
WALL_RATIO_TARGET = 1.02
FREE_REPEATS, FREE_BUDGET_S = 200, 4.0  # runs on the free model, to time D-ODE's own cost


@dataclass(frozen=True)
class Config:
    """Problem sizes; ``quick`` is a smoke run."""

    fit_batch: int
    heldout_batch: int
    nfes: tuple[int, ...]
    timing_steps: int
    timing_repeats: int
    min_call_ms: float
    count_batch: int
    count_nfe: int


FULL = Config(fit_batch=128, heldout_batch=256, nfes=(4, 6, 10), timing_steps=10, timing_repeats=15,
              min_call_ms=20.0, count_batch=16, count_nfe=10)
QUICK = Config(fit_batch=32, heldout_batch=64, nfes=(4, 6), timing_steps=10, timing_repeats=5,
               min_call_ms=20.0, count_batch=8, count_nfe=6)


# ---------------------------------------------------------------------------------------------- helpers


def karras(steps: int, dtype=torch.float64) -> torch.Tensor:
    """The Karras schedule over ``steps`` steps, ending at 0."""
    return ks.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX).to(dtype)


def steps_for(sampler, nfe: int) -> int:
    """Steps that give about ``nfe`` model calls (Heun: 2 per step, 1 for the last Euler step)."""
    return (nfe + 1) // 2 if sampler is ks.sample_heun else nfe


def reference_run(model, x, sigmas, sampler, factor: int = REFERENCE_FACTOR) -> torch.Tensor:
    """The same sampler over a ``factor``-times finer grid that holds every student call sigma."""
    call_sigmas, _ = probe_call_sigmas(model, x, sigmas, sampler)
    grid, _ = teacher_sigmas(sigmas.tolist(), call_sigmas, factor)
    return sampler(model, x.clone(), grid.to(sigmas.dtype), disable=True)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square difference."""
    return math.sqrt(float(((a.double() - b.double()) ** 2).mean()))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table with right-aligned columns after the first."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- accuracy


def start_latents(fit: int, heldout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit and held-out start latents (·, 1, 8, 8) at sigma 80, drawn in that order from seed 0."""
    generator = torch.Generator().manual_seed(0)
    x_fit = torch.randn((fit, 1, 8, 8), generator=generator, dtype=torch.float64) * SIGMA_MAX
    x_heldout = torch.randn((heldout, 1, 8, 8), generator=generator, dtype=torch.float64) * SIGMA_MAX
    return x_fit, x_heldout


def accuracy_row(model, x_fit, x_heldout, sampler, nfe: int) -> dict:
    """Base and D-ODE held-out RMSE to the 40x reference for one sampler at one NFE."""
    sigmas = karras(steps_for(sampler, nfe))
    calls = len(probe_call_sigmas(model, x_heldout, sigmas, sampler)[0])
    reference = reference_run(model, x_heldout, sigmas, sampler)
    base = rmse(sampler(model, x_heldout.clone(), sigmas, disable=True), reference)
    row = {"sampler": sampler_name(sampler), "steps": len(sigmas) - 1, "calls": calls, "base": base}
    for history in HISTORIES:
        try:
            lam = distill(model, x_fit, sigmas, sampler, teacher_factor=FIT_TEACHER_FACTOR, history=history)
        except NoGainError:  # the fit's own held-out proof failed: no λ, the user keeps the base sampler
            row[history] = base
            row.setdefault("no_gain", []).append(str(history))
            continue
        out = sample(model, x_heldout.clone(), sigmas, sampler, lam, disable=True)
        row[history] = rmse(out, reference)
        if history == "auto":
            row["auto_terms"] = "".join(str(m) for m in json.loads(lam.metadata["history_per_call"]))
    return row


def accuracy_section(config: Config) -> tuple[str, list[dict]]:
    """The accuracy table over all samplers and NFEs."""
    model = KDEDenoiser(digits_data(torch.float64), bandwidth=0.3)
    x_fit, x_heldout = start_latents(config.fit_batch, config.heldout_batch)
    rows = [accuracy_row(model, x_fit, x_heldout, sampler, nfe) for sampler in ACCURACY_SAMPLERS for nfe in config.nfes]
    header = ["sampler", "steps", "model calls", "base RMSE"]
    header += [f"D-ODE h={h} RMSE (ratio)" for h in HISTORIES] + ["auto terms per call"]
    body = []
    for row in rows:
        cells = [row["sampler"], str(row["steps"]), str(row["calls"]), f"{row['base']:.4g}"]
        cells += [f"{row[h]:.4g} ({row[h] / row['base']:.3f})" for h in HISTORIES]
        no_gain = f" (no gain proved, refused: h={', '.join(row['no_gain'])})" if row.get("no_gain") else ""
        body.append(cells + [row.get("auto_terms", "-") + no_gain])
    return markdown_table(header, body), rows


# ----------------------------------------------------------------------------------------------- timing


class ConvDenoiser:
    """A k-diffusion-style denoiser over a random conv net: ``D(x, sigma) = x - net(c_in x) * sigma``."""

    def __init__(self, depth: int, channels: int = 64, latent_channels: int = 4):
        layers = [torch.nn.Conv2d(latent_channels, channels, 3, padding=1)]
        for _ in range(depth):
            layers += [torch.nn.SiLU(), torch.nn.Conv2d(channels, channels, 3, padding=1)]
        layers += [torch.nn.SiLU(), torch.nn.Conv2d(channels, latent_channels, 3, padding=1)]
        self.net = torch.nn.Sequential(*layers).eval()
        self.depth = depth

    @torch.no_grad()
    def __call__(self, x, sigma, **extra_args):
        sigma = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return x - self.net(x / (1 + sigma**2).sqrt()) * sigma


def wall_seconds(fn) -> float:
    """Wall time of one ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs."""
    return statistics.median(wall_seconds(fn) for _ in range(repeats))


def timing_latent(batch: int = 4) -> torch.Tensor:
    """A float32 start latent (batch, 4, 64, 64) at sigma 80."""
    return torch.randn((batch, 4, 64, 64), generator=torch.Generator().manual_seed(1)) * SIGMA_MAX


def build_timed_model(min_call_ms: float) -> tuple[ConvDenoiser, float]:
    """A conv denoiser, doubled in depth until one call costs at least ``min_call_ms``; returns (model, ms)."""
    torch.manual_seed(0)
    x, sigma = timing_latent(), torch.full((4,), SIGMA_MAX)
    depth = 1
    while True:
        model = ConvDenoiser(depth)
        call = functools.partial(model, x, sigma)
        call()  # warm-up
        call_ms = 1e3 * median_seconds(call, 3)
        if call_ms >= min_call_ms:
            return model, call_ms
        depth *= 2


def free_model(x, sigma, **extra_args):
    """A denoiser that costs next to nothing, to time what D-ODE adds around the model alone."""
    return x * 0.5


def interleaved_times(run_a, run_b, repeats: int, budget_s: float = math.inf) -> tuple[list[float], list[float]]:
    """Wall times of ``run_a`` and ``run_b``, alternated ``repeats`` times each (fewer once ``budget_s`` is
    spent) after one warm-up of each."""
    run_a(), run_b()
    times_a, times_b = [], []
    deadline = time.perf_counter() + budget_s
    while len(times_a) < repeats and (not times_a or time.perf_counter() < deadline):
        times_a.append(wall_seconds(run_a))
        times_b.append(wall_seconds(run_b))
    return times_a, times_b


def timing_row(model, x, sampler, steps: int, repeats: int) -> dict:
    """Base sampler vs ``sample`` with fitted λ: wall times (interleaved) and D-ODE's own cost.

    The own cost (the probe run, history terms, correction) is timed on ``free_model``: the fastest of many
    runs, so it stays readable when other processes take the CPU; ``implied`` is the ratio it gives here.
    """
    sigmas = karras(steps, torch.float32)
    lam = distill(model, x, sigmas, sampler, teacher_factor=2, history=1)

    def runner(denoiser, dode: bool):
        if dode:
            return lambda: sample(denoiser, x.clone(), sigmas, sampler, lam, disable=True)
        return lambda: sampler(denoiser, x.clone(), sigmas, disable=True)

    base_times, dode_times = interleaved_times(runner(model, False), runner(model, True), repeats)
    free_base, free_dode = interleaved_times(runner(free_model, False), runner(free_model, True), FREE_REPEATS,
                                             budget_s=FREE_BUDGET_S)
    _, probe_times = interleaved_times(lambda: None, lambda: probe_call_sigmas(free_model, x, sigmas, sampler),
                                       FREE_REPEATS, budget_s=FREE_BUDGET_S / 2)
    base, dode = statistics.median(base_times), statistics.median(dode_times)
    own, probe = max(min(free_dode) - min(free_base), 0.0), min(probe_times)
    return {"sampler": sampler_name(sampler), "calls": lam.calls, "base": base, "dode": dode, "ratio": dode / base,
            "min_ratio": min(dode_times) / min(base_times), "own": own, "probe": probe, "free_runs": len(free_base),
            "implied": (base + own) / base}


def timing_section(config: Config) -> tuple[str, list[dict]]:
    """The overhead table: per-call model time, base and D-ODE wall time, their ratio."""
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        model, call_ms = build_timed_model(config.min_call_ms)
        x = timing_latent()
        rows = [timing_row(model, x, sampler, config.timing_steps, config.timing_repeats)
                for sampler in TIMING_SAMPLERS]
    header = ["sampler", "model calls", "model ms/call", "base s", "D-ODE s", "ratio D-ODE/base", "ratio of minima",
              "D-ODE own ms/run (probe)", "implied ratio"]
    body = [[row["sampler"], str(row["calls"]), f"{call_ms:.1f}", f"{row['base']:.3f}", f"{row['dode']:.3f}",
             f"{row['ratio']:.4f}", f"{row['min_ratio']:.4f}", f"{1e3 * row['own']:.2f} ({1e3 * row['probe']:.2f})",
             f"{row['implied']:.4f}"] for row in rows]
    note = (f"conv net: depth {model.depth} x 64 channels, latent (4, 4, 64, 64) float32, "
            f"{torch.get_num_threads()} threads on {os.cpu_count()} CPUs, load average {load_before:.1f} -> "
            f"{os.getloadavg()[0]:.1f}; times are medians of {config.timing_repeats} interleaved runs; 'own' is "
            f"sample() minus the base sampler on a free model, 'probe' the schedule probe inside it (fastest of "
            f"{min(row['free_runs'] for row in rows)}+ runs each)")
    if max(load_before, os.getloadavg()[0]) > (os.cpu_count() or 1):
        note += ("\n\n**warning: the machine was busy (load above its CPU count); multi-threaded small tensor ops "
                 "then wait for descheduled threads, so these times, the free-model ones most, are inflated.**")
    return markdown_table(header, body) + "\n\n" + note, rows


# ------------------------------------------------------------------------------------------- call count


def cost_section(config: Config) -> tuple[str, list[dict]]:
    """The fit's own time and peak memory (bench/fit_cost.py), each sampler in its own process."""
    import fit_cost

    return fit_cost.section()


# ------------------------------------------------------------------------------------------------- main


def summary(accuracy: list[dict], timing: list[dict], costs: list[dict], seconds: float) -> str:
    """One line: how often D-ODE wins, the worst wall-time ratio, the fit's own cost."""
    ratios = {h: [row[h] / row["base"] for row in accuracy] for h in HISTORIES}
    wins = ", ".join(f"h={h} better in {sum(r < 1 for r in ratios[h])}/{len(accuracy)} "
                     f"(median ratio {statistics.median(ratios[h]):.3f})" for h in HISTORIES)
    worst = max(timing, key=lambda row: row["ratio"])
    implied = max(row["implied"] for row in timing)
    own = max(row["fraction"] for row in costs)
    return (f"summary: RMSE vs base: {wins}; worst wall ratio {worst['ratio']:.4f} ({worst['sampler']}, target <= "
            f"{WALL_RATIO_TARGET}; implied by D-ODE's own cost <= {implied:.4f}); "
            f"fit's own time <= {own:.3f} of model time at 50 ms a call (target <= 0.10); "
            f"total {seconds:.0f} s")


def timed(title: str, section, config: Config) -> tuple[str, list[dict]]:
    """Run and print one section with its wall time."""
    start = time.perf_counter()
    table, rows = section(config)
    text = f"## {title}\n\n{table}\n\n({time.perf_counter() - start:.1f} s)\n"
    print(text, flush=True)
    return text, rows


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the three sections, print and optionally save the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a smoke run (< 60 s)")
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL

    start = time.perf_counter()
    print(f"# dode_core benchmark ({'quick' if args.quick else 'full'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)\n", flush=True)
    title = (f"Held-out RMSE to a {REFERENCE_FACTOR}x teacher (KDE digits, bandwidth 0.3, float64; "
             f"fit {config.fit_batch}, held out {config.heldout_batch}, teacher_factor {FIT_TEACHER_FACTOR})")
    accuracy_text, accuracy = timed(title, accuracy_section, config)
    timing_text, timing = timed("Wall time of sample() vs the base sampler", timing_section, config)
    count_text, counts = timed("The fit's own time and memory (30 steps, batch 8 of 4x128x128)", cost_section, config)
    line = summary(accuracy, timing, counts, time.perf_counter() - start)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{accuracy_text}\n{timing_text}\n{count_text}\n{line}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
