"""Denoisers with known answers, shared by the tests and the benchmark.

The Gaussian case has a closed-form denoiser and ODE solution; the digits case is the exact denoiser of
scikit-learn's digits (a kernel-density posterior mean), which gives real, curved trajectories.
"""

from __future__ import annotations

import torch


def _per_sample(sigma, x):
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.dim() - 1))) if sigma.dim() else sigma


class GaussianDenoiser:
    """Data ~ N(mean, std^2 I):  D(x, sigma) = mean + std^2 / (std^2 + sigma^2) * (x - mean)."""

    def __init__(self, mean: float = 0.3, std: float = 0.5):
        self.mean, self.std = mean, std

    def __call__(self, x, sigma, **extra_args):
        sigma = _per_sample(sigma, x)
        return self.mean + self.std**2 / (self.std**2 + sigma**2) * (x - self.mean)

    def ode_solution(self, x_start, sigma_start: float, sigma_end: float):
        """The probability-flow ODE from sigma_start to sigma_end, exactly:
        x(sigma) - mean = (x_start - mean) * sqrt((std^2 + sigma^2) / (std^2 + sigma_start^2))."""
        ratio = ((self.std**2 + sigma_end**2) / (self.std**2 + sigma_start**2)) ** 0.5
        return self.mean + (x_start - self.mean) * ratio


def exact_gaussian_sampler(gaussian: GaussianDenoiser):
    """A 'sampler' that walks the exact ODE solution over any grid and reports each state via callback."""

    def sample_exact(model, x, sigmas, extra_args=None, callback=None, disable=None):
        start = float(sigmas[0])
        for i in range(len(sigmas) - 1):
            state = gaussian.ode_solution(x, start, float(sigmas[i]))
            model(state, sigmas[i] * state.new_ones([state.shape[0]]), **(extra_args or {}))
            if callback is not None:
                callback({"x": state, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": state})
        return gaussian.ode_solution(x, start, float(sigmas[-1]))

    return sample_exact


def digits_data(dtype=torch.float64) -> torch.Tensor:
    """scikit-learn's 1797 handwritten digits, 8x8, scaled to [-1, 1], as (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=dtype)
    return (images / 8.0 - 1.0).unsqueeze(1)


class KDEDenoiser:
    """The exact denoiser of a kernel density estimate of a data set {y_n} with Gaussian kernels of std tau:

        p(x0) = 1/N sum_n N(x0; y_n, tau^2 I)
        D(x, sigma) = sum_n w_n (y_n + tau^2 / (tau^2 + sigma^2) (x - y_n)),
        w = softmax_n(-|x - y_n|^2 / (2 (tau^2 + sigma^2)))
    """

    def __init__(self, data: torch.Tensor, bandwidth: float = 0.0):
        self.flat = data.reshape(len(data), -1)
        self.bandwidth = bandwidth
        self.calls = 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        flat_x = x.reshape(len(x), -1).to(self.flat.dtype)
        variance = _per_sample(sigma, x).reshape(-1, 1).to(self.flat.dtype) ** 2 + self.bandwidth**2
        weights = torch.softmax(-torch.cdist(flat_x, self.flat).square() / (2 * variance), dim=1)
        shrink = self.bandwidth**2 / variance
        denoised = (1 - shrink) * (weights @ self.flat) + shrink * flat_x
        return denoised.reshape(x.shape).to(x.dtype)
