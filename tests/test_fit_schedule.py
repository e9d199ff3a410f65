"""distill(..., fit_schedule=True): one dense teacher run chooses the schedule and gives the λ targets.

Measured on the exact denoiser of a kernel density estimate of scikit-learn's digits (bandwidth 0.3), judged on
held-out noise against a converged run (Heun, 100 Karras steps).
"""

import pytest
import torch

from dode_core import SamplerRefusedError, distill, load_lambdas, sample
from models import KDEDenoiser, digits_data

SIGMA_MAX = 80.0


class Counted:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        return self.model(x, sigma, **extra_args)


@pytest.fixture(scope="module")
def digits():
    return KDEDenoiser(digits_data(), bandwidth=0.3)


@pytest.fixture(scope="module")
def noise():
    generator = torch.Generator().manual_seed(0)
    fit = torch.randn(32, 1, 8, 8, generator=generator, dtype=torch.float64) * SIGMA_MAX
    held_out = torch.randn(64, 1, 8, 8, generator=generator, dtype=torch.float64) * SIGMA_MAX
    return fit, held_out


@pytest.fixture(scope="module")
def reference(K, digits, noise):
    sigmas = K.get_sigmas_karras(100, 0.002, SIGMA_MAX).double()
    return K.sample_heun(digits, noise[1].clone(), sigmas, disable=True)


def rmse(a, b):
    return float((a - b).square().mean().sqrt())


@pytest.fixture(scope="module")
def fitted_4(K, digits, noise):
    """dpmpp_2m, 4 calls, fitted schedule, history auto; counted model calls. (On a fitted schedule one λ per call
    gains little here, 0.18 -> 0.17 on 64 latents; two terms 0.18 -> 0.09: auto picks them.)"""
    counted = Counted(digits)
    lam = distill(counted, noise[0], K.get_sigmas_karras(4, 0.002, SIGMA_MAX).double(), K.sample_dpmpp_2m,
                  fit_schedule=True, history="auto")
    return lam, counted.calls


def test_four_calls_on_a_fitted_schedule_beat_every_karras_base_run_at_six(K, digits, noise, reference, fitted_4):
    lam, _ = fitted_4
    dode = rmse(sample(digits, noise[1].clone(), lam.schedule, K.sample_dpmpp_2m, lam, disable=True), reference)
    karras_6 = K.get_sigmas_karras(6, 0.002, SIGMA_MAX).double()
    bases = {name: rmse(getattr(K, f"sample_{name}")(digits, noise[1].clone(), karras_6, disable=True), reference)
             for name in ("euler", "dpmpp_2m", "lms")}
    print(f"fitted schedule {lam.schedule.tolist()}: D-ODE at 4 calls {dode:.4f}; Karras bases at 6 calls {bases}")
    assert dode < 0.6 * min(bases.values())  # measured: 0.09 vs 0.24


def test_a_fitted_schedule_is_in_the_range_ends_in_zero_and_says_so(fitted_4):
    lam, _ = fitted_4
    schedule = lam.schedule
    assert len(schedule) == 5 and float(schedule[-1]) == 0.0
    assert float(schedule[0]) == pytest.approx(SIGMA_MAX) and float(schedule[-2]) >= 0.002 * (1 - 1e-6)
    assert bool((schedule[1:] < schedule[:-1]).all())
    assert lam.schedule_fitted and lam.metadata["schedule_source"] == "fitted"
    assert list(lam.call_sigmas) == pytest.approx(schedule[:-1].tolist())
    assert schedule[1:-1].tolist() != pytest.approx(torch.tensor([12.0, 1.5, 0.1]).tolist(), rel=0.5)


def test_the_whole_fit_is_one_dense_teacher_run_and_its_half_plus_eight_runs_of_the_sampler(fitted_4):
    lam, calls = fitted_4
    teacher = int(lam.metadata["teacher_calls"])
    # a dense grid of teacher_factor x steps sigmas holding the user's, once at the factor and once at half of it
    assert 10 * 4 * 1.5 <= teacher <= 10 * 4 * 1.5 + 2 * 4
    # D-ODE and the base on the user's schedule, four searched schedules and the AYS shape run for real, the base on
    # the chosen one: 4 calls each, within 3 teacher runs in all (the bound)
    assert calls == teacher + 8 * 4 == int(lam.metadata["model_calls"]) <= 3 * 10 * 4
    assert lam.metadata["proof_calls"] == str(2 * 4)
    assert "run for real" in lam.metadata["schedule_search"]


def test_the_file_keeps_its_fitted_schedule(tmp_path, fitted_4):
    lam, _ = fitted_4
    path = tmp_path / "fitted.safetensors"
    lam.save(str(path))
    loaded = load_lambdas(str(path))
    assert loaded.schedule_fitted and torch.equal(loaded.schedule, lam.schedule)


def test_heun_gets_a_fitted_schedule_with_its_stage_calls_on_it(K, digits, noise):
    lam = distill(digits, noise[0], K.get_sigmas_karras(3, 0.002, SIGMA_MAX).double(), K.sample_heun,
                  fit_schedule=True, history="auto")
    points = lam.schedule.tolist()
    assert lam.calls == 5
    assert all(any(abs(c - s) <= 1e-6 * s for s in points) for c in lam.call_sigmas)


def test_a_user_schedule_fit_says_user(K, digits, noise):
    lam = distill(digits, noise[0][:8], K.get_sigmas_karras(3, 0.002, SIGMA_MAX).double(), K.sample_euler)
    assert lam.metadata["schedule_source"] == "user" and not lam.schedule_fitted


def test_dpm_2_is_refused_before_any_model_call(K, digits, noise):
    counted = Counted(digits)
    with pytest.raises(SamplerRefusedError, match=r"sampler 'dpm_2' calls the model at sigma .* between the "
                                                  r"schedule's sigmas .* use fit_schedule=False for it"):
        distill(counted, noise[0], K.get_sigmas_karras(3, 0.002, SIGMA_MAX).double(), K.sample_dpm_2,
                fit_schedule=True)
    assert counted.calls == 0


def test_a_schedule_that_does_not_end_in_zero_is_refused_with_what_to_do(K, digits, noise):
    sigmas = K.get_sigmas_karras(4, 0.002, SIGMA_MAX).double()[:-1]
    with pytest.raises(ValueError, match="fit_schedule needs a schedule that ends in 0 .* or fit_schedule=False"):
        distill(digits, noise[0], sigmas, K.sample_euler, fit_schedule=True)
