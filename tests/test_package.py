"""The plugin as hosts see it: importable outside ComfyUI, consistent versions, host-safe requirements."""

import importlib.util
import os
import subprocess
import sys

import tomllib
from conftest import ROOT

import dode_core


def test_the_plugin_imports_outside_comfyui_without_importing_comfy():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('dode_plugin', {os.path.join(ROOT, '__init__.py')!r},\n"
        f"    submodule_search_locations=[{ROOT!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['dode_plugin'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert not hasattr(module, 'comfy_entrypoint') and not hasattr(module, 'NODE_CLASS_MAPPINGS')\n"
        "assert 'comfy' not in sys.modules\n"
        "import dode_plugin.dode_core as core\n"
        "assert not any(name.split('.')[0] in ('comfy', 'modules', 'gradio', 'k_diffusion') for name in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr


def test_versions_agree():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["version"] == dode_core.__version__
    assert project["tool"]["comfy"]["PublisherId"]


def test_host_requirements_never_pin_torch_or_pull_k_diffusion():
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        names = [line.split("#")[0].strip().lower() for line in handle if line.split("#")[0].strip()]
    assert not any(name.startswith(("torch", "k-diffusion", "numpy")) for name in names), names


def test_install_finds_nothing_missing_here():
    spec = importlib.util.spec_from_file_location("dode_install", os.path.join(ROOT, "install.py"))
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    assert install.missing_requirements() == []
