"""The CLIP vision enhancer: encode a reference as t x t tiles too, so CLIP sees more of its detail.

After the ClipVision Enhancer of IPAdapter Plus (cubiq), restated from its documented behaviour. CLIP
vision sees a reference at its input size (224, or 336 for Kolors); a larger reference loses its detail
there. Here the reference is also cut into t x t equal tiles, each encoded at the input size. Each tile's
penultimate hidden states (1 class token + P x P patch tokens) are put back in their place in one
(tP x tP) patch grid, which is average-pooled back to P x P, and the tiles' class tokens are averaged: the
tiles' features have the same shape as the whole image's, and merge with them:

- without unfold_batch, as two references: the whole image's features times `ratio`, then the tiles'
  features (`[whole_1 * ratio, ..., whole_n * ratio, tiles_1, ..., tiles_n]`), which the apply node
  combines by its combine_embeds like any references (as the older pack does for one image);
- with unfold_batch, per frame: `whole * ratio + tiles * (1 - ratio)`, one reference per frame (as the
  older pack's Batch node does).

One tile (t = 1) is the whole image: the plain encoding, whatever the ratio; so is unfold_batch with ratio 1
(the tiles are then not encoded at all). The negative goes through the same map as the references, so cond
and uncond stay parallel: a negative image is tiled like the references; the adapter's own negative (the
encoder's view of an empty image) tiles into empty images, so its tile features are the empty image's,
merged; zeros (Kolors FaceID) stay zeros. (The older pack's documentation does not say how it treats the
negative.)

Only adapters that read CLIP's penultimate states (plus, plus-face, full-face, composition, FaceID Plus,
Kolors plus) can be enhanced: `image_embeds` is one pooled vector per image, with no patch grid to
reassemble. None of these adapters was trained on pooled tile features; the enhancer is an inference-time
trick whose benefit depends on the reference (a large, detailed image gains most).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat

from .embeds import ClipEncoder, encode_clip
from .images import clip_pixels
from .masks import as_mask_batch
from .spec import AdapterSpec, ClipOutput

MAX_TILES = 16


@dataclass(frozen=True)
class Enhance:
    """How to enhance CLIP features: `tiles` x `tiles` tiles, merged with the whole image by `ratio`
    (per frame when `unfold`, else as two references; see the module docstring)."""

    tiles: int = 2
    ratio: float = 1.0
    unfold: bool = False

    def __post_init__(self) -> None:
        if not 1 <= int(self.tiles) <= MAX_TILES:
            raise ValueError(f"enhance_tiles must be 1 to {MAX_TILES} (tiles per side), got {self.tiles}")
        if not 0.0 <= float(self.ratio) <= 1.0:
            raise ValueError(f"enhance_ratio must be between 0 and 1 (the whole image's share), got {self.ratio}")
        object.__setattr__(self, "tiles", int(self.tiles))

    @property
    def uses_tiles(self) -> bool:
        """Whether the tiles count: more than one, and not a per-frame blend that gives the whole image all of it."""
        return self.tiles > 1 and not (self.unfold and self.ratio == 1.0)

    @property
    def references(self) -> int:
        """Rows one reference becomes: 2 (whole, tiles) when merged as two references, else 1."""
        return 2 if self.uses_tiles and not self.unfold else 1

    def merge(self, whole: torch.Tensor, tiled: torch.Tensor) -> torch.Tensor:
        """Whole-image and tile features `[n, ...]` -> the enhanced references `[n * references, ...]`."""
        if not self.uses_tiles:
            return whole
        if self.unfold:
            return whole * self.ratio + tiled * (1 - self.ratio)
        return torch.cat([whole * self.ratio, tiled])

    def repeat(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-reference rows that are not enhanced (a FaceID identity, a mask per reference) laid out like
        the enhanced references: `[n, ...]` -> `[n * references, ...]`."""
        return rows if self.references == 1 else torch.cat([rows, rows])

    def reference_masks(self, attn_mask: torch.Tensor | None, images: int) -> torch.Tensor | None:
        """An attention mask per reference image (`[n, H, W]`, n > 1) laid out like the enhanced references,
        so the whole image and the tiles of reference i share mask i; any other mask is returned as it is."""
        if attn_mask is None or images < 2 or as_mask_batch(attn_mask).shape[0] != images:
            return attn_mask
        return self.repeat(as_mask_batch(attn_mask))


def check_enhanceable(spec: AdapterSpec, *, source: str = "this adapter") -> None:
    """Raise ValueError, naming the adapter and the fix, when it does not read CLIP's penultimate states."""
    if spec.clip_output is ClipOutput.PENULTIMATE:
        return
    if spec.clip_output is None:
        why = "reads no CLIP features at all (only the InsightFace identity)"
        fix = "Use Apply IPAdapter FaceID for it"
    else:
        why = (
            "reads CLIP image_embeds, one pooled vector per image, which has no patch tokens for the tiles to add "
            "detail to"
        )
        fix = "Use Apply IPAdapter for it"
    raise ValueError(
        f"{source} ({spec.variant}) {why}. The ClipVision Enhancer works with the adapters that read CLIP's "
        f"penultimate tokens: plus, plus-face, full-face, composition and FaceID Plus. {fix}, or load one of those."
    )


# tiles


def tile_pixels(images: torch.Tensor, tiles: int, size: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ComfyUI images `[B, H, W, C]` -> encoder input of their t x t tiles `[(B t t), 3, size, size]`, row by row.

    The image is prepared for the encoder at t times its size (centre crop, as `clip_pixels` does), then cut,
    so each tile is an equal square of the prepared image at the encoder's size.
    """
    return rearrange(clip_pixels(images, size * tiles, mask), "b c (ty h) (tx w) -> (b ty tx) c h w", ty=tiles, tx=tiles)


def merge_tiles(tokens: torch.Tensor, tiles: int) -> torch.Tensor:
    """Penultimate states of each image's tiles `[(B t t), 1 + P*P, E]` -> `[B, 1 + P*P, E]`.

    The tiles' patch tokens are reassembled into one (tP x tP) grid and adaptive-average-pooled to P x P; the
    class tokens are averaged.
    """
    p = math.isqrt(tokens.shape[1] - 1)
    if p * p != tokens.shape[1] - 1:
        raise ValueError(f"expected 1 class token and a square grid of patch tokens; got {tokens.shape[1]} tokens")
    grid = rearrange(tokens[:, 1:], "(b ty tx) (h w) e -> b e (ty h) (tx w)", ty=tiles, tx=tiles, h=p)
    patches = rearrange(F.adaptive_avg_pool2d(grid, p), "b e h w -> b (h w) e")
    cls = reduce(tokens[:, :1], "(b t) 1 e -> b 1 e", "mean", t=tiles * tiles)
    return torch.cat([cls, patches], dim=1)


def tiled_features(
    encode: ClipEncoder,
    images: torch.Tensor,
    tiles: int,
    size: int,
    *,
    mask: torch.Tensor | None = None,
    batch_size: int = 0,
) -> torch.Tensor:
    """Merged tile features `[B, 1 + P*P, E]` of ComfyUI images, encoded `batch_size` tiles at a time (rounded
    down to whole images, at least one image's t x t tiles per encoder call; 0: all at once)."""
    per_call = _images_per_call(images.shape[0], tiles, batch_size)
    out = []
    for start in range(0, images.shape[0], per_call):
        part = slice(start, start + per_call)
        part_mask = None if mask is None else (mask if mask.shape[0] == 1 else mask[part])
        pixels = tile_pixels(images[part], tiles, size, part_mask)
        out.append(merge_tiles(encode(pixels)["penultimate"], tiles))
    return torch.cat(out)


def _images_per_call(images: int, tiles: int, batch_size: int) -> int:
    return images if batch_size <= 0 else max(1, batch_size // (tiles * tiles))


# encoding


def encode_enhanced(
    spec: AdapterSpec,
    encode: ClipEncoder,
    images: torch.Tensor,
    enhance: Enhance,
    *,
    negative_images: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    batch_size: int = 0,
    source: str = "this adapter",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Enhanced CLIP penultimate features of references and their negatives (see the module docstring).

    Args:
        images: ComfyUI images `[n, H, W, C]`.
        enhance: tiles, ratio and how to merge (two references, or per frame).
        negative_images: 1 or n images to steer away from; None for the adapter's own negative.
        mask: `[1 or n, H, W]`, hides parts of the references from the encoder (tiles included).
        batch_size: encoder rows per call (0: all at once).
        source: the adapter's name, for the error when it cannot be enhanced.

    Returns `(cond, uncond)`, each `[n * enhance.references, 1 + P*P, E]`.
    """
    check_enhanceable(spec, source=source)
    cond, uncond = encode_clip(spec, encode, images, negative_images=negative_images, mask=mask, batch_size=batch_size)
    if not enhance.uses_tiles:
        return cond, uncond
    size, n, t = spec.clip_size or 224, images.shape[0], enhance.tiles
    cond_tiles = tiled_features(encode, images, t, size, mask=mask, batch_size=batch_size)
    if negative_images is not None:
        uncond_tiles = tiled_features(encode, negative_images, t, size, batch_size=batch_size).expand(n, -1, -1)
    else:  # the tiles of the empty image (or of zeros) are that same image: merge t x t copies of its features
        uncond_tiles = merge_tiles(repeat(uncond[:1], "1 k e -> tt k e", tt=t * t), t).expand(n, -1, -1)
    return enhance.merge(cond, cond_tiles), enhance.merge(uncond, uncond_tiles).contiguous()


def encoder_calls(spec: AdapterSpec, references: int, negatives: int | None, enhance: Enhance | None, batch_size: int) -> int:
    """How many times `encode_clip` (`enhance` None) or `encode_enhanced` calls the encoder, for a progress bar.

    `negatives` is the number of negative images given (None: the adapter's own negative).
    """
    own = 0 if spec.zero_clip_negative else 1
    rows = references + (own if negatives is None else negatives)
    calls = -(-rows // batch_size) if 0 < batch_size < rows else 1
    if enhance is not None and enhance.uses_tiles:
        for count in (references, negatives or 0):
            calls += -(-count // _images_per_call(count, enhance.tiles, batch_size)) if count else 0
    return calls
