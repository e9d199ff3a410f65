"""ComfyUI nodes: thin adapters from ComfyUI objects to dode_core calls.

Imported only inside ComfyUI (the package's __init__ checks that comfy is importable). Node ids are fixed:
other tools call them.
"""

from . import ksampler_entries
from .folder import register_folder
from .nodes import DODEDistill, DODESampler

register_folder()
ksampler_entries.install_if_enabled()

NODE_CLASS_MAPPINGS = {
    "DODEDistill": DODEDistill,
    "DODESampler": DODESampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DODEDistill": "Distill λ (D-ODE)",
    "DODESampler": "D-ODE Sampler",
}
