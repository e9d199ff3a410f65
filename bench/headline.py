#!/usr/bin/env python
"""The headline table: D-ODE at n model calls against the best the host offers at n, 1.5n and 2n calls.

For n = 4, 6, 8, 10, on the embedded demo model (dode_demo, a learned 16x16 digits UNet) and on the benchmark's
data (the exact denoiser of a kernel density estimate of scikit-learn's digits, bandwidth 0.3), both over the EDM
sigma range 0.002..80, with ComfyUI 0.3.75's own sampler functions, schedulers and AYS / GITS tables (imported from
its tree, found or fetched by tests/comfyui_host/harness.py, run in-process on the CPU):

- D-ODE (ComfyUI's dpmpp_2m, history auto) on the user's schedule (Karras), on a fitted schedule
  (``distill(..., fit_schedule=True)`` and ``fit_schedule="thorough"``), and on top of AYS and of GITS (their
  sigmas as the user's schedule), and on top of the best base pair at n (its sampler and schedule), at n calls,
  each with the fit's model calls and wall time;
- the base: every sampler ComfyUI lists (``comfy.samplers.KSampler.SAMPLERS``, read at run time) that
  ``dode_core.refusal_reason`` accepts as deterministic, over every scheduler ComfyUI offers
  (``comfy.samplers.SCHEDULER_NAMES``, with KSampler's own sigma rules) and over AYS (SD1 table) and GITS (coeff
  1.20) with their log sigmas mapped linearly from SD1's range (0.0292..14.61) onto the problem's (0.002..80), at
  the most steps within n, 1.5n and 2n calls; "best base @m" is the lowest RMSE (and, separately, the lowest FD)
  over all of these pairs (the bar of the project's rule "compare with the best"); "best sampler on the user's
  schedule @m" is the same over the samplers on Karras only (issue 17's own table's base). Peers reported on their
  own: AYS and GITS with their best sampler, gradient_estimation
  (a fixed-coefficient member of D-ODE's family) on its best schedule.

Judged on held-out noise: RMSE to a converged run (Heun, 100 Karras steps, 199 calls; its own error estimated
against 200 steps) from the same noise, and the
Fréchet distance (top 16 principal components) to the distribution the model denoises: the training digits for
the demo model, samples of the kernel density itself (digits + 0.3 N(0, I)) for the KDE denoiser (an exact ODE
run of it ends on that density, not on the clean digits; blurrier, less accurate samplers score lower against
the clean digits).

    python bench/headline.py [--quick] [--models demo,kde] [--nfe 4,6,8,10] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "comfyui_host")]
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # raised by k_diffusion's clip import

import torch  # noqa: E402
from k_diffusion import sampling as ks  # noqa: E402

from dode_core import distill, refusal_reason, sample  # noqa: E402
from dode_core.blackbox import probe_call_sigmas  # noqa: E402
from dode_demo.job import frechet_distance  # noqa: E402

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
DODE_SAMPLER, DODE_HISTORY, USER_SCHEDULER = "dpmpp_2m", "auto", "karras"
PEER_SAMPLER = "gradient_estimation"
AYS_MODEL_TYPE, GITS_COEFF = "SD1", 1.20  # the AYS node's SD1 table; the GITS node's default coefficient
REFERENCE_SAMPLER, REFERENCE_STEPS = "heun", 100
KDE_BANDWIDTH, KDE_COPIES = 0.3, 4
FACTORS = ((1.0, "n"), (1.5, "1.5n"), (2.0, "2n"))
METRICS = ("rmse", "fd", "fd_ode")  # the order of Grid.best's tuple
NAMES = {"rmse": "RMSE", "fd": "FD", "fd_ode": "FD-ODE"}
FITS = (("user", False), ("fitted", True), ("thorough", "thorough"), ("AYS", False), ("GITS", False),
        ("best", False))
FIT_LABELS = {"user": "dpmpp_2m on Karras (user schedule)", "fitted": "dpmpp_2m, fit_schedule=True",
              "thorough": 'dpmpp_2m, fit_schedule="thorough"', "AYS": "dpmpp_2m on AYS",
              "GITS": "dpmpp_2m on GITS", "best": "on the best base @n (its sampler and schedule)"}
# --quick: a smoke run over a few of the host's samplers and schedulers
QUICK_SAMPLERS = ("euler", "dpmpp_2m", "heun", "uni_pc", PEER_SAMPLER)
QUICK_SCHEDULERS = ("karras", "exponential", "AYS", "GITS")


@dataclass(frozen=True)
class Config:
    """Problem sizes; ``quick`` is a smoke run."""

    fit_batch: int
    eval_batch: int
    nfes: tuple[int, ...]
    teacher_factor: int
    reference_steps: int = REFERENCE_STEPS
    quick: bool = False


FULL = Config(fit_batch=32, eval_batch=128, nfes=(4, 6, 8, 10), teacher_factor=20)
QUICK = Config(fit_batch=8, eval_batch=16, nfes=(4,), teacher_factor=10, reference_steps=20, quick=True)


class Host:
    """ComfyUI 0.3.75 imported in-process (as ``main.py --cpu``): its samplers, schedulers, AYS and GITS."""

    def __init__(self):
        from harness import comfyui_dir

        sys.path.insert(0, comfyui_dir())
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # this machine has no GPU
        import comfy.model_sampling
        import comfy.samplers
        from comfy_extras import nodes_align_your_steps, nodes_gits

        self.samplers_module, self.ays, self.gits = comfy.samplers, nodes_align_your_steps, nodes_gits
        # ComfyUI's EDM model sampling over the problem's range: what its schedulers read (sigma_data: unused there)
        self.model_sampling = comfy.model_sampling.ModelSamplingContinuousEDM()
        self.model_sampling.set_parameters(SIGMA_MIN, SIGMA_MAX, 0.5)
        self.sampler_names = list(comfy.samplers.KSampler.SAMPLERS)
        self.scheduler_names = list(comfy.samplers.SCHEDULER_NAMES) + ["AYS", "GITS"]

    def sampler(self, name: str):
        return self.samplers_module.sampler_object(name).sampler_function

    def sigmas(self, scheduler: str, steps: int, sampler: str) -> torch.Tensor | None:
        """The sigmas the host gives ``sampler`` for ``steps`` steps of ``scheduler`` (KSampler's rules, e.g. the
        discarded penultimate sigma of dpm_2 and uni_pc), or AYS / GITS mapped onto the problem's range; None where
        the scheduler has no such schedule (GITS below 2 steps)."""
        if scheduler == "AYS":
            levels = self.ays.NOISE_LEVELS[AYS_MODEL_TYPE]
            return self._mapped(self.ays.AlignYourStepsScheduler.execute(AYS_MODEL_TYPE, steps, 1.0).result[0],
                                levels[-1], levels[0])
        if scheduler == "GITS":
            if steps < 2:
                return None
            levels = self.gits.NOISE_LEVELS[round(GITS_COEFF, 2)][0]
            return self._mapped(self.gits.GITSScheduler.execute(GITS_COEFF, steps, 1.0).result[0],
                                levels[-1], levels[0])
        patcher = HostModel(None, self.model_sampling).inner_model.model_patcher
        return self.samplers_module.KSampler(patcher, steps, "cpu", sampler=sampler, scheduler=scheduler).sigmas

    @staticmethod
    def _mapped(sigmas: torch.Tensor, low: float, high: float) -> torch.Tensor:
        """``sigmas`` (SD1's range ``low..high``, ending in 0) mapped linearly in log sigma onto 0.002..80."""
        out = sigmas.double().clone()
        nonzero = out > 0
        scale = math.log(SIGMA_MAX / SIGMA_MIN) / math.log(high / low)
        out[nonzero] = SIGMA_MIN * torch.exp((out[nonzero].log() - math.log(low)) * scale)
        return out


class HostModel:
    """A denoiser with the attributes ComfyUI's samplers read from the model they are given (as the sampler sweep's
    HostLike: ``inner_model.inner_model.model_sampling``, ``inner_model.model_patcher``); counts its calls."""

    def __init__(self, denoiser, model_sampling):
        from types import SimpleNamespace

        self.denoiser, self.calls = denoiser, 0
        patcher = SimpleNamespace(get_model_object=lambda name: model_sampling)
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=model_sampling),
                                           model_patcher=patcher)

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        return self.denoiser(x, sigma)


@dataclass
class Problem:
    """A denoiser, its latent shape and dtype, and the samples its FD is measured against."""

    name: str
    model: object
    shape: tuple[int, ...]
    dtype: torch.dtype
    fd_target: torch.Tensor


def demo_problem() -> Problem:
    from dode_demo.model import demo_data, load_demo_model

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


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.sqrt(float((a.double() - b.double()).square().mean()))


@dataclass
class Score:
    rmse: float
    fd: float
    label: str
    calls: int = 0
    key: tuple = ()  # (sampler, scheduler, steps) of a base run
    fd_ode: float = math.nan  # to the converged run's own samples (same noise): no sampling noise of the data


def score(problem: Problem, out: torch.Tensor, reference: torch.Tensor, label: str, calls: int = 0) -> Score:
    return Score(rmse(out, reference), frechet_distance(out.float(), problem.fd_target.float()), label, calls,
                 fd_ode=frechet_distance(out.float(), reference.float()))


@dataclass
class Grid:
    """Every base run (sampler x scheduler x steps) on the held-out noise, run once and cached."""

    host: Host
    problem: Problem
    model: HostModel
    noise: torch.Tensor
    reference: torch.Tensor
    samplers: list[str]
    schedulers: list[str]
    float32: set = field(default_factory=set)  # samplers that cannot take the problem's dtype
    calls: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)

    def call_count(self, sampler: str, scheduler: str, steps: int) -> int | None:
        key = (sampler, scheduler, steps)
        if key not in self.calls:
            sigmas = self.host.sigmas(scheduler, steps, sampler)
            self.calls[key] = None if sigmas is None else len(probe_call_sigmas(
                self.model, self.noise[:1].float(), sigmas.float(), self.host.sampler(sampler))[0])
        return self.calls[key]

    def steps_within(self, sampler: str, scheduler: str, calls: int) -> int | None:
        """The most steps whose run makes at most ``calls`` model calls (Heun and DPM-2 call twice a step)."""
        fits = [s for s in range(1, calls + 1) if (self.call_count(sampler, scheduler, s) or calls + 1) <= calls]
        return max(fits, default=None)

    def run(self, sampler: str, scheduler: str, steps: int) -> Score:
        key = (sampler, scheduler, steps)
        if key not in self.scores:
            sigmas = self.host.sigmas(scheduler, steps, sampler)
            function = self.host.sampler(sampler)
            dtype = torch.float32 if sampler in self.float32 else self.problem.dtype
            with torch.no_grad():
                try:
                    out = function(self.model, self.noise.to(dtype) * sigmas[0].to(dtype), sigmas.to(dtype),
                                   extra_args={}, disable=True)
                except RuntimeError:  # ComfyUI's UniPC cannot take float64: run it as ComfyUI does, in float32
                    if dtype == torch.float32:
                        raise
                    self.float32.add(sampler)
                    return self.run(sampler, scheduler, steps)
            self.scores[key] = score(self.problem, out, self.reference, f"{sampler} {scheduler} {steps} st",
                                     self.call_count(sampler, scheduler, steps))
            self.scores[key].key = key
        return self.scores[key]

    def best(self, calls: int, samplers=None, schedulers=None) -> tuple[Score, Score, Score] | None:
        """(best by RMSE, best by FD, best by FD to the converged run) over the given samplers x schedulers within
        ``calls`` model calls."""
        scores = []
        for sampler in samplers or self.samplers:
            for scheduler in schedulers or self.schedulers:
                steps = self.steps_within(sampler, scheduler, calls)
                if steps is not None:
                    scores.append(self.run(sampler, scheduler, steps))
        if not scores:
            return None
        return tuple(min(scores, key=lambda s, metric=metric: getattr(s, metric)) for metric in METRICS)


@dataclass
class Fit:
    """One D-ODE row: its score on the held-out noise (None: the fit delivered nothing), cost and schedule."""

    score: Score | None
    calls: int
    seconds: float
    schedule: str
    error: str = ""


def dode_fit(grid: Grid, x_fit: torch.Tensor, n: int, fit_schedule, teacher_factor: int, sampler: str = DODE_SAMPLER,
             scheduler: str = USER_SCHEDULER, steps: int | None = None) -> Fit:
    """D-ODE (history auto) with ``sampler`` on ``steps`` (default n) steps of ``scheduler``, fitted on ``x_fit``,
    judged on the grid's held-out noise."""
    problem, model = grid.problem, grid.model
    dtype = torch.float32 if sampler in grid.float32 else problem.dtype
    function = grid.host.sampler(sampler)
    sigmas = grid.host.sigmas(scheduler, steps or n, sampler).to(dtype)
    model.calls = 0
    start = time.perf_counter()
    try:
        lam = distill(model, x_fit.to(dtype) * sigmas[0], sigmas, function, history=DODE_HISTORY,
                      teacher_factor=teacher_factor, fit_schedule=fit_schedule, sigma_min=SIGMA_MIN)
    except ValueError as error:  # NoGainError / TeacherNotConvergedError / refused: the fit delivers nothing
        return Fit(None, model.calls, time.perf_counter() - start, scheduler, f"{type(error).__name__}: {error}")
    seconds, calls = time.perf_counter() - start, int(lam.metadata.get("model_calls", model.calls))
    used, label = sigmas, scheduler
    if fit_schedule:
        used = lam.schedule.to(dtype)
        label = ("fitted " + ", ".join(f"{float(s):.3g}" for s in used[1:-1])
                 if lam.metadata.get("schedule_source") == "fitted" else f"user's kept ({scheduler})")
    with torch.no_grad():
        out = sample(model, grid.noise.to(dtype) * used[0], used, function, lam, disable=True)
    return Fit(score(problem, out, grid.reference, label, lam.calls), calls, seconds, label)


def ratio_cell(mine: Score | None, other: Score | None, metric: str) -> str:
    if mine is None or other is None:
        return "—"
    a, b = getattr(mine, metric), getattr(other, metric)
    return f"{'yes' if a <= b else 'no'} ({a / b:.2f}x)"


def cell(s: Score | None) -> str:
    return "no gain" if s is None else f"{s.rmse:.4f} / {s.fd:.3f} / {s.fd_ode:.4f}"


def best_cell(best: tuple[Score, Score, Score] | None) -> str:
    return "—" if best is None else f"{best[0].rmse:.4f} / {best[1].fd:.3f} / {best[2].fd_ode:.4f}"


def best_labelled(best: tuple[Score, Score, Score] | None) -> str:
    if best is None:
        return "—"
    by_rmse, by_fd, by_ode = best
    if by_rmse is by_fd is by_ode:
        return f"{by_rmse.rmse:.4f} / {by_fd.fd:.3f} / {by_ode.fd_ode:.4f} ({by_rmse.label})"
    return (f"{by_rmse.rmse:.4f} ({by_rmse.label}) / {by_fd.fd:.3f} ({by_fd.label}) / {by_ode.fd_ode:.4f} "
            f"({by_ode.label})")


def headline(problem: Problem, host: Host, config: Config) -> tuple[str, list[dict]]:
    """The tables for one problem: every D-ODE row, the peers and the best base at n, 1.5n, 2n calls."""
    generator = torch.Generator().manual_seed(0)
    x_fit = torch.randn((config.fit_batch, *problem.shape), generator=generator, dtype=problem.dtype)
    noise = torch.randn((config.eval_batch, *problem.shape), generator=generator, dtype=problem.dtype)
    model = HostModel(problem.model, host.model_sampling)
    with torch.no_grad():
        reference, finer = (getattr(ks, f"sample_{REFERENCE_SAMPLER}")(
            problem.model, noise * SIGMA_MAX, ks.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX).to(problem.dtype),
            disable=True) for steps in (config.reference_steps, 2 * config.reference_steps))
    accepted, refused = [], []
    functions: dict = {}  # one entry per sampler function: ComfyUI's ddim is its euler function
    for name in host.sampler_names:
        if config.quick and name not in QUICK_SAMPLERS:
            continue
        function = host.sampler(name)
        if refusal_reason(function, model=model) is not None:
            refused.append(name)
        elif function in functions.values():
            refused.append(f"{name} (= {next(k for k, f in functions.items() if f is function)})")
        else:
            accepted.append(name)
            functions[name] = function
    schedulers = [s for s in host.scheduler_names if not config.quick or s in QUICK_SCHEDULERS]
    grid = Grid(host, problem, model, noise, reference, accepted, schedulers)
    floor = score(problem, reference, reference, "reference")
    floor.rmse = rmse(reference, finer)  # the reference's own error, estimated against twice its steps
    rows = []
    for n in config.nfes:
        row: dict = {"calls": n, "fits": {}}
        row["base_user"] = grid.run(DODE_SAMPLER, USER_SCHEDULER, n)
        for factor, label in FACTORS:
            m = math.ceil(factor * n)
            row[label] = grid.best(m)
            row[f"AYS {label}"] = grid.best(m, schedulers=["AYS"])
            row[f"GITS {label}"] = grid.best(m, schedulers=["GITS"])
            row[f"user {label}"] = grid.best(m, schedulers=[USER_SCHEDULER])  # issue 17's own table's base
            row[f"{PEER_SAMPLER} {label}"] = (grid.best(m, samplers=[PEER_SAMPLER])
                                              if PEER_SAMPLER in accepted else None)
        best_sampler, best_scheduler, best_steps = row["n"][0].key
        for kind, fit_schedule in FITS:
            where = {"AYS": {"scheduler": "AYS"}, "GITS": {"scheduler": "GITS"},
                     "best": {"sampler": best_sampler, "scheduler": best_scheduler, "steps": best_steps}}
            row["fits"][kind] = dode_fit(grid, x_fit, n, fit_schedule, config.teacher_factor, **where.get(kind, {}))
            print(f"  n={n} {kind}: {cell(row['fits'][kind].score)} ({row['fits'][kind].seconds:.0f} s)",
                  file=sys.stderr, flush=True)
        rows.append(row)
    return tables(problem, config, grid, rows, floor, refused), rows


def user_result(row: dict) -> Score:
    """What the user gets on their own schedule: D-ODE's result, or the base sampler's where the fit delivered
    nothing (the plugin keeps the base)."""
    return row["fits"]["user"].score or row["base_user"]


def tables(problem: Problem, config: Config, grid: Grid, rows: list[dict], floor: Score, refused: list[str]) -> str:
    verdict = "(RMSE, FD, FD-ODE)"
    lines = ["| n | fitted schedule | RMSE / FD / FD-ODE | fit calls, s | best base @n | best base @1.5n | "
             f"best base @2n | ≤ @n {verdict} | ≤ @1.5n {verdict} | ≤ @2n {verdict} | "
             f"≤ best sampler on Karras @1.5n {verdict} | ≤ best sampler on Karras @2n {verdict} | "
             f"≤ D-ODE user schedule {verdict} |",
             "|---:|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|"]
    for row in rows:
        for kind in ("fitted", "thorough"):
            fit = row["fits"][kind]
            verdicts = [", ".join(ratio_cell(fit.score, b[k], metric) for k, metric in enumerate(METRICS))
                        if b is not None else "—"
                        for b in (row["n"], row["1.5n"], row["2n"], row["user 1.5n"], row["user 2n"])]
            user = user_result(row)
            verdicts.append(", ".join(ratio_cell(fit.score, user, metric) for metric in METRICS))
            lines.append(f"| {row['calls']} | {'default' if kind == 'fitted' else 'thorough'} | {cell(fit.score)} | "
                         f"{fit.calls}, {fit.seconds:.0f} | "
                         f"{' | '.join(best_cell(row[label]) for _, label in FACTORS)} | {' | '.join(verdicts)} |")
    lines += ["", "Every D-ODE row (history auto, n calls; fit calls: every model call the fit made, teacher "
              "and schedule search included; \"no gain\": the fit delivered nothing, the user keeps the base):", "",
              "| n | D-ODE | RMSE / FD / FD-ODE | fit calls | fit wall s | schedule sampled on |",
              "|---:|---|---:|---:|---:|---|"]
    for row in rows:
        for kind, _ in FITS:
            fit = row["fits"][kind]
            what = fit.schedule if fit.score is not None else f"{fit.schedule}; {fit.error.split(';')[0][:160]}"
            if kind == "best":
                what = f"{row['n'][0].label}" + ("" if fit.score is not None else f"; {fit.error.split(';')[0][:160]}")
            lines.append(f"| {row['calls']} | {FIT_LABELS[kind]} | {cell(fit.score)} | {fit.calls} | "
                         f"{fit.seconds:.1f} | {what} |")
        base = row["base_user"]
        lines.append(f"| {row['calls']} | (base {DODE_SAMPLER} on Karras) | {cell(base)} | — | — | karras |")
    lines += ["", "Peers and the best base, each at the most steps within n, 1.5n and 2n calls: RMSE / FD / FD-ODE "
              "(sampler, scheduler and steps of the best by each):", "",
              "| n | peer | @n | @1.5n | @2n |", "|---:|---|---|---|---|"]
    peers = (("", "best base (any sampler x scheduler)"),
             ("user ", f"best sampler on the user's schedule ({USER_SCHEDULER})"), ("AYS ", "AYS + its best sampler"),
             ("GITS ", "GITS + its best sampler"), (f"{PEER_SAMPLER} ", f"{PEER_SAMPLER} on its best schedule"))
    for row in rows:
        for prefix, name in peers:
            cells = " | ".join(best_labelled(row[f"{prefix}{label}"]) for _, label in FACTORS)
            lines.append(f"| {row['calls']} | {name} | {cells} |")
    dtype_note = (f" ({', '.join(sorted(grid.float32))} in float32: ComfyUI's UniPC cannot take "
                  f"{str(problem.dtype).removeprefix('torch.')})" if grid.float32 else "")
    lines += ["", "Cells: held-out RMSE to the reference / FD / FD-ODE. The reference "
              f"({REFERENCE_SAMPLER}, {config.reference_steps} Karras steps) is {floor.rmse:.4f} RMSE from the same "
              "run at twice the steps: RMSE near that is the "
              f"reference's own error. The reference run's own FD is {floor.fd:.3f}: FD near it is sampling noise of "
              f"FD over {config.eval_batch} samples (a base sampler can score below the reference itself), and RMSE "
              "is the sharper measure there. FD-ODE is the Fréchet distance to the reference run's own samples (the "
              "distribution the exact ODE ends on, from the same noise): 0 for a converged sampler, without the "
              "data's sampling noise. Base samplers (ComfyUI's list, deterministic by dode_core.refusal_reason)"
              f"{dtype_note}: {', '.join(grid.samplers)}; refused or duplicates: {', '.join(refused) or 'none'}. "
              f"Schedulers: {', '.join(grid.schedulers)} (AYS: the node's {AYS_MODEL_TYPE} table, GITS: coeff "
              f"{GITS_COEFF:.2f}, both as ComfyUI's nodes give them, then mapped linearly in log sigma from SD1's "
              f"range 0.0292..14.61 onto {SIGMA_MIN}..{SIGMA_MAX:g}).", ""]
    lines.append(summary_line(rows))
    return "\n".join(lines)


def reached(rows: list[dict], kind: str, label: str, metric: str) -> list[int]:
    out = []
    for row in rows:
        fit, best = row["fits"][kind].score, row[label]
        if fit is not None and best is not None and getattr(fit, metric) <= getattr(best[METRICS.index(metric)],
                                                                                    metric):
            out.append(row["calls"])
    return out


def summary_line(rows: list[dict]) -> str:
    """At which n the fitted schedule (default search; thorough) reaches the best base at n, 1.5n and 2n, and where
    it is above D-ODE on the user's schedule."""
    def ns(values: list[int]) -> str:
        return ", ".join(map(str, values)) if values else "none"

    parts = []
    for kind, name in (("fitted", "fit_schedule=True"), ("thorough", '"thorough"')):
        above = [row["calls"] for row in rows if row["fits"][kind].score is not None
                 and row["fits"][kind].score.rmse > user_result(row).rmse]
        where = {label: ", ".join(f"{ns(reached(rows, kind, label, metric))} ({NAMES[metric]})" for metric in METRICS)
                 for label in ("1.5n", "2n", "user 1.5n", "user 2n")}
        parts.append(f"{name} ≤ best base @1.5n at n = {where['1.5n']}; @2n at n = {where['2n']}; "
                     f"@n at n = {ns(reached(rows, kind, 'n', 'rmse'))} (RMSE); ≤ the best sampler on the user's "
                     f"schedule @1.5n at n = {where['user 1.5n']}; @2n at n = {where['user 2n']}; above D-ODE on the "
                     f"user's schedule (RMSE) at n = {ns(above)}")
    return f"**Summary** (n = {ns([row['calls'] for row in rows])}): " + "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="n = 4 only, tiny batches, a few of the host's samplers and schedulers: a smoke run")
    parser.add_argument("--models", default="demo,kde", help="comma-separated: demo, kde")
    parser.add_argument("--nfe", help="comma-separated n (default 4,6,8,10; quick: 4)")
    parser.add_argument("--out", type=Path, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.nfe:
        config = Config(config.fit_batch, config.eval_batch, tuple(int(n) for n in args.nfe.split(",")),
                        config.teacher_factor, config.reference_steps, config.quick)
    headline_report(config, [m.strip() for m in args.models.split(",")], args.out)
    return 0


def headline_report(config: Config, models: list[str], out: Path | None = None) -> str:
    """Run and print the headline tables of every model; return the markdown (also written to ``out``).

    On one torch thread: these small models run several times faster so on a loaded machine."""
    host = Host()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        texts = [headline_text(key, host, config) for key in models]
    finally:
        torch.set_num_threads(threads)
    text = "\n".join(texts)
    if out is not None:
        out.write_text(text)
    return text


def headline_text(key: str, host: Host, config: Config) -> str:
    """The section of one model, printed as soon as it is measured."""
    start = time.perf_counter()
    problem = PROBLEMS[key]()
    table, _ = headline(problem, host, config)
    subset = " (quick: a subset of the host's samplers and schedulers)" if config.quick else ""
    text = (f"### Headline: {problem.name}\n\nD-ODE: ComfyUI's {DODE_SAMPLER}, history {DODE_HISTORY}, fit on "
            f"{config.fit_batch} latents, teacher factor {config.teacher_factor}; judged on {config.eval_batch} "
            f"held-out latents{subset}; 1 torch thread.\n\n{table}\n\n({time.perf_counter() - start:.0f} s)\n")
    print(text, flush=True)
    return text


if __name__ == "__main__":
    sys.exit(main())
