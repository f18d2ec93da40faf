"""Style and composition nodes: InstantStyle's layer choices as dedicated nodes, two references in one, and the
precise variants with their boost as a widget."""

from __future__ import annotations

import dataclasses

from ..ipadapter_core import EXPANDED_STYLE, ApplySettings
from . import _docs, _pipeline
from ._base import ApplyNode


def _common_optional() -> dict:
    return {"clip_vision": _docs.CLIP_VISION, "image_negative": _docs.IMAGE_NEGATIVE, "attn_mask": _docs.ATTN_MASK,
            "block_weights": _docs.BLOCK_WEIGHTS, "unfold_batch": _docs.UNFOLD_BATCH, "encode_batch_size": _docs.ENCODE_BATCH_SIZE}


class StyleComposition(ApplyNode):
    DESCRIPTION = (
        "Two references in one: the style of image_style on the style layers and the layout of image_composition on "
        "the composition layers (InstantStyle's choice of layers, for SD1.5 and SDXL). expand_style puts the style on "
        "every layer but the composition ones. Equivalent to two chained Apply nodes with the 'style transfer' and "
        "'composition' weight types, in one clone."
    )

    @classmethod
    def INPUT_TYPES(cls):
        schedule = _docs.schedule_inputs()
        combine = (schedule["combine_embeds"][0], {**schedule["combine_embeds"][1], "default": "average"})
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "image_style": ("IMAGE", {"tooltip": "Reference(s) whose style (colours, textures, medium) is taken."}),
                "image_composition": ("IMAGE", {"tooltip": "Reference(s) whose composition (layout, poses, shapes) is taken."}),
                "weight_style": (_docs.WEIGHT[0], {**_docs.WEIGHT[1], "tooltip": "Strength of the style. " + _docs.WEIGHT[1]["tooltip"]}),
                "weight_composition": _docs.WEIGHT_COMPOSITION,
                "expand_style": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Off: style on the style layers only. On: style on every layer but the "
                     "composition ones (stronger, like 'strong style transfer')."},
                ),
                "combine_embeds": combine,
                "start_at": schedule["start_at"],
                "end_at": schedule["end_at"],
                "embeds_scaling": schedule["embeds_scaling"],
            },
            "optional": _common_optional(),
        }

    def apply(self, model, ipadapter, image_style, image_composition, weight_style, weight_composition, expand_style,
              clip_vision=None, image_negative=None, encode_batch_size=0, **options):
        style, composition = settings_pair(ApplySettings.from_inputs(options), weight_style, weight_composition, expand_style)
        prompts = []
        for image, settings in ((image_style, style), (image_composition, composition)):
            if _pipeline.changes_nothing_on(model, settings):
                continue  # not encoded
            embeds = _pipeline.encode(ipadapter, image, clip_vision=clip_vision, image_negative=image_negative,
                                      batch_size=encode_batch_size or 0)
            prompts.append(_pipeline.Prompt(ipadapter, embeds, settings, clip_vision=clip_vision))
        return (_pipeline.apply_all(model, prompts),)


def settings_pair(base: ApplySettings, weight_style, weight_composition: float, expand_style: bool) -> tuple[ApplySettings, ApplySettings]:
    """The style image's and the composition image's settings: one weight type that covers both feature groups
    (style and composition, or its expanded form), with the other group's weight at 0 in each."""
    weight_type = EXPANDED_STYLE if expand_style else "style and composition"
    style = dataclasses.replace(base, weight=weight_style, weight_type=weight_type, weight_composition=0.0)
    composition = dataclasses.replace(base, weight=0.0, weight_type=weight_type, weight_composition=float(weight_composition))
    return style, composition


class _Precise(ApplyNode):
    """An Apply node with a fixed precise weight type and its boost as a widget."""

    WEIGHT_TYPE = ""
    BOOST = ""

    @classmethod
    def INPUT_TYPES(cls):
        schedule = _docs.schedule_inputs()
        boost = {"style_boost": _docs.STYLE_BOOST, "composition_boost": _docs.COMPOSITION_BOOST}[cls.BOOST]
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "image": _docs.IMAGE,
                "weight": schedule["weight"],
                cls.BOOST: boost,
                "combine_embeds": schedule["combine_embeds"],
                "start_at": schedule["start_at"],
                "end_at": schedule["end_at"],
                "embeds_scaling": schedule["embeds_scaling"],
            },
            "optional": _common_optional(),
        }

    def apply(self, model, ipadapter, image, clip_vision=None, image_negative=None, encode_batch_size=0, **options):
        settings = self.settings({**options, "weight_type": self.WEIGHT_TYPE})
        return (_pipeline.apply_images(model, ipadapter, image, settings, clip_vision=clip_vision,
                                       image_negative=image_negative, batch_size=encode_batch_size or 0),)


class PreciseStyle(_Precise):
    DESCRIPTION = (
        "Style transfer that keeps the reference's layout out: the style layers get the image at weight, and the "
        "composition layers give it to the negative prompt at style_boost, pushing its composition away. The same as "
        "Apply with weight_type 'style transfer precise' and style_boost connected."
    )
    WEIGHT_TYPE = "style transfer precise"
    BOOST = "style_boost"


class PreciseComposition(_Precise):
    DESCRIPTION = (
        "Composition that keeps the reference's style out: the composition layers get the image at weight, and the other "
        "layers give it to the negative prompt (style layers at composition_boost, the rest at a tenth of it), pushing "
        "its style away. The same as Apply with weight_type 'composition precise' and composition_boost connected."
    )
    WEIGHT_TYPE = "composition precise"
    BOOST = "composition_boost"
