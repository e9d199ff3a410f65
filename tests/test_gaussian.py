"""The Gaussian case: closed-form denoiser and ODE solution, so every number can be checked exactly."""

import pytest
import torch

from dode_core import Lambdas, distill, sample
from dode_core.blackbox import probe_call_sigmas
from dode_core.teacher import teacher_sigmas
from models import GaussianDenoiser, exact_gaussian_sampler

SAMPLERS = ["sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_lms", "sample_dpm_2"]
SIGMA_MAX = 80.0


@pytest.fixture
def gaussian():
    return GaussianDenoiser(mean=0.3, std=0.5)


@pytest.fixture
def x_start():
    return torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX


def rel_error(actual, expected):
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.parametrize("name, order", [("sample_euler", 1), ("sample_heun", 2), ("sample_dpmpp_2m", 2)])
def test_teacher_converges_to_the_exact_ode_solution(K, karras, gaussian, x_start, name, order):
    sampler, sigmas = getattr(K, name), karras(5)
    call_sigmas, _ = probe_call_sigmas(gaussian, x_start, sigmas, sampler)
    exact = gaussian.ode_solution(x_start, SIGMA_MAX, 0.0)
    errors = []
    for factor in (2, 10, 40):
        grid, points = teacher_sigmas(sigmas.tolist(), call_sigmas, factor)
        assert set(call_sigmas) <= set(grid.tolist()), "every call sigma must lie on the teacher grid"
        errors.append(rel_error(sampler(gaussian, x_start, grid, disable=True), exact))
    # error falls at the solver's order as the teacher grid is refined 4x (10 -> 40 sub-steps)
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] > 0.8 * 4**order, errors


@pytest.mark.parametrize("name", SAMPLERS)
def test_zero_lambdas_reproduce_the_base_sampler_bit_for_bit(K, karras, gaussian, x_start, name):
    sampler, sigmas = getattr(K, name), karras(6)
    call_sigmas, _ = probe_call_sigmas(gaussian, x_start, sigmas, sampler)
    zeros = Lambdas(torch.zeros(len(call_sigmas), 2), tuple(call_sigmas), {"base_sampler": name})
    base = sampler(gaussian, x_start, sigmas, disable=True)
    assert torch.equal(sample(gaussian, x_start, sigmas, sampler, zeros, disable=True), base)


def expected_euler_lambdas(gaussian, sigmas):
    """Euler on N(mean, std^2): every state is mean + a_k (x_T - mean) for one scalar a_k, so one λ per
    call puts the next state exactly on the ODE solution; this recursion gives those λ."""
    s2, sig = gaussian.std**2, [float(s) for s in sigmas]
    gain = [s2 / (s2 + s**2) for s in sig]
    exact = [((s2 + s**2) / (s2 + sig[0] ** 2)) ** 0.5 for s in sig]
    a, lambdas = [1.0], [0.0]
    for k in range(len(sig) - 1):
        ratio = (sig[k + 1] - sig[k]) / sig[k]
        a_zero = a[k] + ratio * a[k] * (1 - gain[k])
        if k == 0:
            a.append(a_zero)
            continue
        v = -ratio * (gain[k] * a[k] - gain[k - 1] * a[k - 1])
        lambdas.append((exact[k + 1] - a_zero) / v)
        a.append(exact[k + 1])
    return lambdas


def test_euler_lambdas_equal_the_closed_form_against_an_exact_teacher(K, karras, gaussian, x_start):
    sigmas = karras(6)
    lam = distill(gaussian, x_start, sigmas, K.sample_euler, teacher_sampler=exact_gaussian_sampler(gaussian))
    expected = expected_euler_lambdas(gaussian, sigmas)
    assert lam.lambdas[:, 0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert lam.call_sigmas == pytest.approx(sigmas[:-1].tolist())
    # with the exact teacher, the corrected Euler run ends on the exact solution
    out = sample(gaussian, x_start, sigmas, K.sample_euler, lam, disable=True)
    exact = gaussian.ode_solution(x_start, SIGMA_MAX, 0.0)
    assert rel_error(out, exact) < 1e-6
    assert rel_error(K.sample_euler(gaussian, x_start, sigmas, disable=True), exact) > 1e-2


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("history", [1, 2])
def test_fitted_lambdas_reduce_the_error_to_the_exact_solution(K, karras, gaussian, x_start, name, history):
    sampler, sigmas = getattr(K, name), karras(5)
    lam = distill(gaussian, x_start, sigmas, sampler, history=history)
    assert torch.isfinite(lam.lambdas).all()
    held_out = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX
    exact = gaussian.ode_solution(held_out, SIGMA_MAX, 0.0)
    base_error = rel_error(sampler(gaussian, held_out, sigmas, disable=True), exact)
    dode_error = rel_error(sample(gaussian, held_out, sigmas, sampler, lam, disable=True), exact)
    print(f"{name} history={history}: base {base_error:.3g}, D-ODE {dode_error:.3g}")
    assert dode_error < 0.2 * base_error


@pytest.mark.parametrize("output_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_outputs_are_fitted_in_float64(K, karras, gaussian, output_dtype):
    """GPU users' models answer in float16/bfloat16 while the sampler state stays float32."""

    def half_model(x, sigma, **extra_args):
        return gaussian(x, sigma).to(output_dtype)

    sigmas = karras(5, dtype=torch.float32)
    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX
    lam = distill(half_model, x, sigmas, K.sample_dpmpp_2m)
    assert lam.metadata["model_dtype"] == str(output_dtype).removeprefix("torch.")
    exact = gaussian.ode_solution(x.double(), SIGMA_MAX, 0.0)
    base_error = rel_error(K.sample_dpmpp_2m(half_model, x, sigmas, disable=True).double(), exact)
    dode_error = rel_error(sample(half_model, x, sigmas, K.sample_dpmpp_2m, lam, disable=True).double(), exact)
    assert dode_error < 0.5 * base_error, (base_error, dode_error)
