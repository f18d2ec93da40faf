"""Image utility nodes."""

from __future__ import annotations

from ..ipadapter_core import CROP_POSITIONS, INTERPOLATIONS, prep_image
from . import _docs


class PrepImage:
    DESCRIPTION = (
        "Prepares reference images for a CLIP vision encoder: resizes to its input size (224, or 336 for Kolors) and "
        "crops the part you choose, or pads to a square so nothing is cut, with optional sharpening. Without it the "
        "encoder sees a centre crop."
    )
    CATEGORY = f"{_docs.CATEGORY}/utils"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Square images at the encoder's input size.",)
    FUNCTION = "prep"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Images to prepare."}),
                "interpolation": (list(INTERPOLATIONS), {"default": "LANCZOS", "tooltip": "Resampling filter for the resize."}),
                "crop_position": (
                    list(CROP_POSITIONS),
                    {"default": "center", "tooltip": "Which square part to keep (top/bottom for tall images, left/right for wide), or pad to keep everything (black bars)."},
                ),
                "sharpening": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Contrast-adaptive sharpening after the resize; 0 is off."}),
                "size": ([224, 336], {"default": 224, "tooltip": "Encoder input size: 224 for ViT-H and ViT-bigG, 336 for Kolors' ViT-L-336."}),
            }
        }

    def prep(self, image, interpolation, crop_position, sharpening, size):
        return (prep_image(image, int(size), crop_position=crop_position, interpolation=interpolation, sharpening=sharpening),)
