"""ComfyUI's model folders: the `ipadapter` folder registration and file lookup with clear errors."""

from __future__ import annotations

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
    """Full path of a file chosen in a combo; a missing file names the folders searched and the fix."""
    import folder_paths

    path = folder_paths.get_full_path(kind, name) if name else None
    if path is None or not Path(path).is_file():
        listed = file_list(kind)
        hint = f"files there: {', '.join(listed[:12])}" if listed else "the folders hold no model files"
        raise FileNotFoundError(
            f"'{name}' was not found in the {kind} folders ({'; '.join(folders(kind)) or 'none registered'}); {hint}. "
            f"Put the file into models/{kind} (or an `{kind}:` entry of extra_model_paths.yaml) and refresh the page."
        )
    return Path(path)
