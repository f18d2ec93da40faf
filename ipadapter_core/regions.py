"""Regional image prompts: reference images that each act inside their own mask, with their own weight and schedule.

A `RegionalParams` bundle is what the regional nodes pass along: one `Region` per reference (image,
mask, weight, weight_type, start_at, end_at). Bundles are immutable and are combined by concatenation;
each region becomes one `ApplySettings` once the apply node adds the settings shared by all regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .engine import ApplySettings
from .masks import as_mask_batch
from .schedules import WEIGHT_TYPES


@dataclass(frozen=True, eq=False)
class Region:
    """One reference of a regional image prompt (compared by identity: it holds tensors).

    Attributes:
        image: `[B, H, W, C]` reference image(s); several are merged by the apply node's combine_embeds.
        mask: where the image prompt acts, stored as float `[1, H, W]` (any size: it is resized onto each
            layer); None: everywhere.
        weight: strength (a number, or one weight per latent frame, as `ApplySettings.weight`).
        weight_type: how the weight is spread over the layers (`schedules.WEIGHT_TYPES`).
        start_at, end_at: fractions of sampling between which the image prompt acts.
    """

    image: torch.Tensor
    mask: torch.Tensor | None = None
    weight: float | tuple[float, ...] = 1.0
    weight_type: str = "linear"
    start_at: float = 0.0
    end_at: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.image, torch.Tensor) or self.image.ndim != 4 or self.image.shape[0] == 0:
            shape = tuple(self.image.shape) if isinstance(self.image, torch.Tensor) else type(self.image).__name__
            raise ValueError(f"image: expected a batch of images [B, H, W, C] with at least one image; got {shape}")
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight_type: unknown type {self.weight_type!r}; pick one of {', '.join(WEIGHT_TYPES)}")
        if self.mask is not None:
            object.__setattr__(self, "mask", _region_mask(self.mask))
        object.__setattr__(self, "weight", ApplySettings(weight=self.weight).weight)  # validated and normalised there

    def settings(self, **shared) -> ApplySettings:
        """This region's `ApplySettings`, with the settings every region shares (combine_embeds, embeds_scaling, ...)."""
        return ApplySettings(weight=self.weight, weight_type=self.weight_type, start_at=self.start_at, end_at=self.end_at,
                             attn_mask=self.mask, **shared)


@dataclass(frozen=True, eq=False)
class RegionalParams:
    """An ordered, non-empty bundle of regions, installed together by one apply node."""

    regions: tuple[Region, ...]

    def __post_init__(self) -> None:
        regions = tuple(self.regions)
        if not regions:
            raise ValueError("regional params: the bundle holds no region")
        for n, region in enumerate(regions, 1):
            if not isinstance(region, Region):
                raise TypeError(f"regional params: item {n} is a {type(region).__name__}, not a Region")
        object.__setattr__(self, "regions", regions)

    @classmethod
    def combine(cls, *bundles: RegionalParams | None) -> RegionalParams:
        """The regions of `bundles` one after the other, in order (None entries, unconnected inputs, skipped)."""
        return cls(tuple(region for bundle in bundles if bundle is not None for region in bundle.regions))


def _region_mask(mask: torch.Tensor) -> torch.Tensor:
    """The region's mask as float `[1, H, W]`; refuses mask batches and masks that cover nothing."""
    masks = as_mask_batch(mask)
    if masks.shape[0] != 1:
        raise ValueError(
            f"mask: a region takes one mask, got a batch of {masks.shape[0]}; pick one (e.g. with a mask-from-batch node), "
            "or give each mask its own regional conditioning"
        )
    if masks.numel() == 0 or not bool((masks > 0).any()):
        raise ValueError(
            f"mask: the mask ({masks.shape[-2]}x{masks.shape[-1]}) is all black, so the region covers nothing; paint the "
            "region white, or disconnect the mask to let the image act everywhere"
        )
    return masks
