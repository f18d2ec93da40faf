"""Attention masks for image prompts: find each layer's grid and resize masks onto it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def layer_grid(queries: int, latent_hw: tuple[int, int] | None = None, aspect: float | None = None) -> tuple[int, int]:
    """The (height, width) of a layer with `queries` positions.

    With the latent size known, the grid is exact for any size and aspect: each downsampling halves
    and rounds up. Without it, fall back to diffusers' rule from the aspect ratio w/h.
    """
    if latent_hw is not None:
        h, w = latent_hw
        for level in range(8):
            f = 2**level
            gh, gw = math.ceil(h / f), math.ceil(w / f)
            if gh * gw == queries:
                return gh, gw
    ratio = aspect if aspect is not None else (latent_hw[1] / latent_hw[0] if latent_hw else 1.0)
    gh = int(math.sqrt(queries / ratio))
    gh += int(queries % gh != 0)
    return gh, queries // gh


def resize_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize masks `[g, H, W]` to `[g, h*w]` on the layer grid.

    Bicubic without antialiasing, as diffusers' IPAdapterMaskProcessor does, so a mask drawn on the
    image grid gives the reference's numbers; unlike diffusers the result is clamped to 0..1, because
    bicubic overshoot at a hard edge would give the image prompt a negative weight there. A mask
    whose aspect differs from the latent is stretched onto it.
    """
    if masks.shape[-2:] == grid:
        return masks.flatten(1)
    x = F.interpolate(masks[:, None].float(), size=grid, mode="bicubic", align_corners=False)
    return x.clamp(0, 1).flatten(1).to(masks.dtype)


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """Accept `[H, W]`, `[B, H, W]` or `[B, 1, H, W]` masks; return float `[B, H, W]`."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"attention mask must be [H, W], [B, H, W] or [B, 1, H, W]; got shape {tuple(mask.shape)}")
    if 0 in mask.shape:
        raise ValueError(f"attention mask has shape {tuple(mask.shape)}: no masks or no pixels; give a mask at least 1x1 pixel wide, "
                         "or disconnect it")
    return mask.float()
