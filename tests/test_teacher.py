"""The teacher: its grid reaches the model's sigma_min, its error is measured against itself at half the factor."""

import math

import pytest
import torch

from dode_core import SamplerRefusedError, distill, refusal_reason
from dode_core.schedule import dense_grid, merge_points
from dode_core.teacher import convergence_error, final_substeps, half_grid, model_sigma_min, teacher_sigmas
from models import GaussianDenoiser


def test_the_final_interval_gets_sub_steps_by_its_length_at_most_four_times():
    # three intervals of log length 0.29, 0.41, 0.69 (mean 0.46); the tail 0.25 -> 0.001 is 5.5: 12x, capped at 4x
    assert final_substeps([1.0, 0.75, 0.5, 0.25, 0.0], 10, 0.001) == 40
    # a tail as long as the average interval gets the factor itself
    assert final_substeps([1.0, 0.5, 0.25, 0.0], 10, 0.125) == 10
    grid, _ = teacher_sigmas([14.61, 2.0, 0.0292, 0.0], [14.61, 2.0, 0.0292], 5, sigma_min=0.0292)
    assert float(grid[-2]) == pytest.approx(0.0292) and len(grid) == 1 + 5 + 5 + 1  # no tail below sigma_min


def test_sigma_min_comes_from_the_caller_the_model_or_the_edm_default():
    class Wrapped:
        sigma_min = torch.tensor(0.0292)

    assert model_sigma_min(Wrapped()) == pytest.approx(0.0292)
    assert model_sigma_min(Wrapped(), 0.001) == 0.001
    assert model_sigma_min(GaussianDenoiser()) == 0.002
    with pytest.raises(ValueError, match="sigma_min must be a finite number > 0"):
        model_sigma_min(GaussianDenoiser(), float("nan"))


def test_the_half_grid_keeps_every_other_point_and_every_student_point():
    grid = torch.tensor([10.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 0.0], dtype=torch.float64)
    assert half_grid(grid, [5.0, 0.0]).tolist() == [10.0, 6.0, 5.0, 4.0, 2.0, 0.0]


def test_the_convergence_estimate_is_the_richardson_gap():
    final = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    half = torch.tensor([[[[3.0, 3.0], [3.0, 3.0]]], [[[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    assert convergence_error(final, half, order=2).tolist() == [1.0, 0.0]  # |gap| / (2^2 - 1) per latent
    assert convergence_error(final, half, order=1).tolist() == [3.0, 0.0]


def test_the_estimate_tracks_the_teachers_real_error_on_gaussian_data(K, karras):
    """On Gaussian data the ODE's end is known in closed form: the estimate is within a factor 2 of the teacher's
    actual error at the end (DPM-Solver++(2M), second order)."""
    gaussian = GaussianDenoiser()
    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    lam = distill(gaussian, x, karras(6), K.sample_euler, teacher_factor=8)
    from dode_core.teacher import sample_dpmpp_2m_teacher

    grid, points = teacher_sigmas(karras(6).tolist(), karras(6).tolist()[:-1], 8, 0.002)
    actual = sample_dpmpp_2m_teacher(gaussian, x.clone(), grid) - gaussian.ode_solution(x, 80.0, 0.0)
    actual_rms = float(actual.square().mean().sqrt())
    estimate = float(lam.metadata["teacher_error"])
    assert 0.5 * actual_rms < estimate < 2.0 * actual_rms, (estimate, actual_rms)


def test_a_sampler_whose_stage_sigmas_rise_is_refused_before_any_model_call(K, karras):
    """heunpp2's pattern: at step i it calls the model at s_i, s_{i+1}, s_{i+2}, and the next step at s_{i+1} again."""

    def sample_rising(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            if i + 2 < len(sigmas) - 1:
                model(x, sigmas[i + 2] * s_in)
            x = denoised + sigmas[i + 1] / sigmas[i] * (x - denoised)
        return x

    calls = []

    def model(x, sigma, **extra_args):
        calls.append(1)
        return GaussianDenoiser()(x, sigma)

    reason = refusal_reason(sample_rising)
    assert reason is not None and "stage sigmas rise" in reason
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64) * 80
    with pytest.raises(SamplerRefusedError, match="stage sigmas rise"):
        distill(model, x, karras(4), sample_rising)
    assert calls == []


def test_merging_the_users_sigmas_into_a_dense_grid_moves_a_close_point_and_inserts_a_far_one():
    grid = dense_grid(80.0, 0.002, 20)
    close = float(grid[5]) * 1.001  # a hair from a grid point: that point moves onto it
    between = math.sqrt(float(grid[8]) * float(grid[9]))  # half way in log: inserted
    merged = merge_points(grid, [close, between, 0.0])
    values = merged.tolist()
    assert close in values and between in values and len(values) == len(grid) + 1
    assert float(grid[5]) not in values and values == sorted(values, reverse=True) and values[-1] == 0.0
