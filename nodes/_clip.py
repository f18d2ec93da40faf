"""ComfyUI's CLIP vision models: loading (cached per file), what they output, and encoding with a per-image cache."""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..ipadapter_core import ClipOutput, safe_load
from ..ipadapter_core.presets import CLIP_NAMES

_lock = threading.Lock()


@dataclass(frozen=True)
class ClipInfo:
    hidden: int  # penultimate width
    projection: int | None  # image_embeds width
    size: int


def clip_info(clip_vision) -> ClipInfo:
    model = clip_vision.model
    hidden = model.vision_model.post_layernorm.weight.shape[0]
    proj = getattr(model, "visual_projection", None)
    projection = proj.weight.shape[0] if hasattr(proj, "weight") else None
    return ClipInfo(hidden=hidden, projection=projection, size=int(getattr(clip_vision, "image_size", 224)))


_encodings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # CLIP vision model -> {pixels digest: outputs}
ENCODE_CACHE_ROWS = 32


def encoder(clip_vision):
    """`pixels [B, 3, S, S] (normalised) -> {"penultimate", "image_embeds"}` running ComfyUI's CLIP vision model.

    Each image's outputs are remembered per model (the last ENCODE_CACHE_ROWS images), so the
    reference negative (the same empty image every time) and a reference used by several nodes are
    encoded once; the images not seen before go through the encoder in one batch.
    """
    import comfy.model_management as mm

    def run(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        mm.load_model_gpu(clip_vision.patcher)
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device).float(), intermediate_output=-2)
        device = mm.intermediate_device()
        return {"penultimate": out[1].float().to(device), "image_embeds": out[2].float().to(device)}

    def encode(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        with _lock:
            cache = _encodings.setdefault(clip_vision.model, {})
        keys = [_digest(row) for row in pixels]
        found = {k: cache[k] for k in keys if k in cache}
        fresh = [k for k in dict.fromkeys(keys) if k not in found]
        if fresh:
            out = run(pixels[[keys.index(k) for k in fresh]])
            for j, key in enumerate(fresh):
                found[key] = cache[key] = {name: value[j] for name, value in out.items()}
            while len(cache) > ENCODE_CACHE_ROWS:
                cache.pop(next(iter(cache)))
        return {name: torch.stack([found[k][name] for k in keys]) for name in ("penultimate", "image_embeds")}

    return encode


def _digest(row: torch.Tensor) -> str:
    data = row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return f"{tuple(row.shape)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def check_clip(spec, clip_vision, source: str) -> None:
    """Refuse a CLIP vision model whose outputs cannot feed the adapter, before encoding anything."""
    info = clip_info(clip_vision)
    have = info.hidden if spec.clip_output is ClipOutput.PENULTIMATE else info.projection
    if have != spec.clip_dim:
        want = spec.clip_encoder or f"a CLIP vision model with {spec.clip_dim}-wide {spec.clip_output.value}"
        raise ValueError(
            f"{source} reads CLIP {spec.clip_output.value} {spec.clip_dim} wide ({want}), but the connected CLIP vision "
            f"model gives {have} (hidden {info.hidden}, projection {info.projection}). Load {clip_file_hint(spec)} with "
            "Load CLIP Vision, or use the Unified Loader, which picks the right one."
        )


def clip_file_hint(spec) -> str:
    """The published file name of the CLIP vision model an adapter reads."""
    names = CLIP_NAMES.get(spec.clip_encoder or "")
    return f"{names[0]}.safetensors" if names else "the matching CLIP vision model"


_clip_models: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def load_clip_vision_cached(path: Path):
    """ComfyUI's CLIP vision model for a file, loaded once per file version.

    The file is read here, as plain tensors (safetensors, or a pickle with `weights_only=True`), and handed to
    the host's `load_clipvision_from_sd`: the 2024 host's `comfy.clip_vision.load` would unpickle `.bin`/`.pt`
    files with code execution allowed.
    """
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _lock:
        model = _clip_models.get(key)
        if model is None:
            model = clip_vision_from_file(path)
            _clip_models[key] = model
        return model


def clip_vision_from_file(path: Path):
    """Build the host's CLIP vision model from a file's tensors, as `comfy.clip_vision.load` would."""
    import comfy.clip_vision

    sd = safe_load.state_dict(path, what="CLIP vision model")
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
        model = comfy.clip_vision.load_clipvision_from_sd(sd, prefix="visual.", convert_keys=True)
    else:
        model = comfy.clip_vision.load_clipvision_from_sd(sd)
    if model is None:
        raise ValueError(
            f"{path.name}: ComfyUI does not recognise this file as a CLIP vision model (ViT-H, ViT-bigG or ViT-L; "
            f"{len(sd)} tensors, e.g. {', '.join(list(sd)[:3]) or 'none'}). Put a CLIP vision model into models/clip_vision."
        )
    return model

