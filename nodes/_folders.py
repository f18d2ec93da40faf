"""ComfyUI's model folders: the `ipadapter` folder registration and file lookup with clear errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

IPADAPTER = "ipadapter"


def register_folders() -> None:
    """Register `models/ipadapter` once, keeping any paths extra_model_paths.yaml already gave it."""
    import folder_paths

    exts = set(folder_paths.supported_pt_extensions) | {".bin", ".safetensors"}
    if IPADAPTER in folder_paths.folder_names_and_paths:
        paths, _ = folder_paths.folder_names_and_paths[IPADAPTER]
        folder_paths.folder_names_and_paths[IPADAPTER] = (paths, exts)
    else:
        folder_paths.folder_names_and_paths[IPADAPTER] = ([str(Path(folder_paths.models_dir) / IPADAPTER)], exts)


def folders(kind: str) -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths(kind))
    except KeyError:
        return []


def file_list(kind: str) -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_filename_list(kind))
    except KeyError:
        return []


def resolve(kind: str, name: str) -> Path:
    """Full path of a file chosen in a combo; a missing file names the folders searched and the fix.

    A name that could lead outside the folders (absolute, drive letter, `..`, NUL) gets the same answer as a
    missing file, so the error tells nothing about files elsewhere. Symlinks inside a folder are followed, as
    ComfyUI's own lists do: only the machine's owner can put them there.
    """
    import folder_paths

    path = folder_paths.get_full_path(kind, name) if is_plain_name(name) else None
    if path is None or not Path(path).is_file() or not any(inside(path, folder) for folder in folders(kind)):
        listed = file_list(kind)
        hint = f"files there: {', '.join(listed[:12])}" if listed else "the folders hold no model files"
        raise FileNotFoundError(
            f"'{name}' was not found in the {kind} folders ({'; '.join(folders(kind)) or 'none registered'}); {hint}. "
            f"Put the file into models/{kind} (or an `{kind}:` entry of extra_model_paths.yaml) and refresh the page."
        )
    return Path(path)


_DRIVE = re.compile(r"^[A-Za-z]:")


def is_plain_name(name) -> bool:
    """Whether `name` is a relative path that stays inside whatever folder it is joined to."""
    if not isinstance(name, str) or not name or "\0" in name or _DRIVE.match(name):
        return False
    parts = re.split(r"[\\/]", name) if os.name == "nt" else name.split("/")
    return not name.startswith(("/", "\\")) and ".." not in parts and not os.path.isabs(name)


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` lies under `folder`, comparing normalised paths (symlinks are not resolved)."""
    path, folder = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    try:
        return os.path.commonpath([path, folder]) == folder and path != folder
    except ValueError:  # different drives
        return False


def file_in(folder: str | os.PathLike, name: str) -> Path | None:
    """`folder/name` if `name` is a plain name of an existing file there; None for anything else."""
    if not is_plain_name(name):
        return None
    path = os.path.join(folder, name)
    return Path(path) if inside(path, folder) and os.path.isfile(path) else None
