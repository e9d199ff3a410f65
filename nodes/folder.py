"""The ``models/dode_lambdas`` folder: registration with folder_paths and safe, never-overwriting saves."""

from __future__ import annotations

import os

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
