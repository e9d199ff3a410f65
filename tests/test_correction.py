"""The correction itself, the wrapper that applies it, and what distill reports while it runs."""

import pytest
import torch

from dode_core import DODEDenoiser, Lambdas, distill, make_sampler, sample
from dode_core.correction import apply_correction, differences
from models import GaussianDenoiser


class Scripted:
    """A 'model' that returns a fixed output per call, to check the arithmetic by hand."""

    def __init__(self, outputs):
        self.outputs, self.calls = outputs, 0
        self.sigma_data = 0.5  # an attribute a host sampler might read from the model

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        return self.outputs[self.calls - 1].clone()


def test_history_terms_and_correction_by_hand():
    outputs = [torch.full((1, 2, 1, 1), value) for value in (1.0, 3.0, 7.0)]
    assert [float(t[0, 0]) for t in differences(outputs, 2)] == [4.0, 2.0]
    # D~ = 7 + 0.5 * (7 - 3) + (-0.25) * (3 - 1) = 8.5
    corrected = apply_correction(outputs[2], differences(outputs, 2), torch.tensor([0.5, -0.25]))
    assert corrected.flatten().tolist() == [8.5, 8.5]
    # one λ per channel: channel 0 gets 0.5 * 4, channel 1 gets 1.0 * 4
    per_channel = apply_correction(outputs[2], differences(outputs, 1), torch.tensor([[0.5, 1.0]]))
    assert per_channel.flatten().tolist() == [9.0, 11.0]


def test_the_wrapper_corrects_each_call_with_its_own_lambdas():
    outputs = [torch.full((1, 1), value) for value in (1.0, 3.0, 7.0)]
    lam = Lambdas(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.5, -0.25]]), (3.0, 2.0, 1.0))
    wrapped = DODEDenoiser(Scripted(outputs), lam)
    x = torch.zeros(1, 1)
    got = [float(wrapped(x, torch.tensor([s]))) for s in (3.0, 2.0, 1.0)]
    assert got == [1.0, 3.0 + 2.0 * 2.0, 8.5]
    assert wrapped.sigma_data == 0.5  # attributes of the wrapped model stay reachable


def test_make_sampler_is_a_k_diffusion_sampler_that_matches_sample(K, karras):
    gaussian = GaussianDenoiser()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    lam = distill(gaussian, x, karras(5), K.sample_heun, teacher_factor=4)
    dode_heun = make_sampler(K.sample_heun, lam)
    assert dode_heun.__name__ == "sample_dode_heun"
    out = dode_heun(gaussian, x, karras(5), extra_args={}, callback=None, disable=True)
    assert torch.equal(out, sample(gaussian, x, karras(5), K.sample_heun, lam, disable=True))


@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpmpp_2m"])
def test_distill_costs_two_teacher_runs_a_student_run_and_a_base_run_and_reports_it(K, karras, name):
    sampler, sigmas, factor = getattr(K, name), karras(4), 4
    gaussian = GaussianDenoiser()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0

    calls = []

    def counting_model(x, sigma, **extra_args):
        calls.append(1)
        return gaussian(x, sigma)

    progress = []
    lam = distill(counting_model, x, sigmas, sampler, teacher_factor=factor,
                  callback=lambda done, total: progress.append((done, total)))
    teacher_calls, student_calls = int(lam.metadata["teacher_calls"]), lam.calls
    # the teacher calls once per grid sigma but 0: factor sub-steps per student interval, one step into 0 (the
    # schedule ends at sigma_min 0.002 already); then again at half the factor, for its convergence estimate
    intervals = len(set(lam.call_sigmas) | set(sigmas.tolist())) - 2
    assert teacher_calls == (factor * intervals + 1) + (factor // 2 * intervals + 1)
    # the proof is one base run (the D-ODE side comes with the student run)
    assert lam.metadata["proof_calls"] == str(student_calls)
    assert len(calls) == teacher_calls + 2 * student_calls == int(lam.metadata["model_calls"])
    assert progress == [(i, len(calls)) for i in range(0, len(calls) + 1)]


def test_a_raising_callback_cancels_the_fit_at_once(K, karras):
    gaussian = GaussianDenoiser()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    calls = []

    class Cancelled(Exception):
        pass

    def cancel_at_five(done, total):
        if done == 5:
            raise Cancelled

    def model(x, sigma, **extra_args):
        calls.append(1)
        return gaussian(x, sigma)

    with pytest.raises(Cancelled):
        distill(model, x, karras(4), K.sample_euler, callback=cancel_at_five)
    assert len(calls) == 5


def test_distill_leaves_the_global_random_state_alone(K, karras):
    gaussian = GaussianDenoiser()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    state = torch.get_rng_state()
    distill(gaussian, x, karras(4), K.sample_euler, teacher_factor=2)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_models_extra_args_reach_every_call(K, karras):
    seen = []

    def model(x, sigma, cond=None, **extra_args):
        seen.append(cond)
        return x * 0.5

    x = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    distill(model, x, karras(3), K.sample_euler, extra_args={"cond": "a cat"}, teacher_factor=2)
    assert seen and set(seen) == {"a cat"}


def test_sample_draws_from_the_global_generator_exactly_as_the_base_sampler(K, karras):
    """k-diffusion's Euler draws (unused) noise every step; D-ODE must leave that stream as the base does."""
    gaussian = GaussianDenoiser()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    lam = distill(gaussian, x, karras(4), K.sample_euler, teacher_factor=2)
    torch.manual_seed(3)
    K.sample_euler(gaussian, x, karras(4), disable=True)
    after_base = torch.get_rng_state()
    torch.manual_seed(3)
    sample(gaussian, x, karras(4), K.sample_euler, lam, disable=True)
    assert torch.equal(torch.get_rng_state(), after_base)


def test_a_callback_that_raises_at_the_start_cancels_before_any_model_call(K, karras):
    """Hosts learn the fit's cost as (0, total) and can stop it there (an interrupt during the free probes)."""
    calls, seen = [], []

    class Cancelled(Exception):
        pass

    def cancel_at_once(done, total):
        seen.append((done, total))
        raise Cancelled

    def model(x, sigma, **extra_args):
        calls.append(1)
        return GaussianDenoiser()(x, sigma)

    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    with pytest.raises(Cancelled):
        distill(model, x, karras(4), K.sample_euler, teacher_factor=4, callback=cancel_at_once)
    assert calls == [] and seen == [(0, (4 * 3 + 1) + (2 * 3 + 1) + 2 * 4)]
