"""Samplers D-ODE cannot distill, and inputs it cannot use, give clear errors (never a NaN λ)."""

import pytest
import torch

from dode_core import SamplerRefusedError, distill
from models import GaussianDenoiser


@pytest.fixture
def gaussian():
    return GaussianDenoiser(mean=0.3, std=0.5)


@pytest.fixture
def x_start():
    return torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0


def comfy_style_ancestral(K):
    """Euler ancestral drawing its noise from extra_args["seed"], as ComfyUI's samplers do: every replay
    with the same seed draws the same noise, so only a second seed reveals it."""

    def sample_euler_ancestral_seeded(model, x, sigmas, extra_args=None, callback=None, disable=None):
        generator = torch.Generator().manual_seed((extra_args or {}).get("seed", 0))

        def noise_sampler(sigma, sigma_next):
            return torch.randn(x.shape, generator=generator, dtype=x.dtype)

        return K.sample_euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                        noise_sampler=noise_sampler)

    return sample_euler_ancestral_seeded


@pytest.mark.parametrize("name", ["sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral",
                                  "sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"])
def test_noise_injecting_samplers_are_refused(K, karras, gaussian, x_start, name):
    with pytest.raises(SamplerRefusedError, match=rf"sampler '{name[7:]}' injects noise"):
        distill(gaussian, x_start, karras(4), getattr(K, name))


def test_samplers_seeded_from_extra_args_are_refused(K, karras, gaussian, x_start):
    with pytest.raises(SamplerRefusedError, match="sampler 'euler_ancestral_seeded' injects noise"):
        distill(gaussian, x_start, karras(4), comfy_style_ancestral(K), extra_args={"seed": 7})


def test_a_noisy_teacher_is_refused(K, karras, gaussian, x_start):
    with pytest.raises(SamplerRefusedError, match="sampler 'euler_ancestral' injects noise"):
        distill(gaussian, x_start, karras(4), K.sample_euler, teacher_sampler=K.sample_euler_ancestral)


def test_a_sampler_that_adapts_its_steps_is_refused(K, karras, gaussian, x_start):
    def sample_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None):
        """Takes an extra half step wherever the denoised output moved a lot: steps depend on outputs."""
        denoised, i = None, 0
        while i < len(sigmas) - 1:
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            previous, denoised = denoised, model(x, sigma * x.new_ones([x.shape[0]]))
            if previous is not None and float((denoised - previous).abs().max()) > 0.05 and sigma_next > 0:
                sigma_next = (sigma * sigma_next) ** 0.5
                x = x + (x - denoised) / sigma * (sigma_next - sigma)
                sigmas = torch.cat([sigmas[: i + 1], sigma_next.reshape(1), sigmas[i + 1 :]])
            else:
                x = x + (x - denoised) / sigma * (sigma_next - sigma)
            i += 1
        return x

    with pytest.raises(SamplerRefusedError, match="sampler 'adaptive' .*adapts its steps"):
        distill(gaussian, x_start, karras(4), sample_adaptive, teacher_sampler=K.sample_euler)


def test_a_sampler_that_is_not_affine_in_the_denoised_output_is_refused(K, karras, gaussian, x_start):
    def sample_clamped(model, x, sigmas, extra_args=None, callback=None, disable=None):
        def clamped(x, sigma, **extra):
            return model(x, sigma, **extra).clamp(-0.5, 0.5)  # like a dynamic-thresholding sampler

        return K.sample_euler(clamped, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    with pytest.raises(SamplerRefusedError, match=r"sampler 'clamped' .*not affine in the denoised output"):
        distill(gaussian, x_start, karras(4), sample_clamped)


def test_non_finite_model_output_is_an_error_not_a_nan_lambda(K, karras, x_start):
    def broken(x, sigma, **extra):
        out = x * 0.5
        if float(sigma.reshape(-1)[0]) < 1.0:
            out[0, 0, 0, 0] = float("nan")
        return out

    # the base run on the user's schedule comes first (the teacher is judged against it)
    with pytest.raises(ValueError, match=r"the model returned non-finite values \(NaN or inf\) during the base run "
                                         r"\(user schedule\) at sigma 0.47; no λ were fitted"):
        distill(broken, x_start, karras(4), K.sample_euler)


def test_model_output_of_the_wrong_shape_is_named(K, karras, x_start):
    with pytest.raises(ValueError, match=r"the model returned \(4, 2, 4\) for an input of shape \(4, 2, 4, 4\)"):
        distill(lambda x, sigma, **extra: x[..., 0], x_start, karras(4), K.sample_euler)


@pytest.mark.parametrize("sigmas, message", [
    (torch.tensor([], dtype=torch.float64), r"the schedule has 0 step\(s\)"),
    (torch.tensor([80.0, 0.0], dtype=torch.float64), r"the schedule has 1 step\(s\); .*needs at least 2 steps"),
    (torch.tensor([[80.0, 1.0, 0.0]]), "sigmas must be a 1-D tensor"),
    (torch.tensor([80.0, float("nan"), 0.0]), "sigmas must be finite and >= 0"),
    (torch.tensor([1.0, 80.0, 0.0]), "sigmas must decrease"),
])
def test_bad_schedules_are_named(K, gaussian, x_start, sigmas, message):
    with pytest.raises(ValueError, match=message):
        distill(gaussian, x_start, sigmas, K.sample_euler)


def test_bad_options_are_named(K, karras, gaussian, x_start):
    with pytest.raises(ValueError, match="teacher_factor must be an integer >= 2") as caught:
        distill(gaussian, x_start, karras(4), K.sample_euler, teacher_factor=1)
    assert "got 1" in str(caught.value) and "half the factor" in str(caught.value)
    with pytest.raises(ValueError, match="history must be 1 to 8 or 'auto'; got 'all'"):
        distill(gaussian, x_start, karras(4), K.sample_euler, history="all")
    with pytest.raises(ValueError, match="needs a batch of at least 4 latents") as caught:
        distill(gaussian, x_start[:3], karras(4), K.sample_euler)
    assert "got 3" in str(caught.value)
    with pytest.raises(ValueError, match="x holds non-finite values"):
        distill(gaussian, x_start * float("inf"), karras(4), K.sample_euler)


def test_a_nan_first_sigma_is_named_not_blamed_on_the_latent(K, gaussian, x_start):
    """A host builds the start latent as noise * sigmas[0]: a NaN first sigma makes the latent NaN too, and the
    error must name the schedule, the cause."""
    sigmas = torch.tensor([float("nan"), 1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sigmas must be finite and >= 0; got \[nan, 1, 0\]"):
        distill(gaussian, x_start * sigmas[0], sigmas, K.sample_euler)
