"""Choosing the n-step schedule from one dense teacher run (the idea of GITS, Chen et al. 2024).

A teacher run over a dense grid ``s_0 > s_1 > ... > s_G = 0`` already holds, at every grid sigma, the state
``X_i`` it passed to the model and the denoised output ``D_i`` it got back. A deterministic step of the student
from grid point ``i`` straight to grid point ``j`` (the first-order DDIM / Euler step every k-diffusion ODE
sampler starts from) lands at

    x_hat_ij = D_i + (s_j / s_i) * (X_i - D_i)

and its one-step error against the teacher, ``x_hat_ij - X_j``, costs no model call. A dynamic program then picks
the path ``0 = i_0 < i_1 < ... < i_n = G`` with the least summed cost: the schedule ``s_{i_0}, ..., s_{i_n}``.

The cost of an edge is the batch mean of the per-latent RMS of that one-step error (GITS' choice). Measured on
the KDE digits denoiser (DPM++ 2M + D-ODE, held-out RMSE to a converged run at 4 / 6 / 8 calls): 0.083 / 0.038 /
0.028 with it, 0.092 / 0.054 / 0.053 with the squared error. A multistep-aware (DPM++ 2M) cost was not needed to
meet the targets and is not implemented. Nothing here calls a model; the costs are formed on the CPU.
"""

from __future__ import annotations

import math

import torch

from .blackbox import ModelProxy, SamplerRefusedError, sigma_value
from .karras import karras


def dense_grid(sigma_max: float, sigma_min: float, points: int, rho: float = 7.0) -> torch.Tensor:
    """``points`` sigmas from ``sigma_max`` down to ``sigma_min`` in Karras spacing (karras.karras), then 0."""
    if not (math.isfinite(sigma_max) and math.isfinite(sigma_min) and sigma_max > sigma_min > 0):
        raise ValueError(f"a fitted schedule needs sigma_max > sigma_min > 0; got {sigma_max:.4g} and "
                         f"{sigma_min:.4g}.")
    if points < 2:
        raise ValueError(f"the dense grid needs at least 2 positive sigmas; got {points}.")
    grid = karras(sigma_max, sigma_min, points, rho)
    return torch.cat([grid, grid.new_zeros(1)])


def merge_points(grid: torch.Tensor, points) -> torch.Tensor:
    """``grid`` (decreasing, ending in 0) holding every positive sigma of ``points`` exactly: a grid point closer to
    one (in log sigma) than a third of its neighbouring step is moved onto it, else the point is inserted. So the
    dense teacher run has a state at every sigma of the user's schedule without a step of nearly zero length
    (which would weigh DPM-Solver++(2M)'s correction by 1 / h and amplify rounding)."""
    values = [float(s) for s in grid[:-1]]
    for point in sorted({float(p) for p in points if float(p) > 0}, reverse=True):
        logs = [math.log(s / point) for s in values]
        nearest = min(range(len(values)), key=lambda i: abs(logs[i]))
        neighbours = [abs(math.log(values[j] / values[nearest])) for j in (nearest - 1, nearest + 1)
                      if 0 <= j < len(values)]
        if abs(logs[nearest]) < min(neighbours, default=math.inf) / 3:
            values[nearest] = point
        else:
            values.append(point)
    merged = sorted(set(values), reverse=True)
    return torch.tensor([*merged, 0.0], dtype=torch.float64)


class TeacherRecorder(ModelProxy):
    """Wraps the teacher's model and keeps, for every grid sigma, the last state passed to the model there and
    the denoised output it returned (on the CPU, in the model's dtype).

    The last call at a sigma is the state (Heun's predictor stage at the same sigma comes before it); the
    sampler's callback is never read: hosts' callbacks are previews, not records of the state.
    """

    def __init__(self, model, grid: torch.Tensor, storage_dtype: torch.dtype | None = None):
        super().__init__(model)
        self.grid = grid.double().cpu()
        self.storage_dtype = storage_dtype
        self.states: dict[int, torch.Tensor] = {}
        self.denoised: dict[int, torch.Tensor] = {}

    def __call__(self, x, sigma, **extra_args):
        out = self.inner(x, sigma, **extra_args)
        index = self.index_of(sigma_value(sigma))
        if index is not None:
            dtype = self.storage_dtype or x.dtype
            self.states[index] = x.detach().to("cpu", dtype, copy=True)
            self.denoised[index] = out.detach().to("cpu", dtype, copy=True)
        return out

    def index_of(self, sigma: float) -> int | None:
        distances = (self.grid - sigma).abs()
        index = int(distances.argmin())
        return index if math.isclose(float(self.grid[index]), sigma, rel_tol=1e-5, abs_tol=1e-9) else None

    def lists(self, final: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(states, denoised)`` in grid order: G + 1 states with the sampler's result last, G denoised outputs.
        Raises when the teacher skipped a grid sigma."""
        positive = len(self.grid) - 1
        missing = [i for i in range(positive) if i not in self.states]
        if missing:
            raise ValueError(f"the teacher made no model call at {len(missing)} of the {positive} grid sigmas "
                             f"(first: {float(self.grid[missing[0]]):.4g}); a fitted schedule needs a teacher "
                             "that calls the model once at every sigma of its schedule (euler, dpmpp_2m, lms, heun).")
        states = [self.states.pop(i) for i in range(positive)]
        states.append(final.detach().to("cpu", states[0].dtype, copy=True))
        return states, [self.denoised.pop(i) for i in range(positive)]


def one_step_costs(grid: torch.Tensor, states, denoised, *, power: float = 1.0, chunk: int = 16) -> torch.Tensor:
    """The (G+1, G+1) matrix of edge costs, ``inf`` where ``j <= i``:

        cost_ij = mean_b ( RMS_b( D_i + (s_j / s_i) (X_i - D_i) - X_j ) ) ^ power

    grid: (G+1,) sigmas ending in 0; states: G+1 teacher states (B, ...) (the last is its result); denoised: its G
    outputs at the positive sigmas (a stacked tensor or a list). Formed in the states' precision (at least float32),
    squares summed in float64, ``chunk`` targets at a time: the extra memory is about ``chunk`` states.
    """
    count = len(grid)
    work = torch.promote_types(states[0].dtype, torch.float32)  # float32 errors are ~1e-7 relative: plenty here
    sigma = grid.double()
    costs = torch.full((count, count), math.inf, dtype=torch.float64)
    for i in range(count - 1):
        x_i, d_i = states[i].to(work), denoised[i].to(work)
        for start in range(i + 1, count, chunk):
            stop = min(start + chunk, count)
            ratio = (sigma[start:stop] / sigma[i]).to(work).view(-1, *([1] * x_i.dim()))
            error = d_i + ratio * (x_i - d_i) - torch.stack([states[j] for j in range(start, stop)]).to(work)
            mean_square = error.flatten(2).square().sum(-1, dtype=torch.float64) / error[0, 0].numel()
            costs[i, start:stop] = mean_square.sqrt().pow(power).mean(-1)  # RMS per latent, then the batch mean
    return costs


def cheapest_path(costs: torch.Tensor, steps: int) -> list[int]:
    """The grid indices ``0 = i_0 < ... < i_steps = G`` minimising ``sum_k costs[i_k, i_{k+1}]`` (dynamic program,
    O(steps G^2)):

        best_k(j) = min_i best_{k-1}(i) + costs[i, j],   best_0 = 0 at i = 0, inf elsewhere
    """
    count = costs.shape[0]
    if not 1 <= steps <= count - 1:
        raise ValueError(f"cannot choose {steps} steps from a grid of {count} sigmas; use 1 to {count - 1} steps.")
    best = torch.full((count,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    parents = []
    for _ in range(steps):
        totals = best[:, None] + costs  # totals[i, j]: reach i in k-1 steps, then i -> j
        best, parent = totals.min(0)
        parents.append(parent)
    if not math.isfinite(float(best[-1])):
        raise ValueError(f"no {steps}-step path through the grid has a finite cost.")
    path = [count - 1]
    for parent in reversed(parents):
        path.append(int(parent[path[-1]]))
    return path[::-1]


def choose_schedule(grid: torch.Tensor, states, denoised, steps: int, **cost_options) -> tuple[torch.Tensor, list[int]]:
    """The ``steps``-step schedule (float64, ``steps + 1`` sigmas ending in 0) with the least summed one-step error
    on the teacher run, and its grid indices."""
    path = cheapest_path(one_step_costs(grid, states, denoised, **cost_options), steps)
    return grid.double()[path].clone(), path


def schedule_range(sigmas: torch.Tensor) -> tuple[int, float, float]:
    """``(steps, sigma_max, sigma_min)`` of a schedule that only gives the range of a fitted one: its first sigma,
    its smallest positive sigma, and its final 0 (which a fitted schedule keeps)."""
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"fit_schedule needs a schedule that ends in 0 (the fitted one does too); this one ends at "
                         f"{float(sigmas[-1]):.4g}. Use denoise 1.0 / a full schedule, or fit_schedule=False.")
    positive = sigmas[sigmas > 0]
    return len(sigmas) - 1, float(positive[0]), float(positive[-1])


def check_calls_on_schedule(call_sigmas: list[float], sigmas: torch.Tensor, name: str) -> None:
    """A fitted schedule puts every student call on the teacher grid only if the sampler calls the model at
    schedule sigmas alone (Euler, Heun: its stage is the next schedule sigma, DPM++ 2M, LMS); a sampler with
    stage sigmas between schedule points (DPM-2: sqrt(s_i s_{i+1})) is refused."""
    points = [float(s) for s in sigmas]
    off = [c for c in call_sigmas if not any(math.isclose(c, s, rel_tol=1e-5, abs_tol=1e-8) for s in points)]
    if off:
        raise SamplerRefusedError(
            f"sampler '{name}' calls the model at sigma {off[0]:.4g}, between the schedule's sigmas (a stage of its "
            "step), so a fitted schedule cannot put its calls on the teacher grid; use fit_schedule=False for it, "
            "or a sampler whose calls are schedule sigmas (euler, heun, dpmpp_2m, lms).")


class DenseTeacherRun:
    """One teacher run over a dense grid, kept for both uses: the schedule choice and the λ targets.

    grid: (G+1,) float64 sigmas ending in 0; states: G+1 latents (B, ...) on the CPU (the result last); denoised:
    the G outputs at the positive sigmas.
    """

    def __init__(self, grid: torch.Tensor, states: list[torch.Tensor], denoised: list[torch.Tensor]):
        self.grid, self.states, self.denoised = grid, states, denoised

    def choose(self, steps: int, latents: int | None = None) -> tuple[torch.Tensor, list[int]]:
        """The ``steps``-step schedule with the least summed one-step error (float64) and its grid indices, judged
        on the first ``latents`` of the batch (the fit latents; the held-out ones must not choose it)."""
        keep = slice(None) if latents is None else slice(0, latents)
        return choose_schedule(self.grid, [s[keep] for s in self.states], [d[keep] for d in self.denoised], steps)

    def state_at(self, sigma: float) -> torch.Tensor:
        """The teacher's state at a grid sigma (its result at 0)."""
        distances = (self.grid - sigma).abs()
        index = int(distances.argmin())
        if not math.isclose(float(self.grid[index]), sigma, rel_tol=1e-5, abs_tol=1e-9):
            raise ValueError(f"sigma {sigma:.6g} is not on the teacher grid")
        return self.states[index].clone()  # not a view: the run can be freed once the targets are read


def run_dense_teacher(model, x, grid: torch.Tensor, teacher, *, extra_args=None, options=None) -> DenseTeacherRun:
    """Run ``teacher`` over ``grid`` from ``x`` and keep its state and denoised output at every grid sigma, read
    from its model calls (never its callback). Memory: 2 G latents of the batch, on the CPU."""
    recorder = TeacherRecorder(model, grid)
    final = teacher(recorder, x.clone(), grid.to(x.device, copy=True), extra_args=dict(extra_args or {}), callback=None,
                    disable=True, **(options or {}))
    states, denoised = recorder.lists(final)
    return DenseTeacherRun(grid.double().cpu(), states, denoised)
