"""Loader nodes: an adapter file, or a preset that finds the adapter and its CLIP vision model."""

from __future__ import annotations

from ..ipadapter_core import Family, presets
from ..ipadapter_core.checkpoint import OVERRIDES
from . import _adapters, _clip, _dit_apply, _docs, _faceid, _folders, _unet
from ._adapters import AdapterBundle
from ._base import CheckedNode


class ModelLoader(CheckedNode):
    DESCRIPTION = (
        "Loads an IP-Adapter file (.safetensors or .bin) from models/ipadapter and detects which adapter it is from its "
        "tensors: SD1.5/SDXL adapters, and the Flux (XLabs v1/v2, InstantX) and SD3.5 Large (InstantX) ones. A file is "
        "loaded once and shared by every node that uses it."
    )
    CATEGORY = f"{_docs.CATEGORY}/loaders"
    RETURN_TYPES = (_docs.ADAPTER,)
    RETURN_NAMES = ("ipadapter",)
    OUTPUT_TOOLTIPS = ("The loaded adapter; connect it to an Apply or Encode node.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ipadapter_file": (
                    _folders.file_list(_folders.IPADAPTER),
                    {"tooltip": "An IP-Adapter file from models/ipadapter (or an `ipadapter:` folder of extra_model_paths.yaml)."},
                ),
            },
            "optional": {
                "variant_override": (
                    ["auto", *OVERRIDES],
                    {
                        "default": "auto",
                        "tooltip": "Only for layouts that look identical: FaceID Plus v1 vs v2 (faceid_plus / faceid_plus_v2) "
                        "and portrait normed vs unnorm face embeddings. auto decides from the file name.",
                    },
                ),
            },
        }

    def load(self, ipadapter_file, variant_override="auto"):
        path = _folders.resolve(_folders.IPADAPTER, ipadapter_file)
        override = None if variant_override in (None, "auto") else variant_override
        return (AdapterBundle(_adapters.load_adapter_cached(path, override)),)


class UnifiedLoader(CheckedNode):
    DESCRIPTION = (
        "Picks the adapter file for a preset and the model's family (SD1.5, SDXL, Flux or SD3.5 Large) from "
        "models/ipadapter, and the CLIP vision model it needs from models/clip_vision, by tolerant file-name matching "
        "(case, '-', '_' and '.' do not matter; subfolders are searched; a generic name such as ip-adapter.bin is known "
        "by its folder's name). The adapter it returns carries the CLIP vision model, so Apply needs no clip_vision input."
    )
    CATEGORY = f"{_docs.CATEGORY}/loaders"
    RETURN_TYPES = ("MODEL", _docs.ADAPTER, "CLIP_VISION")
    RETURN_NAMES = ("model", "ipadapter", "clip_vision")
    OUTPUT_TOOLTIPS = (
        "The input model, unchanged (FaceID presets return it with the FaceID LoRA applied).",
        "The adapter, carrying its CLIP vision model (and, for FaceID presets, InsightFace buffalo_l).",
        "The CLIP vision model the adapter needs (for Encode or other nodes).",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the adapter is for; its family (SD1.5 or SDXL) picks the file."}),
                "preset": (list(presets.PRESETS) + list(presets.DIT_PRESETS), {
                    "default": "standard (medium strength)",
                    "tooltip": "Which adapter to use. The flux and sd3.5 presets need a Flux or SD3.5 Large model and bring "
                    "CLIP ViT-L (XLabs) or SigLIP so400m-patch14-384 (InstantX).",
                }),
            },
            "optional": {
                "lora_strength": (
                    _docs.LORA_STRENGTH[0],
                    {**_docs.LORA_STRENGTH[1], "tooltip": "FaceID presets: strength of the FaceID LoRA inside the adapter file, applied to the returned model (0 disables it)."},
                ),
                "provider": (
                    _docs.PROVIDER[0],
                    {**_docs.PROVIDER[1], "tooltip": "FaceID presets: onnxruntime provider for InsightFace (buffalo_l); falls back to CPU with a warning."},
                ),
            },
        }

    def load(self, model, preset, lora_strength=0.6, provider="CPU"):
        if preset in presets.DIT_PRESETS:
            return _load_dit(model, preset)
        family = _family(model)
        files = _folders.file_list(_folders.IPADAPTER)
        match = presets.pick_adapter(files, preset, family.value)
        if match.file is None:
            raise FileNotFoundError(_not_found("IP-Adapter", preset, family, match, _folders.IPADAPTER))
        adapter = _adapters.load_adapter_cached(_folders.resolve(_folders.IPADAPTER, match.file))
        spec = adapter.spec
        encoder = spec.clip_encoder or presets.PRESETS[preset][2]
        clip_match = presets.pick_clip(_folders.file_list("clip_vision"), encoder)
        clip_vision = None
        if clip_match.file is not None:
            clip_vision = _clip.load_clip_vision_cached(_folders.resolve("clip_vision", clip_match.file))
        elif spec.kind.uses_clip:
            raise FileNotFoundError(_not_found(f"CLIP vision ({encoder})", preset, family, clip_match, "clip_vision"))
        if spec.kind.uses_clip:
            _clip.check_clip(spec, clip_vision, adapter.name)
        insightface = None
        if spec.kind.uses_face:
            insightface = _faceid.load_insightface("buffalo_l", provider)
            if adapter.lora and lora_strength and not _faceid.has_lora(model, adapter):
                model = _faceid.apply_lora(model, adapter, lora_strength)
        return (model, AdapterBundle(adapter, clip_vision=clip_vision, insightface=insightface), clip_vision)


def _load_dit(model, preset: str):
    wanted, _, encoder = presets.DIT_PRESETS[preset]
    host = _dit_apply.host_of(model)
    label = {"flux": "Flux", "sd35": "SD3.5 Large"}[wanted]
    if {"flux": _dit_apply.FLUX, "sd35": _dit_apply.MMDIT}[wanted] != host:
        raise ValueError(f"the preset '{preset}' is for {label} models; this model is "
                         f"{_dit_apply.HOST_NAMES.get(host, 'an SD1.5/SDXL-type UNet')}. Pick a preset for it")
    match = presets.pick_dit_adapter(_folders.file_list(_folders.IPADAPTER), preset)
    if match.file is None:
        raise FileNotFoundError(_not_found("IP-Adapter", preset, label, match, _folders.IPADAPTER))
    adapter = _adapters.load_adapter_cached(_folders.resolve(_folders.IPADAPTER, match.file))
    clip_match = presets.pick_clip(_folders.file_list("clip_vision"), encoder)
    if clip_match.file is None:
        raise FileNotFoundError(_not_found(f"CLIP vision ({encoder})", preset, label, clip_match, "clip_vision"))
    clip_vision = _clip.load_clip_vision_cached(_folders.resolve("clip_vision", clip_match.file))
    return (model, AdapterBundle(adapter, clip_vision=clip_vision), clip_vision)


def _family(model) -> Family:
    topo = _unet.topology(model)
    if topo.family is None:
        raise ValueError(f"the Unified Loader knows SD1.5 and SDXL models; this one is {topo.describe()}. Use the Model Loader.")
    return topo.family


def _not_found(what: str, preset: str, family: Family | str, match: presets.Match, kind: str) -> str:
    label = getattr(family, "label", family)
    if not match.accepted:
        return f"the preset '{preset}' has no {label} version; pick another preset"
    return (
        f"no {what} file for the preset '{preset}' ({label}). Accepted names (any case, '-'/'_'/'.' interchangeable, "
        f"any subfolder, .safetensors or .bin): {', '.join(match.accepted)}. Searched: {'; '.join(_folders.folders(kind)) or 'no folders'}. "
        f"Files there: {', '.join(_folders.file_list(kind)[:12]) or 'none'}."
    )
