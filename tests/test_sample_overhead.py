"""Sampling with λ costs what the base sampler costs (issue 13), and refuses what it cannot run (issue 12.6).

The schedule probe runs once per schedule (counted, not timed); a changed schedule, sampler or option is still
refused before the first model call; the correction keeps the model's own tensors and dtype; a per-channel
file for another latent format and a non-finite corrected output raise clear errors.
"""

import pytest
import torch

import dode_core.correction as correction
from dode_core import DODEDenoiser, Lambdas, ScheduleMismatchError, make_sampler, sample
from dode_core.blackbox import probe_call_sigmas
from dode_core.correction import PROBE_CACHE_SIZE, apply_correction, corrected_output, differences
from models import GaussianDenoiser


class Counting:
    """Counts calls to a function (the probe, or a model)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture(autouse=True)
def probes(monkeypatch):
    """The probe as sample() calls it, counted; the cache starts empty."""
    correction.clear_probe_cache()
    counted = Counting(probe_call_sigmas)
    monkeypatch.setattr(correction, "probe_call_sigmas", counted)
    yield counted
    correction.clear_probe_cache()


def latent(batch=3, channels=2, dtype=torch.float32, seed=0):
    return torch.randn(batch, channels, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 80.0


def lambdas_for(sampler, sigmas, value=0.2, x=None, channels=None):
    """λ = value at every call after the first, for the calls ``sampler`` makes on ``sigmas``."""
    call_sigmas, _ = probe_call_sigmas(GaussianDenoiser(), latent() if x is None else x, sigmas, sampler)
    shape = (len(call_sigmas), 1) if channels is None else (len(call_sigmas), 1, channels)
    lambdas = torch.full(shape, value)
    lambdas[0] = 0.0
    return Lambdas(lambdas, tuple(call_sigmas), {"base_sampler": sampler.__name__, "steps": str(len(sigmas) - 1)})


# ------------------------------------------------------------------------------------- the probe cache


def test_the_probe_runs_once_for_a_repeated_schedule(K, karras, probes):
    sigmas = karras(6, dtype=torch.float32)
    lam = lambdas_for(K.sample_dpmpp_2m, sigmas)
    gaussian = GaussianDenoiser()
    first = sample(gaussian, latent(), sigmas, K.sample_dpmpp_2m, lam, disable=True)
    assert probes.calls == 1
    # the same schedule in a new tensor, another batch size and resolution, through make_sampler: no probe
    again = sample(gaussian, latent(), sigmas.clone(), K.sample_dpmpp_2m, lam, disable=True)
    make_sampler(K.sample_dpmpp_2m, lam)(gaussian, latent(batch=5, seed=1), sigmas.clone(), disable=True)
    sample(gaussian, torch.randn(2, 2, 8, 6) * 80.0, sigmas, K.sample_dpmpp_2m, lam, disable=True)
    assert probes.calls == 1
    sample(gaussian, torch.randn(2, 2, 4, 4, dtype=torch.float64), sigmas, K.sample_dpmpp_2m, lam, disable=True)
    assert probes.calls == 1  # the probe does not read the latent's dtype
    sample(gaussian, torch.randn(2, 2, 4) * 80.0, sigmas, K.sample_dpmpp_2m, lam, disable=True)
    assert probes.calls == 2  # it does read its number of dimensions
    assert torch.equal(again, first)  # what the cache answers is what the probe said


@pytest.mark.parametrize("change", ["more steps", "one sigma moved 1%", "sampler", "option"])
def test_a_changed_schedule_is_refused_before_the_first_model_call(K, karras, probes, change):
    sigmas = karras(4, dtype=torch.float32)
    lam = lambdas_for(K.sample_euler, sigmas)
    sample(GaussianDenoiser(), latent(), sigmas, K.sample_euler, lam, disable=True)  # cached now
    sampler, options = K.sample_euler, {}
    if change == "more steps":
        sigmas = karras(5, dtype=torch.float32)
    elif change == "one sigma moved 1%":
        sigmas = sigmas.clone()
        sigmas[2] *= 1.01
    elif change == "sampler":
        sampler = K.sample_heun
    else:  # s_churn raises every call's sigma (s_noise 0 keeps it deterministic)
        options = {"s_churn": 1.0, "s_noise": 0.0}
    model = Counting(GaussianDenoiser())
    with pytest.raises(ScheduleMismatchError, match="these λ were fitted for another schedule"):
        sample(model, latent(), sigmas, sampler, lam, disable=True, **options)
    assert model.calls == 0
    assert probes.calls == 2


def sample_restart_like(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler steps that re-add noise halfway from 6 steps on, as A1111's Restart does from 20: deterministic at
    the step counts a list of samplers is checked at, not at the user's."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        if len(sigmas) - 1 >= 6 and i == 2:
            x = x + torch.randn_like(x) * 0.1
    return x


def test_a_sampler_that_injects_noise_on_this_schedule_is_refused_before_the_first_model_call(K, karras, probes):
    from dode_core import SamplerRefusedError, cached_call_sigmas

    model = Counting(GaussianDenoiser())
    assert len(cached_call_sigmas(model, latent(), karras(4, dtype=torch.float32), sample_restart_like)) == 4
    six = karras(6, dtype=torch.float32)
    lam = Lambdas(torch.zeros(6, 1), tuple(six[:-1].tolist()), {"base_sampler": "restart_like", "steps": "6"})
    for _ in range(2):  # the refusal is cached with the schedule: the second run does not probe again
        with pytest.raises(SamplerRefusedError, match=r"^at 6 steps: sampler 'restart_like' injects noise"):
            sample(model, latent(), six, sample_restart_like, lam, disable=True)
    assert probes.calls == 2 and model.calls == 0


def test_the_probe_cache_is_bounded(K, karras, probes):
    schedules = [karras(4, sigma_max=80.0 + i, dtype=torch.float32) for i in range(PROBE_CACHE_SIZE + 1)]
    for sigmas in schedules:
        sample(GaussianDenoiser(), latent(), sigmas, K.sample_euler, lambdas_for(K.sample_euler, sigmas), disable=True)
    assert probes.calls == PROBE_CACHE_SIZE + 1
    assert len(correction._probe_cache.items) == PROBE_CACHE_SIZE
    # the oldest was evicted, the newest is still there
    sample(GaussianDenoiser(), latent(), schedules[-1], K.sample_euler, lambdas_for(K.sample_euler, schedules[-1]),
           disable=True)
    assert probes.calls == PROBE_CACHE_SIZE + 1
    sample(GaussianDenoiser(), latent(), schedules[0], K.sample_euler, lambdas_for(K.sample_euler, schedules[0]),
           disable=True)
    assert probes.calls == PROBE_CACHE_SIZE + 2


def test_an_option_that_cannot_be_keyed_is_probed_every_run(K, karras, probes):
    def sample_euler_with(model, x, sigmas, extra_args=None, callback=None, disable=None, hook=None):
        return K.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    sigmas = karras(4, dtype=torch.float32)
    lam = lambdas_for(K.sample_euler, sigmas)
    for _ in range(2):
        sample(GaussianDenoiser(), latent(), sigmas, sample_euler_with, lam, disable=True, hook=object())
    assert probes.calls == 2


# ------------------------------------------------------------------------------------- the correction


@pytest.mark.parametrize("history, channels", [(1, None), (2, None), (3, None), (1, 2), (2, 2)])
def test_the_fused_correction_equals_the_fits_form(history, channels):
    """The λ were fitted against apply_correction's D + sum_j λ_j (D_{k-j+1} - D_{k-j}); sampling must agree."""
    generator = torch.Generator().manual_seed(0)
    outputs = [torch.randn(3, 2, 5, 5, generator=generator) for _ in range(history + 1)]
    shape = (history,) if channels is None else (history, channels)
    lambdas_k = torch.randn(shape, generator=generator)
    expected = apply_correction(outputs[-1], differences(outputs, history), lambdas_k)
    weights = lambdas_k.double().tolist() if channels is None else list(lambdas_k.double())
    got = corrected_output(outputs[-1], outputs[:-1], weights)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype, returned", [(torch.float16, torch.float16), (torch.bfloat16, torch.float32)])
def test_a_half_precision_output_is_rounded_once_or_kept_in_float32(dtype, returned):
    """float16: the float32 correction rounded once to float16; bfloat16 (too coarse): the float32 correction."""
    generator = torch.Generator().manual_seed(0)
    previous, denoised = (torch.randn(2, 4, 8, 8, generator=generator).to(dtype) for _ in range(2))
    exact = torch.lerp(previous.float(), denoised.float(), 1.37)  # D + 0.37 (D - D_prev) in float32
    for weights in ([0.37], [0.37, 0.0]):  # the one-kernel path and the general one agree
        got = corrected_output(denoised, [previous, previous], weights)
        assert got.dtype == returned
        assert torch.equal(got, exact.to(returned))


def test_the_wrapper_keeps_the_models_own_outputs_and_only_the_history_it_needs():
    outputs = [torch.full((1, 2, 1, 1), float(value)) for value in range(5)]
    lam = Lambdas(torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.5, 0.25], [0.5, 0.25], [0.5, 0.25]]), (5, 4, 3, 2, 1))
    returned = iter(outputs)
    wrapped = DODEDenoiser(lambda x, sigma, **extra_args: next(returned), lam)
    for k, sigma in enumerate((5, 4, 3, 2, 1)):
        wrapped(torch.zeros(1, 2, 1, 1), torch.tensor([float(sigma)]))
        assert len(wrapped.raw_outputs) == min(k + 1, 2)
        assert all(a is b for a, b in zip(wrapped.raw_outputs, outputs[max(k - 1, 0) : k + 1], strict=True))


# ---------------------------------------------------------------------------------- issue 12 point 6


def test_a_per_channel_file_for_another_latent_format_is_refused_before_the_first_model_call(K, karras):
    sigmas = karras(4, dtype=torch.float32)
    lam = lambdas_for(K.sample_euler, sigmas, channels=64)
    model = Counting(GaussianDenoiser())
    with pytest.raises(ValueError) as error:
        sample(model, latent(channels=4), sigmas, K.sample_euler, lam, disable=True)
    assert "64 channels" in str(error.value) and "(3, 4, 4, 4)" in str(error.value)
    assert model.calls == 0
    # the wrapper on its own checks too, before calling the model
    with pytest.raises(ValueError, match="for 64 channels, but this latent"):
        DODEDenoiser(model, lam)(latent(channels=4), torch.full((3,), 80.0))
    assert model.calls == 0


def test_a_per_channel_file_for_this_latent_format_corrects_each_channel(K, karras):
    sigmas = karras(4, dtype=torch.float32)
    lam = lambdas_for(K.sample_euler, sigmas, channels=2)
    lam.lambdas[1:, 0, 1] = 0.0  # channel 1 uncorrected: it must follow the base sampler exactly
    gaussian, x = GaussianDenoiser(), latent(channels=2)
    out = sample(gaussian, x, sigmas, K.sample_euler, lam, disable=True)
    base = K.sample_euler(gaussian, x, sigmas, disable=True)
    assert torch.allclose(out[:, 1], base[:, 1], rtol=1e-6, atol=1e-5)
    assert not torch.allclose(out[:, 0], base[:, 0], rtol=1e-3)


def test_a_correction_that_overflows_raises_naming_the_call_and_its_sigma(K, karras):
    sigmas = karras(4, dtype=torch.float32)  # calls at 80, 9.723, 0.47, 0.002
    lam = lambdas_for(K.sample_euler, sigmas, value=1e30)
    model = Counting(GaussianDenoiser())
    with pytest.raises(ValueError) as error:
        sample(model, latent(), sigmas, K.sample_euler, lam, disable=True)
    message = str(error.value)
    assert "model call 2" in message and "sigma 0.47" in message and "non-finite" in message and "1e+30" in message
    assert model.calls == 3  # it stops at the call that went wrong


def test_a_model_that_returns_nan_is_named_not_the_correction(K, karras):
    sigmas = karras(4, dtype=torch.float32)
    lam = lambdas_for(K.sample_euler, sigmas)
    gaussian = GaussianDenoiser()

    calls = []

    def nan_at_first_call(x, sigma, **extra_args):
        calls.append(sigma)
        return gaussian(x, sigma) * (float("nan") if len(calls) == 1 else 1.0)

    with pytest.raises(ValueError, match=r"^the model returned non-finite values \(NaN or inf\) at model call 0 "
                                         r"\(sigma 80\); D-ODE did not cause them"):
        sample(nan_at_first_call, latent(), sigmas, K.sample_euler, lam, disable=True)


def test_a_half_precision_correction_that_overflows_its_dtype_is_kept_in_float32():
    outputs = iter([torch.zeros(1, 1, 2, 2, dtype=torch.float16), torch.full((1, 1, 2, 2), 30000.0).half()])
    lam = Lambdas(torch.tensor([[0.0], [10.0]]), (2.0, 1.0))
    wrapped = DODEDenoiser(lambda x, sigma, **extra_args: next(outputs), lam)
    wrapped(torch.zeros(1, 1, 2, 2), torch.tensor([2.0]))
    corrected = wrapped(torch.zeros(1, 1, 2, 2), torch.tensor([1.0]))  # 30000 + 10 * 30000 > 65504
    assert corrected.dtype == torch.float32
    assert corrected.flatten().tolist() == [330000.0] * 4
