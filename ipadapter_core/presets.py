"""Unified-loader presets and tolerant file-name matching.

Names are compared after lower-casing and dropping every separator, so `ip-adapter_sd15`,
`IP_Adapter-SD15.safetensors` and `sd15/ip.adapter.sd15.bin` all match; a file with a generic name
(`model.safetensors`) is known by its folder's name. A file belongs to the longest
known name it contains, so `ip-adapter_sd15_light_v11` is a light adapter, not a standard one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# preset -> (SD1.5 names, SDXL names, CLIP vision encoder); the first name that matches a file wins
PRESETS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "light - SD1.5 only (low strength)": (("ip-adapter_sd15_light_v11", "ip-adapter_sd15_light"), (), "ViT-H-14"),
    "standard (medium strength)": (("ip-adapter_sd15",), ("ip-adapter_sdxl_vit-h",), "ViT-H-14"),
    "vit-g (medium strength)": (("ip-adapter_sd15_vit-G",), ("ip-adapter_sdxl",), "ViT-bigG-14"),
    "plus (high strength)": (("ip-adapter-plus_sd15",), ("ip-adapter-plus_sdxl_vit-h",), "ViT-H-14"),
    "plus face (portraits)": (("ip-adapter-plus-face_sd15",), ("ip-adapter-plus-face_sdxl_vit-h",), "ViT-H-14"),
    "full face - SD1.5 only (portraits stronger)": (("ip-adapter-full-face_sd15",), (), "ViT-H-14"),
    "composition": (("ip_plus_composition_sd15", "ip-adapter_plus_composition_sd15"), ("ip_plus_composition_sdxl", "ip-adapter_plus_composition_sdxl"), "ViT-H-14"),
    "faceid": (("ip-adapter-faceid_sd15",), ("ip-adapter-faceid_sdxl",), "ViT-H-14"),
    "faceid plus - SD1.5 only": (("ip-adapter-faceid-plus_sd15",), (), "ViT-H-14"),
    "faceid plus v2": (("ip-adapter-faceid-plusv2_sd15",), ("ip-adapter-faceid-plusv2_sdxl",), "ViT-H-14"),
    "faceid portrait": (("ip-adapter-faceid-portrait-v11_sd15", "ip-adapter-faceid-portrait_sd15"), ("ip-adapter-faceid-portrait_sdxl",), "ViT-H-14"),
    "faceid portrait unnorm - SDXL only": ((), ("ip-adapter-faceid-portrait_sdxl_unnorm",), "ViT-H-14"),
    "kolors plus - Kolors only": ((), ("ip_adapter_plus_general", "kolors-ip-adapter-plus"), "ViT-L-14-336"),
}

# Flux and SD3.5 presets: preset -> (the model family it is for, adapter names, CLIP vision encoder). The published
# files have generic names (`ip_adapter.safetensors`, `ip-adapter.bin`), so these are the names users give them or
# their repositories' names (a generic file in a folder named after the repository is known by the folder's name).
DIT_PRESETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "flux xlabs v2 (CLIP ViT-L)": ("flux", ("flux-ip-adapter-v2", "xlabs-flux-ip-adapter-v2", "ip_adapter_flux_v2"), "ViT-L-14"),
    "flux xlabs v1 (CLIP ViT-L)": ("flux", ("flux-ip-adapter", "xlabs-flux-ip-adapter", "ip_adapter_flux"), "ViT-L-14"),
    "flux instantx (SigLIP)": ("flux", ("FLUX.1-dev-IP-Adapter", "instantx-flux-ip-adapter", "flux-ip-adapter-instantx"),
                               "SigLIP-so400m-384"),
    "sd3.5 large instantx (SigLIP)": ("sd35", ("SD3.5-Large-IP-Adapter", "instantx-sd35-ip-adapter", "sd35-large-ip-adapter"),
                                      "SigLIP-so400m-384"),
}

# names of the CLIP vision files per encoder (published names and common renames)
CLIP_NAMES: dict[str, tuple[str, ...]] = {
    "ViT-H-14": ("CLIP-ViT-H-14-laion2B-s32B-b79K", "clip_vision_h", "ViT-H-14", "clip-vit-h", "image_encoder_sd15", "sd15_model"),
    "ViT-bigG-14": ("CLIP-ViT-bigG-14-laion2B-39B-b160k", "clip_vision_g", "clip_vision_bigg", "ViT-bigG-14", "clip-vit-bigg", "image_encoder_sdxl", "sdxl_model"),
    "ViT-L-14-336": ("clip-vit-large-patch14-336", "clip_vision_l_336", "ViT-L-14-336"),
    "ViT-L-14": ("clip_vision_l", "clip-vit-large-patch14", "CLIP-ViT-L-14", "ViT-L-14"),
    "SigLIP-so400m-384": ("siglip-so400m-patch14-384", "siglip_so400m_patch14_384", "sigclip_vision_patch14_384"),
}

_EXTENSIONS = re.compile(r"\.(safetensors|sft|bin|pth|pt|ckpt)$", re.IGNORECASE)


_GENERIC = {"model", "pytorchmodel", "openclippytorchmodel", "openclipmodel", "ipadapter"}
"""File names that say nothing (a repository downloaded as a folder: `CLIP-ViT-H-14-laion2B-s32B-b79K/model.safetensors`);
such a file is known by its folder's name."""


def normalize(name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    key = re.sub(r"[^a-z0-9]", "", _EXTENSIONS.sub("", parts[-1]).lower())
    if key in _GENERIC and len(parts) > 1:
        return re.sub(r"[^a-z0-9]", "", parts[-2].lower())
    return key


@dataclass(frozen=True)
class Match:
    file: str | None
    accepted: tuple[str, ...]


def pick(files: list[str], wanted: tuple[str, ...], universe: list[str]) -> Match:
    """The first file (in `wanted` order) whose best-matching known name is one of `wanted`."""
    known = sorted({normalize(n) for n in universe}, key=len, reverse=True)
    owner = {}
    for f in files:
        nf = normalize(f)
        best = next((k for k in known if k in nf), None)
        if best is not None:
            owner.setdefault(best, []).append(f)
    for name in wanted:
        hits = owner.get(normalize(name))
        if hits:
            exact = [h for h in hits if normalize(h) == normalize(name)]
            return Match((exact or sorted(hits))[0], tuple(wanted))
    return Match(None, tuple(wanted))


def pick_adapter(files: list[str], preset: str, family: str) -> Match:
    sd15, sdxl, _ = PRESETS[preset]
    universe = [n for a, b, _ in PRESETS.values() for n in a + b]
    adapters = [f for f in files if not normalize(f).endswith("lora")]  # FaceID's separate *_lora files are LoRAs
    return pick(adapters, sd15 if family == "sd15" else sdxl, universe)


def pick_dit_adapter(files: list[str], preset: str) -> Match:
    universe = [n for _, names, _ in DIT_PRESETS.values() for n in names] + [n for a, b, _ in PRESETS.values() for n in a + b]
    return pick(files, DIT_PRESETS[preset][1], universe)


def pick_clip(files: list[str], encoder: str) -> Match:
    return pick(files, CLIP_NAMES[encoder], [n for names in CLIP_NAMES.values() for n in names])
