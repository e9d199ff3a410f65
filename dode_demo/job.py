"""The demo job: distill λ on the embedded digits model and write a report anyone can look at.

For each base sampler and model-call budget it fits λ on one batch of noise twice, on the Karras schedule and on a
schedule chosen by the fit (``fit_schedule=True``), then compares D-ODE on the schedule its λ belong to with the
base sampler on the Karras schedule (what the user runs without the plugin), on another (held-out) batch against a
fine reference run: RMSE to the reference, and a Fréchet distance of the generated digits to the training digits.
The report folder holds a PNG grid (reference | base | D-ODE), a PNG plot of λ and of the fit error per call, the
table as markdown, and the λ files.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field

import torch

from dode_core import NoGainError, SamplerRefusedError, distill, sample
from dode_core.blackbox import probe_call_sigmas, refusal_reason
from dode_core.file_rules import ModelIdentity, file_sha256
from dode_core.karras import karras

from .model import SIGMA_MAX, SIGMA_MIN, WEIGHTS_PATH, demo_data, load_demo_model

log = logging.getLogger(__name__)

REFERENCE_SAMPLER, REFERENCE_STEPS = "heun", 60
FD_COMPONENTS = 16
GRID_SAMPLES = 8
SCHEDULES = ("karras", "fitted")
MODEL_NAME = "dode demo digits16"


@dataclass
class Row:
    """One (sampler, budget) result."""

    sampler: str
    schedule: str  # the schedule D-ODE ran on: "karras" (the user's) or "fitted" (chosen by the fit)
    steps: int
    calls: int
    rmse_base: float  # the base sampler on the user's Karras schedule, on every row
    rmse_dode: float
    fd_base: float
    fd_dode: float
    lambda_file: str
    lambdas: list[list[float]]
    fit_rmse_before: list[float]
    fit_rmse_after: list[float]
    sigmas: list[float] = field(default_factory=list)
    images: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def fittable_samplers(module) -> dict[str, object]:
    """The samplers of ``module`` (k-diffusion's ``sampling``) that D-ODE can fit, by name, read at run time: every
    ``sample_*`` function for which refusal_reason finds nothing wrong (no hand-kept list to rot)."""
    functions = {name.removeprefix("sample_"): getattr(module, name) for name in sorted(dir(module))
                 if name.startswith("sample_") and callable(getattr(module, name))}
    return {name: fn for name, fn in functions.items() if refusal_reason(fn) is None}


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0):
    """The Karras et al. (2022) schedule, ``steps + 1`` sigmas ending at 0 (as k-diffusion's get_sigmas_karras)."""
    sigmas = karras(sigma_max, sigma_min, steps, rho)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def steps_within(model, x, sampler, calls: int) -> int:
    """The most steps whose run costs at most ``calls`` model calls (Heun and DPM-2 call twice a step)."""
    best = 0
    for steps in range(1, calls + 1):
        used = len(probe_call_sigmas(model, x, karras_sigmas(steps), sampler)[0])
        if used <= calls:
            best = steps
    if best < 2:
        raise ValueError(f"a budget of {calls} model calls is too small for this sampler; D-ODE needs 2 steps")
    return best


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def frechet_distance(samples: torch.Tensor, data: torch.Tensor, components: int = FD_COMPONENTS) -> float:
    """Fréchet distance between Gaussians fitted to ``samples`` and ``data`` in the top principal components of
    the data:  |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)."""
    data = data.reshape(len(data), -1).double()
    mean = data.mean(0)
    basis = torch.linalg.svd(data - mean, full_matrices=False).Vh[:components].T
    a, b = (samples.reshape(len(samples), -1).double() - mean) @ basis, (data - mean) @ basis
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def run_demo(samplers, budgets, *, batch: int, eval_batch: int, teacher_factor: int, history, seed: int,
             out_dir: str, progress=None, skipped: list | None = None) -> list[Row]:
    """Distill and evaluate every (sampler, budget, schedule); write the λ files to ``out_dir/lambdas``.

    samplers: k-diffusion sampler functions; budgets: model calls per run; progress(label, done, total);
    skipped: if given, gets ``(label, reason)`` for every fit that delivered no λ (refused, or no proven gain).
    """
    progress = progress or (lambda label, done, total: None)
    model = load_demo_model()
    generator = torch.Generator().manual_seed(seed)
    fit_noise = torch.randn(batch, 1, 16, 16, generator=generator) * SIGMA_MAX
    eval_noise = torch.randn(eval_batch, 1, 16, 16, generator=generator) * SIGMA_MAX
    data = demo_data()
    lambda_dir = os.path.join(out_dir, "lambdas")
    os.makedirs(lambda_dir, exist_ok=True)

    reference_sampler = _reference_sampler(samplers)
    with torch.no_grad():
        reference = reference_sampler(model, eval_noise, karras_sigmas(REFERENCE_STEPS), disable=True)
    rows = []
    for sampler in samplers:
        name = sampler.__name__.removeprefix("sample_")
        for budget in budgets:
            steps = steps_within(model, fit_noise, sampler, budget)
            for schedule in SCHEDULES:
                label = f"{name}, {budget} calls, {schedule}"
                try:
                    lam = distill(model, fit_noise, karras_sigmas(steps), sampler, teacher_factor=teacher_factor,
                                  history=history, fit_schedule=schedule == "fitted",
                                  callback=lambda done, total, label=label: progress(label, done, total))
                except (SamplerRefusedError, NoGainError) as error:  # DPM-2 with a fitted schedule; no gain
                    log.warning("%s: %s", label, error)
                    if skipped is not None:
                        skipped.append((label, str(error)))
                    continue
                if schedule == "fitted" and not lam.schedule_fitted:  # the fit kept Karras: that row exists
                    why = "no searched schedule beat D-ODE on the Karras schedule; the fit kept Karras"
                    log.info("%s: %s", label, why)
                    if skipped is not None:
                        skipped.append((label, why))
                    continue
                rows.append(_evaluate(model, lam, sampler, name, schedule, steps, eval_noise, reference, data,
                                      lambda_dir, seed))
                log.info("%s: RMSE %.4f -> %.4f", label, rows[-1].rmse_base, rows[-1].rmse_dode)
    return rows


def _evaluate(model, lam, sampler, name, schedule, steps, eval_noise, reference, data, lambda_dir, seed) -> Row:
    """Save the λ file and score, on the held-out noise, D-ODE on the schedule the λ belong to and the base sampler
    on the user's Karras schedule at the same steps (the baseline: what the user runs without the plugin)."""
    sigmas = lam.schedule.float()
    path = os.path.join(lambda_dir, f"demo-digits16_{name}_{steps}steps_{schedule}_h{lam.metadata['history_mode']}"
                                    ".safetensors")
    identity = ModelIdentity(checkpoint_sha256=file_sha256(WEIGHTS_PATH),
                             checkpoint_name=os.path.basename(WEIGHTS_PATH))
    lam.save(path, model=MODEL_NAME, prediction="edm", scheduler=schedule, seed=seed, cfg=1.0, **identity.fields())
    rmse_before, rmse_after = lam.fit_rmse()
    with torch.no_grad():
        base = sampler(model, eval_noise, karras_sigmas(steps), disable=True)
        dode = sample(model, eval_noise, sigmas, sampler, lam, disable=True)
    return Row(
        sampler=name, schedule=schedule, steps=steps, calls=lam.calls,
        rmse_base=rmse(base, reference), rmse_dode=rmse(dode, reference),
        fd_base=frechet_distance(base, data), fd_dode=frechet_distance(dode, data),
        lambda_file=path, lambdas=lam.lambdas.tolist(),
        fit_rmse_before=rmse_before, fit_rmse_after=rmse_after, sigmas=sigmas.tolist(),
        images={"reference": reference[:GRID_SAMPLES], "base": base[:GRID_SAMPLES], "D-ODE": dode[:GRID_SAMPLES]},
    )


def _reference_sampler(samplers):
    """k-diffusion's Heun, taken from the module the given samplers come from."""
    module = importlib.import_module(samplers[0].__module__)
    return getattr(module, f"sample_{REFERENCE_SAMPLER}")



def markdown_table(rows: list[Row], reference_label: str) -> str:
    """The report table: held-out RMSE to the reference and Fréchet distance to the training digits."""
    lines = [
        "| sampler | schedule | steps | model calls | RMSE base | RMSE D-ODE | D-ODE/base | FD base | FD D-ODE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.sampler} | {row.schedule} | {row.steps} | {row.calls} | {row.rmse_base:.4f} | "
                     f"{row.rmse_dode:.4f} | {row.rmse_dode / row.rmse_base:.3f} | {row.fd_base:.3f} | "
                     f"{row.fd_dode:.3f} |")
    lines.append("")
    lines.append(f"RMSE: held-out noise, to a {reference_label} reference run from the same noise. FD: Fréchet "
                 f"distance of the generated digits to the 1797 training digits, in their top {FD_COMPONENTS} "
                 "principal components (lower is better). Base: the base sampler on the Karras schedule (the "
                 "user's), on every row. Schedule: the one D-ODE ran on; karras is the user's, fitted was chosen "
                 "by the fit:")
    lines += [f"- {row.sampler}, {row.calls} calls: " + ", ".join(f"{s:.3g}" for s in row.sigmas)
              for row in rows if row.schedule == "fitted"]
    return "\n".join(lines)
