"""Read IP-Adapter files safely and detect what they are from tensor names and shapes.

Formats: `.safetensors` with flat `image_proj.` / `ip_adapter.` keys, `.bin` pickles of the nested
dict `{"image_proj": ..., "ip_adapter": ...}` (read with `torch.load(weights_only=True)`, so a file
that would run code is refused), the `adapter_modules` alias and raw training checkpoints
(`image_proj_model.` / `adapter_modules.` prefixes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import safe_load
from .lora import LORA_KEY
from .spec import CLIP_ENCODERS, FACE_DIM, FAMILY_BY_LAYERS, AdapterKind, AdapterSpec, ClipOutput, Family

PROJ_PREFIXES = ("image_proj.", "image_proj_model.")
ADAPTER_PREFIXES = ("ip_adapter.", "adapter_modules.")
OVERRIDES = ("faceid_plus", "faceid_plus_v2", "normed", "unnorm")
_KV_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


class CheckpointError(ValueError):
    """A file that is not a usable IP-Adapter; the message names the file, what was found and the fix."""


@dataclass(frozen=True)
class RawCheckpoint:
    """The two tensor groups of an adapter file, keys without their group prefix."""

    path: Path
    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]


# reading


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Load an adapter file into its `image_proj` and `ip_adapter` groups without executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IP-Adapter file not found: {path}")
    try:
        obj = safe_load.load_file(path, what="IP-Adapter")
    except (safe_load.UnsafeFileError, safe_load.DamagedFileError) as e:
        raise CheckpointError(str(e)) from None
    if path.suffix.lower() in safe_load.SAFETENSORS_SUFFIXES:
        return _split_flat(path, obj)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name}: expected a dict of tensors, found {type(obj).__name__}.")
    if isinstance(obj.get("image_proj"), dict):
        adapter = obj.get("ip_adapter", obj.get("adapter_modules"))
        if not isinstance(adapter, dict):
            raise CheckpointError(
                f"{path.name}: has an `image_proj` group but no `ip_adapter` (or `adapter_modules`) group; "
                f"top-level keys: {sorted(obj)[:8]}. The file is incomplete."
            )
        return RawCheckpoint(path, dict(obj["image_proj"]), dict(adapter))
    return _split_flat(path, obj)


def _split_flat(path: Path, flat: dict) -> RawCheckpoint:
    groups: tuple[dict, dict] = ({}, {})
    for key, value in flat.items():
        if not isinstance(value, torch.Tensor):
            continue
        for group, prefixes in zip(groups, (PROJ_PREFIXES, ADAPTER_PREFIXES)):
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix is not None:
                group[key[len(prefix) :]] = value
    image_proj, ip_adapter = groups
    if not image_proj or not ip_adapter:
        raise CheckpointError(f"{path.name}: no IP-Adapter weights; {_what_is_it(flat)}")
    return RawCheckpoint(path, image_proj, ip_adapter)


def _what_is_it(flat: dict) -> str:
    keys = [k for k in flat if isinstance(k, str)]
    sample = ", ".join(keys[:5]) or "(no tensors)"
    hints = (
        ("model.diffusion_model.", "this looks like a full Stable Diffusion checkpoint: load it with Load Checkpoint"),
        ("vision_model.", "this looks like a CLIP vision model: put it in models/clip_vision and load it with Load CLIP Vision"),
        ("lora_unet_", "this looks like a LoRA: load it with a LoRA loader (FaceID LoRAs ship inside the adapter too)"),
        ("down_blocks.", "this looks like a diffusers UNet or LoRA, not an IP-Adapter"),
        ("input_blocks.", "this looks like a UNet or ControlNet, not an IP-Adapter"),
    )
    for prefix, hint in hints:
        if any(k.startswith(prefix) or f".{prefix}" in k for k in keys[:200]):
            return f"{hint}. Keys seen: {sample}."
    return (
        "expected keys starting with `image_proj.` and `ip_adapter.` (or the nested `.bin` layout). "
        f"Keys seen: {sample}. Give this node an IP-Adapter file from models/ipadapter."
    )


# detection


@dataclass(frozen=True)
class _Probe:
    """What detection has read from a file before it picks a layout."""

    name: str  # file name, for messages and the tie-breakers the layouts cannot decide
    image_proj: dict[str, torch.Tensor]
    override: str | None
    family: Family  # from the layer count; a layout may refine it (Kolors)
    common: dict  # cross_attention_dim, layer_widths, lora_rank

    @property
    def lower(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Layout:
    """One image-projection layout: the `image_proj` keys that identify it, and how a file with it is described."""

    name: str
    probe: tuple[str, ...]  # keys that must all be present (the first layout whose keys are present wins)
    published: str  # the published files that have this layout
    describe: Callable[[_Probe], AdapterSpec]

    def matches(self, image_proj: dict) -> bool:
        return all(key in image_proj for key in self.probe)


def _faceid_plus(f: _Probe) -> AdapterSpec:
    p, cross = f.image_proj, f.common["cross_attention_dim"]
    token_dim = p["norm.weight"].shape[0]
    kolors = token_dim != cross
    family = Family.KOLORS if kolors else f.family
    v2 = kolors or re.search(r"plus[-_ ]?v2", f.lower) is not None
    hint = "Kolors FaceID always uses the shortcut" if kolors else ("file name says plusv2" if v2 else "")
    if f.override in ("faceid_plus", "faceid_plus_v2"):
        v2, hint = f.override == "faceid_plus_v2", f"override {f.override}"
    elif f.override is not None:
        raise _bad_override(f.name, f.override, ("faceid_plus", "faceid_plus_v2"))
    return AdapterSpec(
        kind=AdapterKind.FACEID_PLUS_V2 if v2 else AdapterKind.FACEID_PLUS,
        family=family,
        variant=f"FaceID Plus{' v2' if v2 else ''} ({family.value})",
        num_tokens=p["proj.2.weight"].shape[0] // token_dim,
        token_dim=token_dim,
        face_dim=p["proj.0.weight"].shape[1],
        face_crop_size=_face_crop(family),
        name_hint=hint,
        **_clip(ClipOutput.PENULTIMATE, p["perceiver_resampler.proj_in.weight"].shape[1]),
        **f.common,
    )


def _full_face(f: _Probe) -> AdapterSpec:
    _no_override(f.name, f.override)
    p = f.image_proj
    return AdapterSpec(
        kind=AdapterKind.FULL_FACE,
        family=f.family,
        variant=f"full-face ({f.family.value})",
        num_tokens=257,  # one token per CLIP penultimate token (CLS + 16x16 patches)
        token_dim=p["proj.2.weight"].shape[0],
        **_clip(ClipOutput.PENULTIMATE, p["proj.0.weight"].shape[1]),
        **f.common,
    )


def _resampler(f: _Probe) -> AdapterSpec:
    p = f.image_proj
    in_dim = p["proj_in.weight"].shape[1]
    token_dim = p["proj_out.weight"].shape[0]
    if in_dim == FACE_DIM:  # a Resampler over the raw identity embedding
        if f.override not in (None, "unnorm"):
            raise _bad_override(f.name, f.override, ("unnorm",))
        return AdapterSpec(
            kind=AdapterKind.PORTRAIT_UNNORM,
            family=f.family,
            variant=f"FaceID portrait unnorm ({f.family.value})",
            num_tokens=p["latents"].shape[1],
            token_dim=token_dim,
            face_dim=in_dim,
            face_normed=False,
            face_crop_size=_face_crop(f.family),
            **f.common,
        )
    _no_override(f.name, f.override)
    clip = _clip(ClipOutput.PENULTIMATE, in_dim)
    family = Family.KOLORS if clip["clip_encoder"] == "ViT-L-14-336" and f.family is Family.SDXL else f.family
    flavour = "plus-face" if "face" in f.lower else "composition" if "composition" in f.lower else "plus"
    return AdapterSpec(
        kind=AdapterKind.PLUS,
        family=family,
        variant=f"{flavour} ({family.value})",
        num_tokens=p["latents"].shape[1],
        token_dim=token_dim,
        **clip,
        **f.common,
    )


def _faceid_mlp(f: _Probe) -> AdapterSpec:
    p = f.image_proj
    token_dim = p["norm.weight"].shape[0]
    tokens = p["proj.2.weight"].shape[0] // token_dim
    portrait = f.common["lora_rank"] is None and tokens >= 16
    normed = not (f.override == "unnorm" or (f.override is None and "unnorm" in f.lower))
    if f.override not in (None, "normed", "unnorm") or (f.override is not None and not portrait):
        raise _bad_override(f.name, f.override, ("normed", "unnorm") if portrait else ())
    return AdapterSpec(
        kind=AdapterKind.PORTRAIT if portrait else AdapterKind.FACEID,
        family=f.family,
        variant=f"FaceID{' portrait' if portrait else ''}{'' if normed else ' unnorm'} ({f.family.value})",
        num_tokens=tokens,
        token_dim=token_dim,
        face_dim=p["proj.0.weight"].shape[1],
        face_normed=normed,
        face_crop_size=_face_crop(f.family),
        name_hint="" if normed else ("override unnorm" if f.override else "file name says unnorm"),
        **f.common,
    )


def _image_proj(f: _Probe) -> AdapterSpec:
    _no_override(f.name, f.override)
    p = f.image_proj
    token_dim = p["norm.weight"].shape[0]
    clip = _clip(ClipOutput.IMAGE_EMBEDS, p["proj.weight"].shape[1])
    flavour = "light" if "light" in f.lower else "base"
    return AdapterSpec(
        kind=AdapterKind.IMAGE_PROJ,
        family=f.family,
        variant=f"{flavour} ({f.family.value}, {clip['clip_encoder'] or 'unknown encoder'})",
        num_tokens=p["proj.weight"].shape[0] // token_dim,
        token_dim=token_dim,
        **clip,
        **f.common,
    )


LAYOUTS = (
    Layout("FaceID Plus (perceiver_resampler.*)", ("perceiver_resampler.proj_in.weight",),
           "ip-adapter-faceid-plus_sd15, ip-adapter-faceid-plusv2_sd15/_sdxl, Kolors FaceID Plus", _faceid_plus),
    Layout("full-face MLP (proj.0/2/3)", ("proj.3.weight",), "ip-adapter-full-face_sd15", _full_face),
    Layout("Resampler (latents, proj_in, layers.*)", ("latents",),
           "ip-adapter-plus(-face)_sd15/_sdxl_vit-h, ip_plus_composition_sd15/_sdxl, Kolors plus; "
           "ip-adapter-faceid-portrait_sdxl_unnorm (512-wide input)", _resampler),
    Layout("FaceID MLP (proj.0/2, norm)", ("proj.0.weight", "proj.2.weight", "norm.weight"),
           "ip-adapter-faceid_sd15/_sdxl, ip-adapter-faceid-portrait(-v11)_sd15, ip-adapter-faceid-portrait_sdxl", _faceid_mlp),
    Layout("ImageProj (proj, norm)", ("proj.weight", "norm.weight"),
           "ip-adapter_sd15, ip-adapter_sd15_light(_v11), ip-adapter_sd15_vit-G, ip-adapter_sdxl, ip-adapter_sdxl_vit-h", _image_proj),
)
"""The image-projection layouts of the published adapters, tried in this order (more specific first)."""


def detect(raw: RawCheckpoint, *, override: str | None = None) -> AdapterSpec:
    """Describe an adapter from its tensors; the file name only breaks ties the layouts cannot."""
    name = raw.path.name
    kv = _kv_widths(raw)
    cross = kv["cross"]
    layers = len(kv["widths"])
    common = dict(cross_attention_dim=cross, layer_widths=kv["widths"], lora_rank=_lora_rank(raw, layers, cross))
    layout = next((row for row in LAYOUTS if row.matches(raw.image_proj)), None)
    if layout is None:
        raise CheckpointError(
            f"{name}: unknown image projection layout. Known layouts: {', '.join(row.name for row in LAYOUTS)}. "
            f"image_proj keys seen: {', '.join(sorted(raw.image_proj)[:8])}."
        )
    spec = layout.describe(_Probe(name, raw.image_proj, override, _topology_family(name, layers, cross), common))
    if spec.token_dim != cross and spec.family is not Family.KOLORS:
        raise CheckpointError(
            f"{name}: image tokens are {spec.token_dim} wide but to_k_ip expects {cross}; the two groups come from "
            "different adapters. Re-download the file."
        )
    return spec


def _kv_widths(raw: RawCheckpoint) -> dict:
    ks: dict[int, torch.Size] = {}
    vs: dict[int, torch.Size] = {}
    for key, t in raw.ip_adapter.items():
        m = _KV_KEY.match(key)
        if m:
            (ks if m.group(2) == "k" else vs)[int(m.group(1))] = t.shape
    name = raw.path.name
    if not ks:
        raise CheckpointError(
            f"{name}: the ip_adapter group has no `<N>.to_k_ip.weight` tensors; keys seen: "
            f"{', '.join(sorted(raw.ip_adapter)[:6])}. The file is not an IP-Adapter or is damaged."
        )
    expected = list(range(1, 2 * len(ks), 2))
    if sorted(ks) != expected or sorted(vs) != expected:
        raise CheckpointError(
            f"{name}: to_k_ip/to_v_ip should exist for N = 1, 3, ..., {2 * len(ks) - 1}; found k at "
            f"{sorted(ks)[:6]}... and v at {sorted(vs)[:6]}.... The file is damaged."
        )
    crosses = {s[1] for s in ks.values()} | {s[1] for s in vs.values()}
    if len(crosses) != 1 or any(ks[n] != vs[n] for n in ks):
        raise CheckpointError(f"{name}: to_k_ip/to_v_ip shapes disagree between layers. The file is damaged.")
    return {"cross": crosses.pop(), "widths": tuple(ks[n][0] for n in expected)}


def _topology_family(name: str, layers: int, cross: int) -> Family:
    family = FAMILY_BY_LAYERS.get(layers)
    if family is None:
        known = " or ".join(f"{n} ({f.label})" for n, f in FAMILY_BY_LAYERS.items())
        raise CheckpointError(
            f"{name}: {layers} cross-attention layers (context width {cross}); known UNets have {known}; Kolors has "
            "SDXL's. This adapter is for a model this pack does not support."
        )
    return family


def _lora_rank(raw: RawCheckpoint, layers: int, cross: int) -> int | None:
    found = {}
    for key, t in raw.ip_adapter.items():
        m = LORA_KEY.match(key)
        if m:
            found[(int(m.group(1)), m.group(2), m.group(3))] = t
    if not found:
        return None
    ranks = {t.shape[0] for (n, _, d), t in found.items() if d == "down"}
    expected = 2 * layers * 4 * 2
    if len(found) != expected or len(ranks) != 1:
        raise CheckpointError(
            f"{raw.path.name}: the FaceID LoRA is incomplete ({len(found)} of {expected} tensors, ranks {sorted(ranks)}). "
            "Re-download the file."
        )
    return ranks.pop()


def _clip(output: ClipOutput, dim: int) -> dict:
    col = 0 if output is ClipOutput.PENULTIMATE else 1
    encoder = next((k for k, v in CLIP_ENCODERS.items() if v[col] == dim), None)
    size = CLIP_ENCODERS[encoder][2] if encoder else 224
    return dict(clip_encoder=encoder, clip_output=output, clip_dim=dim, clip_size=size)


def _face_crop(family: Family) -> int:
    return {Family.SD15: 224, Family.SDXL: 256, Family.KOLORS: 336}[family]


def _no_override(name: str, override: str | None) -> None:
    if override is not None:
        raise _bad_override(name, override, ())


def _bad_override(name: str, override: str, allowed: tuple[str, ...]) -> CheckpointError:
    options = ", ".join(allowed) if allowed else "none (leave it on auto)"
    return CheckpointError(f"{name}: variant override '{override}' does not apply to this layout; valid here: {options}.")
