"""Mirrors what Forge's vendored k_diffusion/sampling.py (commit dfdcbab) changes in k-diffusion 0.1.1, as far as the
adapter meets it. Forge imports it as ``k_diffusion.sampling`` (its own package shadows the k-diffusion one), so
``install`` turns a separate copy of 0.1.1's sampling module into it:

- ``sample_euler_ancestral`` and ``sample_dpm_2_ancestral`` first read ``model.inner_model.predictor`` (the CFG
  denoiser's ForgeScheduleLinker) and take a flow-model branch for a PredictionFlux; otherwise 0.1.1's code runs;
- ``sample_heunpp2``, ``sample_ipndm``, ``sample_ipndm_v`` and ``sample_deis`` exist. Forge's own are deterministic
  fixed-step ODE samplers; here they are stand-ins with those names and signatures taking 0.1.1's linear multistep
  steps: their numerics do not matter to the adapter. HeunPP2 keeps Forge's order of model calls (its third call
  of a step, at sigma_{i+2}, comes before the next step's at sigma_{i+1}), which dode_core refuses.
"""

from backend.modules.k_prediction import PredictionFlux


def install(sampling):
    """Make ``sampling`` (a fresh copy of k-diffusion 0.1.1's module) Forge's."""

    def reads_the_predictor(original):
        def sample(model, x, sigmas, *args, **kwargs):
            if isinstance(model.inner_model.predictor, PredictionFlux):
                raise NotImplementedError("the flow-model branch is not mirrored")
            return original(model, x, sigmas, *args, **kwargs)

        sample.__name__ = sample.__qualname__ = original.__name__
        return sample

    sampling.sample_euler_ancestral = reads_the_predictor(sampling.sample_euler_ancestral)
    sampling.sample_dpm_2_ancestral = reads_the_predictor(sampling.sample_dpm_2_ancestral)

    def multistep(name, order):
        def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
            return sampling.sample_lms(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                       order=order)

        sample.__name__ = sample.__qualname__ = name
        return sample

    def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None):
        """The model calls of Forge's sample_heunpp2 (from Carzit's sd-webui-samplers-scheduler, as ComfyUI's): at
        step i sigma_i, sigma_{i+1}, then sigma_{i+2}, and the next step starts again at sigma_{i+1}. The weights
        are simplified; the call order is what dode_core judges."""
        extra_args = extra_args or {}
        s_in = x.new_ones([x.shape[0]])
        s_end = sigmas[-1]
        for i in range(len(sigmas) - 1):
            d = sampling.to_d(x, sigmas[i], model(x, sigmas[i] * s_in, **extra_args))
            dt = sigmas[i + 1] - sigmas[i]
            if sigmas[i + 1] == s_end:
                x = x + d * dt
                continue
            x_2 = x + d * dt
            d_2 = sampling.to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            if sigmas[i + 2] != s_end:
                x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
                d_2 = (d_2 + sampling.to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))) / 2
            x = x + (d + d_2) / 2 * dt
        return x

    sampling.sample_heunpp2 = sample_heunpp2
    sampling.sample_ipndm = multistep("sample_ipndm", 4)
    sampling.sample_ipndm_v = multistep("sample_ipndm_v", 4)
    sampling.sample_deis = multistep("sample_deis", 3)
    return sampling
