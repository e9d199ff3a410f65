"""ComfyUI entry point of the D-ODE plugin (V3: ``comfy_entrypoint``).

Importing this package outside ComfyUI must work and must not import comfy: the nodes are loaded only
when ComfyUI itself is importable. No NODE_CLASS_MAPPINGS: ComfyUI would prefer it over the V3 entry point.
"""

import importlib.util
import logging

# ComfyUI serves this folder at /extensions/<this folder's name>/: the frontend's node help panel reads
# web/docs/<node id>.md from there, and web/dode.js starts the preset's fit seed at "fixed" (the V3 schema cannot)
WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY"]

# both of ComfyUI's top-level modules: a folder named "comfy" elsewhere on sys.path is not ComfyUI
if all(importlib.util.find_spec(name) is not None for name in ("comfy", "folder_paths", "comfy_api")):
    try:
        from .nodes import comfy_entrypoint

        __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
    except Exception:  # one broken plugin must not take ComfyUI down
        logging.getLogger(__name__).exception("D-ODE: the nodes failed to load")
