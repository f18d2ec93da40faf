"""Tiled apply: a reference of any aspect ratio as several 256-px tiles, each an image prompt in its own region."""

from __future__ import annotations

import dataclasses

from ..ipadapter_core.tiles import cut_tiles, merge_positions, unfold_positions
from . import _docs, _pipeline
from ._base import ApplyNode

_COMBINE_TOOLTIP = (
    "How several reference images (a batch) are merged, tile by tile. concat: every tile of every reference is its own "
    "image prompt with its own mask. Any other method merges the references' tiles at the same position into one "
    "(add, subtract, average, ...), applied with that position's mask; the references then need one shared attn_mask. "
    "With one reference every method gives the same result. Not used with unfold_batch."
)
_UNFOLD_TOOLTIP = (
    "For animation (a batch of latent frames): latent frame i gets the tiles of the i-th reference image alone, each "
    "in its own region (the last image repeats when there are fewer images than frames; extra images are unused), "
    "with attn_mask's i-th mask when it has one per image. combine_embeds is then not used. IPAdapter Plus's "
    "'IPAdapter Tiled Batch' is this node with unfold_batch on."
)


class ApplyTiled(ApplyNode):
    DESCRIPTION = (
        "Adds an image prompt from a reference of any aspect ratio, or one whose detail a single 224-px encode would lose: "
        "the reference is cut into 256-px tiles (near-square images: the centre square at 512 px in 2x2 tiles; wider or "
        "taller ones: short side 256 px and 2 to 4 evenly overlapping tiles along the long side, the centred 4:1 part "
        "of longer ones). Each tile is encoded once and attends with its own softmax only where it lies in the "
        "reference, stretched over the generated image (and inside attn_mask when given). Returns the tiles and "
        "their masks too."
    )
    CATEGORY = f"{_docs.CATEGORY}/tiled"
    RETURN_TYPES = ("MODEL", "IMAGE", "MASK")
    RETURN_NAMES = ("model", "tiles", "masks")
    OUTPUT_TOOLTIPS = (
        ApplyNode.OUTPUT_TOOLTIPS[0],
        "The 256x256 tiles, every tile of the first reference, then of the next: what CLIP vision encodes.",
        "Where each tile acts (one mask per tile, in the same order): its rectangle in the reference, times attn_mask; "
        "on attn_mask's canvas when given, else on the resized reference's.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        schedule = _docs.schedule_inputs()
        kind, options = schedule["combine_embeds"]
        schedule["combine_embeds"] = (kind, {**options, "tooltip": _COMBINE_TOOLTIP})
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "image": ("IMAGE", {"tooltip": "Reference image(s) of any aspect ratio, cut into tiles. Several images (a "
                                    "batch) are each tiled; combine_embeds says how their tiles are merged."}),
                **schedule,
                "sharpening": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                     "tooltip": "Contrast-adaptive sharpening of the resized reference before it is cut; 0 is off."},
                ),
            },
            "optional": {
                "clip_vision": _docs.CLIP_VISION,
                "image_negative": (
                    "IMAGE",
                    {"tooltip": "Optional image to steer away from, used whole (not tiled) for every tile: one for all "
                     "references, or one per reference image."},
                ),
                "attn_mask": (
                    "MASK",
                    {"tooltip": "Optional mask of where the image prompt acts (white), stretched over the reference like "
                     "the tiles: each tile acts on its own rectangle of it. One mask for every reference, or one per "
                     "reference image (with concat)."},
                ),
                "block_weights": _docs.BLOCK_WEIGHTS,
                "encode_batch_size": _docs.ENCODE_BATCH_SIZE,
                "unfold_batch": (_docs.UNFOLD_BATCH[0], {**_docs.UNFOLD_BATCH[1], "tooltip": _UNFOLD_TOOLTIP}),
            },
        }

    def apply(self, model, ipadapter, image, sharpening, clip_vision=None, image_negative=None, attn_mask=None,
              encode_batch_size=0, unfold_batch=False, **options):
        tiles = cut_tiles(image, attn_mask=attn_mask, sharpening=sharpening)
        settings = self.settings(options)
        if _pipeline.changes_nothing_on(model, settings):
            return (model, tiles.images, tiles.masks)  # nothing to encode
        if image_negative is not None:
            image_negative = tiles.per_tile(image_negative, "negative images")
        embeds = _pipeline.encode(ipadapter, tiles.images, clip_vision=clip_vision, image_negative=image_negative,
                                  batch_size=encode_batch_size or 0)
        if unfold_batch:  # one prompt per tile position, its tiles unfolded over the frames
            settings = dataclasses.replace(settings, unfold_batch=True, combine_embeds="concat")
            prompts = [_pipeline.Prompt(ipadapter, rows, dataclasses.replace(settings, attn_mask=masks), clip_vision=clip_vision)
                       for rows, masks in unfold_positions(embeds, tiles)]
            return (_pipeline.apply_all(model, prompts), tiles.images, tiles.masks)
        embeds, masks = merge_positions(embeds, tiles, settings.combine_embeds)
        settings = dataclasses.replace(settings, attn_mask=masks, combine_embeds="concat")  # one segment and mask per embed
        return (_pipeline.apply(model, ipadapter, embeds, settings, clip_vision=clip_vision), tiles.images, tiles.masks)
