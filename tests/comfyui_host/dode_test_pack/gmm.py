"""The exact denoiser of a Gaussian mixture whose weights depend on the conditioning (pure torch, no ComfyUI).

Data: x0 ~ sum_k w_k(c) N(mu_k, s_k^2 I) in D dimensions, with w(c) = softmax(c * a) for a fixed vector a, so that
the positive and negative conditionings of a CFG guider see different mixtures and CFG bends the ODE. Noise: the
sampler's state is x = alpha * x0 + sigma * eps (alpha = 1 for eps models, 1 - sigma for flow/CONST models, as
ComfyUI's model_sampling writes them). Then, per component,

    p(k | x) ~ w_k N(x; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)
    E[x0 | x, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha mu_k)

which stays finite at alpha = 0 (flow at sigma = 1: the prior mean). Everything is computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPONENTS = 8
STD_RANGE = (0.3, 0.6)
# (components, mean scale, std range) of the mixtures the tests use. "separated": 8 islands about 22 apart in 256
# dimensions, each 0.3-0.6 wide: a few-step sampler sends 5-10% of latents to another island, and an RMSE over a
# batch mostly counts those (which island, not how well). "overlapping": 16 components 0.5 apart per value, 0.5-1 wide.
MIXTURES = {"separated": (COMPONENTS, 1.0, STD_RANGE), "overlapping": (16, 0.5, (0.5, 1.0))}


@dataclass(frozen=True)
class Mixture:
    """means [K, D], stds [K], weight_logits [K] (w(c) = softmax(c * weight_logits)); float64."""

    means: torch.Tensor
    stds: torch.Tensor
    weight_logits: torch.Tensor


def make_mixture(dim: int, seed: int, components: int = COMPONENTS, mean_scale: float = 1.0,
                 std_range: tuple[float, float] = STD_RANGE) -> Mixture:
    """K components with N(0, mean_scale^2) means per value, stds uniform in ``std_range`` and N(0, 1) weight
    logits, all drawn from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    means = mean_scale * torch.randn(components, dim, generator=generator, dtype=torch.float64)
    low, high = std_range
    stds = low + (high - low) * torch.rand(components, generator=generator, dtype=torch.float64)
    weight_logits = torch.randn(components, generator=generator, dtype=torch.float64)
    return Mixture(means, stds, weight_logits)


def named_mixture(name: str, dim: int, seed: int) -> Mixture:
    """One of MIXTURES by name."""
    components, mean_scale, std_range = MIXTURES[name]
    return make_mixture(dim, seed, components, mean_scale, std_range)


def weights(mixture: Mixture, cond: torch.Tensor) -> torch.Tensor:
    """log w(c) [B, K] for per-element conditioning values ``cond`` [B]."""
    return torch.log_softmax(cond.to(torch.float64)[:, None] * mixture.weight_logits[None, :], dim=1)


def posterior_mean(mixture: Mixture, x: torch.Tensor, sigma: torch.Tensor, alpha: torch.Tensor,
                   cond: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for states x [B, ...] at per-element sigma [B] and alpha [B] under conditioning values cond [B];
    returned in x's dtype and shape."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    dim = flat.shape[1]
    sigma = sigma.to(torch.float64).reshape(-1, 1)
    alpha = alpha.to(torch.float64).reshape(-1, 1)
    var = alpha ** 2 * mixture.stds[None, :] ** 2 + sigma ** 2  # [B, K]
    diff = flat[:, None, :] - alpha[:, :, None] * mixture.means[None, :, :]  # [B, K, D]
    logits = weights(mixture, cond) - 0.5 * dim * torch.log(var) - diff.square().sum(-1) / (2 * var)
    resp = torch.softmax(logits, dim=1)  # [B, K]
    gain = alpha * mixture.stds[None, :] ** 2 / var  # [B, K]
    per_component = mixture.means[None, :, :] + gain[:, :, None] * diff
    return (resp[:, :, None] * per_component).sum(1).reshape(x.shape).to(x.dtype)


def sample_data(mixture: Mixture, cond: float, count: int, seed: int) -> torch.Tensor:
    """``count`` draws of x0 [count, D] from the mixture under conditioning value ``cond`` (for the unit checks)."""
    generator = torch.Generator().manual_seed(seed)
    probs = weights(mixture, torch.full((count,), float(cond))).exp()
    which = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    noise = torch.randn(count, mixture.means.shape[1], generator=generator, dtype=torch.float64)
    return mixture.means[which] + mixture.stds[which, None] * noise
