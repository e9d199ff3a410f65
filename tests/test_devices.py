"""A fit on a device without float64 (Apple's MPS, Intel's XPU, DirectML) never makes a float64 tensor there.

No such device exists on a CI machine, so a tensor subclass stands in for one: every operation whose result stays
"on the device" and is float64 raises, as MPS does; moving a tensor to a named device (``.to(device, ...)``,
``.cpu()``) leaves it, as moving to the CPU does there.
"""

import pytest
import torch

from dode_core import distill, sample
from models import GaussianDenoiser


def _names_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args)


def _float64_left_on_device(value) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_float64_left_on_device(v) for v in value)
    return isinstance(value, NoFloat64Device) and value.dtype == torch.float64


class NoFloat64Device(torch.Tensor):
    """A tensor on a device that has no float64."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaving = func is torch.Tensor.cpu or (func is torch.Tensor.to and _names_device(args[1:], kwargs))
        result = super().__torch_function__(func, types, args, kwargs)
        if leaving:
            return result.as_subclass(torch.Tensor) if isinstance(result, torch.Tensor) else result
        if _float64_left_on_device(result):
            raise RuntimeError(f"{getattr(func, '__name__', func)}: float64 is not supported on this device")
        return result


def test_the_stand_in_device_does_refuse_float64():
    x = torch.ones(2).as_subclass(NoFloat64Device)
    with pytest.raises(RuntimeError, match="float64 is not supported on this device"):
        x.double()
    assert x.to("cpu", torch.float64).dtype == torch.float64  # leaving the device is allowed


@pytest.mark.parametrize("name, history", [("sample_euler", 1), ("sample_dpmpp_2m", "auto"), ("sample_heun", 2)])
def test_a_fit_on_a_device_without_float64_stays_in_float32_there(K, karras, name, history):
    gaussian = GaussianDenoiser()

    def model(x, sigma, **extra_args):
        return gaussian(x, sigma).to(torch.float32)

    sampler, sigmas = getattr(K, name), karras(4, dtype=torch.float32)
    x = (torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 80.0).as_subclass(NoFloat64Device)
    lam = distill(model, x, sigmas, sampler, history=history, teacher_factor=4)
    base, dode, _ = lam.heldout()
    assert dode < base
    out = sample(model, x, sigmas, sampler, lam, disable=True)
    assert isinstance(out, NoFloat64Device) and out.dtype == torch.float32
