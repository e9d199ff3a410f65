"""nodes/<name>.py without nodes/__init__.py (which needs ComfyUI): the module loaded inside a stand-in package around
the nodes folder, for tests of the parts that need no running ComfyUI (the plot, the errors, the identity)."""

import importlib.util
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dode_ui_nodes"


def nodes_module(name: str):
    if PACKAGE not in sys.modules:
        module = types.ModuleType(PACKAGE)
        module.__path__ = [os.path.join(ROOT, "nodes")]
        sys.modules[PACKAGE] = module
    full = f"{PACKAGE}.{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(full, os.path.join(ROOT, "nodes", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]
