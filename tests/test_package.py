"""The plugin as hosts see it: importable outside ComfyUI, consistent versions, host-safe requirements, and the
file list the Comfy Registry would ship."""

import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT

import dode_core

PRODUCT_FILES = ("__init__.py", "install.py", "requirements.txt", "pyproject.toml", "README.md", "LICENSE",
                 "nodes/__init__.py", "nodes/nodes.py", "dode_core/__init__.py", "dode_webui/__init__.py",
                 "scripts/dode_webui.py", "lambdas/README.md", "example_workflows/dode_distill_then_sample.json",
                 "web/docs/DODEDistillGuider.md", "web/docs/DODEDistill.md", "web/docs/DODESampler.md")
NEVER_SHIPPED = ("tests/", "bench/", ".ci/", ".github/", "tools/", "run.sh", "requirements-dev.txt",
                 "requirements-comfy-test.txt", ".gitignore", ".comfyignore", "dode_demo/")


def load_install():
    spec = importlib.util.spec_from_file_location("dode_install", os.path.join(ROOT, "install.py"))
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    return install


def test_the_plugin_imports_outside_comfyui_without_importing_comfy():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('dode_plugin', {os.path.join(ROOT, '__init__.py')!r},\n"
        f"    submodule_search_locations=[{ROOT!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['dode_plugin'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert not hasattr(module, 'comfy_entrypoint') and not hasattr(module, 'NODE_CLASS_MAPPINGS')\n"
        "assert module.WEB_DIRECTORY == './web'\n"
        "assert 'comfy' not in sys.modules\n"
        "import dode_plugin.dode_core as core\n"
        "assert not any(name.split('.')[0] in ('comfy', 'modules', 'gradio', 'k_diffusion') for name in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr


def test_versions_agree():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+: the tests' tools, not the product, read TOML
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["version"] == dode_core.__version__
    assert project["tool"]["comfy"]["PublisherId"]


def test_host_requirements_never_pin_torch_or_pull_k_diffusion():
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        names = [line.split("#")[0].strip().lower() for line in handle if line.split("#")[0].strip()]
    assert not any(name.startswith(("torch", "k-diffusion", "numpy")) for name in names), names


def test_install_reads_specifiers_markers_and_never_installs_what_the_host_owns(tmp_path, monkeypatch):
    install = load_install()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\n"
        "safetensors>=0.3  # satisfied here\n"
        "SafeTensors >= 999.0\n"  # installed, but too old; names compare normalized
        "dode-no-such-package-xyz==1.0\n"
        'dode-other-missing-xyz; python_version < "3"\n'  # a marker that is false here: not needed
        "torch>=99\n"
        "numpy\n"
        "not a requirement !!\n",
        encoding="utf-8")
    assert install.missing_requirements(str(requirements)) == ["SafeTensors >= 999.0",
                                                               "dode-no-such-package-xyz==1.0"]

    calls = []
    monkeypatch.setattr(install, "missing_requirements", lambda: ["dode-no-such-package-xyz==1.0"])
    monkeypatch.setattr(install.subprocess, "check_call", calls.append)
    install.main()
    assert calls == [[sys.executable, "-m", "pip", "install", "dode-no-such-package-xyz==1.0"]]


def shipped_files() -> list[str]:
    """What ``comfy node pack`` / ``comfy node publish`` put in the pack, by comfy-cli's own rule
    (comfy_cli/file_utils.py, zip_files): the git-tracked files, minus what .comfyignore matches (gitwildmatch,
    by pathspec, as comfy-cli reads it), except under the ``includes`` of [tool.comfy], which always ship."""
    pathspec = pytest.importorskip("pathspec")
    tracked = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True)
    if tracked.returncode or not tracked.stdout.strip():
        pytest.skip("not a git checkout: the Registry packs git-tracked files")
    with open(os.path.join(ROOT, ".comfyignore"), encoding="utf-8") as handle:
        patterns = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    with warnings.catch_warnings():  # pathspec 1.x deprecates the name; comfy-cli still passes it
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    includes = ("lambdas",)  # [tool.comfy] includes in pyproject.toml
    files = []
    for path in tracked.stdout.splitlines():
        forced = any(path == prefix or path.startswith(prefix + "/") for prefix in includes)
        if forced or not spec.match_file(path):
            files.append(path)
    return files


def test_the_registry_pack_holds_the_product_and_no_tests_or_tooling():
    files = shipped_files()
    leaked = [path for path in files if path.startswith(NEVER_SHIPPED) or path in NEVER_SHIPPED]
    assert not leaked, f"would ship to the Registry: {leaked}"
    tracked = set(subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True).stdout.split())
    absent = [path for path in PRODUCT_FILES if path in tracked and path not in files]
    assert not absent, f"left out of the pack: {absent}"
    # the demo's λ files belong to the demo model: ComfyUI would list shipped ones beside the user's
    assert not [path for path in files if path.endswith(".safetensors") and path.startswith("lambdas/")]


def test_the_includes_in_pyproject_are_the_ones_the_pack_check_uses():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        comfy = tomllib.load(handle)["tool"]["comfy"]
    assert comfy["includes"] == ["lambdas"]
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("/docs/icon.png")
    assert os.path.isfile(os.path.join(ROOT, "docs", "icon.png"))
