"""ComfyUI entry point of the D-ODE plugin (V3: ``comfy_entrypoint``).

Importing this package outside ComfyUI must work and must not import comfy: the nodes are loaded only
when ComfyUI itself is importable. No NODE_CLASS_MAPPINGS: ComfyUI would prefer it over the V3 entry point.
"""

import importlib.util
import logging

__all__ = []
# web/dode.js: the preset's fit seed starts "fixed" in the frontend (what the V3 schema cannot say)
WEB_DIRECTORY = "./web"

# both of ComfyUI's top-level modules: a folder named "comfy" elsewhere on sys.path is not ComfyUI
if all(importlib.util.find_spec(name) is not None for name in ("comfy", "folder_paths", "comfy_api")):
    try:
        from .nodes import comfy_entrypoint

        __all__ = ["comfy_entrypoint"]
    except Exception:  # one broken plugin must not take ComfyUI down
        logging.getLogger(__name__).exception("D-ODE: the nodes failed to load")
