"""Mirrors A1111's modules/sd_samplers_extra.py ``restart_sampler`` (A1111 1.10; last changed upstream at commit
066afda, the same file in Forge @dfdcbab and, reading its module from the "sd_sampling" setting, reForge @3b56b26):
Heun steps over the schedule; from 20 steps on it goes back up to a higher sigma once, re-adding noise drawn with
``k_diffusion.sampling.torch.randn_like(x)``: the *module attribute*, which ``Sampler.initialize`` replaced with
``TorchHijack(p)``, so during a job that noise is ``p.rng.next()``, a full batch whatever ``x`` is.

Kept: the Heun steps, the 20-step threshold, where the noise is drawn from. Not kept: A1111's exact restart
schedule (it rebuilds a Karras schedule with 9 restart steps; here the restart segment reuses the run's sigmas).
"""

import k_diffusion.sampling
import torch

RESTART_FROM_STEPS = 20


@torch.no_grad()
def restart_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, restart_list=None):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    pairs = list(zip(sigmas[:-1], sigmas[1:], strict=True))
    if len(sigmas) - 1 >= RESTART_FROM_STEPS:
        low = int(torch.argmin((sigmas - 0.1).abs()))  # restart from sigma ~0.1 back up to ~2, as A1111 does
        high = int(torch.argmin((sigmas - 2.0).abs()))
        if high < low:
            pairs = pairs[:low] + pairs[high:low] + pairs[low:]
    from modules import sd_samplers_common

    sampling = getattr(sd_samplers_common, "sampling", k_diffusion.sampling)  # reForge: the module its setting chose
    last_sigma = None
    for i, (sigma, sigma_next) in enumerate(pairs):
        if last_sigma is not None and last_sigma < sigma:
            x = x + sampling.torch.randn_like(x) * s_noise * (sigma ** 2 - last_sigma ** 2) ** 0.5
        denoised = model(x, sigma * s_in, **extra_args)
        d = sampling.to_d(x, sigma, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma_next, "sigma_hat": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            x_2 = x + d * (sigma_next - sigma)
            d_2 = sampling.to_d(x_2, sigma_next, model(x_2, sigma_next * s_in, **extra_args))
            x = x + (d + d_2) / 2 * (sigma_next - sigma)
        last_sigma = sigma_next
    return x
