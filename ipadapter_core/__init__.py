"""IPAdapter Kit core: a standalone torch implementation of IP-Adapter (Ye et al. 2023).

Checkpoint detection and loading, projection models, decoupled attention, weight schedules, masks and
embeds IO, and one entry point (`engine.image_terms`) from a loaded adapter, a UNet topology, embeds and
`ApplySettings` to the per-layer image terms. It imports only torch, einops and safetensors (insightface
lazily, for FaceID) and never imports ComfyUI; the pack's `nodes/` adapt it to ComfyUI.

Names are imported on first use (PEP 562), so modules that need only the standard library
(`presets`) import without torch.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "adapter": ("IPAdapterModel", "LoadedAdapter", "build_adapter", "layer_kv", "load_adapter", "project"),
    "attention": ("FrameTerm", "ImageTerm", "LayerPlan", "decoupled_attention", "sdpa"),  # the function `attention` shares its module's name: import it from .attention
    "checkpoint": ("CheckpointError", "LAYOUTS", "RawCheckpoint", "detect", "read_checkpoint"),
    "embeds": ("COMBINE_METHODS", "ImageEmbeds", "combine", "combine_features", "concat", "encode_clip", "project_embeds", "scaled",
               "with_negative"),
    "embeds_io": ("load_embeds", "save_embeds"),
    "engine": ("ApplySettings", "changes_nothing", "check_topology", "image_terms", "plan_weights", "sigma_range"),
    "images": ("CROP_POSITIONS", "INTERPOLATIONS", "clip_pixels", "prep_image", "zero_pixels"),
    "masks": ("as_mask_batch", "layer_grid", "resize_masks"),
    "schedules": ("EMBEDS_SCALING", "EXPANDED_STYLE", "WEIGHT_TYPES", "TransformerWeight", "layer_weights", "parse_block_weights",
                  "parse_index_weights"),
    "spec": ("CLIP_ENCODERS", "AdapterKind", "AdapterSpec", "ClipOutput", "Family"),
    "terms": ("adapter_terms", "frame_adapter_terms"),
    "topology": ("CrossAttnLayer", "Topology"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
