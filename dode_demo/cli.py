"""``python -m dode_demo [flags]`` (``bash run.sh demo``): distill λ on the embedded demo model and write a report.

This is a user-facing command, so it writes its results to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

from dode_core.rules import AUTO, DEFAULT_TEACHER_FACTOR, HISTORY_CHOICES, MIN_BATCH, MIN_TEACHER_FACTOR, parse_history

DEFAULT_SAMPLERS = "euler,dpmpp_2m"
DEFAULT_BUDGETS = "4,6,8"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_demo_command(args)


def build_parser() -> argparse.ArgumentParser:
    demo = argparse.ArgumentParser(prog="python -m dode_demo", description="Distill λ on the embedded demo model and "
                                   "write a report (CPU, ~1 min).")
    demo.add_argument("--samplers", type=_sampler_list, default=DEFAULT_SAMPLERS,
                      help=f"comma-separated base samplers (default {DEFAULT_SAMPLERS}; any deterministic k-diffusion "
                           "sampler: heun, lms, dpm_2, ...)")
    demo.add_argument("--nfe", type=_int_list, default=DEFAULT_BUDGETS,
                      help=f"comma-separated model-call budgets (default {DEFAULT_BUDGETS})")
    demo.add_argument("--batch", type=_int_at_least(MIN_BATCH), default=32,
                      help="latents in the fit batch (default 32)")
    demo.add_argument("--eval-batch", type=_int_at_least(2), default=64,
                      help="held-out latents for the table (default 64)")
    demo.add_argument("--teacher-factor", type=_int_at_least(MIN_TEACHER_FACTOR), default=DEFAULT_TEACHER_FACTOR,
                      help=f"teacher sub-steps per student interval (default {DEFAULT_TEACHER_FACTOR})")
    demo.add_argument("--history", type=_history, default=AUTO,
                      help=f"terms per call: {', '.join(HISTORY_CHOICES)} (default {AUTO})")
    demo.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    demo.add_argument("--out", default="report", help="report folder (default ./report)")
    return demo


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 2 or v > 100 for v in values):
        raise argparse.ArgumentTypeError(f"expected model-call budgets from 2 to 100, got {text!r}")
    return values


def _sampler_list(text: str) -> list[str]:
    from .job import fittable_samplers

    names = [part.strip() for part in text.split(",") if part.strip()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # k-diffusion 0.1.1 imports the deprecated pkg_resources
            import k_diffusion.sampling as k_sampling
    except ImportError:  # run_demo_command says how to install it
        return names
    known = fittable_samplers(k_sampling)
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        what = f"unknown sampler(s) {', '.join(unknown)}" if unknown else "no sampler given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(known)} (the deterministic samplers of "
                                         "k-diffusion, read at run time)")
    return names


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _history(text: str):
    if text not in HISTORY_CHOICES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(HISTORY_CHOICES)}, got {text!r}")
    return parse_history(text)


class _ProgressBar:
    """A one-line progress bar on stderr: ``label [#####.....] done/total``."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width

    def __call__(self, label: str, done: int, total: int) -> None:
        if done < total and not self.stream.isatty():
            return  # a log file gets the finished bar only
        filled = self.width * done // total
        self.stream.write(f"\r{label:<22} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def run_demo_command(args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-diffusion 0.1.1 imports the deprecated pkg_resources
        import k_diffusion.sampling as k_sampling

    from .figures import image_grid, lambda_plot
    from .job import REFERENCE_SAMPLER, REFERENCE_STEPS, markdown_table, run_demo

    samplers = [getattr(k_sampling, f"sample_{name}") for name in args.samplers]
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    skipped: list[tuple[str, str]] = []
    rows = run_demo(samplers, args.nfe, batch=args.batch, eval_batch=args.eval_batch,
                    teacher_factor=args.teacher_factor, history=args.history, seed=args.seed, out_dir=args.out,
                    progress=_ProgressBar(), skipped=skipped)
    table = markdown_table(rows, f"{REFERENCE_SAMPLER} {REFERENCE_STEPS}-step")
    if skipped:
        table += "\n\nNo λ delivered (no row above):\n" + "\n".join(f"- {label}: {why}" for label, why in skipped)
    grid_path, plot_path = os.path.join(args.out, "grid.png"), os.path.join(args.out, "lambdas.png")
    if rows:  # every fit can be refused or unproven; the table then says why
        image_grid(rows, grid_path)
        lambda_plot(rows, plot_path)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as handle:
        handle.write("# D-ODE demo report\n\n")
        handle.write(f"Fit batch {args.batch}, held-out batch {args.eval_batch}, teacher factor "
                     f"{args.teacher_factor}, history {args.history}, seed {args.seed}.\n\n")
        handle.write(table + "\n\n![grid](grid.png)\n\n![λ per call](lambdas.png)\n")
    print(table)
    print(f"\nReport written to {os.path.abspath(args.out)} (report.md, grid.png, lambdas.png, lambdas/) "
          f"in {time.perf_counter() - start:.0f} s.")
    return 0
