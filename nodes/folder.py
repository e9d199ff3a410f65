"""The ``models/dode_lambdas`` folder: registration with folder_paths and safe, never-overwriting saves."""

from __future__ import annotations

import os
import re

import folder_paths

FOLDER = "dode_lambdas"
EXTENSION = ".safetensors"
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lambdas")


def register_folder() -> None:
    """Add ``<models>/dode_lambdas`` first and the shipped ``lambdas/`` last, keeping any path a user set in
    extra_model_paths.yaml (loaded before custom nodes); only ``.safetensors`` files are listed."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    if os.path.isdir(SHIPPED):
        folder_paths.add_model_folder_path(FOLDER, SHIPPED)
    paths, _extensions = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, {EXTENSION})


def save_folder() -> str:
    """Where new files go: the first (default) path of the folder."""
    folder = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(folder, exist_ok=True)
    return folder


def clean_name(name: str, fallback: str) -> str:
    """A bare file stem: no folders, no leading dots, only ``[A-Za-z0-9._-]``; ``fallback`` when empty."""
    stem = os.path.basename(name.strip().replace("\\", "/"))
    if stem.lower().endswith(EXTENSION):
        stem = stem[: -len(EXTENSION)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:120]
    return stem or re.sub(r"[^A-Za-z0-9._-]+", "_", fallback)


def reserve_path(folder: str, stem: str) -> str:
    """Create an empty ``stem.safetensors`` (or ``stem_2``, ``stem_3``, ...) atomically and return its path.

    O_EXCL makes a taken name impossible to overwrite even with two distills running at once; the caller
    replaces the placeholder with an atomic rename or removes it.
    """
    folder = os.path.realpath(folder)
    for counter in range(1, 100000):
        name = stem + (f"_{counter}" if counter > 1 else "") + EXTENSION
        path = os.path.join(folder, name)
        if os.path.dirname(os.path.realpath(path)) != folder:
            raise ValueError(f"file name {name!r} leaves the {FOLDER} folder")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return path
    raise ValueError(f"no free file name for {stem!r} in {folder}")
