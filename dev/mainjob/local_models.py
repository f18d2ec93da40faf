"""Find real models for the main job (dev/run_main.py) in a user's model folders, without loading any of them.

Folders come from a ComfyUI `models` folder (`models/<kind>/`) and from extra_model_paths.yaml files
(sections of `base_path` plus `<kind>: <path lines>`, as ComfyUI reads them). A model set is "real" when
it holds an SD1.5 checkpoint that is not one of our random-weight stand-ins, the IP-Adapter file the
basic workflow's Unified Loader preset picks, and its CLIP vision model. File names are matched with
the pack's own rules (ipadapter_core/presets.py), so what is found here is what the node will load.

Checkpoints are recognised from the `.safetensors` header alone (8 bytes of length, then JSON):
SD1.5's first cross-attention reads 768-wide text (`...input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight`
is [320, 768]); our generators mark their files with `"weights": "random ..."` in the metadata.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ipadapter_core import presets

SD15_PROBE = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
MODEL_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".sft")
MAX_HEADER = 100_000_000

Folders = dict[str, list[Path]]


# folders


def merge(*parts: Folders) -> Folders:
    out: Folders = {}
    for part in parts:
        for kind, paths in part.items():
            for path in paths:
                if path not in out.setdefault(kind, []):
                    out[kind].append(path)
    return out


def from_models_dir(models_dir: str | os.PathLike) -> Folders:
    """`<models_dir>/<kind>` for every sub-folder of a ComfyUI models folder."""
    root = Path(models_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the ComfyUI `models` folder that holds checkpoints/, ipadapter/, ...")
    return {sub.name: [sub] for sub in sorted(root.iterdir()) if sub.is_dir()}


def from_yaml(path: str | os.PathLike) -> Folders:
    """The folders an extra_model_paths.yaml adds; relative paths are taken from the YAML's folder."""
    path = Path(path).expanduser().resolve()
    data = yaml.safe_load(path.read_text()) or {}
    out: Folders = {}
    for section in data.values():
        if not isinstance(section, dict):
            continue
        base = section.get("base_path")
        base = (path.parent / os.path.expanduser(str(base))).resolve() if base else path.parent
        for kind, lines in section.items():
            if kind in ("base_path", "is_default") or not isinstance(lines, str):
                continue
            for line in filter(None, (x.strip() for x in lines.splitlines())):
                out.setdefault(kind, []).append((base / os.path.expanduser(line)).resolve())
    return out


def write_yaml(folders: Folders, path: Path) -> Path:
    """An extra_model_paths.yaml with absolute paths for `folders` (the 2024 host reads relative ones from its CWD)."""
    lines = ["# written by dev/run_main.py", "ipakit_user_models:"]
    for kind, paths in folders.items():
        lines.append(f"  {kind}: |")
        lines += [f"    {p}" for p in paths]
    path.write_text("\n".join(lines) + "\n")
    return path


def files(folders: Folders, kind: str) -> dict[str, Path]:
    """Model files of one kind as ComfyUI lists them (path relative to its folder, '/'-separated) -> path."""
    out = {}
    for root in folders.get(kind, []):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
                out.setdefault(path.relative_to(root).as_posix(), path)
    return out


# checkpoints


def safetensors_header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER:
                return None
            return json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None


def checkpoint_family(path: Path) -> str | None:
    """"sd15", "sd15-random" (one of our stand-ins) or None (another model, or not a .safetensors file)."""
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    header = safetensors_header(path)
    entry = (header or {}).get(SD15_PROBE)
    if not entry or entry.get("shape") != [320, 768]:
        return None
    random = str(header.get("__metadata__", {}).get("weights", "")).startswith("random")
    return "sd15-random" if random else "sd15"


# the model set of the basic workflow


@dataclass
class ModelSet:
    checkpoint: str | None = None
    ipadapter: str | None = None
    clip_vision: str | None = None
    missing: list[str] = field(default_factory=list)
    random_weights: bool = False  # the checkpoint asked for is one of our random-weight stand-ins

    @property
    def complete(self) -> bool:
        return not self.missing


def find_real(folders: Folders, *, preset: str, placeholder: str | None = None, checkpoint: str | None = None) -> ModelSet:
    """The real SD1.5 model set for a Unified Loader `preset`: the `checkpoint` asked for (any family), else
    `placeholder` if it is a real SD1.5 file, else the first real SD1.5 checkpoint."""
    found = ModelSet()
    ckpts = files(folders, "checkpoints")
    if checkpoint is not None:
        if checkpoint in ckpts:
            found.checkpoint = checkpoint
            found.random_weights = checkpoint_family(ckpts[checkpoint]) == "sd15-random"
        else:
            found.missing.append(f"the checkpoint {checkpoint!r} (not in {_where(folders, 'checkpoints')})")
    else:
        real = [name for name, path in ckpts.items() if checkpoint_family(path) == "sd15"]
        if placeholder in real:
            real.remove(placeholder)
            real.insert(0, placeholder)
        if real:
            found.checkpoint = real[0]
        else:
            found.missing.append(f"an SD1.5 .safetensors checkpoint with trained weights (in {_where(folders, 'checkpoints')})")
    adapter = presets.pick_adapter(list(files(folders, "ipadapter")), preset, "sd15")
    if adapter.file is None:
        found.missing.append(f"the IP-Adapter for '{preset}' ({adapter.accepted[0]}, in {_where(folders, 'ipadapter')})")
    found.ipadapter = adapter.file
    encoder = presets.PRESETS[preset][2]
    clip = presets.pick_clip(list(files(folders, "clip_vision")), encoder)
    if clip.file is None:
        found.missing.append(f"the CLIP vision model {clip.accepted[0]}.safetensors (in {_where(folders, 'clip_vision')})")
    found.clip_vision = clip.file
    return found


def _where(folders: Folders, kind: str) -> str:
    return ", ".join(str(p) for p in folders.get(kind, [])) or f"no {kind} folder"
