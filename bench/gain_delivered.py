#!/usr/bin/env python
"""Is a real gain delivered? The proof must not throw away what a plain fit measurably gains.

For every k-diffusion deterministic sampler x budget x history, on the embedded demo model and on the benchmark's
data (the exact denoiser of a kernel density estimate of scikit-learn's digits, bandwidth 0.3):

- plain:     λ fitted on the whole fit batch, every term of every call, no proof (what a fit without the proof
             would deliver);
- delivered: ``distill`` as it is: leave-one-out term choice and proof; NoGainError counts as no gain.

Both are judged on 256 fresh latents: RMSE to a converged run (DPM-Solver++(2M) on 400 Karras steps down to the
model's sigma_min) over the base sampler's on the same schedule. A plain gain of 5% or more must be delivered, at
least 90% of it (gain = 1 - D-ODE / base).

    python bench/gain_delivered.py [--models demo kde] [--calls 4 6 8] [--fit-batch 8]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402
from k_diffusion import sampling as ks  # noqa: E402

import dode_core.crossfit as crossfit  # noqa: E402
import dode_core.fit as fit  # noqa: E402
from dode_core import NoGainError, distill, sample  # noqa: E402
from dode_core.blackbox import probe_call_sigmas  # noqa: E402
from dode_core.teacher import sample_dpmpp_2m_teacher, teacher_sigmas  # noqa: E402

SAMPLERS = ("euler", "heun", "dpmpp_2m", "lms", "dpm_2")
MIN_GAIN, KEPT = 0.05, 0.9


def problem(name: str):
    """(model, latent shape, dtype, sigma_min, sigma_max)."""
    if name == "demo":
        from dode_demo import load_demo_model
        from dode_demo.model import SIGMA_MAX, SIGMA_MIN

        return load_demo_model(), (1, 16, 16), torch.float32, SIGMA_MIN, SIGMA_MAX
    from models import KDEDenoiser, digits_data

    return KDEDenoiser(digits_data(torch.float64), bandwidth=0.3), (1, 8, 8), torch.float64, 0.002, 80.0


def plain_fit_call(G, b, c, floor, history, max_terms):
    """Every available term (history auto: all three), fitted on the whole batch, no leave-one-out choice."""
    count = G.shape[-1] if history == "auto" else min(int(history), G.shape[-1])
    lambdas = torch.zeros(max_terms, dtype=torch.float64)
    if count:
        lambdas[:count] = crossfit.solve(G.sum(0)[:count, :count], b.sum(0)[:count], floor).float().double()
    per_latent = lambdas.expand(c.shape[0], -1).clone()
    return crossfit.CallFit(lambdas, per_latent, count, float(c.sum()), float(c.sum()))


def plain_distill(*args, **kwargs):
    """distill with every call fitted on every latent and delivered whatever the proof says."""
    originals = crossfit.fit_call, fit.proves_gain
    crossfit.fit_call, fit.proves_gain = plain_fit_call, lambda base, dode: True
    try:
        return distill(*args, **kwargs)
    finally:
        crossfit.fit_call, fit.proves_gain = originals


def steps_within(model, x, sampler, calls, sigma_min, sigma_max) -> int:
    return max(s for s in range(2, calls + 2) if len(probe_call_sigmas(
        model, x, ks.get_sigmas_karras(s, sigma_min, sigma_max), sampler)[0]) <= max(calls, 3))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["demo", "kde"])
    parser.add_argument("--calls", nargs="+", type=int, default=[4, 6, 8])
    parser.add_argument("--history", nargs="+", default=["1", "auto"])
    parser.add_argument("--fit-batch", type=int, default=8)
    parser.add_argument("--test-batch", type=int, default=256)
    parser.add_argument("--reference-factor", type=int, default=100, help="sub-steps per step of the reference run")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = []
    for name in args.models:
        model, shape, dtype, sigma_min, sigma_max = problem(name)
        fit_noise = torch.randn(args.fit_batch, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        test_noise = torch.randn(args.test_batch, *shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        for sampler_name in SAMPLERS:
            sampler = getattr(ks, f"sample_{sampler_name}")
            for calls in args.calls:
                steps = steps_within(model, fit_noise, sampler, calls, sigma_min, sigma_max)
                sigmas = ks.get_sigmas_karras(steps, sigma_min, sigma_max).to(dtype)
                grid, _ = teacher_sigmas(sigmas.tolist(), sigmas.tolist()[:-1], args.reference_factor, sigma_min)
                reference = sample_dpmpp_2m_teacher(model, test_noise * sigma_max, grid.to(dtype))

                def rmse(final, reference=reference):
                    return math.sqrt(float((final.double() - reference.double()).square().mean()))

                base = rmse(sampler(model, test_noise * sigma_max, sigmas.clone(), disable=True))
                for history in args.history:
                    history_arg = history if history == "auto" else int(history)
                    row = {"model": name, "sampler": sampler_name, "steps": steps, "history": history, "base": base}
                    started = time.perf_counter()
                    kwargs = {"history": history_arg, "sigma_min": sigma_min}
                    lam = plain_distill(model, fit_noise * sigma_max, sigmas, sampler, **kwargs)
                    row["plain"] = rmse(sample(model, test_noise * sigma_max, sigmas, sampler, lam, disable=True))
                    try:
                        lam = distill(model, fit_noise * sigma_max, sigmas, sampler, **kwargs)
                    except NoGainError:
                        row["delivered"] = base
                        row["refused"] = True
                    else:
                        row["delivered"] = rmse(sample(model, test_noise * sigma_max, sigmas, sampler, lam,
                                                       disable=True))
                        row["claim"] = float(lam.metadata["heldout_rmse_dode"]) / float(
                            lam.metadata["heldout_rmse_base"])
                    row["plain_gain"] = 1 - row["plain"] / base
                    row["delivered_gain"] = 1 - row["delivered"] / base
                    row["seconds"] = round(time.perf_counter() - started, 1)
                    row["ok"] = row["plain_gain"] < MIN_GAIN or row["delivered_gain"] >= KEPT * row["plain_gain"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(summary(rows), file=sys.stderr)


def summary(rows) -> str:
    """The rows with a plain gain of MIN_GAIN or more, how many kept at least KEPT of it, and the misses."""
    real = [r for r in rows if r["plain_gain"] >= MIN_GAIN]
    kept = [r for r in real if r["ok"]]
    worse = [r for r in rows if r["delivered"] > r["base"] * (1 + 1e-9)]
    lines = [f"{len(rows)} fits; {len(real)} with a plain gain >= {MIN_GAIN:.0%}; {len(kept)} of them delivered with "
             f">= {KEPT:.0%} of it; {sum(1 for r in rows if r.get('refused'))} refused (no gain proved); "
             f"{len(worse)} delivered worse than the base"]
    for r in real:
        if not r["ok"]:
            refused = " (refused)" if r.get("refused") else ""
            lines.append(f"  missed: {r['model']} {r['sampler']} {r['steps']} steps h{r['history']}: plain gain "
                         f"{r['plain_gain']:.3f}, delivered {r['delivered_gain']:.3f}{refused}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
