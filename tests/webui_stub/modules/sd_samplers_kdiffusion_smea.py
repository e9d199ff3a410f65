"""Mirrors reForge's modules/sd_samplers_kdiffusion_smea.py (commit 3b56b26) as far as the adapter meets it: the
functions of its "Euler Dy", "Euler SMEA Dy", "Euler Negative" and "Euler Negative Dy" entries live here, not in
the k-diffusion module (reForge's KDiffusionSampler looks a name up in its sampling module, then here), and every
step draws churn noise from this module's own ``torch`` with ``gamma = max(s_churn / steps, sqrt(2) - 1)``, so
they add noise whatever the settings. Only that is kept: an Euler step after the churn (no half-resolution step,
no settings)."""

import k_diffusion.sampling
import torch


def _euler_with_churn(name):
    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            gamma = 2 ** 0.5 - 1
            sigma_hat = sigmas[i] * (gamma + 1)
            x = x + torch.randn_like(x) * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
            denoised = model(x, sigma_hat * s_in, **extra_args)
            d = k_diffusion.sampling.to_d(x, sigma_hat, denoised)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
            x = x + d * (sigmas[i + 1] - sigma_hat)
        return x

    sample.__name__ = sample.__qualname__ = name
    return sample


sample_euler_dy = _euler_with_churn("sample_euler_dy")
sample_euler_smea_dy = _euler_with_churn("sample_euler_smea_dy")
sample_euler_negative = _euler_with_churn("sample_euler_negative")
sample_euler_dy_negative = _euler_with_churn("sample_euler_dy_negative")
