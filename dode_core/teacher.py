"""The teacher: a fine run of an ODE sampler whose grid holds every sigma the student calls the model at.

Each target then sits at exactly the student's noise level (the research code matched teacher states by
index, i.e. at other noise levels; we match by sigma).
"""

from __future__ import annotations

import math

import torch


def student_points(sigmas, call_sigmas, rel_tol: float = 1e-6) -> list[float]:
    """The schedule and every call sigma, merged, decreasing, without duplicates."""
    points = sorted({float(s) for s in sigmas} | {float(s) for s in call_sigmas}, reverse=True)
    merged = [points[0]]
    for s in points[1:]:
        if not math.isclose(s, merged[-1], rel_tol=rel_tol, abs_tol=1e-12):
            merged.append(s)
    return merged


def teacher_sigmas(sigmas, call_sigmas, factor: int, rho: float = 7.0) -> tuple[torch.Tensor, list[float]]:
    """The teacher grid: ``factor`` sub-steps between consecutive student points.

        sigma_t = (a^(1/rho) + t/factor * (b^(1/rho) - a^(1/rho)))^rho,   t = 0..factor

    i.e. Karras spacing inside each interval (nearly log-uniform, and well defined when b = 0).
    Returns the grid (float64, ends at the student's last sigma) and the student points on it.
    """
    points = student_points(sigmas, call_sigmas)
    grid = [points[0]]
    for a, b in zip(points[:-1], points[1:], strict=True):
        a_root, b_root = a ** (1 / rho), b ** (1 / rho)
        grid += [(a_root + t / factor * (b_root - a_root)) ** rho for t in range(1, factor)]
        grid.append(b)  # exact, not re-rounded through the power
    return torch.tensor(grid, dtype=torch.float64), points


def grid_index(grid: torch.Tensor, sigma: float) -> int:
    """Index of the grid point equal to ``sigma`` (student points are stored exactly)."""
    distances = (grid - sigma).abs()
    index = int(distances.argmin())
    if not math.isclose(float(grid[index]), sigma, rel_tol=1e-6, abs_tol=1e-12):
        raise ValueError(f"sigma {sigma:.6g} is not on the teacher grid")
    return index
