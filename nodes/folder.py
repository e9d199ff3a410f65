"""The ``models/dode_lambdas`` folder: registration with folder_paths, the dropdown order, reuse by content key."""

from __future__ import annotations

import logging
import os

import folder_paths

from ._core import dode_core

log = logging.getLogger(__name__)
FOLDER = "dode_lambdas"
EXTENSION = dode_core.file_format.EXTENSION
CONTENT_KEY = "content_key"


def register_folder() -> None:
    """Add ``<models>/dode_lambdas`` first, keeping any path a user set in extra_model_paths.yaml (loaded before
    custom nodes); only ``.safetensors`` files are listed. The demo's λ files (dode_demo/lambdas) are for the demo
    model only and are never listed here."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    paths, _extensions = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, {EXTENSION})


def save_folder() -> str:
    """Where new files go: the first (default) path of the folder."""
    folder = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(folder, exist_ok=True)
    return folder


def full_path(name: str) -> str | None:
    """The file behind a dropdown name, or None (also for anything that is not a regular file)."""
    try:
        path = folder_paths.get_full_path(FOLDER, name)
    except (TypeError, ValueError, OSError):
        return None
    return path if path and os.path.isfile(path) else None


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def ordered_files() -> list[tuple[str, str]]:
    """``(name, path)`` of every λ file, newest first: by modification time, then name, the order in which
    "auto" prefers files (dode_core.file_rules.choose_file)."""
    entries = []
    for name in folder_paths.get_filename_list(FOLDER):
        path = full_path(name)
        if path is not None:
            entries.append((_mtime(path), name, path))
    entries.sort(reverse=True)
    return [(name, path) for _time, name, path in entries]


def listing_state() -> str:
    """Changes whenever a file is added, removed or rewritten: what "auto" depends on."""
    return ";".join(f"{name}:{_mtime(path)}" for name, path in ordered_files())


def find_by_content_key(key: str):
    """``(name, path, Lambdas)`` of the newest valid file whose metadata carries ``content_key == key``, or None.
    A file that fails to load is skipped (it cannot be the one we wrote)."""
    for name, path in ordered_files():
        try:
            lam = dode_core.load_lambdas(path)
        except Exception as error:  # one bad file must not stop the search  # noqa: BLE001
            log.debug("D-ODE: skipping %s while looking for a reusable fit: %s", name, error)
            continue
        if lam.metadata.get(CONTENT_KEY) == key:
            return name, path, lam
    return None
