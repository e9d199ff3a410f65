"""The demo: an embedded denoiser (16x16 handwritten digits, pure torch) to try D-ODE with no GPU and no checkpoint,
its training (train.py), the demo job and its report (``python -m dode_demo``, ``bash run.sh demo``), and the λ files
the job fitted (lambdas/). Beside dode_core, not in it: the method does not need it, and no host ships it.

    from dode_demo import load_demo_model, demo_data
    model = load_demo_model()            # model(x, sigma) -> denoised, x: (B, 1, 16, 16), sigma in [0.002, 80]
"""

from .model import DemoDenoiser, demo_data, load_demo_model

__all__ = ["DemoDenoiser", "demo_data", "load_demo_model"]
