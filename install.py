"""Run by ComfyUI-Manager and by A1111/Forge (as a script, at start-up): install missing runtime requirements.

Only requirements.txt, with the host's own python and pip. Requirements are read with ``packaging`` (ComfyUI,
A1111 and Forge environments have it; pip vendors a copy) and checked against what is installed with
importlib.metadata. What the host owns (torch, numpy, ...) is never installed from here, whatever the file says.
"""

import importlib.metadata
import logging
import os
import subprocess
import sys

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip's own copy
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_OWNED = {"torch", "torchvision", "torchaudio", "numpy", "xformers"}
log = logging.getLogger("dode.install")


def missing_requirements(path: str = os.path.join(HERE, "requirements.txt")) -> list[str]:
    """The requirement lines of ``path`` that the running environment does not satisfy."""
    missing = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                requirement = Requirement(text)
            except InvalidRequirement as error:
                log.warning("D-ODE install: skipping %r in %s: %s", text, os.path.basename(path), error)
                continue
            if canonicalize_name(requirement.name) in HOST_OWNED:
                log.warning("D-ODE install: %s belongs to the host; not installing it", requirement.name)
                continue
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(text)
                continue
            if not requirement.specifier.contains(installed, prereleases=True):
                missing.append(text)
    return missing


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    missing = missing_requirements()
    if missing:
        log.info("D-ODE install: installing %s", " ".join(missing))
        subprocess.check_call([sys.executable, "-m", "pip", "install", *missing])


if __name__ == "__main__":
    main()
