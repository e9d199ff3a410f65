#!/usr/bin/env python
"""The headline table: D-ODE at n model calls against the best base sampler at n, 1.5n and 2n calls.

For n = 4, 6, 8, on the embedded demo model (dode_core/demo, a learned 16x16 digits UNet) and on the benchmark's
data (the exact denoiser of a kernel density estimate of scikit-learn's digits, bandwidth 0.3):

- D-ODE (DPM++ 2M, history auto) on the user's schedule (Karras) and on a fitted schedule
  (``distill(..., fit_schedule=True)``), at n calls, with the wall time of the whole fit;
- the best deterministic base sampler of k-diffusion (euler, heun, dpmpp_2m, lms, dpm_2) over the Karras and
  exponential schedulers, at the most steps within n, 1.5n and 2n calls (best by RMSE and, separately, by FD).

Judged on held-out noise: RMSE to a converged run (Heun, 100 Karras steps, 199 calls) from the same noise, and the
Fréchet distance (top 16 principal components) to the distribution the model denoises: the training digits for
the demo model, samples of the kernel density itself (digits + 0.3 N(0, I)) for the KDE denoiser (an exact ODE
run of it ends on that density, not on the clean digits; blurrier, less accurate samplers score lower against
the clean digits).

    python bench/headline.py [--quick] [--models demo,kde] [--nfe 4,6,8]
"""

from __future__ import annotations

import argparse
import math
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

from dode_core import distill, sample  # noqa: E402
from dode_core.blackbox import probe_call_sigmas  # noqa: E402
from dode_core.demo.job import frechet_distance  # noqa: E402

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
BASE_SAMPLERS = ("euler", "heun", "dpmpp_2m", "lms", "dpm_2")
SCHEDULERS = {"karras": ks.get_sigmas_karras, "exponential": ks.get_sigmas_exponential}
DODE_SAMPLER, DODE_HISTORY = "dpmpp_2m", "auto"
REFERENCE_SAMPLER, REFERENCE_STEPS = "heun", 100
KDE_BANDWIDTH, KDE_COPIES = 0.3, 4


@dataclass(frozen=True)
class Config:
    """Problem sizes; ``quick`` is a smoke run."""

    fit_batch: int
    eval_batch: int
    nfes: tuple[int, ...]
    teacher_factor: int


FULL = Config(fit_batch=32, eval_batch=128, nfes=(4, 6, 8), teacher_factor=20)
QUICK = Config(fit_batch=16, eval_batch=32, nfes=(4,), teacher_factor=10)


@dataclass
class Problem:
    """A denoiser, its latent shape and dtype, and the samples its FD is measured against."""

    name: str
    model: object
    shape: tuple[int, ...]
    dtype: torch.dtype
    fd_target: torch.Tensor


def demo_problem() -> Problem:
    from dode_core.demo.model import demo_data, load_demo_model

    return Problem("demo model (16x16 digits UNet)", load_demo_model(), (1, 16, 16), torch.float32, demo_data())


def kde_problem() -> Problem:
    from models import KDEDenoiser, digits_data

    data = digits_data(torch.float64)
    generator = torch.Generator().manual_seed(7)
    copies = data.repeat(KDE_COPIES, 1, 1, 1)
    samples = copies + KDE_BANDWIDTH * torch.randn(copies.shape, generator=generator, dtype=torch.float64)
    return Problem(f"KDE digits (8x8, bandwidth {KDE_BANDWIDTH})", KDEDenoiser(data, bandwidth=KDE_BANDWIDTH),
                   (1, 8, 8), torch.float64, samples)


PROBLEMS = {"demo": demo_problem, "kde": kde_problem}


def sampler_fn(name: str):
    return getattr(ks, f"sample_{name}")


def schedule(scheduler: str, steps: int, dtype) -> torch.Tensor:
    return SCHEDULERS[scheduler](steps, SIGMA_MIN, SIGMA_MAX).to(dtype)


def steps_within(model, x, sampler, scheduler: str, calls: int) -> int | None:
    """The most steps whose run makes at most ``calls`` model calls (Heun and DPM-2 call twice a step)."""
    best = None
    for steps in range(1, calls + 1):
        if len(probe_call_sigmas(model, x, schedule(scheduler, steps, x.dtype), sampler)[0]) <= calls:
            best = steps
    return best


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.sqrt(float((a.double() - b.double()).square().mean()))


@dataclass
class Score:
    rmse: float
    fd: float
    label: str


def score(problem: Problem, out: torch.Tensor, reference: torch.Tensor, label: str) -> Score:
    return Score(rmse(out, reference), frechet_distance(out.float(), problem.fd_target.float()), label)


def best_base(problem, x, reference, calls: int, cache: dict) -> tuple[Score, Score]:
    """(best by RMSE, best by FD) over every base sampler and scheduler within ``calls`` model calls."""
    scores = []
    for name in BASE_SAMPLERS:
        sampler = sampler_fn(name)
        for scheduler in SCHEDULERS:
            steps = steps_within(problem.model, x, sampler, scheduler, calls)
            if steps is None:
                continue
            key = (name, scheduler, steps)
            if key not in cache:
                with torch.no_grad():
                    out = sampler(problem.model, x.clone(), schedule(scheduler, steps, x.dtype), disable=True)
                cache[key] = score(problem, out, reference, f"{name} {scheduler} {steps} steps")
            scores.append(cache[key])
    return min(scores, key=lambda s: s.rmse), min(scores, key=lambda s: s.fd)


def dode_score(problem, x_fit, x_eval, reference, n: int, fit_schedule: bool, teacher_factor: int):
    """D-ODE at n calls on Karras (user schedule) or on a fitted one: its score and the fit's wall time."""
    sampler = sampler_fn(DODE_SAMPLER)
    sigmas = schedule("karras", n, x_fit.dtype)
    start = time.perf_counter()
    try:
        lam = distill(problem.model, x_fit, sigmas, sampler, history=DODE_HISTORY, teacher_factor=teacher_factor,
                      fit_schedule=fit_schedule)
    except ValueError as error:  # NoGainError: the fit says it does not help, and delivers nothing
        return None, time.perf_counter() - start, str(error)
    seconds = time.perf_counter() - start
    used = lam.schedule.to(x_eval.dtype) if fit_schedule else sigmas
    with torch.no_grad():
        out = sample(problem.model, x_eval.clone(), used, sampler, lam, disable=True)
    label = "fitted " + ", ".join(f"{float(s):.3g}" for s in used[1:-1]) if fit_schedule else "karras"
    return score(problem, out, reference, label), seconds, ""


def headline(problem: Problem, config: Config) -> tuple[str, list[dict]]:
    """The table for one problem: D-ODE (user and fitted schedule) and the best base at n, 1.5n, 2n calls."""
    generator = torch.Generator().manual_seed(0)
    x_fit = torch.randn((config.fit_batch, *problem.shape), generator=generator, dtype=problem.dtype) * SIGMA_MAX
    x_eval = torch.randn((config.eval_batch, *problem.shape), generator=generator, dtype=problem.dtype) * SIGMA_MAX
    with torch.no_grad():
        reference = sampler_fn(REFERENCE_SAMPLER)(problem.model, x_eval.clone(),
                                                 schedule("karras", REFERENCE_STEPS, problem.dtype), disable=True)
    floor = score(problem, reference, reference, "reference")
    cache: dict = {}
    rows = []
    for n in config.nfes:
        row = {"calls": n}
        for key, fitted in (("user", False), ("fitted", True)):
            row[key], row[f"{key}_s"], row[f"{key}_error"] = dode_score(problem, x_fit, x_eval, reference, n, fitted,
                                                                        config.teacher_factor)
        for factor, label in ((1.0, "n"), (1.5, "1.5n"), (2.0, "2n")):
            row[label] = best_base(problem, x_eval, reference, math.ceil(factor * n), cache)
        rows.append(row)

    def cell(s: Score | None) -> str:
        return "no gain" if s is None else f"{s.rmse:.4f} / {s.fd:.3f}"

    lines = ["| n calls | D-ODE user schedule (Karras) | D-ODE fitted schedule | best base @n | best base @1.5n | "
             "best base @2n | fitted ≤ best @1.5n (RMSE, FD) | fit wall s (user / fitted) |",
             "|---:|---:|---:|---:|---:|---:|---|---:|"]
    for row in rows:
        fitted, at15 = row["fitted"], row["1.5n"]
        verdict = "—" if fitted is None else (f"{'yes' if fitted.rmse <= at15[0].rmse else 'no'} "
                                             f"({fitted.rmse / at15[0].rmse:.2f}x), "
                                             f"{'yes' if fitted.fd <= at15[1].fd else 'no'} "
                                             f"({fitted.fd / at15[1].fd:.2f}x)")
        bases = [f"{at[0].rmse:.4f} / {at[1].fd:.3f}" for at in (row["n"], row["1.5n"], row["2n"])]
        lines.append(f"| {row['calls']} | {cell(row['user'])} | {cell(fitted)} | {' | '.join(bases)} | {verdict} | "
                     f"{row['user_s']:.1f} / {row['fitted_s']:.1f} |")
    lines.append("")
    lines.append(f"Cells: held-out RMSE to the reference / FD (reference run itself: FD {floor.fd:.3f}). Best base "
                 "by RMSE, and by FD, each over samplers x schedulers:")
    for row in rows:
        parts = [f"@{label}: {row[label][0].label} (RMSE), {row[label][1].label} (FD)"
                 for label in ("n", "1.5n", "2n")]
        fitted = row["fitted"].label if row["fitted"] is not None else row["fitted_error"]
        lines.append(f"- n = {row['calls']}: {fitted}; " + "; ".join(parts))
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 4 only, small batches: a smoke run")
    parser.add_argument("--models", default="demo,kde", help="comma-separated: demo, kde")
    parser.add_argument("--nfe", help="comma-separated n (default 4,6,8; quick: 4)")
    parser.add_argument("--out", type=Path, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.nfe:
        config = Config(config.fit_batch, config.eval_batch, tuple(int(n) for n in args.nfe.split(",")),
                        config.teacher_factor)
    headline_report(config, [m.strip() for m in args.models.split(",")], args.out)
    return 0


def headline_report(config: Config, models: list[str], out: Path | None = None) -> str:
    """Run and print the headline table of every model; return the markdown (also written to ``out``)."""
    texts = []
    for key in models:
        start = time.perf_counter()
        problem = PROBLEMS[key]()
        table, _ = headline(problem, config)
        texts.append(f"### Headline: {problem.name}\n\nD-ODE: {DODE_SAMPLER}, history {DODE_HISTORY}, fit on "
                     f"{config.fit_batch} latents, teacher factor {config.teacher_factor}; judged on "
                     f"{config.eval_batch} held-out latents.\n\n{table}\n\n({time.perf_counter() - start:.0f} s)\n")
        print(texts[-1], flush=True)
    text = "\n".join(texts)
    if out is not None:
        out.write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
