"""Weight schedule nodes for animation: per-frame weights, cross-fade image streams and prompt schedules."""

from __future__ import annotations

from ..ipadapter_core.frames import (
    END_OF_SCHEDULE,
    METHODS,
    TIMINGS,
    WeightsStrategy,
    build_frames,
    concat_weights,
    gather_frames,
    parse_weights,
    prompt_schedule,
)
from . import _docs
from ._base import CheckedNode

STRATEGY = "IPAKIT_WEIGHTS_STRATEGY"
CATEGORY = f"{_docs.CATEGORY}/weights"
MAX_FRAMES = 9999

STRATEGY_INPUT = (STRATEGY, {"tooltip": "A schedule from the IPAdapter Weights node, to rebuild or reuse."})
IMAGE_INPUT = (
    "IMAGE",
    {
        "tooltip": "Optional reference images, one per segment (full batch) or one per cross-fade end (shift / "
        "alternate batches, 2 or more). Without them there is one segment and the image outputs are empty.",
    },
)
OUTPUTS = ("FLOAT", "FLOAT", "INT", "IMAGE", "IMAGE", STRATEGY)
OUTPUT_NAMES = ("weights", "weights_invert", "total_frames", "image_1", "image_2", "weights_strategy")
OUTPUT_TIPS = (
    "One weight per frame, as a list: connect it to the weight of the Apply node that gets image_1.",
    "Each weight mirrored inside the typed values' range (min + max - w, frame order kept): the weight for image_2.",
    "Number of frames of the schedule: the latent batch size to use.",
    "The frames' reference images for the first Apply node (empty without an image input).",
    "The frames' reference images for the second Apply node in a cross-fade; in full batch the same as image_1.",
    "The settings of this schedule, to rebuild it for another image batch or to write a prompt schedule.",
)


def _frame_outputs(strategy: WeightsStrategy, image) -> tuple:
    """The six outputs of a strategy, for an optional image batch."""
    out = build_frames(strategy, None if image is None else int(image.shape[0]))
    image_1 = None if out.image_1 is None else gather_frames(image, out.image_1)
    image_2 = image_1 if out.image_2 == out.image_1 else gather_frames(image, out.image_2)
    return list(out.weights), list(out.weights_invert), out.total_frames, image_1, image_2, strategy


def _frame_count(default: int, tooltip: str) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": MAX_FRAMES, "step": 1, "tooltip": tooltip})


class Weights(CheckedNode):
    DESCRIPTION = (
        "Builds one IP-Adapter weight per frame for an animation (AnimateDiff or a video model): from a list you type, "
        "or eased from the first to the last value over a number of frames, trimmed and padded, then laid out over "
        "the reference images: each image held in turn (full batch), or cross-fades from each image to the next "
        "(shift / alternate batches) with two image streams and complementary weights for two Apply nodes."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = OUTPUTS
    RETURN_NAMES = OUTPUT_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TIPS
    FUNCTION = "weights"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "weights": (
                    "STRING",
                    {
                        "default": "1.0, 0.0",
                        "multiline": True,
                        "tooltip": "Numbers separated by commas or new lines. custom timing uses them as they are; the "
                        "other timings ease from one to the next (two values: first to last) over frames.",
                    },
                ),
                "timing": (
                    list(TIMINGS),
                    {
                        "default": "linear",
                        "tooltip": "custom: the typed list. linear: even steps. ease in: starts slow, ends fast. ease "
                        "out: starts fast, ends slow. ease in-out: slow at both ends. random: seeded values between the "
                        "smallest and largest typed value. (The older IPAdapter pack has ease in and ease out swapped.)",
                    },
                ),
                "frames": _frame_count(
                    16, "Length of the schedule before trimming and padding; 0 means one frame per typed value. With "
                    "custom timing the list is cut to it or its last value repeated."
                ),
                "start_frame": _frame_count(0, "First frame of the schedule to keep (0-based); must be below end_frame."),
                "end_frame": _frame_count(
                    END_OF_SCHEDULE, "Frames from start_frame up to, not including, this one are kept; a value past "
                    "the end keeps everything to the end."
                ),
                "add_starting_frames": _frame_count(0, "Frames added before the kept ones, holding the first weight (0: none)."),
                "add_ending_frames": _frame_count(0, "Frames added after the kept ones, holding the last weight (0: none)."),
                "method": (
                    list(METHODS),
                    {
                        "default": "full batch",
                        "tooltip": "full batch: each image is held for the whole schedule, one after the other. shift "
                        "batches: each image cross-fades into the next (image_1 with weights, image_2 with "
                        "weights_invert). alternate batches: the same cross-fades, the two streams taking turns so the "
                        "weights rise and fall without jumps.",
                    },
                ),
            },
            "optional": {
                "image": IMAGE_INPUT,
                "random_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "tooltip": "Seed of the random timing (the others ignore it); the same seed gives the same weights.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, weights=None):
        if not isinstance(weights, str):  # linked: known at run time only
            return True
        try:
            parse_weights(weights)
        except ValueError as e:
            return str(e)
        return True

    def weights(self, weights, timing, frames, start_frame, end_frame, add_starting_frames, add_ending_frames, method,
                image=None, random_seed=0):
        strategy = WeightsStrategy.from_text(
            weights, timing=timing, frames=frames, start_frame=start_frame, end_frame=end_frame,
            add_starting_frames=add_starting_frames, add_ending_frames=add_ending_frames, method=method, seed=random_seed,
        )
        return _frame_outputs(strategy, image)


class WeightsFromStrategy(CheckedNode):
    DESCRIPTION = (
        "Rebuilds the outputs of an IPAdapter Weights node from its strategy for another image batch: the same schedule "
        "and method, laid out over these images."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = OUTPUTS
    RETURN_NAMES = OUTPUT_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TIPS
    FUNCTION = "rebuild"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"weights_strategy": STRATEGY_INPUT}, "optional": {"image": IMAGE_INPUT}}

    def rebuild(self, weights_strategy, image=None):
        return _frame_outputs(weights_strategy, image)


class PromptScheduleFromWeightsStrategy(CheckedNode):
    DESCRIPTION = (
        "Writes a batch prompt schedule (the AnimateDiff / FizzNodes text of \"frame\": \"prompt\" lines) that changes "
        "prompt where the weight schedule changes reference image: one prompt per line, one line per image."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt_schedule",)
    OUTPUT_TOOLTIPS = ("One \"frame\": \"prompt\", line per prompt, for a batch prompt schedule node.",)
    FUNCTION = "schedule"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "weights_strategy": STRATEGY_INPUT,
                "prompt": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "One prompt per line, in the order of the reference images; blank lines are skipped. "
                        "Prompt k starts on the first frame of image k (with cross-fades the last one on the last frame).",
                    },
                ),
            }
        }

    def schedule(self, weights_strategy, prompt):
        return (prompt_schedule(weights_strategy, prompt),)


class CombineWeights(CheckedNode):
    DESCRIPTION = (
        "Joins two weight schedules (or single weights) into one list, the first one's frames before the second's, "
        "for a longer animation made of two schedules."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "INT")
    RETURN_NAMES = ("weights", "count")
    OUTPUT_TOOLTIPS = (
        "The weights of weights_1 followed by those of weights_2, as one list.",
        "Number of weights (frames) in the list.",
    )
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        def weight(tip):
            return ("FLOAT", {"default": 0.0, "min": -1.0, "max": 5.0, "step": 0.05, "tooltip": tip})

        return {
            "required": {
                "weights_1": weight("First weights: a schedule from IPAdapter Weights, or one number (one frame)."),
                "weights_2": weight("Weights appended after weights_1: a schedule or one number (one frame)."),
            }
        }

    def combine(self, weights_1, weights_2):
        weights = concat_weights(weights_1, weights_2)
        return weights, len(weights)
