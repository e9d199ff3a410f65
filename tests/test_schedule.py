"""The schedule choice (dode_core/schedule.py): one-step costs from a dense teacher run, the dynamic program, the
recorder that reads teacher states from model calls, and the samplers a fitted schedule refuses."""

import itertools
import math

import pytest
import torch

from dode_core import SamplerRefusedError
from dode_core.schedule import (
    TeacherRecorder,
    cheapest_path,
    check_calls_on_schedule,
    dense_grid,
    one_step_costs,
    run_dense_teacher,
    schedule_range,
)
from models import GaussianDenoiser


def test_dense_grid_spans_the_range_exactly_and_ends_in_zero():
    grid = dense_grid(80.0, 0.002, 50)
    assert len(grid) == 51 and grid.dtype == torch.float64
    assert float(grid[0]) == 80.0 and float(grid[-2]) == 0.002 and float(grid[-1]) == 0.0
    assert bool((grid[1:] < grid[:-1]).all())


def test_dense_grid_refuses_a_range_that_is_not_one():
    with pytest.raises(ValueError, match="sigma_max > sigma_min > 0; got 1 and 1"):
        dense_grid(1.0, 1.0, 10)


def test_one_step_costs_match_the_euler_step_written_out():
    generator = torch.Generator().manual_seed(3)
    grid = dense_grid(10.0, 0.1, 7)
    states = torch.randn(8, 5, 2, 3, generator=generator, dtype=torch.float64)
    denoised = torch.randn(7, 5, 2, 3, generator=generator, dtype=torch.float64)
    costs = one_step_costs(grid, states, denoised, chunk=3)  # chunks that do not divide the grid
    for i, j in itertools.product(range(8), range(8)):
        if j <= i:
            assert math.isinf(float(costs[i, j]))
            continue
        x_hat = denoised[i] + float(grid[j] / grid[i]) * (states[i] - denoised[i])
        expected = (x_hat - states[j]).flatten(1).square().mean(1).sqrt().mean()
        assert float(costs[i, j]) == pytest.approx(float(expected), rel=1e-12)


def test_the_dynamic_program_finds_the_cheapest_path_of_exactly_n_steps():
    generator = torch.Generator().manual_seed(0)
    count, steps = 9, 3
    costs = torch.rand(count, count, generator=generator, dtype=torch.float64).triu(1)
    costs[torch.ones(count, count).tril().bool()] = math.inf
    brute = min(
        ([0, *middle, count - 1] for middle in itertools.combinations(range(1, count - 1), steps - 1)),
        key=lambda path: sum(float(costs[a, b]) for a, b in itertools.pairwise(path)),
    )
    assert cheapest_path(costs, steps) == brute


def test_the_dynamic_program_spreads_a_convex_cost_evenly():
    grid_points = torch.arange(13, dtype=torch.float64)
    costs = (grid_points[None, :] - grid_points[:, None]) ** 2
    costs[torch.ones(13, 13).tril().bool()] = math.inf
    assert cheapest_path(costs, 4) == [0, 3, 6, 9, 12]


def test_the_dynamic_program_refuses_more_steps_than_grid_intervals():
    costs = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot choose 4 steps from a grid of 4 sigmas; use 1 to 3 steps"):
        cheapest_path(costs, 4)


def test_the_recorder_keeps_heuns_state_not_its_predictor_stage(K):
    """Heun calls the model twice at every inner grid sigma: first with the Euler predictor, then with the state;
    the recorder must keep the second (k-diffusion's own callback, trusted here, reports the state)."""
    model = GaussianDenoiser()
    grid = dense_grid(20.0, 0.05, 6)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20
    reported = {}
    recorder = TeacherRecorder(model, grid)
    final = K.sample_heun(recorder, x.clone(), grid, callback=lambda info: reported.update({info["i"]: info["x"]}),
                          disable=True)
    states, denoised = recorder.lists(final)
    for i in range(len(grid) - 1):
        assert torch.equal(states[i], reported[i])
        assert torch.equal(denoised[i], model(reported[i], grid[i]))
    assert torch.equal(states[-1], final)


def test_the_recorder_says_which_grid_sigma_the_teacher_skipped(K):
    grid = dense_grid(20.0, 0.05, 6)
    recorder = TeacherRecorder(GaussianDenoiser(), grid)
    final = K.sample_euler(recorder, torch.ones(2, 1, 2, 2, dtype=torch.float64) * 20, grid[[0, 2, 3, 4, 5, 6]],
                           disable=True)
    with pytest.raises(ValueError, match=r"no model call at 1 of the 6 grid sigmas \(first: 8.50"):
        recorder.lists(final)


def test_a_dense_euler_teacher_on_the_exact_gaussian_gives_the_cost_of_euler_steps(K):
    """On N(mean, std^2) the ODE is known in closed form; with an exact (very fine) teacher the cost of an edge is
    the Euler step's true one-step error, and the chosen schedule's summed cost is below Karras' on the grid."""
    gaussian = GaussianDenoiser(mean=0.3, std=0.5)
    grid = dense_grid(80.0, 0.002, 200)
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    run = run_dense_teacher(gaussian, x, grid, K.sample_dpmpp_2m)
    exact = torch.stack([gaussian.ode_solution(x, 80.0, float(s)) for s in grid])
    assert float((torch.stack(run.states) - exact).abs().max()) < 1e-3 * float(exact.abs().max())

    schedule, path = run.choose(4)
    assert len(schedule) == 5 and float(schedule[0]) == 80.0 and float(schedule[-1]) == 0.0
    costs = one_step_costs(run.grid, run.states, run.denoised)
    karras_path = [0, 67, 133, 199, 200]  # a Karras ladder of 4 steps on this Karras grid
    assert sum(float(costs[a, b]) for a, b in itertools.pairwise(path)) < \
        sum(float(costs[a, b]) for a, b in itertools.pairwise(karras_path))


def test_schedule_range_reads_steps_and_range_and_needs_a_final_zero():
    assert schedule_range(torch.tensor([14.6, 3.0, 0.5, 0.03, 0.0])) == (4, pytest.approx(14.6), pytest.approx(0.03))
    with pytest.raises(ValueError, match="fit_schedule needs a schedule that ends in 0"):
        schedule_range(torch.tensor([14.6, 3.0, 0.5]))


def test_stage_sigmas_between_schedule_points_are_refused(K, karras):
    from dode_core.blackbox import probe_call_sigmas

    sigmas = karras(4)
    model = GaussianDenoiser()
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    check_calls_on_schedule(probe_call_sigmas(model, x, sigmas, K.sample_heun)[0], sigmas, "heun")
    with pytest.raises(SamplerRefusedError, match="sampler 'dpm_2' calls the model at sigma .* between the "
                                                 "schedule's sigmas .* use fit_schedule=False"):
        check_calls_on_schedule(probe_call_sigmas(model, x, sigmas, K.sample_dpm_2)[0], sigmas, "dpm_2")
