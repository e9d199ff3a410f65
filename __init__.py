"""ComfyUI entry point of the D-ODE plugin.

Importing this package outside ComfyUI must work and must not import comfy: the nodes are loaded only
when ComfyUI itself is importable.
"""

import importlib.util
import logging

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

# both of ComfyUI's top-level modules: a folder named "comfy" elsewhere on sys.path is not ComfyUI
if all(importlib.util.find_spec(name) is not None for name in ("comfy", "folder_paths")):
    try:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    except Exception:  # one broken plugin must not take ComfyUI down
        logging.getLogger(__name__).exception("D-ODE: the nodes failed to load")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
