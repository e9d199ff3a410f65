"""The D-ODE nodes on ComfyUI's V3 schema: ComfyUI objects in, dode_core calls, ComfyUI objects out.

    Distill λ (D-ODE)            DODEDistillGuider  NOISE + GUIDER + SIGMAS + LATENT, as SamplerCustomAdvanced
    Distill λ (D-ODE, CFG)       DODEDistill        the simple preset: MODEL + positive/negative + cfg (the 0.1 node)
    D-ODE Sampler                DODESampler        a λ file -> SAMPLER (+ the file's SIGMAS)

distill_node.py holds the first two, sampler_node.py the third and the sampler function all three output;
common.py what they share. The API version is pinned (``comfy_api.v0_0_2``, the newest versioned API ComfyUI 0.3.75
ships; ``latest`` moves).
"""

from .distill_node import DODEDistill, DODEDistillGuider
from .sampler_node import DODESampler

NODES = [DODEDistillGuider, DODEDistill, DODESampler]
