"""TEMPORARY stand-in for dode_core.refusal_reason until it lands on main (then this file is deleted)."""

import torch

from dode_core.blackbox import SamplerRefusedError, check_deterministic


def refusal_reason(sampler, *, options=None):
    sigmas = torch.tensor([14.6, 3.0, 0.6, 0.03, 0.0], dtype=torch.float64)
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64) * sigmas[0]
    try:
        check_deterministic(object(), x, sigmas, sampler, options=options)
    except SamplerRefusedError as error:
        return str(error)
    except Exception as error:
        return f"it failed on a stand-in ({type(error).__name__}: {error})"
    return None
