"""Read IP-Adapter files safely and detect what they are from tensor names and shapes.

Formats: `.safetensors` with flat `image_proj.` / `ip_adapter.` keys, `.bin` pickles of the nested
dict `{"image_proj": ..., "ip_adapter": ...}` (read with `torch.load(weights_only=True)`, so a file
that would run code is refused), the `adapter_modules` alias and raw training checkpoints
(`image_proj_model.` / `adapter_modules.` prefixes).
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .spec import CLIP_ENCODERS, AdapterKind, AdapterSpec, ClipOutput, Family

PROJ_PREFIXES = ("image_proj.", "image_proj_model.")
ADAPTER_PREFIXES = ("ip_adapter.", "adapter_modules.")
OVERRIDES = ("faceid_plus", "faceid_plus_v2", "normed", "unnorm")
FACE_DIM = 512
_LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
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
    if path.suffix.lower() in (".safetensors", ".sft"):
        import safetensors.torch

        try:
            flat = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"{path.name}: not a readable safetensors file ({e}). Re-download the file.") from e
        return _split_flat(path, flat)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path.name}: refused to load; the pickle asks to run code or build objects that are not plain "
            f"tensors ({_first_line(e)}). Nothing from it was executed. Use the .safetensors release of this "
            "adapter, or a .bin that holds only tensors."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path.name}: not a readable torch file ({_first_line(e)}). Re-download the file.") from e
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


def _can_mmap(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


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


def detect(raw: RawCheckpoint, *, override: str | None = None) -> AdapterSpec:
    """Describe an adapter from its tensors; the file name only breaks ties the layouts cannot."""
    name = raw.path.name
    p = raw.image_proj
    kv = _kv_widths(raw)
    cross = kv["cross"]
    family = _topology_family(name, len(kv["widths"]), cross)
    lora_rank = _lora_rank(raw, len(kv["widths"]), cross)
    common = dict(cross_attention_dim=cross, layer_widths=kv["widths"], lora_rank=lora_rank)
    lower = name.lower()

    if "perceiver_resampler.proj_in.weight" in p:
        token_dim = p["norm.weight"].shape[0]
        clip_dim = p["perceiver_resampler.proj_in.weight"].shape[1]
        kolors = token_dim != cross
        if kolors:
            family = Family.KOLORS
        v2 = kolors or re.search(r"plus[-_ ]?v2", lower) is not None
        hint = "Kolors FaceID always uses the shortcut" if kolors else ("file name says plusv2" if v2 else "")
        if override in ("faceid_plus", "faceid_plus_v2"):
            v2, hint = override == "faceid_plus_v2", f"override {override}"
        elif override is not None:
            raise _bad_override(name, override, ("faceid_plus", "faceid_plus_v2"))
        spec = AdapterSpec(
            kind=AdapterKind.FACEID_PLUS_V2 if v2 else AdapterKind.FACEID_PLUS,
            family=family,
            variant=f"FaceID Plus{' v2' if v2 else ''} ({family.value})",
            num_tokens=p["proj.2.weight"].shape[0] // token_dim,
            token_dim=token_dim,
            face_dim=p["proj.0.weight"].shape[1],
            face_crop_size=_face_crop(family),
            name_hint=hint,
            **_clip(ClipOutput.PENULTIMATE, clip_dim),
            **common,
        )
    elif "proj.3.weight" in p:
        _no_override(name, override)
        spec = AdapterSpec(
            kind=AdapterKind.FULL_FACE,
            family=family,
            variant=f"full-face ({family.value})",
            num_tokens=257,  # one token per CLIP penultimate token (CLS + 16x16 patches)
            token_dim=p["proj.2.weight"].shape[0],
            **_clip(ClipOutput.PENULTIMATE, p["proj.0.weight"].shape[1]),
            **common,
        )
    elif "latents" in p:
        in_dim = p["proj_in.weight"].shape[1]
        token_dim = p["proj_out.weight"].shape[0]
        if in_dim == FACE_DIM:
            if override not in (None, "unnorm"):
                raise _bad_override(name, override, ("unnorm",))
            spec = AdapterSpec(
                kind=AdapterKind.PORTRAIT_UNNORM,
                family=family,
                variant=f"FaceID portrait unnorm ({family.value})",
                num_tokens=p["latents"].shape[1],
                token_dim=token_dim,
                face_dim=in_dim,
                face_normed=False,
                face_crop_size=_face_crop(family),
                **common,
            )
        else:
            _no_override(name, override)
            clip = _clip(ClipOutput.PENULTIMATE, in_dim)
            if clip["clip_encoder"] == "ViT-L-14-336" and family is Family.SDXL:
                family = Family.KOLORS
            spec = AdapterSpec(
                kind=AdapterKind.PLUS,
                family=family,
                variant=_plus_variant(lower, family),
                num_tokens=p["latents"].shape[1],
                token_dim=token_dim,
                **clip,
                **common,
            )
    elif "proj.0.weight" in p and "proj.2.weight" in p and "norm.weight" in p:
        token_dim = p["norm.weight"].shape[0]
        tokens = p["proj.2.weight"].shape[0] // token_dim
        portrait = lora_rank is None and tokens >= 16
        normed = not (override == "unnorm" or (override is None and "unnorm" in lower))
        if override not in (None, "normed", "unnorm") or (override is not None and not portrait):
            raise _bad_override(name, override, ("normed", "unnorm") if portrait else ())
        spec = AdapterSpec(
            kind=AdapterKind.PORTRAIT if portrait else AdapterKind.FACEID,
            family=family,
            variant=f"FaceID{' portrait' if portrait else ''}{'' if normed else ' unnorm'} ({family.value})",
            num_tokens=tokens,
            token_dim=token_dim,
            face_dim=p["proj.0.weight"].shape[1],
            face_normed=normed,
            face_crop_size=_face_crop(family),
            name_hint="" if normed else ("override unnorm" if override else "file name says unnorm"),
            **common,
        )
    elif "proj.weight" in p and "norm.weight" in p:
        _no_override(name, override)
        token_dim = p["norm.weight"].shape[0]
        clip = _clip(ClipOutput.IMAGE_EMBEDS, p["proj.weight"].shape[1])
        spec = AdapterSpec(
            kind=AdapterKind.IMAGE_PROJ,
            family=family,
            variant=_base_variant(lower, family, clip["clip_encoder"]),
            num_tokens=p["proj.weight"].shape[0] // token_dim,
            token_dim=token_dim,
            **clip,
            **common,
        )
    else:
        raise CheckpointError(
            f"{name}: unknown image projection layout. Known layouts: ImageProj (proj, norm), full-face MLP "
            "(proj.0/2/3), Resampler (latents, proj_in, layers.*), FaceID MLP (proj.0/2, norm), FaceID Plus "
            f"(perceiver_resampler.*). image_proj keys seen: {', '.join(sorted(p)[:8])}."
        )
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
    if layers == 16:
        return Family.SD15
    if layers == 70:
        return Family.SDXL
    raise CheckpointError(
        f"{name}: {layers} cross-attention layers (context width {cross}); known UNets have 16 (SD1.5) or "
        "70 (SDXL, Kolors). This adapter is for a model this pack does not support."
    )


def _lora_rank(raw: RawCheckpoint, layers: int, cross: int) -> int | None:
    found = {}
    for key, t in raw.ip_adapter.items():
        m = _LORA_KEY.match(key)
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


def _plus_variant(lower: str, family: Family) -> str:
    flavour = "plus-face" if "face" in lower else "composition" if "composition" in lower else "plus"
    return f"{flavour} ({family.value})"


def _base_variant(lower: str, family: Family, encoder: str | None) -> str:
    flavour = "light" if "light" in lower else "base"
    return f"{flavour} ({family.value}, {encoder or 'unknown encoder'})"


def _no_override(name: str, override: str | None) -> None:
    if override is not None:
        raise _bad_override(name, override, ())


def _bad_override(name: str, override: str, allowed: tuple[str, ...]) -> CheckpointError:
    options = ", ".join(allowed) if allowed else "none (leave it on auto)"
    return CheckpointError(f"{name}: variant override '{override}' does not apply to this layout; valid here: {options}.")
