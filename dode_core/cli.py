"""Command line: ``python -m dode_core inspect FILE...`` validates λ files and prints what they hold.

This is a user-facing command, so it writes its results to stdout. (The demo job is ``python -m dode_demo``.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from .file_format import LambdaFileError
from .lambdas_file import load_lambdas
from .rules import proof_lines
from .text import format_sigmas, printable


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dode_core", description="D-ODE: distilled few-step samplers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{inspect}")
    inspect = commands.add_parser("inspect", help="validate λ files and print what they hold")
    inspect.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_inspect_command(args)


def run_inspect_command(args) -> int:
    """Every line starts with what this tool writes (VALID, INVALID, indentation); every string from a file or a
    file name goes through ``printable``, so a file cannot move the cursor, rewrite a line or forge a verdict."""
    status = 0
    for path in args.files:
        try:
            lam = load_lambdas(path)
        except LambdaFileError as error:
            print(f"INVALID {printable(str(error))}")
            status = 1
            continue
        print(describe(path, lam))
    return status


def describe(path: str, lam) -> str:
    """A λ file, readable: metadata, λ per call with its sigma, the schedule. Untrusted text is escaped."""
    lines = [f"VALID {printable(os.fsdecode(path))}"]
    proof = proof_lines(lam)
    if not proof:
        lines.append("  proof: none (a file from before fits proved themselves); its gain is unknown")
    lines += [f"  {line}" for line in proof]
    lines.append("  metadata:")
    long_fields = {"call_sigmas", "schedule", "fit_rmse_before", "fit_rmse_after", "history_per_call"}
    for key in sorted(lam.metadata):
        if key not in long_fields:
            lines.append(f"    {printable(key)}: {printable(lam.metadata[key])}")
    lines.append(f"  λ per call ({lam.calls} calls x {lam.history} terms):")
    before, after = lam.fit_rmse()
    for k, sigma in enumerate(lam.call_sigmas):
        values = lam.lambdas[k].flatten().tolist()  # terms (x channels)
        fit = f"   fit RMSE {before[k]:.4g} -> {after[k]:.4g}" if before and after else ""
        lines.append(f"    call {k:2d}  sigma {sigma:10.4g}  λ {' '.join(f'{v:+.4f}' for v in values)}{fit}")
    if "schedule" in lam.metadata:
        lines.append(f"  schedule: {format_sigmas(json.loads(lam.metadata['schedule']))}")
    return "\n".join(lines)
