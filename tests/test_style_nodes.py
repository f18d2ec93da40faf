"""Style & Composition, the precise nodes and boosts, Encode's weight and Apply Embeds' negative override, through the
nodes on the 2024 ComfyUI with the random SD1.5 checkpoint. Each is compared with what it is defined to equal: chained
Apply nodes, Apply with the boost connected, or embeds written out here."""

from __future__ import annotations

import pytest
import torch

from _pipe import APPLY
from dev.host.torch_probes import attn2_patches

SEED = torch.Generator().manual_seed


def picture(seed: int) -> torch.Tensor:
    return torch.rand(1, 224, 224, 3, generator=SEED(seed))


@pytest.fixture(scope="module")
def images():
    return picture(11), picture(12)


def close(a, b):
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def style_composition(pipe, style, composition, **kw):
    args = dict(weight_style=0.9, weight_composition=0.7, expand_style=False, combine_embeds="average", start_at=0.0, end_at=1.0,
                embeds_scaling="V only", clip_vision=pipe.clip_vision)
    args.update(kw)
    return pipe.comfy.outputs("IPAKitApplyStyleComposition", model=pipe.model, ipadapter=pipe.plus, image_style=style,
                              image_composition=composition, **args)[0]


def test_style_and_composition_equals_two_chained_apply_nodes(pipe, images):
    style, composition = images
    ours = style_composition(pipe, style, composition)
    chained = pipe.apply(model=pipe.apply(image=style, weight=0.9, weight_type="style transfer"),
                         image=composition, weight=0.7, weight_type="composition")
    patches = attn2_patches(ours)
    assert len(patches) == 13  # one clone: style on 11 transformers, composition on 2 (SD1.5 transformers 4 and 5)
    assert all(p.plan.num_tokens == 16 for p in patches.values())  # one reference per layer
    close(pipe.eps(ours), pipe.eps(chained))
    assert (pipe.eps(ours) - pipe.eps(pipe.model)).abs().max() > 1e-2


def test_expand_style_puts_the_style_on_every_layer_but_the_composition_ones(pipe, images):
    style, composition = images
    ours = style_composition(pipe, style, composition, expand_style=True)
    # the expanded form gives both SD1.5 composition transformers the full composition weight (the composition
    # weight type gives the first a quarter): block_weights 4:4 restores it on the chained reference
    chained = pipe.apply(model=pipe.apply(image=style, weight=0.9, weight_type="strong style transfer"),
                         image=composition, weight=0.7, weight_type="composition", block_weights="4:4.0, 5:1.0")
    close(pipe.eps(ours), pipe.eps(chained))


def test_a_zero_weight_image_is_not_encoded_and_both_zero_returns_the_model(pipe, images):
    style, composition = images
    only_style = style_composition(pipe, style, composition, weight_composition=0.0)
    close(pipe.eps(only_style), pipe.eps(pipe.apply(image=style, weight=0.9, weight_type="style transfer")))
    assert style_composition(pipe, style, composition, weight_style=0.0, weight_composition=0.0) is pipe.model


def precise(pipe, node, image, **kw):
    args = dict(weight=0.8, combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only", clip_vision=pipe.clip_vision)
    args.update(kw)
    return pipe.comfy.outputs(node, model=pipe.model, ipadapter=pipe.plus, image=image, **args)[0]


def test_precise_nodes_equal_apply_with_the_boost_connected(pipe, images):
    image = images[0]
    style = precise(pipe, "IPAKitApplyPreciseStyle", image, style_boost=1.5)
    close(pipe.eps(style), pipe.eps(pipe.apply(image=image, weight_type="style transfer precise", style_boost=1.5)))
    composition = precise(pipe, "IPAKitApplyPreciseComposition", image, composition_boost=0.6)
    close(pipe.eps(composition), pipe.eps(pipe.apply(image=image, weight_type="composition precise", composition_boost=0.6)))
    assert not torch.equal(pipe.eps(style), pipe.eps(composition))


def test_apply_without_a_boost_uses_the_weight_and_without_a_composition_weight_uses_one(pipe, images):
    image = images[0]
    # composition precise: no boost = boost equal to the weight (not 0, which would be plain composition)
    default = pipe.eps(pipe.apply(image=image, weight_type="composition precise"))
    close(default, pipe.eps(pipe.apply(image=image, weight_type="composition precise", composition_boost=APPLY["weight"])))
    assert (default - pipe.eps(pipe.apply(image=image, weight_type="composition"))).abs().max() > 1e-3
    # style and composition: no composition weight = 1.0, whatever the weight
    default = pipe.eps(pipe.apply(image=image, weight_type="style and composition"))
    close(default, pipe.eps(pipe.apply(image=image, weight_type="style and composition", weight_composition=1.0)))
    assert (default - pipe.eps(pipe.apply(image=image, weight_type="style and composition", weight_composition=APPLY["weight"]))).abs().max() > 1e-3


def test_boosts_are_input_sockets_only_on_the_apply_nodes(comfy):
    for node in ("IPAKitApply", "IPAKitApplyEmbeds", "IPAKitApplyFaceID"):
        optional = comfy.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["optional"]
        for name in ("style_boost", "composition_boost", "weight_composition"):
            assert optional[name][1].get("forceInput") is True, (node, name)
    required = comfy.NODE_CLASS_MAPPINGS["IPAKitApplyPreciseComposition"].INPUT_TYPES()["required"]
    assert list(required)[3:5] == ["weight", "composition_boost"]  # a widget on the dedicated node, in the older pack's order


def test_encode_weight_scales_the_positive_features_only(pipe, comfy):
    encode = lambda **kw: comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=pipe.image, clip_vision=pipe.clip_vision, **kw)[0]  # noqa: E731
    plain, half = encode(), encode(weight=0.5)
    torch.testing.assert_close(half.cond["clip"], plain.cond["clip"] * 0.5)
    assert torch.equal(half.uncond["clip"], plain.uncond["clip"])
    applied = comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.plus, embeds=half, **APPLY)[0]
    assert not torch.equal(pipe.eps(applied), pipe.eps(comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.plus,
                                                                       embeds=plain, **APPLY)[0]))


def test_negative_embeds_override_equals_apply_with_image_negative(pipe, comfy, images):
    negative = images[1]
    embeds = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=pipe.image, clip_vision=pipe.clip_vision)[0]
    neg = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=negative, clip_vision=pipe.clip_vision)[0]
    ours = comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.plus, embeds=embeds, neg_embeds=neg, **APPLY)[0]
    close(pipe.eps(ours), pipe.eps(pipe.apply(image_negative=negative)))
    other = comfy.outputs("IPAKitEncode", ipadapter=pipe.base, image=negative, clip_vision=pipe.clip_vision)[0]
    with pytest.raises(ValueError, match="negative embeds do not match"):
        comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.plus, embeds=embeds, neg_embeds=other, **APPLY)
    three = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=torch.cat([negative] * 3), clip_vision=pipe.clip_vision)[0]
    with pytest.raises(ValueError, match="hold 3 references for 1"):
        comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.plus, embeds=embeds, neg_embeds=three, **APPLY)
