"""ComfyUI entry point of the D-ODE plugin.

Importing this package outside ComfyUI must work and must not import comfy: the nodes are loaded only
when ComfyUI itself is importable.
"""

import importlib.util
import logging

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

if importlib.util.find_spec("comfy") is not None:
    try:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    except Exception:  # one broken plugin must not take ComfyUI down
        logging.getLogger(__name__).exception("D-ODE: the nodes failed to load")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
