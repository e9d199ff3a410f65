"""The embedded demo denoiser (dode_demo): the shipped weights load, denoise real digits well, and sample
digits.

Margins were set from measurements of the shipped weights (seed 0, 2000 steps), noted at each assert.
"""

import os

import pytest
import torch

from dode_demo import DemoDenoiser, demo_data, load_demo_model
from dode_demo.model import WEIGHTS_PATH


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small gains little from a second thread, and on a busy 2-core machine OpenMP's spinning
    threads can make each call many times slower; the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return load_demo_model()


@pytest.fixture(scope="module")
def data():
    return demo_data()


def nearest_distance(images, data):
    """For each image, the L2 distance to its nearest training image."""
    return torch.cdist(images.reshape(len(images), -1).double(), data.reshape(len(data), -1).double()).min(1).values


def test_demo_data_shape_and_range(data):
    assert data.shape == (1797, 1, 16, 16) and data.dtype == torch.float32
    assert float(data.min()) == -1.0 and float(data.max()) == 1.0


def test_shipped_weights_load_small_and_frozen(model):
    assert isinstance(model, DemoDenoiser) and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (model.sigma_min, model.sigma_max, model.sigma_data) == (0.002, 80.0, 0.5)
    assert os.path.getsize(WEIGHTS_PATH) <= 3_000_000


def test_missing_weights_raise_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dode_demo.train"):
        load_demo_model(path=str(tmp_path / "absent.safetensors"))


def test_scalar_and_per_sample_sigma(model):
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 3.0
    with torch.no_grad():
        by_float = model(x, 3.0)
        by_tensor = model(x, torch.tensor(3.0))
        by_sample = model(x, torch.full((4,), 3.0))
        mixed = model(x, torch.tensor([0.002, 0.5, 3.0, 80.0]))
        one_by_one = torch.cat([model(x[i:i + 1], s) for i, s in enumerate([0.002, 0.5, 3.0, 80.0])])
    for out in (by_float, by_tensor, by_sample, mixed):
        assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(by_tensor, by_float)
    torch.testing.assert_close(by_sample, by_float)
    torch.testing.assert_close(mixed, one_by_one, atol=1e-5, rtol=1e-4)  # samples do not leak into each other


# Measured MSE / MSE of predicting the data mean, on these 256 digits and this noise: 0.069 at sigma 0.5 and
# 0.471 at sigma 2 (0.063-0.074 and 0.433-0.475 over ten other draws). At sigma 2 no denoiser can do much
# better: the exact posterior mean of the training set itself (which contains these digits) gives 0.401.
@pytest.mark.parametrize("sigma, bound", [(0.5, 0.15), (2.0, 0.55)])
def test_denoises_real_digits_far_better_than_the_mean(model, data, sigma, bound):
    generator = torch.Generator().manual_seed(0)
    clean = data[torch.randperm(len(data), generator=generator)[:256]]
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    with torch.no_grad():
        mse = float((model(noisy, sigma) - clean).square().mean())
    trivial = float((data.mean(0) - clean).square().mean())
    print(f"sigma {sigma}: MSE {mse:.4f}, data-mean MSE {trivial:.4f}, ratio {mse / trivial:.3f}")
    assert mse < bound * trivial


def test_heun_from_noise_lands_near_the_digits(K, karras, model, data):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 1, 16, 16, generator=generator)
    with torch.no_grad():
        samples = K.sample_heun(model, noise * 80.0, karras(20, dtype=torch.float32), disable=True)
    assert samples.shape == noise.shape and torch.isfinite(samples).all()
    to_data = float(nearest_distance(samples, data).mean())
    to_noise = float(nearest_distance(noise.clamp(-1, 1), data).mean())
    own = torch.cdist(data.reshape(len(data), -1).double(), data.reshape(len(data), -1).double())
    own.fill_diagonal_(float("inf"))
    between_digits = float(own.min(1).values.mean())  # a training digit to its nearest other training digit
    print(f"mean nearest-neighbour distance: samples {to_data:.3f}, noise {to_noise:.3f}, "
          f"training digits among themselves {between_digits:.3f}")
    assert to_data < 0.35 * to_noise  # measured 3.57 / 15.25 = 0.23
    assert to_data < 1.5 * between_digits  # measured 3.57 / 2.86 = 1.25
