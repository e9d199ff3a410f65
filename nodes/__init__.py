"""ComfyUI nodes (V3 schema): thin adapters from ComfyUI objects to dode_core calls.

Imported only inside ComfyUI (the package's __init__ checks that comfy is importable). Importing registers
nothing: the ``models/dode_lambdas`` folder and the opt-in KSampler entries are set up in the extension's
``on_load``. ComfyUI 0.3.75's loader never calls ``on_load`` (it awaits ``get_node_list`` only; later loaders
await ``on_load`` first), so ``get_node_list`` makes sure it has run; both are idempotent.
"""

from comfy_api.v0_0_2 import ComfyExtension, io

from . import ksampler_entries
from .folder import register_folder
from .nodes import NODES


class DODEExtension(ComfyExtension):
    loaded = False  # per process: every extension object shares ComfyUI's global folder and sampler lists

    async def on_load(self) -> None:
        if DODEExtension.loaded:
            return
        register_folder()
        ksampler_entries.install_if_enabled()
        DODEExtension.loaded = True

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        await self.on_load()  # the node schemas list the folder's files
        return list(NODES)


async def comfy_entrypoint() -> DODEExtension:
    return DODEExtension()
