"""Save and load image embeds as `.safetensors` with metadata; read legacy `.ipadpt` files safely."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import safe_load
from .embeds import ImageEmbeds
from .spec import AdapterKind, ClipOutput

FORMAT = "ipadapter_kit.embeds"
FORMAT_VERSION = 1


def save_embeds(embeds: ImageEmbeds, path: str | Path) -> Path:
    """Write embeds (positive and negative features) with the metadata that identifies them."""
    import safetensors.torch

    path = Path(path)
    tensors = {f"cond.{k}": v.detach().cpu().contiguous() for k, v in embeds.cond.items()}
    tensors.update({f"uncond.{k}": v.detach().cpu().contiguous() for k, v in embeds.uncond.items()})
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "adapter_kind": embeds.adapter_kind.value if embeds.adapter_kind else "",
        "clip_encoder": embeds.clip_encoder or "",
        "clip_output": embeds.clip_output.value if embeds.clip_output else "",
        "face_normed": "" if embeds.face_normed is None else str(embeds.face_normed).lower(),
        "count": str(embeds.count),
        "shapes": json.dumps({k: list(v.shape) for k, v in tensors.items()}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_embeds(path: str | Path) -> ImageEmbeds:
    """Read embeds written by `save_embeds`, or a legacy `.ipadpt` tensor file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeds file not found: {path.name}")
    if path.suffix.lower() == ".ipadpt":
        return _load_legacy(path)
    header = safe_load.read_safetensors_header(path, what="embeds")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(
            f"{path.name}: not an IPAdapter Kit embeds file (metadata format={found!r}); "
            "save embeds with the Save Embeds node"
        )
    version = _meta_int(path, meta, "format_version")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path.name}: embeds format version {version} is newer than this pack reads ({FORMAT_VERSION}); update the pack")
    tensors = safe_load.load_file(path, what="embeds")
    try:
        shapes = json.loads(meta.get("shapes") or "{}")
        if not isinstance(shapes, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise _damaged(path, f"its `shapes` metadata is not a JSON object of tensor shapes ({e})") from None
    for key, shape in shapes.items():
        if key not in tensors or list(tensors[key].shape) != shape:
            raise _damaged(path, f"tensor {key} does not match its recorded shape {shape}")
    cond = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("cond.")}
    uncond = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("uncond.")}
    if not cond:
        raise _damaged(path, "it holds no `cond.*` tensors")
    normed = meta.get("face_normed", "")
    if normed not in ("", "true", "false"):
        raise _damaged(path, f"face_normed is {normed!r}, expected 'true', 'false' or empty")
    return ImageEmbeds(
        cond=cond,
        uncond=uncond,
        clip_encoder=meta.get("clip_encoder") or None,
        clip_output=_meta_enum(path, meta, "clip_output", ClipOutput),
        face_normed=None if normed == "" else normed == "true",
        adapter_kind=_meta_enum(path, meta, "adapter_kind", AdapterKind),
    )


def _damaged(path: Path, what: str) -> ValueError:
    return ValueError(f"{path.name}: damaged embeds file: {what}. Save the embeds again with Save Embeds (or re-download the file).")


def _meta_int(path: Path, meta: dict, key: str) -> int:
    try:
        return int(meta.get(key) or 0)
    except ValueError:
        raise _damaged(path, f"{key} is {meta.get(key)!r}, not a number") from None


def _meta_enum(path: Path, meta: dict, key: str, enum):
    value = meta.get(key)
    if not value:
        return None
    try:
        return enum(value)
    except ValueError:
        known = ", ".join(m.value for m in enum)
        raise _damaged(path, f"{key} is {value!r}; this pack knows {known}") from None


def _load_legacy(path: Path) -> ImageEmbeds:
    """IPAdapter Plus's `.ipadpt`: one pickled tensor of raw CLIP features, loaded without running code."""
    obj = safe_load.load_file(path, what="embeds")
    if not isinstance(obj, torch.Tensor) or obj.ndim not in (2, 3):
        raise ValueError(f"{path.name}: expected one tensor [n, width] or [n, tokens, width]; found {type(obj).__name__}")
    output = ClipOutput.IMAGE_EMBEDS if obj.ndim == 2 else ClipOutput.PENULTIMATE
    return ImageEmbeds(cond={"clip": obj.float()}, clip_output=output)
