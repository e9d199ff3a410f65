#!/usr/bin/env python
"""How far the schedule search's surrogate is from a real student run (dode_core/search.py).

One dense teacher run of the fit batch; then, for the search's start schedules and random moves of them on the
dense grid, the final error of the corrected sampler (λ refit, each latent with λ fitted on the others) on the
surrogate and in a real run of the model. Printed: both errors per schedule, their rank correlation (what the
search needs) and the ratio real / surrogate (what it cannot promise).

    python bench/surrogate.py [--models kde demo] [--calls 6] [--schedules 24]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402
from gain_delivered import problem  # noqa: E402
from k_diffusion import sampling as ks  # noqa: E402

from dode_core.blackbox import measure_sampler  # noqa: E402
from dode_core.crossfit import CrossFitRun, final_errors  # noqa: E402
from dode_core.schedule import dense_grid, run_dense_teacher  # noqa: E402
from dode_core.search import Surrogate, start_paths, surrogate_error  # noqa: E402
from dode_core.teacher import sample_dpmpp_2m_teacher  # noqa: E402


def real_error(model, run, x, sigmas, sampler, name, history) -> float:
    """The corrected sampler's final error in a real run of the model (λ refit live, leave one out)."""
    sampler_map = measure_sampler(model, x, sigmas, sampler)
    targets = [run.state_at(s) for s in sampler_map.call_sigmas[1:]] + [run.states[-1]]
    live = CrossFitRun(model, name, sampler_map, targets, history, 3 if history == "auto" else history)
    final = sampler(live, x.clone(), sigmas.clone(), disable=True)
    return float(final_errors(final, run.states[-1]).mean())


def spearman(a, b) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, index in enumerate(order):
            out[index] = float(rank)
        return out

    ra, rb = ranks(a), ranks(b)
    mean = (len(a) - 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb, strict=True))
    var = sum((x - mean) ** 2 for x in ra)
    return cov / var


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["kde", "demo"])
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--schedules", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--history", default="auto")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    history = args.history if args.history == "auto" else int(args.history)
    sampler = getattr(ks, f"sample_{args.sampler}")
    for name in args.models:
        model, shape, dtype, sigma_min, sigma_max = problem(name)
        x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype) * sigma_max
        grid = dense_grid(sigma_max, sigma_min, 10 * args.calls).to(dtype)
        run = run_dense_teacher(model, x, grid, sample_dpmpp_2m_teacher)
        surrogate = Surrogate(model, run, slice(None))
        no_user = [0] * (args.calls + 1)  # no user schedule here: start_paths leaves an invalid path out
        starts = list(start_paths(run, args.calls, no_user, slice(None)).values())
        rng = random.Random(0)
        paths = list(starts)
        while len(paths) < args.schedules:
            path = list(rng.choice(starts))
            k = rng.randrange(1, len(path) - 1)
            path[k] = min(max(path[k] + rng.choice((-6, -3, 3, 6)), path[k - 1] + 1), path[k + 1] - 1)
            if path not in paths:
                paths.append(path)
        fake, real = [], []
        for path in paths:
            sigmas = run.grid[path].to(dtype)
            fake.append(surrogate_error(surrogate, x, sigmas, sampler, args.sampler, history, 3, {}, {}))
            real.append(real_error(model, run, x, sigmas, sampler, args.sampler, history))
            print(f"{name} {[round(float(s), 3) for s in sigmas[1:-1]]}: surrogate RMSE {math.sqrt(fake[-1]):.4f}, "
                  f"real {math.sqrt(real[-1]):.4f}", flush=True)
        ratios = sorted(math.sqrt(r / f) for f, r in zip(fake, real, strict=True) if f > 0)
        best_real = min(range(len(real)), key=real.__getitem__)
        best_fake = min(range(len(fake)), key=fake.__getitem__)
        print(f"{name}: {len(paths)} schedules; rank correlation surrogate vs real {spearman(fake, real):.2f}; "
              f"real / surrogate RMSE median {ratios[len(ratios) // 2]:.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f}); "
              f"the surrogate's best is {math.sqrt(real[best_fake] / real[best_real]):.2f}x the real best's RMSE\n",
              flush=True)


if __name__ == "__main__":
    main()
