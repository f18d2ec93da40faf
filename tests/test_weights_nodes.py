"""The weight schedule nodes on the real ComfyUI host, in process: registration, outputs, errors (no models needed)."""

from __future__ import annotations

import pytest
import torch

DISPLAY = {
    "IPAKitWeights": "IPAdapter Weights (IPAKit)",
    "IPAKitWeightsFromStrategy": "IPAdapter Weights From Strategy (IPAKit)",
    "IPAKitPromptScheduleFromWeightsStrategy": "Prompt Schedule From Weights Strategy (IPAKit)",
    "IPAKitCombineWeights": "IPAdapter Combine Weights (IPAKit)",
}
SETTINGS = dict(weights="1.0, 0.0", timing="linear", frames=4, start_frame=0, end_frame=9999, add_starting_frames=0,
                add_ending_frames=0, method="shift batches")


def flat_images(*levels: float) -> torch.Tensor:
    """A batch of flat grey 8x8 images, one per level."""
    return torch.tensor(levels, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 8, 8, 3).contiguous()


def test_registered_and_documented(comfy):
    for node_id, display in DISPLAY.items():
        cls = comfy.NODE_CLASS_MAPPINGS[node_id]
        assert comfy.pack.NODE_CLASS_MAPPINGS[node_id] is cls and comfy.pack.NODE_DISPLAY_NAME_MAPPINGS[node_id] == display
        assert cls.CATEGORY == "ipadapter_kit/weights" and len(cls.DESCRIPTION) > 40
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        for group in cls.INPUT_TYPES().values():
            for name, (_, opts) in group.items():
                assert opts.get("tooltip"), f"{node_id}.{name}"
    assert comfy.NODE_CLASS_MAPPINGS["IPAKitWeights"].RETURN_TYPES[-1] == "IPAKIT_WEIGHTS_STRATEGY"


def test_a_shift_cross_fade_gives_lists_of_floats_and_two_image_streams(comfy):
    images = flat_images(0.0, 1.0)
    weights, invert, total, image_1, image_2, strategy = comfy.outputs("IPAKitWeights", image=images, **SETTINGS)
    assert type(weights) is list and all(type(w) is float for w in weights + invert)
    assert weights == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0]) and invert == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert type(total) is int and total == 4
    assert image_1.shape == image_2.shape == (4, 8, 8, 3)
    assert torch.equal(image_1, images[:1].expand(4, -1, -1, -1)) and torch.equal(image_2, images[1:].expand(4, -1, -1, -1))

    # the same strategy over another batch: 3 images, 2 cross-fades
    again = comfy.outputs("IPAKitWeightsFromStrategy", weights_strategy=strategy, image=flat_images(0.2, 0.4, 0.6))
    assert again[2] == 8 and again[0] == weights * 2 and again[5] is strategy
    assert again[3][:, 0, 0, 0].tolist() == pytest.approx([0.2] * 4 + [0.4] * 4)
    assert again[4][:, 0, 0, 0].tolist() == pytest.approx([0.4] * 4 + [0.6] * 4)

    (schedule,) = comfy.outputs("IPAKitPromptScheduleFromWeightsStrategy", weights_strategy=strategy, prompt="a fox\na cat\n")
    assert schedule == '"0": "a fox",\n"3": "a cat",'


def test_without_an_image_the_streams_are_empty(comfy):
    out = comfy.outputs("IPAKitWeights", **{**SETTINGS, "method": "full batch", "timing": "ease in-out", "frames": 3})
    assert out[0] == pytest.approx([1.0, 0.5, 0.0]) and out[2] == 3 and out[3] is None and out[4] is None


def test_combine_weights_takes_a_list_or_a_number(comfy):
    weights, count = comfy.outputs("IPAKitCombineWeights", weights_1=[1.0, 0.5], weights_2=0.25)
    assert weights == [1.0, 0.5, 0.25] and count == 3


def test_errors_are_clear(comfy):
    cls = comfy.NODE_CLASS_MAPPINGS["IPAKitWeights"]
    assert cls.VALIDATE_INPUTS(weights="1, 0.5") is True and cls.VALIDATE_INPUTS(weights=None) is True  # None: linked
    assert cls.VALIDATE_INPUTS(weights="1, half, 0") == (
        "weights: 'half' (item 2) is not a number; separate numbers with commas or new lines, e.g. '1.0, 0.0'"
    )
    with pytest.raises(ValueError, match=r"start_frame \(6\) must be before end_frame \(2\)"):
        comfy.outputs("IPAKitWeights", **{**SETTINGS, "start_frame": 6, "end_frame": 2})
    with pytest.raises(ValueError, match="needs at least 2 images, got 1"):
        comfy.outputs("IPAKitWeights", image=flat_images(0.5), **SETTINGS)
