"""IPAdapter Kit core: a standalone torch implementation of IP-Adapter (Ye et al. 2023).

Checkpoint detection and loading, projection models, decoupled attention, weight schedules, masks and
embeds IO. It imports only torch, einops and safetensors (insightface lazily, for FaceID) and never
imports ComfyUI; the pack's `nodes/` adapt it to ComfyUI.
"""

from .adapter import IPAdapterModel, LoadedAdapter, build_adapter, layer_kv, load_adapter, project
from .attention import ImageTerm, LayerPlan, attention, decoupled_attention, sdpa
from .checkpoint import CheckpointError, RawCheckpoint, detect, read_checkpoint
from .embeds import COMBINE_METHODS, ImageEmbeds, combine, combine_features, concat, encode_clip, project_embeds
from .embeds_io import load_embeds, save_embeds
from .images import CROP_POSITIONS, INTERPOLATIONS, clip_pixels, prep_image, zero_pixels
from .masks import as_mask_batch, layer_grid, resize_masks
from .schedules import EMBEDS_SCALING, WEIGHT_TYPES, TransformerWeight, layer_weights, parse_block_weights
from .spec import CLIP_ENCODERS, AdapterKind, AdapterSpec, ClipOutput, Family
from .terms import adapter_terms
from .topology import CrossAttnLayer, Topology

__all__ = [
    "AdapterKind",
    "AdapterSpec",
    "CLIP_ENCODERS",
    "COMBINE_METHODS",
    "CROP_POSITIONS",
    "CheckpointError",
    "ClipOutput",
    "CrossAttnLayer",
    "EMBEDS_SCALING",
    "Family",
    "INTERPOLATIONS",
    "IPAdapterModel",
    "ImageEmbeds",
    "ImageTerm",
    "LayerPlan",
    "LoadedAdapter",
    "RawCheckpoint",
    "Topology",
    "TransformerWeight",
    "WEIGHT_TYPES",
    "adapter_terms",
    "as_mask_batch",
    "attention",
    "build_adapter",
    "clip_pixels",
    "combine",
    "combine_features",
    "concat",
    "decoupled_attention",
    "detect",
    "encode_clip",
    "layer_grid",
    "layer_kv",
    "layer_weights",
    "load_adapter",
    "load_embeds",
    "parse_block_weights",
    "prep_image",
    "project",
    "project_embeds",
    "read_checkpoint",
    "resize_masks",
    "save_embeds",
    "sdpa",
    "zero_pixels",
]
