"""The ClipVision Enhancer node: Apply IPAdapter with CLIP features of the reference's tiles merged in."""

from __future__ import annotations

import dataclasses

from ..ipadapter_core.enhance import MAX_TILES, Enhance, check_enhanceable
from . import _docs, _faceid, _pipeline
from ._base import ApplyNode

ENHANCE_TILES = (
    "INT",
    {
        "default": 2,
        "min": 1,
        "max": MAX_TILES,
        "tooltip": "Tiles per side: the reference is also cut into this many x this many equal squares, each encoded by "
        "CLIP at its full input size (224 px, 336 for Kolors), so CLIP sees a large reference's detail. 1: the whole "
        "image only (exactly like Apply IPAdapter); 2-4 suit references of 448-900 px.",
    },
)
ENHANCE_RATIO = (
    "FLOAT",
    {
        "default": 1.0,
        "min": 0.0,
        "max": 1.0,
        "step": 0.05,
        "tooltip": "The whole image's share. Without unfold_batch the whole image (times this ratio) and the tiles are two "
        "references, merged by combine_embeds (concat: both token sets; average: their mean). With unfold_batch each "
        "frame gets whole x ratio + tiles x (1 - ratio): 1 is the whole image alone, 0 the tiles alone.",
    },
)
IMAGE = (
    "IMAGE",
    {
        "tooltip": "Reference image(s), best larger than CLIP's input (a square crop of the centre is used). Several "
        "images are merged as combine_embeds says, or one per latent frame with unfold_batch.",
    },
)
INSIGHTFACE = (
    _docs.INSIGHTFACE,
    {
        "tooltip": "FaceID Plus adapters only: the face analyzer (not needed when the adapter came from a FaceID preset). "
        "The largest face of each image is aligned at enhance_tiles times the usual crop size, and that crop is "
        "enhanced; an image without a face is an error.",
    },
)


class ApplyEnhancer(ApplyNode):
    DESCRIPTION = (
        "Apply IPAdapter with the ClipVision Enhancer: besides the whole reference, CLIP vision encodes it as "
        "enhance_tiles x enhance_tiles tiles at full resolution; the tiles' patch tokens are put back together into one "
        "grid and pooled to the usual size, so the adapter reads the detail of a large reference. Works with the "
        "adapters that read CLIP's penultimate tokens (plus, plus-face, full-face, composition, FaceID Plus); the base, "
        "light and vit-G adapters read one pooled vector and are refused. The negative (image_negative, or the empty "
        "image) is tiled the same way. With enhance_tiles 1 it is Apply IPAdapter (Apply FaceID for FaceID Plus)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "image": IMAGE,
                **_docs.schedule_inputs(),
                "enhance_tiles": ENHANCE_TILES,
                "enhance_ratio": ENHANCE_RATIO,
            },
            "optional": {
                **_docs.apply_optional(),
                "insightface": INSIGHTFACE,
                "weight_faceidv2": _docs.WEIGHT_FACEIDV2,
                "lora_strength": _docs.LORA_STRENGTH,
                "weight_kolors": _docs.WEIGHT_KOLORS,
            },
        }

    def apply(self, model, ipadapter, image, enhance_tiles, enhance_ratio, clip_vision=None, image_negative=None,
              insightface=None, lora_strength=0.6, weight_kolors=1.0, encode_batch_size=0, **options):
        check_enhanceable(ipadapter.spec, source=ipadapter.name)
        enhance = Enhance(enhance_tiles, enhance_ratio, unfold=bool(options.get("unfold_batch")))
        settings = self.settings(options)
        if _pipeline.changes_nothing_on(model, settings):
            return (model,)  # nothing to encode
        tiles = enhance.tiles if enhance.uses_tiles else 1
        faces = face_crops(ipadapter, image, insightface, tiles) if ipadapter.spec.kind.uses_face else None
        embeds = _pipeline.encode(ipadapter, image, clip_vision=clip_vision, image_negative=image_negative, faces=faces,
                                  batch_size=encode_batch_size or 0, enhance=enhance)
        settings = dataclasses.replace(settings, attn_mask=enhance.reference_masks(settings.attn_mask, image.shape[0]))
        return (_pipeline.apply(model, ipadapter, embeds, settings, clip_vision=clip_vision, lora_strength=lora_strength,
                                kolors_scale=weight_kolors),)


def face_crops(ipadapter, image, insightface, tiles: int):
    """The largest face of each image (an error for an image without one), aligned at `tiles` times the adapter's
    crop size, so the tiles of the crop hold real detail."""
    size = (ipadapter.spec.face_crop_size or 224) * tiles
    return _faceid.analyze(_pipeline.face_analyzer(ipadapter, insightface), image, crop_size=size, choice="largest", on_missing="error")
