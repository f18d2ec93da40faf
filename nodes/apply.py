"""Apply nodes: add an image prompt to a model, from images or from embeds."""

from __future__ import annotations

from ..ipadapter_core import with_negative
from . import _docs, _pipeline
from ._base import ApplyNode


class Apply(ApplyNode):
    DESCRIPTION = (
        "Adds an image prompt to the model: the reference image is encoded by CLIP vision, projected into a few tokens and "
        "injected into every cross-attention layer (middle block included) through a second attention added to the text "
        "attention with the given weight. Chain several Apply nodes to combine adapters; each adds its own attention. "
        "For animation, weight takes one value per latent frame (from IPAdapter Weights) and unfold_batch gives latent "
        "frame i the i-th reference image and mask."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": _docs.MODEL, "ipadapter": _docs.IPADAPTER, "image": _docs.IMAGE, **_docs.schedule_inputs()},
            "optional": _docs.apply_optional(),
        }

    def apply(self, model, ipadapter, image, clip_vision=None, image_negative=None, encode_batch_size=0, **options):
        return (_pipeline.apply_images(model, ipadapter, image, self.settings(options), clip_vision=clip_vision,
                                       image_negative=image_negative, batch_size=encode_batch_size or 0),)


class ApplyEmbeds(ApplyNode):
    DESCRIPTION = (
        "Adds an image prompt from embeds (made by Encode, Combine Embeds or Load Embeds) instead of images. The embeds "
        "are checked against the adapter first, so features from another encoder give a clear error. weight may be one "
        "value per latent frame; unfold_batch gives latent frame i the embeds' i-th reference. neg_embeds replaces the "
        "negative the embeds carry."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "embeds": (_docs.EMBEDS, {"tooltip": "Image embeds (positive and negative) from Encode, Combine Embeds or Load Embeds."}),
                **_docs.schedule_inputs(),
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
                "unfold_batch": _docs.UNFOLD_BATCH,
                "neg_embeds": (
                    _docs.EMBEDS,
                    {"tooltip": "Optional embeds whose features replace the negative that embeds carry (one reference for all, "
                     "or one per reference), e.g. Encode of an IPAdapter Noise image: the image prompt then steers away from it."},
                ),
                "weight_kolors": _docs.WEIGHT_KOLORS,
                **_docs.boost_inputs(),
            },
        }

    def apply(self, model, ipadapter, embeds, clip_vision=None, lora_strength=0.6, neg_embeds=None, weight_kolors=1.0, **options):
        if neg_embeds is not None:
            embeds = with_negative(embeds, neg_embeds)
        return (_pipeline.apply(model, ipadapter, embeds, self.settings(options), clip_vision=clip_vision, lora_strength=lora_strength,
                                kolors_scale=weight_kolors),)
