"""The teacher: a fine run that reaches the end of the ODE, and an estimate of how far it still is from it.

Its grid holds every sigma the student calls the model at, so each target sits at exactly the student's noise
level (the research code matched teacher states by index, i.e. at other noise levels; we match by sigma). Its
states are read from what it passes to the model, never from a callback: hosts' callbacks are previews.

The last student step (smallest positive sigma -> 0) is often the coarsest: ComfyUI's ``simple`` schedule on a
flow model takes 0.25 -> 0 in one go. A teacher that took it in one step too would be no closer to the ODE's end
than the student, so the final interval is sub-stepped like every other, down to the model's smallest sigma, and
only then denoised. How close the teacher is, is measured in every fit: a second run at half the factor gives

    error(T_F) ~ |T_F - T_{F/2}| / (2^p - 1)        (p: the teacher's order; 2 for DPM-Solver++(2M))
"""

from __future__ import annotations

import math

import torch

from .blackbox import ModelProxy, SamplerRefusedError, check_deterministic, sampler_name
from .karras import karras

DEFAULT_SIGMA_MIN = 0.002  # EDM's smallest sigma: for a bare denoiser that says nothing of its range
MAX_FINAL_MULTIPLE = 4  # the final interval gets up to this many times the sub-steps of an average one
# order of convergence of the teachers we know; any other counts as first order (the safe side for the estimate)
TEACHER_ORDERS = {"dpmpp_2m_teacher": 2, "dpmpp_2m": 2, "heun": 2, "lms": 2, "ipndm": 2, "deis": 2,
                  "res_multistep": 2, "uni_pc": 2, "uni_pc_bh2": 2}


def model_sigma_min(model, sigma_min=None) -> float:
    """The smallest sigma the teacher steps to before its final denoise: ``sigma_min`` if given (hosts pass the
    model's own: ComfyUI's ``model_sampling.sigma_min``, the WebUI model's sigma table), else the model's
    ``sigma_min`` attribute (k-diffusion's wrapped models have one), else DEFAULT_SIGMA_MIN."""
    value = sigma_min if sigma_min is not None else getattr(model, "sigma_min", DEFAULT_SIGMA_MIN)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = DEFAULT_SIGMA_MIN
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma_min must be a finite number > 0 (the model's smallest sigma); got {sigma_min!r}.")
    return value


def student_points(sigmas, call_sigmas, rel_tol: float = 1e-6) -> list[float]:
    """The schedule and every call sigma, merged, decreasing, without duplicates."""
    points = sorted({float(s) for s in sigmas} | {float(s) for s in call_sigmas}, reverse=True)
    merged = [points[0]]
    for s in points[1:]:
        if not math.isclose(s, merged[-1], rel_tol=rel_tol, abs_tol=1e-12):
            merged.append(s)
    return merged


def karras_substeps(a: float, b: float, count: int, rho: float = 7.0) -> list[float]:
    """``count`` steps from ``a`` down to ``b`` > 0 in Karras spacing: the points after ``a``, ``b`` exact."""
    return karras(a, b, count + 1, rho)[1:].tolist()


def final_substeps(points: list[float], factor: int, sigma_min: float) -> int:
    """Sub-steps for the final interval, last positive point -> ``sigma_min``: ``factor`` times its length in log
    sigma over the average interval's, at least ``factor``, at most MAX_FINAL_MULTIPLE times it (a 0.25 -> 0.001
    tail of a flow model's 4-step schedule is 12 average intervals long; measured on exact mixtures, 4x the
    sub-steps there cut the teacher's error 3-5x)."""
    positive = [s for s in points if s > 0]
    lengths = [math.log(a / b) for a, b in zip(positive[:-1], positive[1:], strict=True)]
    final = math.log(positive[-1] / sigma_min)
    if not lengths:
        return factor
    multiple = final / (sum(lengths) / len(lengths))
    return factor * max(1, min(MAX_FINAL_MULTIPLE, round(multiple)))


def teacher_sigmas(sigmas, call_sigmas, factor: int, sigma_min: float = DEFAULT_SIGMA_MIN,
                   rho: float = 7.0) -> tuple[torch.Tensor, list[float]]:
    """The teacher grid: ``factor`` Karras sub-steps between consecutive student points, and the final interval
    sub-stepped down to ``sigma_min`` (see final_substeps) before the step into 0. Returns the grid (float64) and
    the student points on it."""
    points = student_points(sigmas, call_sigmas)
    grid = [points[0]]
    for a, b in zip(points[:-1], points[1:], strict=True):
        if b > 0:
            grid += karras_substeps(a, b, factor, rho)
        else:
            if sigma_min < a * (1 - 1e-6):
                grid += karras_substeps(a, sigma_min, final_substeps(points, factor, sigma_min), rho)
            grid.append(0.0)
    return torch.tensor(grid, dtype=torch.float64), points


def teacher_order(teacher) -> int:
    """The order of convergence the estimate assumes: TEACHER_ORDERS, else 1."""
    return TEACHER_ORDERS.get(sampler_name(teacher), 1)


def check_teacher(model, x, grid, teacher, extra_args, options) -> list[float]:
    """The teacher's call sigmas, from free probes; refuses a teacher that injects noise or breaks on the grid."""
    try:
        return check_deterministic(model, x, grid, teacher, extra_args=extra_args, options=options,
                                   role="the teacher grid")
    except SamplerRefusedError as error:
        raise SamplerRefusedError(f"{error}\nAs the teacher, choose a deterministic ODE sampler (the default, "
                                  "dpmpp_2m_teacher, always is).") from None


def teacher_call_indices(teacher_calls: list[float], wanted: list[float], name: str) -> list[int]:
    """For each wanted sigma, the index of the teacher's *last* call there (so a Heun-style predictor stage at
    the same sigma does not count as the state)."""
    indices = []
    for sigma in wanted:
        found = [i for i, s in enumerate(teacher_calls) if math.isclose(s, sigma, rel_tol=1e-5, abs_tol=1e-8)]
        if not found:
            raise SamplerRefusedError(f"teacher sampler '{name}' does not call the model at sigma {sigma:.4g}, "
                                      "so its state there cannot be read; choose another teacher.")
        indices.append(found[-1])
    return indices


class _Recorder(ModelProxy):
    """Passes calls through and keeps, on the CPU, the inputs of the calls at ``indices``."""

    def __init__(self, model, indices):
        super().__init__(model)
        self.wanted = set(indices)
        self.states: dict[int, torch.Tensor] = {}
        self.count = 0

    def __call__(self, x, sigma, **extra_args):
        if self.count in self.wanted:
            self.states[self.count] = x.detach().to("cpu", copy=True)
        self.count += 1
        return self.inner(x, sigma, **extra_args)


def run_teacher(model, x, grid, teacher, wanted_sigmas, teacher_calls, *, extra_args=None,
                options=None) -> list[torch.Tensor]:
    """Run ``teacher`` over ``grid`` from ``x``; return its states at ``wanted_sigmas`` (read from its model
    inputs: the last call at each sigma), then its result (the state at the grid's last sigma), on the CPU."""
    indices = teacher_call_indices(teacher_calls, wanted_sigmas, sampler_name(teacher))
    recorder = _Recorder(model, indices)
    final = teacher(recorder, x.clone(), grid.clone(), extra_args=dict(extra_args or {}), callback=None, disable=True,
                    **(options or {}))
    return [recorder.states[i] for i in indices] + [final.detach().to("cpu", copy=True)]


def half_grid(grid: torch.Tensor, keep: list[float]) -> torch.Tensor:
    """Every other point of a teacher grid, plus the points in ``keep`` (the student's) and its ends: the same
    spacing at half the factor, for the convergence estimate."""
    values = [float(s) for s in grid]
    kept = set(range(0, len(values), 2)) | {len(values) - 1}
    kept |= {i for i, s in enumerate(values) if any(math.isclose(s, k, rel_tol=1e-6, abs_tol=1e-12) for k in keep)}
    return torch.tensor([values[i] for i in sorted(kept)], dtype=torch.float64)


def convergence_error(final: torch.Tensor, final_half: torch.Tensor, order: int) -> torch.Tensor:
    """Per-latent RMS estimate of the teacher's distance to the ODE's end, ``|T_F - T_{F/2}| / (2^p - 1)``
    (float64, CPU)."""
    gap = (final.to("cpu", torch.float64) - final_half.to("cpu", torch.float64)).reshape(final.shape[0], -1)
    return gap.square().mean(-1).sqrt() / (2**order - 1)


@torch.no_grad()
def sample_dpmpp_2m_teacher(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The default teacher: DPM-Solver++(2M) (Lu et al. 2022) in data prediction, one model call per grid sigma,

        x_{i+1} = (s_{i+1} / s_i) x_i + (1 - s_{i+1} / s_i) D'_i,
        D'_i = (1 + 1 / (2 r_i)) D_i - 1 / (2 r_i) D_{i-1},   r_i = h_{i-1} / h_i,   h_i = log(s_i / s_{i+1}),

    first order (D'_i = D_i) at the first step and into sigma = 0 (where x_{i+1} = D_i). Second order at one
    call a step: on a 10x grid it is far closer to the ODE than any few-step student, at a tenth of Heun's
    cost per sub-step pair.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    sigma_values = [float(s) for s in sigmas]
    previous, h_previous = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigma_values[i], sigma_values[i + 1]
        denoised = model(x, sigmas[i] * s_in, **extra_args).to(x.dtype)  # a float16 model, a float32 state
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        # D' = D + (D - D_prev) / (2 r) = lerp(D, D_prev, -1 / (2 r)); x_next = lerp(D', x, s_next / s)
        blended = denoised if previous is None else torch.lerp(denoised, previous, -h / (2 * h_previous))
        x = torch.lerp(blended, x, sigma_next / sigma)
        previous, h_previous = denoised, h
    return x
