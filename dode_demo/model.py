"""A small embedded denoiser of 16x16 handwritten digits, so D-ODE can be tried with no GPU and no checkpoint.

The model follows the k-diffusion denoiser convention, ``model(x, sigma, **extra_args) -> denoised``, with
``x`` of shape (B, 1, 16, 16) (float32) and ``sigma`` a scalar or a (B,) tensor. It uses the EDM
preconditioning of Karras et al. (2022), with sigma_data = 0.5:

    c_skip = sd^2 / (sigma^2 + sd^2)      c_out = sigma * sd / sqrt(sigma^2 + sd^2)
    c_in = 1 / sqrt(sigma^2 + sd^2)       c_noise = log(sigma) / 4
    D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise)

F is a small convolutional UNet (32 channels at 16x16, 64 at 8x8 and 4x4; GroupNorm + SiLU residual blocks,
a sinusoidal embedding of c_noise added in each block). The data are scikit-learn's digits scaled to [-1, 1]
and upsampled to 16x16 (see :func:`demo_data`); the network was trained for sigma in
[``SIGMA_MIN``, ``SIGMA_MAX``] = [0.002, 80], the usual EDM range. Outside it the outputs are not meaningful.

The weights (``digits16.safetensors``, next to this file) are produced by ``python -m dode_demo.train``
and read with ``safetensors.torch.load_file``, never with pickle. This module needs only torch (and
safetensors to load the weights); scikit-learn is imported only inside :func:`demo_data`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
IMAGE_SIZE = 16
WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits16.safetensors")

__all__ = ["DemoDenoiser", "SIGMA_MAX", "SIGMA_MIN", "WEIGHTS_PATH", "demo_data", "load_demo_model"]


def demo_data() -> torch.Tensor:
    """The training data: scikit-learn's ``load_digits()`` (1797 images, 8x8, values 0..16) scaled to [-1, 1]
    and upsampled to 16x16 bilinearly (align_corners=False), as a float32 tensor of shape (1797, 1, 16, 16)."""
    from sklearn.datasets import load_digits  # lazily: dode_core itself must import without scikit-learn

    images = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)


class SinusoidalEmbedding(nn.Module):
    """[cos(w_k t), sin(w_k t)] for fixed frequencies w_k = pi * 2^(k * 6 / (n - 1)), k = 0..n-1 (pi to 64 pi).

    c_noise = log(sigma) / 4 spans about [-1.55, 1.1] over the trained sigma range, so the lowest frequency
    varies slowly over the whole range and the highest resolves small changes of sigma."""

    def __init__(self, num_frequencies: int = 32):
        super().__init__()
        exponents = torch.linspace(0.0, 6.0, num_frequencies, dtype=torch.float32)
        self.register_buffer("frequencies", math.pi * 2.0**exponents, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + embedding, GroupNorm -> SiLU -> conv, with a (1x1 when needed) skip."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (through its skip)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """F(x, c_noise): 16x16 (32 ch) -> 8x8 (64 ch) -> 4x4 (64 ch) and back, with concatenated skips."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 64), emb_dim: int = 128, num_frequencies: int = 32):
        super().__init__()
        c1, c2, c3 = channels
        self.embed = SinusoidalEmbedding(num_frequencies)
        self.emb_mlp = nn.Sequential(nn.Linear(2 * num_frequencies, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(1, c1, 3, padding=1)
        self.enc1 = ResBlock(c1, c1, emb_dim)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.enc2 = ResBlock(c2, c2, emb_dim)
        self.down2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.enc3 = ResBlock(c3, c3, emb_dim)
        self.mid = ResBlock(c3, c3, emb_dim)
        self.dec3 = ResBlock(c3 + c3, c3, emb_dim)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = ResBlock(c2 + c2, c2, emb_dim)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = ResBlock(c1 + c1, c1, emb_dim)
        self.norm_out = nn.GroupNorm(8, c1)
        self.conv_out = nn.Conv2d(c1, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # F starts at 0: D starts as c_skip * x
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.emb_mlp(self.embed(c_noise)))
        h1 = self.enc1(self.conv_in(x), emb)  # 16x16
        h2 = self.enc2(self.down1(h1), emb)  # 8x8
        h3 = self.enc3(self.down2(h2), emb)  # 4x4
        h = self.mid(h3, emb)
        h = self.dec3(torch.cat([h, h3], dim=1), emb)
        h = self.up2(h)
        h = self.dec2(torch.cat([h, h2], dim=1), emb)
        h = self.up1(h)
        h = self.dec1(torch.cat([h, h1], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class DemoDenoiser(nn.Module):
    """D(x, sigma) for 16x16 digits in [-1, 1], EDM-preconditioned; a k-diffusion-style denoiser.

    ``sigma`` is a Python number, a 0-d tensor or a (B,) tensor; valid for sigma in [sigma_min, sigma_max].
    Inputs are computed in float32 and the output is returned in the dtype of ``x``.
    """

    sigma_min = SIGMA_MIN
    sigma_max = SIGMA_MAX
    sigma_data = SIGMA_DATA

    def __init__(self):
        super().__init__()
        self.net = UNet()

    def forward(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        sigma = sigma.reshape(-1)
        s = sigma[:, None, None, None]
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1.0 / (s**2 + sd2).sqrt()
        c_noise = sigma.log() / 4.0
        return (c_skip * x + c_out * self.net(c_in * x, c_noise)).to(dtype)


def load_demo_model(device="cpu", path: str | None = None) -> DemoDenoiser:
    """The shipped demo denoiser, in eval mode with requires_grad False, weights loaded as float32.

    Reads ``digits16.safetensors`` next to this module (or ``path``) with ``safetensors.torch.load_file``."""
    from safetensors.torch import load_file

    path = WEIGHTS_PATH if path is None else path
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the demo denoiser's weights are missing: {path!r}. They ship with dode_demo; to rebuild them "
            "(a few minutes on a CPU) run: python -m dode_demo.train"
        )
    state = {name: tensor.float() for name, tensor in load_file(path, device="cpu").items()}
    model = DemoDenoiser()
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device)
