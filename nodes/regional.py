"""Regional nodes: one reference image per masked region, each with its own weight and schedule, and the matching
text prompts masked to the same regions; all regions are installed together on one model clone."""

from __future__ import annotations

from ..ipadapter_core.regions import Region, RegionalParams
from . import _docs, _pipeline
from ._adapters import AdapterBundle
from ._base import ApplyNode, CheckedNode

PARAMS = "IPAKIT_PARAMS"
CATEGORY = f"{_docs.CATEGORY}/params"

_PARAMS_INPUT = (PARAMS, {"tooltip": "Regions from IPAdapter Regional Conditioning (or Combine Params)."})


def _mask_conditioning(conditioning: list | None, mask, strength: float) -> list:
    """A copy of `conditioning` whose every entry carries `mask` at `strength`, as core Conditioning (Set Mask) with
    set_cond_area "default" does; the input is never changed. No conditioning gives an empty one (it adds nothing to
    Conditioning Combine); no mask gives the conditioning as it is."""
    if conditioning is None:
        return []
    if mask is None:
        return conditioning
    return [[tensor, {**extra, "mask": mask, "set_area_to_bounds": False, "mask_strength": strength}]
            for tensor, extra in conditioning]


class RegionalConditioning(CheckedNode):
    DESCRIPTION = (
        "Describes one region of a regional image prompt: a reference image, the mask it acts in, its weight, weight "
        "type and start/end. Also masks this region's text prompts (positive, negative) to the same mask, as core "
        "Conditioning (Set Mask) does. Combine the params of several regions with Combine Params and install them all "
        "with Apply IPAdapter from Params; combine the conditionings with Conditioning (Combine)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PARAMS, "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("ipadapter_params", "positive", "negative")
    OUTPUT_TOOLTIPS = (
        "This region's image prompt, for Combine Params or Apply IPAdapter from Params.",
        "The positive conditioning with the mask set (mask_strength = prompt_weight); unchanged without a mask, empty "
        "when none is connected.",
        "The negative conditioning, likewise.",
    )
    FUNCTION = "condition"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Reference image(s) for this region. Several images (a batch) are merged as "
                                               "the apply node's combine_embeds says."}),
                "image_weight": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -1.0,
                        "max": 5.0,
                        "step": 0.05,
                        "tooltip": "Strength of this region's image prompt. 0 leaves the model as it was, 1 is the "
                        "strength the adapter was trained at, negative values push away from the image. Convert it to an "
                        "input to link a weights list (one weight per latent frame).",
                    },
                ),
                "prompt_weight": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.05,
                        "tooltip": "Strength of this region's text prompts inside the mask (the mask_strength of core "
                        "Conditioning (Set Mask)). Not used without a mask.",
                    },
                ),
                "weight_type": _docs.WEIGHT_TYPE,
                "start_at": _docs.START_AT,
                "end_at": _docs.END_AT,
            },
            "optional": {
                "mask": (
                    "MASK",
                    {
                        "tooltip": "Where this region is (white) and where not (black): one mask of any size, stretched "
                        "onto the latent. Without it the image prompt acts everywhere and the conditionings pass "
                        "through unchanged. An all-black mask is an error.",
                    },
                ),
                "positive": ("CONDITIONING", {"tooltip": "Optional text prompt for this region; it gets the mask."}),
                "negative": ("CONDITIONING", {"tooltip": "Optional negative text prompt for this region; it gets the mask."}),
            },
        }

    def condition(self, image, image_weight, prompt_weight: float, weight_type: str, start_at: float, end_at: float,
                  mask=None, positive: list | None = None, negative: list | None = None) -> tuple:
        region = Region(image, mask, image_weight, weight_type, start_at, end_at)
        return (
            RegionalParams((region,)),
            _mask_conditioning(positive, region.mask, prompt_weight),
            _mask_conditioning(negative, region.mask, prompt_weight),
        )


class CombineParams(CheckedNode):
    DESCRIPTION = (
        "Joins the regions of up to five regional params into one, in input order (params_1's regions first), for "
        "Apply IPAdapter from Params. Outputs of Combine Params can be combined again."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PARAMS,)
    RETURN_NAMES = ("ipadapter_params",)
    OUTPUT_TOOLTIPS = ("Every region of the inputs, in order.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"params_1": _PARAMS_INPUT, "params_2": _PARAMS_INPUT},
            "optional": {f"params_{n}": _PARAMS_INPUT for n in range(3, 6)},
        }

    def combine(self, params_1: RegionalParams, params_2: RegionalParams, params_3: RegionalParams | None = None,
                params_4: RegionalParams | None = None, params_5: RegionalParams | None = None) -> tuple:
        return (RegionalParams.combine(params_1, params_2, params_3, params_4, params_5),)


class ApplyFromParams(ApplyNode):
    DESCRIPTION = (
        "Installs every region of the params on one copy of the model, with one adapter: each region's reference image "
        "acts inside its mask with its own weight, weight type and start/end, exactly as chained Apply IPAdapter nodes "
        "with those masks would, in one patch. combine_embeds and embeds_scaling apply to every region; regions of "
        "weight 0 are skipped."
    )
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": _docs.IPADAPTER,
                "ipadapter_params": _PARAMS_INPUT,
                "combine_embeds": _docs.COMBINE,
                "embeds_scaling": _docs.EMBEDS_SCALING_INPUT,
            },
            "optional": {"image_negative": _docs.IMAGE_NEGATIVE, "clip_vision": _docs.CLIP_VISION},
        }

    def apply(self, model, ipadapter: AdapterBundle, ipadapter_params: RegionalParams, combine_embeds: str,
              embeds_scaling: str, image_negative=None, clip_vision=None) -> tuple:
        if ipadapter.spec.kind.uses_face:
            raise ValueError(
                f"{ipadapter.name} is a FaceID adapter, which regional params do not drive: chain Apply IPAdapter FaceID "
                "nodes, each with its region's attn_mask"
            )
        prompts = []
        for region in ipadapter_params.regions:
            settings = region.settings(combine_embeds=combine_embeds, embeds_scaling=embeds_scaling)
            if _pipeline.changes_nothing_on(model, settings):
                continue  # nothing to encode
            embeds = _pipeline.encode(ipadapter, region.image, clip_vision=clip_vision, image_negative=image_negative)
            prompts.append(_pipeline.Prompt(ipadapter, embeds, settings, clip_vision=clip_vision))
        return (_pipeline.apply_all(model, prompts),)
