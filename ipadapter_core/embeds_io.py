"""Save and load image embeds as `.safetensors` with metadata; read legacy `.ipadpt` files safely."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

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
        raise FileNotFoundError(f"embeds file not found: {path}")
    if path.suffix.lower() == ".ipadpt":
        return _load_legacy(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path.name}: not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path.name}: not an IPAdapter Kit embeds file (metadata format={meta.get('format')!r}); "
            "save embeds with the Save Embeds node"
        )
    version = int(meta.get("format_version", "0") or 0)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path.name}: embeds format version {version} is newer than this pack reads ({FORMAT_VERSION}); update the pack")
    shapes = json.loads(meta.get("shapes", "{}"))
    for key, shape in shapes.items():
        if key not in tensors or list(tensors[key].shape) != shape:
            raise ValueError(f"{path.name}: tensor {key} does not match its recorded shape {shape}; the file is damaged")
    cond = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("cond.")}
    uncond = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("uncond.")}
    normed = meta.get("face_normed", "")
    return ImageEmbeds(
        cond=cond,
        uncond=uncond,
        clip_encoder=meta.get("clip_encoder") or None,
        clip_output=ClipOutput(meta["clip_output"]) if meta.get("clip_output") else None,
        face_normed=None if normed == "" else normed == "true",
        adapter_kind=AdapterKind(meta["adapter_kind"]) if meta.get("adapter_kind") else None,
    )


def _load_legacy(path: Path) -> ImageEmbeds:
    """IPAdapter Plus's `.ipadpt`: one pickled tensor of raw CLIP features, loaded without running code."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path.name}: refused to load; the pickle would run code or build non-tensor objects. Nothing was executed.") from e
    if not isinstance(obj, torch.Tensor) or obj.ndim not in (2, 3):
        raise ValueError(f"{path.name}: expected one tensor [n, width] or [n, tokens, width]; found {type(obj).__name__}")
    output = ClipOutput.IMAGE_EMBEDS if obj.ndim == 2 else ClipOutput.PENULTIMATE
    return ImageEmbeds(cond={"clip": obj.float()}, clip_output=output)
