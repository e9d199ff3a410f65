"""Every fit proves itself on latents it was not fitted on; a fit that cannot is not delivered."""

import pytest
import torch

import dode_core.fit
from dode_core import NoGainError, distill
from dode_core.fit import proves_gain
from models import GaussianDenoiser


@pytest.fixture
def x_start():
    return torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0


def test_a_teacher_no_better_than_the_student_gives_no_file_and_says_why(K, karras, x_start):
    # the same sampler on the same schedule as teacher: its states are the student's own, so λ = 0 is optimal
    message = (r"D-ODE did not beat the base sampler 'euler' on the 2 held-out latent\(s\) by more than chance "
               r"\(final-state RMSE to the teacher: base 0, D-ODE [0-9.e-]+\); no λ file was written\. .* try "
               r"history=auto, a larger batch")
    with pytest.raises(NoGainError, match=message):
        distill(GaussianDenoiser(), x_start, karras(4), K.sample_euler, teacher_sampler=K.sample_euler,
                teacher_factor=1)


def test_when_the_full_fit_does_not_prove_itself_the_halved_one_is_tried_at_one_more_run(K, karras, x_start,
                                                                                           monkeypatch):
    calls = []

    def model(x, sigma, **extra_args):
        calls.append(1)
        return GaussianDenoiser()(x, sigma)

    full = distill(GaussianDenoiser(), x_start, karras(4), K.sample_euler, teacher_factor=4)
    verdicts = iter([False, True, True])  # full λ: not proven; λ x 0.5: proven
    monkeypatch.setattr(dode_core.fit, "proves_gain", lambda base, dode: next(verdicts))
    halved = distill(model, x_start, karras(4), K.sample_euler, teacher_factor=4)
    assert halved.metadata["lambda_scale"] == "0.5"
    assert torch.equal(halved.lambdas, full.lambdas * 0.5)
    assert halved.metadata["proof_calls"] == str(2 * halved.calls)
    assert len(calls) == int(halved.metadata["teacher_calls"]) + 3 * halved.calls


def test_the_paired_test_wants_a_gain_larger_than_its_noise():
    base = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert proves_gain(base, base * 0.5)  # every latent better
    assert not proves_gain(base, base)  # no gain
    # the mean gain is positive, but one lucky latent carries it: not proven
    assert not proves_gain(base, torch.tensor([0.0, 1.1, 1.1, 1.1]))
    assert proves_gain(torch.tensor([2.0]), torch.tensor([1.0]))  # one latent: better is enough


def test_a_fit_never_delivers_lambdas_a_file_could_not_hold(K, karras, x_start, monkeypatch):
    """λ beyond lambdas_file.MAX_ABS_LAMBDA come from a near-degenerate direction: that call is left uncorrected.
    With the bound made tiny, every call is, and the held-out proof then has no gain to show."""
    monkeypatch.setattr(dode_core.fit, "MAX_ABS_LAMBDA", 1e-12)
    with pytest.raises(NoGainError, match="D-ODE did not beat the base sampler 'euler'"):
        distill(GaussianDenoiser(), x_start, karras(4), K.sample_euler, teacher_factor=4)
