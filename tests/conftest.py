import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def K():
    """k-diffusion's samplers: the reference implementations, from the package itself."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-diffusion 0.1.1 imports the deprecated pkg_resources
        import k_diffusion.sampling

    return k_diffusion.sampling


@pytest.fixture
def karras(K):
    def make(steps, sigma_min=0.002, sigma_max=80.0, dtype=torch.float64):
        return K.get_sigmas_karras(steps, sigma_min, sigma_max, device="cpu").to(dtype)

    return make
