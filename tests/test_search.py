"""dode_core.search: schedules scored by the final error of the corrected sampler, on a surrogate of the teacher run."""

import math

import pytest
import torch

from dode_core.schedule import dense_grid, run_dense_teacher
from dode_core.search import (
    AYS_SD1_SIGMAS,
    EFFORT,
    ScheduleSearch,
    Surrogate,
    ays_shape,
    batch_slopes,
    start_paths,
    surrogate_error,
)
from dode_core.teacher import sample_dpmpp_2m_teacher
from models import GaussianDenoiser

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


@pytest.fixture(scope="module")
def gaussian_run():
    gaussian = GaussianDenoiser(mean=0.3, std=0.5)
    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    grid = dense_grid(SIGMA_MAX, SIGMA_MIN, 60)
    return gaussian, x, grid, run_dense_teacher(gaussian, x, grid, sample_dpmpp_2m_teacher)


def test_the_batch_slope_is_the_gaussian_denoisers_own(gaussian_run):
    """D(x, s) = m + std^2 / (std^2 + s^2) (x - m) is affine in x: its slope over the batch is exactly that."""
    gaussian, _, grid, run = gaussian_run
    slopes = batch_slopes(run.states[:-1], run.denoised)
    expected = [0.25 / (0.25 + float(s) ** 2) for s in grid[:-1]]
    assert slopes == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", ["sample_euler", "sample_dpmpp_2m", "sample_heun"])
def test_on_gaussian_data_the_surrogate_run_is_the_real_run(K, gaussian_run, name):
    """Where the model is affine in x the linearisation is exact: the surrogate's final error of the corrected
    sampler equals the real one's, on any schedule of grid sigmas."""
    from dode_core.blackbox import measure_sampler
    from dode_core.crossfit import CrossFitRun, final_errors

    gaussian, x, grid, run = gaussian_run
    sampler = getattr(K, name)
    surrogate = Surrogate(gaussian, run, slice(None))
    sigmas = grid[[0, 12, 30, 45, 60]]  # four steps on the grid, ending in 0
    fake = surrogate_error(surrogate, x, sigmas, sampler, name, 1, 1, {}, {})
    sampler_map = measure_sampler(gaussian, x, sigmas, sampler)
    targets = [run.state_at(s) for s in sampler_map.call_sigmas[1:]] + [run.states[-1]]
    real = sampler(CrossFitRun(gaussian, name, sampler_map, targets, 1, 1), x.clone(), sigmas.clone(), disable=True)
    assert fake == pytest.approx(float(final_errors(real, run.states[-1]).mean()), rel=1e-6)


def test_the_search_ends_no_worse_than_any_start_and_scores_each_schedule_once(K, gaussian_run):
    gaussian, x, grid, run = gaussian_run
    surrogate = Surrogate(gaussian, run, slice(None))
    user = [0, 20, 40, 55, len(grid) - 1]
    starts = start_paths(run, 4, user, slice(None))
    assert {"user", "karras", "log-uniform", "ays-shape", "one-step", "propagated"} <= set(starts)
    assert all(len(path) == 5 for path in starts.values())  # four steps each: a start never changes the call count
    search = ScheduleSearch(surrogate, x, grid, K.sample_euler, "euler", 1, 1, {}, {}, EFFORT["default"])
    ranked = search.run(starts)
    best = ranked[0][0]
    assert all(best <= search.score(path) for path in starts.values())
    assert [value for value, _, _ in ranked] == sorted(value for value, _, _ in ranked)
    assert len(search.scores) == len(ranked) <= EFFORT["default"].max_evaluations
    assert best < search.score(user)  # a search that finds nothing better than the user's schedule is no search


def test_the_ays_shape_is_the_table_on_its_own_range_and_its_log_interpolation_elsewhere():
    table = ays_shape(AYS_SD1_SIGMAS[0], AYS_SD1_SIGMAS[-1], len(AYS_SD1_SIGMAS))
    assert table == pytest.approx(list(AYS_SD1_SIGMAS), rel=1e-12)
    mapped = ays_shape(80.0, 0.002, 6)
    assert mapped[0] == pytest.approx(80.0) and mapped[-1] == pytest.approx(0.002)
    # 6 points sit at table positions 0, 2, 4, 6, 8, 10: the table's own log spacing, stretched onto 80..0.002
    scale = math.log(80.0 / 0.002) / math.log(AYS_SD1_SIGMAS[0] / AYS_SD1_SIGMAS[-1])
    expected = [80.0 * (AYS_SD1_SIGMAS[k] / AYS_SD1_SIGMAS[0]) ** scale for k in range(0, 11, 2)]
    assert mapped == pytest.approx(expected, rel=1e-12)


def test_a_fitted_schedule_runs_the_ays_shape_for_real_as_it_is_whatever_the_surrogate_says(K, karras, caplog):
    from dode_core import distill

    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    with caplog.at_level("INFO", logger="dode_core.fit"):
        distill(GaussianDenoiser(), x, karras(6), K.sample_euler, fit_schedule=True)
    real_runs = [r.getMessage() for r in caplog.records if "on the search latents" in r.getMessage()]
    assert any("(ays-shape)" in message for message in real_runs), real_runs
    assert len(real_runs) <= EFFORT["default"].real_candidates + 1


def test_a_fit_schedule_other_than_false_true_or_thorough_is_named(K, karras):
    from dode_core import distill

    x = torch.randn(4, 1, 2, 2, dtype=torch.float64) * 80
    with pytest.raises(ValueError, match="fit_schedule must be False, True or 'thorough'; got 'yes'"):
        distill(GaussianDenoiser(), x, karras(4), K.sample_euler, fit_schedule="yes")


def test_the_search_reports_progress_and_a_raising_callback_stops_it(K, karras):
    """Between the schedules it scores, the search hands the host its (done, total) again, so a Cancel during a
    long search stops it, with no model call after."""
    from dode_core import distill

    gaussian = GaussianDenoiser()
    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    seen, calls = [], []

    class Cancelled(Exception):
        pass

    def model(x, sigma, **extra_args):
        calls.append(1)
        return gaussian(x, sigma)

    def callback(done, total):
        seen.append(done)
        if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]:  # the third report without a model call: searching
            raise Cancelled

    with pytest.raises(Cancelled):
        distill(model, x, karras(4), K.sample_euler, fit_schedule=True, callback=callback)
    assert len(calls) == seen[-1]  # nothing ran after the cancel


@pytest.mark.parametrize("fit_schedule", [False, True])
def test_the_last_progress_report_is_a_full_bar_at_the_model_calls_made(K, karras, fit_schedule):
    """The total is an estimate (a searched schedule's runs, a raised teacher): a finished fit still ends at (done,
    done), so a host's bar (the demo's, which a log file gets only when full) shows it finished."""
    from dode_core import distill

    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    reports = []
    lam = distill(GaussianDenoiser(), x, karras(4), K.sample_euler, fit_schedule=fit_schedule,
                  callback=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (int(lam.metadata["model_calls"]),) * 2
    assert reports.count(reports[-1]) == 1  # once: a host that counts its events sees one per model call
