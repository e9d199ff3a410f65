"""Run by ComfyUI-Manager and by A1111/Forge (as a script, at start-up): install missing runtime requirements.

Only requirements.txt (no torch, never pinned); the host's own python and pip are used.
"""

import importlib.util
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
IMPORT_NAMES = {"safetensors": "safetensors"}  # requirement name -> module it provides


def missing_requirements(path: str = os.path.join(HERE, "requirements.txt")) -> list[str]:
    missing = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            requirement = line.split("#", 1)[0].strip()
            if not requirement:
                continue
            name = requirement.split(">", 1)[0].split("=", 1)[0].split("<", 1)[0].strip()
            if importlib.util.find_spec(IMPORT_NAMES.get(name, name)) is None:
                missing.append(requirement)
    return missing


def main() -> None:
    missing = missing_requirements()
    if missing:
        subprocess.check_call([sys.executable, "-m", "pip", "install", *missing])


if __name__ == "__main__":
    main()
