#!/usr/bin/env python
"""Benchmark of dode_core, all numbers measured in one run.

1. Accuracy: held-out RMSE to a 40x teacher, base sampler vs D-ODE (history 1, 2, auto), on the exact
   denoiser of a kernel density estimate of scikit-learn's digits (float64).
2. Overhead: wall time of ``dode_core.sample`` over the base sampler (bench/overhead.py, also runnable alone).
3. Fit cost: the fit's own time as a fraction of model time, and its peak extra memory (bench/fit_cost.py).

    python bench/bench.py [--quick] [--out report.md]
"""

from __future__ import annotations

import argparse
import json
import math
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
from overhead import overhead_section  # noqa: E402  (bench/overhead.py)
from overhead import summary as overhead_summary  # noqa: E402

from dode_core import NoGainError, distill, sample  # noqa: E402
from dode_core.blackbox import probe_call_sigmas, sampler_name  # noqa: E402
from dode_core.teacher import teacher_sigmas  # noqa: E402
from models import KDEDenoiser, digits_data  # noqa: E402  (tests/models.py)

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
REFERENCE_FACTOR = 40
FIT_TEACHER_FACTOR = 10
ACCURACY_SAMPLERS = (ks.sample_euler, ks.sample_dpmpp_2m, ks.sample_heun, ks.sample_lms)
HISTORIES = (1, 2, "auto")


@dataclass(frozen=True)
class Config:
    """Problem sizes; ``quick`` is a smoke run."""

    fit_batch: int
    heldout_batch: int
    nfes: tuple[int, ...]


FULL = Config(fit_batch=128, heldout_batch=256, nfes=(4, 6, 10))
QUICK = Config(fit_batch=32, heldout_batch=64, nfes=(4, 6))


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
    own = max(row["fraction"] for row in costs)
    return (f"summary: RMSE vs base: {wins}; {overhead_summary(timing)}; "
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
    timing_text, timing = timed("Wall time of sample() vs the base sampler",
                                lambda config: overhead_section(quick=config is QUICK), config)
    count_text, counts = timed("The fit's own time and memory (30 steps, batch 8 of 4x128x128)", cost_section, config)
    import headline  # bench/headline.py: D-ODE with a fitted schedule vs the best base at n, 1.5n, 2n calls

    headline_text = headline.headline_report(headline.QUICK if args.quick else headline.FULL, ["demo", "kde"])
    line = summary(accuracy, timing, counts, time.perf_counter() - start)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{accuracy_text}\n{timing_text}\n{count_text}\n{headline_text}\n{line}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
