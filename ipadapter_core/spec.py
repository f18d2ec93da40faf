"""What an IP-Adapter checkpoint is: one frozen description, detected once from its tensors."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class AdapterKind(str, Enum):
    """The projection architecture, which decides what the adapter consumes and how many tokens it makes."""

    IMAGE_PROJ = "image_proj"  # base / light / vit-G / SDXL: one CLIP image embedding -> T tokens
    PLUS = "plus"  # Resampler over CLIP penultimate tokens: plus, plus-face, composition, Kolors plus
    FULL_FACE = "full_face"  # MLP over all 257 CLIP penultimate tokens
    FACEID = "faceid"  # MLP over an InsightFace identity embedding
    FACEID_PLUS = "faceid_plus"  # identity MLP + face perceiver over CLIP tokens of the face crop
    FACEID_PLUS_V2 = "faceid_plus_v2"  # the same with the identity shortcut
    PORTRAIT = "faceid_portrait"  # identity MLP with 16 tokens per face, several faces concatenated
    PORTRAIT_UNNORM = "faceid_portrait_unnorm"  # Resampler over the raw (unnormalised) identity embedding

    @property
    def uses_face(self) -> bool:
        return self in _FACE_KINDS

    @property
    def uses_clip(self) -> bool:
        return self in _CLIP_KINDS


_FACE_KINDS = frozenset(
    {
        AdapterKind.FACEID,
        AdapterKind.FACEID_PLUS,
        AdapterKind.FACEID_PLUS_V2,
        AdapterKind.PORTRAIT,
        AdapterKind.PORTRAIT_UNNORM,
    }
)
_CLIP_KINDS = frozenset(
    {
        AdapterKind.IMAGE_PROJ,
        AdapterKind.PLUS,
        AdapterKind.FULL_FACE,
        AdapterKind.FACEID_PLUS,
        AdapterKind.FACEID_PLUS_V2,
    }
)


class Family(str, Enum):
    """The base model an adapter was trained for."""

    SD15 = "sd15"
    SDXL = "sdxl"
    KOLORS = "kolors"

    @property
    def label(self) -> str:
        """The name users know: SD1.5, SDXL, Kolors."""
        return {"sd15": "SD1.5", "sdxl": "SDXL", "kolors": "Kolors"}[self.value]


FAMILY_BY_LAYERS = {16: Family.SD15, 70: Family.SDXL}
"""The UNet family from its number of cross-attention layers (Kolors' UNet has SDXL's 70)."""


class ClipOutput(str, Enum):
    """Which output of the CLIP vision tower an adapter reads."""

    IMAGE_EMBEDS = "image_embeds"  # visual_projection(post_layernorm(CLS)), one vector per image
    PENULTIMATE = "penultimate"  # hidden_states[-2], every token, no post-layernorm


FACE_DIM = 512
"""Width of the InsightFace (ArcFace) identity embedding every FaceID adapter reads."""

# CLIP vision towers by the width of what the adapters read from them.
CLIP_ENCODERS = {
    # name: (hidden width = penultimate width, projection width = image_embeds width, input size)
    "ViT-H-14": (1280, 1024, 224),
    "ViT-bigG-14": (1664, 1280, 224),
    "ViT-L-14-336": (1024, 768, 336),
}


@dataclass(frozen=True)
class AdapterSpec:
    """Everything downstream code needs to know about one adapter file.

    Dimensions are read from tensor shapes; nothing here is guessed from the file name except the
    choices the published layouts cannot tell apart (FaceID Plus v1 vs v2), recorded in `name_hint`.
    """

    kind: AdapterKind
    family: Family
    variant: str  # human name of the published file family, e.g. "plus-face (SD1.5)" or "plus / plus-face"
    num_tokens: int  # image tokens per reference image (per face for portrait)
    token_dim: int  # width of the projected tokens (C, or 4096 for Kolors FaceID)
    cross_attention_dim: int  # in-width of to_k_ip / to_v_ip (the UNet's context width)
    layer_widths: tuple[int, ...]  # out-width of to_k_ip per cross-attention layer, checkpoint order
    clip_encoder: str | None = None  # key of CLIP_ENCODERS, None when no CLIP input
    clip_output: ClipOutput | None = None
    clip_dim: int | None = None  # width of the CLIP feature consumed
    clip_size: int | None = None  # encoder input size (224, or 336 for Kolors)
    face_dim: int | None = None  # width of the InsightFace embedding consumed (512)
    face_normed: bool = True  # normed_embedding (True) or raw embedding (portrait-unnorm)
    face_crop_size: int | None = None  # aligned face crop fed to CLIP (224 SD1.5, 256 SDXL, 336 Kolors)
    lora_rank: int | None = None  # FaceID LoRA shipped inside the file
    name_hint: str = ""  # which file-name tie-breaker or override decided the kind, if any

    @property
    def num_layers(self) -> int:
        return len(self.layer_widths)

    @property
    def has_lora(self) -> bool:
        return self.lora_rank is not None

    @property
    def shortcut(self) -> bool:
        return self.kind is AdapterKind.FACEID_PLUS_V2

    @property
    def zero_clip_negative(self) -> bool:
        """The reference negative for the CLIP input is zeros (image_embeds adapters; Kolors FaceID, trained
        with zero hidden states), not the encoder's view of an all-zero normalised image."""
        return self.clip_output is ClipOutput.IMAGE_EMBEDS or (self.family is Family.KOLORS and self.kind.uses_face)

    def describe(self) -> str:
        """One line for logs and error messages."""
        parts = [f"{self.variant}", f"{self.num_tokens} tokens", f"{self.num_layers} layers", f"context {self.cross_attention_dim}"]
        if self.clip_output is not None:
            parts.append(f"CLIP {self.clip_encoder} {self.clip_output.value} ({self.clip_dim})")
        if self.face_dim is not None:
            parts.append("InsightFace " + ("normed" if self.face_normed else "raw") + " embedding")
        if self.has_lora:
            parts.append(f"FaceID LoRA rank {self.lora_rank}")
        return ", ".join(parts)
