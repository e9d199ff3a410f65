"""ComfyUI nodes (V3 schema): thin adapters from ComfyUI objects to dode_core calls.

Imported only inside ComfyUI (the package's __init__ checks that comfy is importable). Node ids and input names
are those of version 0.1 where the node still exists, so saved workflows keep loading.
"""

from comfy_api.v0_0_2 import ComfyExtension, io

from . import ksampler_entries
from .folder import register_folder
from .nodes import NODES

register_folder()
ksampler_entries.install_if_enabled()


class DODEExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DODEExtension:
    return DODEExtension()
