"""Image utility nodes."""

from __future__ import annotations

from ..ipadapter_core import CROP_POSITIONS, INTERPOLATIONS, prep_image
from ..ipadapter_core.noise import GAUSSIAN_STD, MAX_BLUR, MAX_SEED, NOISE_TYPES, noise_image
from . import _docs
from ._base import CheckedNode


class PrepImage(CheckedNode):
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


class Noise(CheckedNode):
    DESCRIPTION = (
        "Makes a noisy 224-px image to connect to Apply IPAdapter's image_negative: the negative (CFG) pass then "
        "steers away from noise or from a scrambled copy of the reference instead of from an empty image, which can "
        "sharpen the image prompt. Without an image it starts from mid grey. The same inputs always give the same "
        "image."
    )
    CATEGORY = f"{_docs.CATEGORY}/utils"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("224x224 negative images (one per input image, or one without an image) for image_negative.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "type": (
                    list(NOISE_TYPES),
                    {
                        "default": "fade",
                        "tooltip": "fade: blend toward random noise (at strength 1 only noise is left). dissolve: "
                        "replace that fraction of the pixels with noise. gaussian: add gaussian noise (standard "
                        f"deviation {GAUSSIAN_STD} x strength). shuffle: distort the image elastically, maybe flip it, "
                        "and add a little noise.",
                    },
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "How much noise: 0 returns the (resized) image or plain grey unchanged, 1 is the "
                        "most.",
                    },
                ),
                "blur": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_BLUR,
                        "step": 1,
                        "tooltip": "Gaussian blur radius in pixels of the 224-px result, applied last; 0 is off.",
                    },
                ),
            },
            "optional": {
                "image": (
                    "IMAGE",
                    {"tooltip": "Optional image to start from (usually the reference); its centre square is used. "
                     "Unconnected: mid grey."},
                ),
                "pattern_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_SEED,
                        "tooltip": "Which random pattern to use. Deliberately not called seed, so ComfyUI does not "
                        "randomise it after each run: the negative stays the same until you change it.",
                    },
                ),
            },
        }

    def make(self, type, strength, blur, image=None, pattern_seed=0):
        return (noise_image(image, type, strength, blur, seed=pattern_seed),)
