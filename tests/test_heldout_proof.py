"""Every fit proves itself on every latent (each judged with λ fitted on the others), against the base sampler on
the user's schedule, with a teacher that is measurably closer to the ODE's end; a fit that cannot is not delivered."""

import re

import pytest
import torch

import dode_core.crossfit
from dode_core import NoGainError, distill
from dode_core.crossfit import fit_call, proves_gain, ratio_standard_error, t_critical
from dode_core.fit import TeacherNotConvergedError
from models import GaussianDenoiser


@pytest.fixture
def x_start():
    return torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0


def constant_denoiser(x, sigma, **extra_args):
    """D = 0 whatever x: the ODE is x(s) = x0 s / s0, which Euler solves exactly on any schedule."""
    return torch.zeros_like(x)


def test_an_exact_base_sampler_cannot_be_beaten_and_no_file_says_so(K, karras, x_start):
    with pytest.raises(NoGainError) as caught:
        distill(constant_denoiser, x_start, karras(4), K.sample_euler, teacher_factor=4)
    message = str(caught.value)
    assert "'euler'" in message and "8 latents" in message and "no λ file was written" in message
    base = re.search(r"base ([-0-9.e+]+), D-ODE", message)
    assert base and float(base.group(1)) < 1e-12  # the figures: the base run is exact (to rounding)


def test_leave_one_out_lambdas_by_hand():
    # one term; latents 0 and 1 agree on λ = 2, latent 2 alone wants λ = -4
    G = torch.tensor([[[1.0]], [[1.0]], [[1.0]]], dtype=torch.float64)
    b = torch.tensor([[2.0], [2.0], [-4.0]], dtype=torch.float64)
    c = torch.tensor([4.0, 4.0, 16.0], dtype=torch.float64)
    fit = fit_call(G, b, c, floor=1e-12, history=1, max_terms=2)
    # without latent 0: (2 - 4) / 2 = -1, the same without latent 1, without latent 2: 4 / 2 = 2; their errors
    # c - 2 λ b + λ² G: 4 + 4 + 1, 9, 16 + 16 + 4: 54 > 24 with λ = 0, so the call is left alone
    assert fit.energy_before == 24.0 and fit.terms == 0 and fit.energy_after == 24.0
    assert fit.lambdas.tolist() == [0.0, 0.0] and not fit.per_latent.any()


def test_a_call_whose_lambdas_help_the_latents_they_were_not_fitted_on_is_corrected():
    G = torch.ones(4, 1, 1, dtype=torch.float64)
    b = torch.tensor([[1.0], [1.2], [0.8], [1.0]], dtype=torch.float64)
    c = torch.full((4,), 2.0, dtype=torch.float64)
    fit = fit_call(G, b, c, floor=1e-12, history=1, max_terms=1)
    assert fit.terms == 1 and fit.lambdas.tolist() == [1.0]
    # latent 0 gets (1.2 + 0.8 + 1.0) / 3 = 1.0, latent 1 gets (1 + 0.8 + 1) / 3
    assert fit.per_latent[:, 0].tolist() == pytest.approx([1.0, 2.8 / 3, 3.2 / 3, 1.0])
    assert fit.energy_after < fit.energy_before


def test_history_auto_takes_the_term_count_with_the_least_leave_one_out_error():
    # the second direction is noise: each latent's b_2 has another sign; the first alone is better out of sample
    G = torch.eye(2, dtype=torch.float64).expand(6, 2, 2).clone()
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    c = torch.full((6,), 3.0, dtype=torch.float64)
    auto = fit_call(G, b, c, floor=1e-12, history="auto", max_terms=3)
    assert auto.terms == 1 and auto.lambdas.tolist() == [1.0, 0.0, 0.0]
    both = fit_call(G, b, c, floor=1e-12, history=2, max_terms=2)  # both terms or none: both beat none
    assert both.terms == 2 and auto.energy_after < both.energy_after < both.energy_before


def test_the_paired_test_wants_a_gain_beyond_chance_at_95_percent():
    assert t_critical(7) == 1.895 and t_critical(100) == 1.645
    base = torch.ones(8)
    assert proves_gain(base, base * 0.5)  # every latent better
    assert not proves_gain(base, base)  # no gain
    # every latent better, at very different scales (a difference test would drown in the largest)
    scales = torch.tensor([1e-4, 1e-2, 1.0, 1e2, 1.0, 3.0, 1e-3, 10.0])
    assert proves_gain(scales, scales * torch.tensor([0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.5, 0.4]))
    # seven of eight 10% better, one three times worse: log gains 0.105 x 7 and -1.1, t = 0.66 < 1.895
    assert not proves_gain(base, torch.tensor([0.9] * 7 + [3.0]))
    # the typical latent is better but the far one costs more than all of them gain: the RMSE would be worse
    assert not proves_gain(torch.tensor([1.0] * 7 + [10.0]), torch.tensor([0.5] * 7 + [14.0]))
    assert proves_gain(torch.tensor([0.0, 1.0, 2.0, 1.0]), torch.tensor([0.0, 0.1, 0.2, 0.1]))  # exact ones are ties


def test_the_claims_spread_is_its_standard_error_by_the_delta_method():
    base = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert ratio_standard_error(base, base * 0.25) == 0.0  # every latent at the same ratio: no spread
    dode = torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=torch.float64)  # R^2 = 0.5
    # std([0, .5, .5, 1] - .5) = 0.4082; / (2 * 1 * 2 * 0.7071)
    assert ratio_standard_error(base, dode) == pytest.approx(0.40825 / 2.82843, rel=1e-4)


def test_a_fit_never_delivers_lambdas_a_file_could_not_hold(K, karras, x_start, monkeypatch):
    """λ beyond file_format.MAX_ABS_LAMBDA come from a near-degenerate direction: that call is left uncorrected.
    With the bound made tiny, every call is, and the proof then has no gain to show."""
    monkeypatch.setattr(dode_core.crossfit, "MAX_ABS_LAMBDA", 1e-12)
    with pytest.raises(NoGainError, match="D-ODE did not beat the base sampler 'euler'"):
        distill(GaussianDenoiser(), x_start, karras(4), K.sample_euler, teacher_factor=4)


def test_the_proof_and_its_figures_travel_in_the_file(K, karras, x_start):
    lam = distill(GaussianDenoiser(), x_start, karras(4), K.sample_euler, teacher_factor=4)
    base, dode, count = lam.heldout()
    assert count == 8 and dode < base
    assert lam.metadata["heldout_method"] == "leave-one-out"
    assert 0 < float(lam.metadata["heldout_ratio_se"]) < dode / base
    assert 0 <= float(lam.metadata["teacher_error"]) < 0.25 * base
    assert float(lam.metadata["sigma_min"]) == 0.002  # no sigma_min given, the Gaussian has none: EDM's


def test_a_teacher_that_is_not_converged_is_refused_with_what_to_do(K, karras, x_start):
    """A 'teacher' whose result moves with its number of sub-steps by far more than the student's error."""

    def drifting_teacher(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return K.sample_euler(model, x, sigmas, extra_args=extra_args, disable=True) + 0.01 * len(sigmas)

    with pytest.raises(TeacherNotConvergedError, match="raise teacher_factor"):
        distill(GaussianDenoiser(), x_start, karras(4), K.sample_euler, teacher_factor=8,
                teacher_sampler=drifting_teacher)


def test_the_teacher_reaches_the_end_below_the_schedules_last_sigma(K, x_start):
    """A schedule ending at 0.5 -> 0 (ComfyUI's simple schedule on a flow model): the teacher steps on down to the
    model's sigma_min, so its end is the ODE's end; one jump from 0.5 would be as coarse as the student's."""
    from dode_core.teacher import teacher_sigmas

    grid, _ = teacher_sigmas([1.0, 0.75, 0.5, 0.0], [1.0, 0.75, 0.5], 4, sigma_min=0.001)
    assert float(grid[-2]) == 0.001 and float(grid[-1]) == 0.0
    # the tail 0.5 -> 0.001 (6.2 in log sigma, 18 average intervals) gets 4x the sub-steps
    assert len(grid) == 1 + 4 + 4 + 16 + 1
