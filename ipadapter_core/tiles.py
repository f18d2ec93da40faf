"""Tiled references: a reference image of any aspect ratio cut into 256-px square tiles, each with the mask of
where it acts.

A CLIP vision encoder sees one small centre square, so a wide reference loses its sides and a detailed one its
detail. Tiling encodes several squares of the reference instead; each tile is an image prompt of its own (its own
softmax) that acts only where it lies in the reference, the reference being stretched over the generated image
as every attention mask is.

Geometry (`tile_layout`), in pixels of the reference:

- near square (the long side at most 4/3 of the short side, landscape and portrait alike): the centred square,
  resized to 512x512 and cut into 2x2 tiles;
- otherwise: resized so that the short side is 256 and cut along the long side into as few tiles as cover it
  (2 to 4), spread evenly: the first starts at the beginning, the last ends at the end, and neighbours overlap by
  the same amount to within one pixel. A reference longer than 4:1 is first cropped to its centred 4:1 part:
  at most 4 tiles are cut, and squeezing the long side into them would distort every tile. The crop is taken
  before resizing, so a 4096x100 strip costs no more than a 400x100 one.

Masks (`tile_masks`) are drawn on one canvas for every tile of a call: the attn_mask's size when one is given (the
user's mask is used at its own resolution, never resampled), else the processed reference's size (512x512, or
256 by the long side). The tile's rectangle is scaled onto the canvas with fractional coverage at its edges (exact
0/1 on the processed reference's own canvas) and multiplied by the attn_mask. The engine later resizes the masks
to each layer's latent grid.

Images follow ComfyUI's convention, float `[B, H, W, C]` in 0..1; the tiles are RGB. The references of one
batch share one size, hence one layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from einops import rearrange

from .embeds import ImageEmbeds, combine, concat
from .images import resize, rgb, sharpen
from .masks import as_mask_batch

TILE = 256
"""Side of a tile in pixels (the encoders resize it to their input size)."""
MAX_TILES = 4
"""The most tiles along the long side of a reference that is not near square."""


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one reference come from.

    Attributes:
        crop: `(top, left, height, width)` of the part of the reference that is kept.
        size: `(height, width)` of the processed reference: the crop, resized.
        origins: `(top, left)` of each tile in the processed reference, row by row.
    """

    crop: tuple[int, int, int, int]
    size: tuple[int, int]
    origins: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Tiles:
    """The tiles of a batch of references.

    Attributes:
        images: `[T, TILE, TILE, 3]`, every tile of the first reference, then of the second, ...
        masks: `[T, h, w]`, where each tile acts, all on one canvas (module docstring).
        reference: the index of each tile's reference in the batch.
        layout: the layout every reference of the batch was cut with.
    """

    images: torch.Tensor
    masks: torch.Tensor
    reference: tuple[int, ...]
    layout: TileLayout

    @property
    def references(self) -> int:
        """How many references were tiled."""
        return len(self.reference) // len(self.layout.origins)

    def per_tile(self, batch: torch.Tensor, what: str) -> torch.Tensor:
        """`batch` with one row per tile: a batch of 1 as it is, one row per reference repeated for each of its tiles."""
        if batch.shape[0] == 1:
            return batch
        if batch.shape[0] != self.references:
            raise ValueError(f"{batch.shape[0]} {what} for {self.references} reference image(s): give one, or one per reference")
        return batch[list(self.reference)]


def tile_layout(height: int, width: int) -> TileLayout:
    """The crop, processed size and tile origins of a `height` x `width` reference (module docstring)."""
    if height < 1 or width < 1:
        raise ValueError(f"a reference image needs at least one pixel; got {height}x{width}")
    short, long = min(height, width), max(height, width)
    if 3 * long <= 4 * short:
        top, left = (height - short) // 2, (width - short) // 2
        origins = tuple((row, col) for row in (0, TILE) for col in (0, TILE))
        return TileLayout((top, left, short, short), (2 * TILE, 2 * TILE), origins)
    kept = min(long, MAX_TILES * short)
    length = round(kept * TILE / short)  # between 4/3 and 4 tiles
    count = -(-length // TILE)
    starts = tuple(i * (length - TILE) // (count - 1) for i in range(count))
    offset = (long - kept) // 2
    if width > height:
        return TileLayout((0, offset, height, kept), (TILE, length), tuple((0, s) for s in starts))
    return TileLayout((offset, 0, kept, width), (length, TILE), tuple((s, 0) for s in starts))


def tile_masks(layout: TileLayout, references: int, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`[references * tiles, h, w]`: each tile's rectangle on the canvas (module docstring), times the reference's
    attn_mask (`[H, W]` or `[B, H, W]`: one mask for every reference, or one per reference)."""
    masks = None
    height, width = layout.size
    if attn_mask is not None:
        masks = as_mask_batch(attn_mask)
        if masks.shape[0] not in (1, references):
            raise ValueError(
                f"attn_mask has {masks.shape[0]} masks for {references} reference image(s): give one mask for every "
                "reference, or one per reference"
            )
    canvas = layout.size if masks is None else tuple(masks.shape[-2:])
    device = None if masks is None else masks.device
    rects = torch.stack([
        _coverage(top, height, canvas[0], device)[:, None] * _coverage(left, width, canvas[1], device)[None]
        for top, left in layout.origins
    ])
    rects = rects[None] if masks is None else masks[:, None] * rects[None]
    return rects.expand(references, -1, -1, -1).reshape(-1, *canvas)


def _coverage(start: int, size: int, canvas: int, device) -> torch.Tensor:
    """`[canvas]`: how much of each canvas pixel the span [start, start + TILE) of `size` pixels covers, scaled onto it."""
    lo, hi = start * canvas / size, (start + TILE) * canvas / size
    edges = torch.arange(canvas + 1, dtype=torch.float32, device=device)
    return edges[1:].clamp(lo, hi) - edges[:-1].clamp(lo, hi)


def cut_tiles(
    images: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    sharpening: float = 0.0,
    interpolation: str = "LANCZOS",
) -> Tiles:
    """Cut every reference of `images` (`[B, H, W, C]` or `[H, W, C]`) into tiles with their masks.

    Each reference is cropped and resized as `tile_layout` says (with `interpolation`, one of
    `images.INTERPOLATIONS`), sharpened (`images.sharpen`, 0 = off) and cut at the origins.
    """
    x = rgb(images).float()
    layout = tile_layout(x.shape[1], x.shape[2])
    top, left, height, width = layout.crop
    x = rearrange(x[:, top : top + height, left : left + width], "b h w c -> b c h w")
    x = sharpen(resize(x, layout.size, interpolation), sharpening)
    tiles = torch.stack([x[:, :, row : row + TILE, col : col + TILE] for row, col in layout.origins], dim=1)
    references = x.shape[0]
    return Tiles(
        images=rearrange(tiles, "b t c h w -> (b t) h w c"),
        masks=tile_masks(layout, references, attn_mask),
        reference=tuple(b for b in range(references) for _ in layout.origins),
        layout=layout,
    )


def merge_positions(embeds: ImageEmbeds, tiles: Tiles, method: str) -> tuple[ImageEmbeds, torch.Tensor]:
    """The embeds and masks to apply for the tiles' embeds (one per tile, in tile order) and a combine method.

    concat, or a single reference: every tile as it is, with its own mask. Any other method merges the
    references' tiles at each position (`embeds.combine`) into one, applied with that position's mask; the
    references must then share their masks (one attn_mask for all of them).
    """
    positions = len(tiles.layout.origins)
    if embeds.count != len(tiles.reference):
        raise ValueError(f"{embeds.count} embeds for {len(tiles.reference)} tiles; encode each tile once")
    if method == "concat" or tiles.references == 1:
        return embeds, tiles.masks
    masks = tiles.masks.view(tiles.references, positions, *tiles.masks.shape[1:])
    if not torch.equal(masks, masks[:1].expand_as(masks)):
        raise ValueError(
            f"combine_embeds '{method}' merges the references' tiles at each position, so the references need the "
            "same attn_mask: give one mask, or use concat to keep every reference's tiles with their own masks"
        )
    merged = [combine(_rows(embeds, slice(p, None, positions)), method) for p in range(positions)]
    return concat(merged), masks[0]


def unfold_positions(embeds: ImageEmbeds, tiles: Tiles) -> list[tuple[ImageEmbeds, torch.Tensor]]:
    """For unfolding a batch over latent frames: per tile position, the embeds of that position's tile of every
    reference (reference i for latent frame i) and their masks (one per reference, so one per frame)."""
    positions = len(tiles.layout.origins)
    if embeds.count != len(tiles.reference):
        raise ValueError(f"{embeds.count} embeds for {len(tiles.reference)} tiles; encode each tile once")
    return [(_rows(embeds, slice(p, None, positions)), tiles.masks[p::positions]) for p in range(positions)]


def _rows(embeds: ImageEmbeds, rows: slice) -> ImageEmbeds:
    """The embeds of some references."""
    pick = lambda features: {k: v[rows] for k, v in features.items()}  # noqa: E731
    return replace(embeds, cond=pick(embeds.cond), uncond=pick(embeds.uncond))
