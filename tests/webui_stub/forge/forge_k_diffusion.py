"""Mirrors what Forge's vendored k_diffusion/sampling.py (commit dfdcbab) changes in k-diffusion 0.1.1, as far as the
adapter meets it. Forge imports it as ``k_diffusion.sampling`` (its own package shadows the k-diffusion one), so
``install`` turns a separate copy of 0.1.1's sampling module into it:

- ``sample_euler_ancestral`` and ``sample_dpm_2_ancestral`` first read ``model.inner_model.predictor`` (the CFG
  denoiser's ForgeScheduleLinker) and take a flow-model branch for a PredictionFlux; otherwise 0.1.1's code runs;
- ``sample_heunpp2``, ``sample_ipndm``, ``sample_ipndm_v`` and ``sample_deis`` exist. Forge's own are deterministic
  fixed-step ODE samplers (dode_core.refusal_reason accepts each, checked on Forge's file at dfdcbab); here they
  are stand-ins with those names and signatures taking 0.1.1's Heun / linear multistep steps: their numerics do
  not matter to the adapter.
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
        return sampling.sample_heun(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    sampling.sample_heunpp2 = sample_heunpp2
    sampling.sample_ipndm = multistep("sample_ipndm", 4)
    sampling.sample_ipndm_v = multistep("sample_ipndm_v", 4)
    sampling.sample_deis = multistep("sample_deis", 3)
    return sampling
