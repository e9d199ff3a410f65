"""ComfyUI nodes: thin adapters from ComfyUI objects to dode_core calls (see issue: ComfyUI nodes).

Imported only inside ComfyUI (the package's __init__ checks that comfy is importable).
"""

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
