"""The Karras et al. (2022) spacing of sigmas: the one formula every schedule and grid here is built from."""

from __future__ import annotations

import torch


def karras(sigma_max: float, sigma_min: float, count: int, rho: float = 7.0) -> torch.Tensor:
    """``count`` sigmas from ``sigma_max`` down to ``sigma_min``, both exact, evenly spaced in ``sigma^(1/rho)``
    (float64):

        s_t = (sigma_max^(1/rho) + t / (count - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  t = 0..count-1

    k-diffusion's ``get_sigmas_karras(n, sigma_min, sigma_max)`` is ``karras(sigma_max, sigma_min, n)`` and a 0."""
    ramp = torch.linspace(0, 1, count, dtype=torch.float64)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (top + ramp * (bottom - top)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact ends, not re-rounded through the power
    return sigmas
