"""The schedule chosen for the corrected sampler: a search scored by the final error of that sampler with λ refit.

What a schedule is worth is the final error of the sampler that will run on it: the user's base sampler with λ
fitted for that very schedule. Running it for real costs a student run per candidate, so candidates are scored on
a surrogate built from the dense teacher run, at no model cost. The teacher holds, at every grid sigma s_i, its
state X_i and its output D_i; around that trajectory the model is linearised with one slope per sigma,

    D(x, s_i) ~ D_i + c_i (x - X_i),    c_i = sum_b <D_ib - mean D_i, X_ib - mean X_i> / sum_b |X_ib - mean X_i|^2

(the slope of the model's output over the batch: exact for Gaussian data, where D is affine in x). A student run on
the surrogate feels its own errors through c_i, so an error made at a high sigma shrinks on the way down as the
ODE shrinks it, and one made at the last step stays: the final error the candidate would have, not a sum of
one-step errors. λ are refit for every candidate by the same leave-one-out fit as the real run.

The search starts from several schedules (the user's, Karras, log-uniform, uniform in sigma, the AYS shape, the
dynamic program of schedule.py with face-value and with propagated one-step costs), refines the best by coordinate
descent over the dense grid (one interior sigma at a time, moved by 8, 4, 2, 1 grid points while that helps), and
returns the best distinct schedules; the caller runs the top few for real, and the ladders of REAL_LADDERS as they
are.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .blackbox import ModelProxy, SamplerRefusedError, measure_sampler, sigma_value
from .crossfit import CrossFitRun, final_errors
from .karras import karras
from .schedule import DenseTeacherRun, cheapest_path, check_calls_on_schedule, one_step_costs

log = logging.getLogger(__name__)

REFINE_STEPS = (8, 4, 2, 1)  # grid points a sigma is moved by, coarse to fine


@dataclass(frozen=True)
class SearchEffort:
    """How much a schedule search may do: starts refined by coordinate descent, surrogate runs in all, and how many
    of the best schedules the fit then runs for real (each one student run of the model)."""

    refined_starts: int
    max_evaluations: int
    real_candidates: int


# The AYS paper's 10-step schedule for SD1 (Sabour, Fidler, Kreis 2024, "Align Your Steps", table for Stable
# Diffusion 1.5), sigma_max first: a ladder tuned for learned image models, used here only for its shape.
AYS_SD1_SIGMAS = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
# Hand-made ladders the fit also runs for real, unrefined (one student run each): on a learned model the surrogate
# ranks them far from where they land. Demo model, dpmpp_2m, held-out RMSE of the delivered fit at 4 / 6 / 8 / 10
# calls: 0.095 / 0.083 / 0.032 / 0.024 (Karras kept) without, 0.077 / 0.026 / 0.015 / 0.009 with the AYS shape run
# for real; on the exact KDE denoiser unchanged (the refined schedules win there). A log-uniform ladder never won.
REAL_LADDERS = ("ays-shape",)

# Real runs of the best few: on the learned demo model the surrogate ranks schedules only roughly (rank correlation
# 0.41, its best 1.26x the real best's RMSE; on the exact KDE denoiser 0.87 and 1.00x: bench/surrogate.py), so the
# default runs four for real (plus REAL_LADDERS). With the teacher (1.5 runs) and the user's and fitted schedules'
# own runs, a default fit stays under three teacher runs of model calls at teacher_factor 10:
# 15n + 2n + 5n + n = 23n <= 30n.
EFFORT = {"default": SearchEffort(refined_starts=2, max_evaluations=400, real_candidates=4),
          "thorough": SearchEffort(refined_starts=5, max_evaluations=2000, real_candidates=10)}


def batch_slopes(states, denoised) -> list[float]:
    """c_i per positive grid sigma: the least-squares slope of D_i on X_i over the batch (0 for a batch of one)."""
    slopes = []
    for x, d in zip(states, denoised, strict=False):
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        d = d.to(torch.float64).reshape(d.shape[0], -1)
        dx, dd = x - x.mean(0), d - d.mean(0)
        energy = float(dx.square().sum())
        slopes.append(float((dx * dd).sum()) / energy if energy > 0 else 0.0)
    return slopes


class Surrogate(ModelProxy):
    """``D(x, s_i) = D_i + c_i (x - X_i)`` at the grid sigmas of a dense teacher run, for the latents it was built on
    (in their order). Attributes of the real model stay readable (host samplers read some)."""

    def __init__(self, model, run: DenseTeacherRun, latents: slice):
        super().__init__(model)
        self.sigmas = [float(s) for s in run.grid]
        self.states = [s[latents] for s in run.states]
        self.denoised = [d[latents] for d in run.denoised]
        self.slopes = batch_slopes(self.states[:-1], self.denoised)

    def index(self, sigma: float) -> int:
        best = min(range(len(self.sigmas)), key=lambda i: abs(self.sigmas[i] - sigma))
        if not math.isclose(self.sigmas[best], sigma, rel_tol=1e-5, abs_tol=1e-9):
            raise ValueError(f"sigma {sigma:.6g} is not on the teacher grid")
        return best

    def __call__(self, x, sigma, **extra_args):
        i = self.index(sigma_value(sigma))
        state = self.states[i].to(x.device, x.dtype)
        return self.denoised[i].to(x.device, x.dtype) + self.slopes[i] * (x - state)


def surrogate_error(surrogate: Surrogate, x, sigmas, sampler, name: str, history, max_terms: int, extra_args,
                    options) -> float:
    """Mean squared final error, against the teacher's end, of ``sampler`` on ``sigmas`` with λ refit on the
    surrogate (each latent corrected with λ fitted on the others); inf where the sampler cannot run there."""
    try:
        sampler_map = measure_sampler(surrogate, x, sigmas, sampler, extra_args=extra_args, options=options)
        check_calls_on_schedule(sampler_map.call_sigmas, sigmas, name)
        targets = [surrogate.states[surrogate.index(s)] for s in sampler_map.call_sigmas[1:]] + [surrogate.states[-1]]
        live = CrossFitRun(surrogate, name, sampler_map, targets, history, max_terms)
        final = sampler(live, x.clone(), sigmas.clone(), extra_args=dict(extra_args), callback=None, disable=True,
                        **options)
    except (SamplerRefusedError, ValueError) as error:
        log.debug("schedule candidate %s: %s", sigmas.tolist(), error)
        return math.inf
    errors = final_errors(final, surrogate.states[-1])
    value = float(errors.mean())
    return value if math.isfinite(value) else math.inf


def last_jump_limit(surrogate: Surrogate, allowed_mse: float) -> int:
    """The first grid index a schedule's last positive sigma may sit at: where the teacher's own jump to 0,
    ``D_i`` against its end, errs by no more than ``allowed_mse`` (D-ODE's error on the user's schedule).

    A schedule that ends with a longer jump leans on the last call's λ to undo an error the teacher itself would
    make there. On the fit batch λ can (a few latents, a few numbers); on fresh seeds, near a boundary between
    modes, they cannot: measured on a separated Gaussian mixture, a 6-step schedule ending 2.36 -> 0 proved 0.09x
    the base on its 8 latents and sent 51 of 256 fresh latents to another mode (the base: 11)."""
    end = surrogate.states[-1]
    for i in range(len(surrogate.sigmas) - 1):
        if float(final_errors(surrogate.denoised[i], end).mean()) <= allowed_mse:
            return i
    return len(surrogate.sigmas) - 2


def ays_shape(sigma_max: float, sigma_min: float, count: int) -> list[float]:
    """``count`` sigmas from ``sigma_max`` to ``sigma_min`` spaced as the AYS SD1 table is: its log sigmas,
    interpolated linearly at ``count`` even points (as ComfyUI's AYS node does for other step counts) and mapped
    linearly from the table's log range onto ``log sigma_max .. log sigma_min``:

        r(t) = (log s_AYS(t) - log s_AYS(0)) / (log s_AYS(1) - log s_AYS(0)),
        s_t = sigma_max (sigma_min / sigma_max)^r(t)
    """
    logs = [math.log(value) for value in AYS_SD1_SIGMAS]
    last = len(logs) - 1
    out = []
    for k in range(count):
        position = k * last / (count - 1) if count > 1 else 0.0
        j = min(int(position), last - 1)
        log_sigma = logs[j] + (position - j) * (logs[j + 1] - logs[j])
        out.append(sigma_max * (sigma_min / sigma_max) ** ((log_sigma - logs[0]) / (logs[-1] - logs[0])))
    return out


def start_paths(run: DenseTeacherRun, steps: int, user_indices: list[int], latents: slice) -> dict[str, list[int]]:
    """The schedules a search starts from, as grid indices ``0 = i_0 < ... < i_steps = G``."""
    count = len(run.grid)
    sigma = run.grid.double()
    positive = sigma[:-1]
    top, bottom = float(positive[0]), float(positive[-1])

    def snap(values) -> list[int]:
        indices = [0]
        for value in values:
            nearest = int((positive.log() - math.log(value)).abs().argmin())
            indices.append(min(max(nearest, indices[-1] + 1), count - 1 - (steps - len(indices))))
        return indices + [count - 1]

    ramp = [t / (steps - 1) for t in range(1, steps)] if steps > 1 else []
    starts = {"user": list(user_indices)}
    if steps > 1:
        starts["karras"] = snap(karras(top, bottom, steps)[1:].tolist())
        starts["log-uniform"] = snap([top * (bottom / top) ** r for r in ramp])
        starts["uniform"] = snap([top + r * (bottom - top) for r in ramp])
        # as ComfyUI's AYS node does: steps + 1 levels from the table, the last one replaced by 0
        starts["ays-shape"] = snap(ays_shape(top, bottom, steps + 1)[1:-1])
    states = [s[latents] for s in run.states]
    denoised = [d[latents] for d in run.denoised]
    costs = one_step_costs(run.grid, states, denoised)
    starts["one-step"] = cheapest_path(costs, steps)
    # weigh each edge by how much of an error made there survives to the end (the slopes' product below it)
    slopes = batch_slopes(states[:-1], denoised)
    survive = [1.0] * count
    for i in range(count - 2, -1, -1):
        ratio = float(sigma[i + 1] / sigma[i])
        survive[i] = survive[i + 1] * (slopes[i] + ratio * (1 - slopes[i]))
    weights = torch.tensor(survive, dtype=torch.float64)
    starts["propagated"] = cheapest_path(costs * weights[None, :], steps)
    return {name: path for name, path in starts.items() if _valid(path, count, steps)}


def _valid(path: list[int], count: int, steps: int) -> bool:
    return (len(path) == steps + 1 and path[0] == 0 and path[-1] == count - 1
            and all(a < b for a, b in zip(path[:-1], path[1:], strict=True)))


class ScheduleSearch:
    """Scores schedules (grid index paths) on a surrogate, once each, and refines them by coordinate descent."""

    def __init__(self, surrogate: Surrogate, x, grid: torch.Tensor, sampler, name: str, history, max_terms: int,
                 extra_args, options, effort: SearchEffort, progress=None, first_last_index: int = 0):
        self.surrogate, self.x, self.grid, self.sampler, self.name = surrogate, x, grid, sampler, name
        self.history, self.max_terms, self.extra_args, self.options = history, max_terms, extra_args, options
        self.effort, self.progress = effort, progress
        self.first_last_index = first_last_index  # see last_jump_limit
        self.scores: dict[tuple[int, ...], float] = {}

    def score(self, path) -> float:
        key = tuple(path)
        if key[-2] < self.first_last_index:
            return math.inf  # not scored, not kept: a last jump the teacher itself could not make
        if key not in self.scores:
            if len(self.scores) >= self.effort.max_evaluations:
                return math.inf
            if self.progress is not None:
                self.progress()  # lets the host show progress and cancel during the search
            sigmas = self.grid[list(key)].to(self.x.dtype)
            self.scores[key] = surrogate_error(self.surrogate, self.x, sigmas, self.sampler, self.name, self.history,
                                               self.max_terms, self.extra_args, self.options)
        return self.scores[key]

    def within_limit(self, path: list[int]) -> list[int]:
        """``path`` with its last positive sigma (and any before it that would collide) moved down to the limit."""
        path = list(path)
        limit = min(self.first_last_index, path[-1] - 1)
        if path[-2] < limit:
            path[-2] = limit
            for k in range(len(path) - 3, 0, -1):
                path[k] = min(path[k], path[k + 1] - 1)
        return path  # one that cannot keep its order scores inf: the sampler refuses its sigmas

    def refine(self, path: list[int]) -> list[int]:
        """Coordinate descent: move one interior sigma by REFINE_STEPS grid points while the score drops."""
        path, best = list(path), self.score(path)
        for step in REFINE_STEPS:
            improved = True
            while improved:
                improved = False
                for k in range(1, len(path) - 1):
                    for move in (-step, step):
                        candidate = list(path)
                        candidate[k] += move
                        if not (candidate[k - 1] < candidate[k] < candidate[k + 1]):
                            continue
                        value = self.score(candidate)
                        if value < best:
                            path, best, improved = candidate, value, True
        return path

    def run(self, starts: dict[str, list[int]]) -> list[tuple[float, list[int], str]]:
        """``(surrogate error, path, how it was found)`` of the best distinct schedules, best first. A start whose
        last jump is too long (see last_jump_limit) has it moved down to the limit first."""
        starts = {name: self.within_limit(path) for name, path in starts.items()}
        ranked = sorted((self.score(path), name) for name, path in starts.items())
        origin = {tuple(path): name for name, path in starts.items()}
        for value, name in ranked[: self.effort.refined_starts]:
            if math.isfinite(value):
                refined = self.refine(starts[name])
                origin.setdefault(tuple(refined), f"{name}, refined")
        found = sorted((value, list(path)) for path, value in self.scores.items() if math.isfinite(value))
        log.info("schedule search: %d schedules scored on the surrogate; best %s", len(self.scores),
                 [round(float(self.grid[i]), 4) for i in found[0][1]] if found else None)
        return [(value, path, origin.get(tuple(path), "searched")) for value, path in found]
