"""An embedded demo denoiser (16x16 handwritten digits, pure torch) to try D-ODE with no GPU and no checkpoint.

    from dode_core.demo import load_demo_model, demo_data
    model = load_demo_model()            # model(x, sigma) -> denoised, x: (B, 1, 16, 16), sigma in [0.002, 80]
"""

from .model import DemoDenoiser, demo_data, load_demo_model

__all__ = ["DemoDenoiser", "demo_data", "load_demo_model"]
