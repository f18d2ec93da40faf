"""A loaded IP-Adapter: its projection model, its per-layer key/value weights and its FaceID LoRA."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import RawCheckpoint, detect, read_checkpoint
from .lora import is_lora_key
from .projection import (
    HEAD_DIM,
    FaceIDPlusProjModel,
    FaceIDProjModel,
    FullFaceProjModel,
    ImageProjModel,
    Linear,
    Resampler,
)
from .spec import AdapterKind, AdapterSpec


class KVProjection(nn.Module):
    """The decoupled key/value projections of one cross-attention layer (keys to_k_ip, to_v_ip)."""

    def __init__(self, cross: int, width: int) -> None:
        super().__init__()
        self.to_k_ip = Linear(cross, width, bias=False)
        self.to_v_ip = Linear(cross, width, bias=False)


class IPAdapterModel(nn.Module):
    """`image_proj` + `ip_adapter`, named exactly like the checkpoint groups."""

    def __init__(self, spec: AdapterSpec, proj_shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        self.spec = spec
        self.image_proj = build_projection(spec, proj_shapes)
        self.ip_adapter = nn.ModuleDict(
            {str(2 * i + 1): KVProjection(spec.cross_attention_dim, w) for i, w in enumerate(spec.layer_widths)}
        )

    def layer(self, checkpoint_index: int) -> KVProjection:
        return self.ip_adapter[str(checkpoint_index)]


def build_projection(spec: AdapterSpec, s: dict[str, torch.Size]) -> nn.Module:
    """The projection module for a spec, sized from the checkpoint's tensor shapes."""
    kind = spec.kind
    if kind is AdapterKind.IMAGE_PROJ:
        return ImageProjModel(in_dim=s["proj.weight"][1], dim=spec.token_dim, tokens=spec.num_tokens)
    if kind is AdapterKind.FULL_FACE:
        return FullFaceProjModel(in_dim=s["proj.0.weight"][1], dim=spec.token_dim)
    if kind in (AdapterKind.PLUS, AdapterKind.PORTRAIT_UNNORM):
        return Resampler(
            dim=s["latents"][2],
            depth=_depth(s, "layers."),
            heads=_heads(s, "layers.0.0.to_q.weight"),
            queries=s["latents"][1],
            in_dim=s["proj_in.weight"][1],
            out_dim=s["proj_out.weight"][0],
        )
    if kind in (AdapterKind.FACEID, AdapterKind.PORTRAIT):
        return FaceIDProjModel(
            in_dim=s["proj.0.weight"][1], hidden=s["proj.0.weight"][0], dim=spec.token_dim, tokens=spec.num_tokens
        )
    if kind in (AdapterKind.FACEID_PLUS, AdapterKind.FACEID_PLUS_V2):
        return FaceIDPlusProjModel(
            face_dim=s["proj.0.weight"][1],
            hidden=s["proj.0.weight"][0],
            dim=spec.token_dim,
            tokens=spec.num_tokens,
            clip_dim=s["perceiver_resampler.proj_in.weight"][1],
            depth=_depth(s, "perceiver_resampler.layers."),
            heads=_heads(s, "perceiver_resampler.layers.0.0.to_q.weight"),
        )
    raise ValueError(f"no projection model for adapter kind {kind!r}")


def _depth(shapes: dict[str, torch.Size], prefix: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return 1 + max(found)


def _heads(shapes: dict[str, torch.Size], key: str) -> int:
    inner = shapes[key][0]
    if inner % HEAD_DIM:
        raise ValueError(f"perceiver width {inner} is not a multiple of the {HEAD_DIM}-wide heads every IP-Adapter uses")
    return inner // HEAD_DIM


@dataclass(eq=False)  # identity semantics: one object per loaded file, usable as a weak-dict key
class LoadedAdapter:
    """One adapter file in memory: spec, model and the FaceID LoRA tensors it ships (if any)."""

    path: Path
    spec: AdapterSpec
    model: IPAdapterModel
    lora: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def load_adapter(path: str | Path, *, override: str | None = None) -> LoadedAdapter:
    """Read, detect and strictly load an adapter file (no tensor is copied)."""
    raw = read_checkpoint(path)
    return build_adapter(raw, override=override)


def build_adapter(raw: RawCheckpoint, *, override: str | None = None) -> LoadedAdapter:
    spec = detect(raw, override=override)
    with torch.device("meta"):
        model = IPAdapterModel(spec, {k: v.shape for k, v in raw.image_proj.items()})
    lora = {k: v for k, v in raw.ip_adapter.items() if is_lora_key(k)}
    state = {f"image_proj.{k}": v for k, v in raw.image_proj.items()}
    state.update({f"ip_adapter.{k}": v for k, v in raw.ip_adapter.items() if not is_lora_key(k)})
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{raw.path.name}: detected {spec.describe()}, but the tensors do not fit that layout: {e}") from e
    model.requires_grad_(False)
    model.eval()
    return LoadedAdapter(path=raw.path, spec=spec, model=model, lora=lora)


# projection and per-layer keys/values


def project(
    model: IPAdapterModel,
    *,
    clip: torch.Tensor | None = None,
    face: torch.Tensor | None = None,
    shortcut_scale: float = 1.0,
) -> torch.Tensor:
    """Image tokens `[n, T, token_dim]` for n references (clip: `[n, P]` or `[n, 257, E]`; face: `[n, 512]`)."""
    kind = model.spec.kind
    proj = model.image_proj
    dtype = next(proj.parameters()).dtype
    if kind.uses_clip and clip is None:
        raise ValueError(f"{model.spec.variant} needs CLIP vision features")
    if kind.uses_face and face is None:
        raise ValueError(f"{model.spec.variant} needs an InsightFace embedding")
    clip = clip.to(dtype) if clip is not None else None
    face = face.to(dtype) if face is not None else None
    if kind in (AdapterKind.IMAGE_PROJ, AdapterKind.PLUS, AdapterKind.FULL_FACE):
        return proj(clip)
    if kind in (AdapterKind.FACEID, AdapterKind.PORTRAIT):
        return proj(face)
    if kind is AdapterKind.PORTRAIT_UNNORM:
        return proj(face[:, None, :])
    return proj(face, clip, shortcut=kind is AdapterKind.FACEID_PLUS_V2, shortcut_scale=shortcut_scale)


def layer_kv(
    model: IPAdapterModel,
    checkpoint_index: int,
    tokens: torch.Tensor,
    *,
    pre: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of `tokens [..., token_dim]` for one layer (`pre` maps tokens to the context width)."""
    layer = model.layer(checkpoint_index)
    dtype = layer.to_k_ip.weight.dtype
    x = tokens.to(dtype)
    if pre is not None:
        x = pre(x)
    return layer.to_k_ip(x), layer.to_v_ip(x)
