"""Apply nodes: add an image prompt to a model, from images or from embeds."""

from __future__ import annotations

from . import _docs, _pipeline


class Apply:
    DESCRIPTION = (
        "Adds an image prompt to the model: the reference image is encoded by CLIP vision, projected into a few tokens and "
        "injected into every cross-attention layer (middle block included) through a second attention added to the text "
        "attention with the given weight. Chain several Apply nodes to combine adapters; each adds its own attention."
    )
    CATEGORY = _docs.CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the image prompt; the input model is untouched.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "image": _docs.IMAGE,
                "weight": _docs.WEIGHT,
                "weight_type": _docs.WEIGHT_TYPE,
                "combine_embeds": _docs.COMBINE,
                "start_at": _docs.START_AT,
                "end_at": _docs.END_AT,
                "embeds_scaling": _docs.EMBEDS_SCALING_INPUT,
            },
            "optional": _docs.apply_optional(),
        }

    @classmethod
    def VALIDATE_INPUTS(cls, block_weights=None):
        return _docs.validate_block_weights(block_weights)

    def apply(self, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at, embeds_scaling,
              clip_vision=None, image_negative=None, attn_mask=None, block_weights=""):
        if weight == 0:
            return (model,)
        embeds = _pipeline.encode(ipadapter, image, clip_vision=clip_vision, image_negative=image_negative)
        return (_pipeline.apply(model, ipadapter, embeds, weight=weight, weight_type=weight_type, combine_embeds=combine_embeds,
                                start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                                block_weights=block_weights, clip_vision=clip_vision),)


class ApplyEmbeds:
    DESCRIPTION = (
        "Adds an image prompt from embeds (made by Encode, Combine Embeds or Load Embeds) instead of images. The embeds "
        "are checked against the adapter first, so features from another encoder give a clear error."
    )
    CATEGORY = _docs.CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the image prompt; the input model is untouched.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "embeds": (_docs.EMBEDS, {"tooltip": "Image embeds (positive and negative) from Encode, Combine Embeds or Load Embeds."}),
                "weight": _docs.WEIGHT,
                "weight_type": _docs.WEIGHT_TYPE,
                "combine_embeds": _docs.COMBINE,
                "start_at": _docs.START_AT,
                "end_at": _docs.END_AT,
                "embeds_scaling": _docs.EMBEDS_SCALING_INPUT,
            },
            "optional": {
                "clip_vision": (
                    "CLIP_VISION",
                    {"tooltip": "Only for embeds saved without a negative (legacy .ipadpt files) of token adapters: used to build the reference negative."},
                ),
                "attn_mask": _docs.ATTN_MASK,
                "block_weights": _docs.BLOCK_WEIGHTS,
                "weight_faceidv2": _docs.WEIGHT_FACEIDV2,
                "lora_strength": _docs.LORA_STRENGTH,
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, block_weights=None):
        return _docs.validate_block_weights(block_weights)

    def apply(self, model, ipadapter, embeds, weight, weight_type, combine_embeds, start_at, end_at, embeds_scaling,
              clip_vision=None, attn_mask=None, block_weights="", weight_faceidv2=1.0, lora_strength=0.6):
        return (_pipeline.apply(model, ipadapter, embeds, weight=weight, weight_type=weight_type, combine_embeds=combine_embeds,
                                start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                                block_weights=block_weights, clip_vision=clip_vision, weight_faceidv2=weight_faceidv2,
                                lora_strength=lora_strength),)
