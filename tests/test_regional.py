"""Regional image prompts (Regional Conditioning, Combine Params, Apply from Params) on the real (2024) host, in
process, with the random SD1.5 checkpoint and adapters of tests/_pipe.py."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import _host
from dev.host.torch_probes import attn2_patches

KEY = ("input", 1, 0)  # a 64-channel-wide SD1.5 layer at latent resolution


def halves(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks `[1, size, size]` of the left and the right half."""
    left = torch.zeros(1, size, size)
    left[:, :, : size // 2] = 1
    return left, 1 - left


def other_image(seed: int = 9) -> torch.Tensor:
    return torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(seed))


def region(pipe, image=None, *, image_weight=0.8, prompt_weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0, **optional):
    """The three outputs of IPAKitRegionalConditioning."""
    return pipe.comfy.outputs(
        "IPAKitRegionalConditioning", image=pipe.image if image is None else image, image_weight=image_weight,
        prompt_weight=prompt_weight, weight_type=weight_type, start_at=start_at, end_at=end_at, **optional,
    )


def combine(pipe, *bundles):
    return pipe.comfy.outputs("IPAKitCombineParams", **{f"params_{n}": b for n, b in enumerate(bundles, 1)})[0]


def from_params(pipe, params, *, model=None, ipadapter=None, combine_embeds="concat", embeds_scaling="V only", **optional):
    return pipe.comfy.outputs(
        "IPAKitApplyFromParams", model=pipe.model if model is None else model, ipadapter=ipadapter or pipe.plus,
        ipadapter_params=params, combine_embeds=combine_embeds, embeds_scaling=embeds_scaling,
        clip_vision=pipe.clip_vision, **optional,
    )[0]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def same_patches(a, b) -> bool:
    """Whether two models carry the same (non-empty) image prompt: on every layer equal keys, values, masks and step ranges."""
    pa, pb = attn2_patches(a), attn2_patches(b)
    if not pa or pa.keys() != pb.keys():
        return False
    for key in pa:
        x, y = pa[key].plan, pb[key].plan
        if not (close(x.k, y.k) and close(x.v, y.v) and len(x.segments) == len(y.segments)):
            return False
        for s, t in zip(x.segments, y.segments):
            if (s.start, s.stop, s.sigma_range) != (t.start, t.stop, t.sigma_range) or (s.mask is None) != (t.mask is None):
                return False
            if s.mask is not None and not torch.equal(s.mask, t.mask):
                return False
    return True


# the image prompt


def test_regional_bundles_equal_chained_apply_nodes_with_masks(pipe):
    left, right = halves()
    a = dict(weight_type="ease in", start_at=0.0, end_at=1.0)
    b = dict(weight_type="strong middle", start_at=0.1, end_at=0.5)
    shared = dict(combine_embeds="concat", embeds_scaling="K+V")
    negative = other_image(3)
    params = combine(pipe, region(pipe, image_weight=0.8, mask=left, **a)[0],
                     region(pipe, other_image(), image_weight=0.6, mask=right, **b)[0])
    regional = from_params(pipe, params, image_negative=negative, **shared)
    one = pipe.apply(attn_mask=left, image_negative=negative, weight=0.8, **a, **shared)
    chained = pipe.apply(model=one, image=other_image(), attn_mask=right, image_negative=negative, weight=0.6, **b, **shared)
    segments = [[(s.start, s.stop, s.sigma_range) for s in attn2_patches(m)[KEY].plan.segments] for m in (regional, chained)]
    assert segments[0] == segments[1]
    (_, _, a_range), (_, _, b_range) = segments[0]
    assert a_range is None and b_range is not None  # region b's start/end reached the patch
    assert same_patches(regional, chained)
    sigma = sum(b_range) / 2  # both regions act
    ours, theirs = pipe.eps(regional, sigma=sigma), pipe.eps(chained, sigma=sigma)
    assert close(ours, theirs), (ours - theirs).abs().max()
    assert (ours - pipe.eps(one, sigma=sigma)).abs().max() > 1e-3  # region b acted


def test_one_clone_holds_every_regions_terms_and_the_input_model_is_untouched(pipe, monkeypatch):
    left, right = halves()
    params = combine(pipe, region(pipe, mask=left)[0], region(pipe, other_image(), mask=right)[0])
    regional_module = sys.modules[pipe.comfy.NODE_CLASS_MAPPINGS["IPAKitApplyFromParams"].__module__]
    patch_module = regional_module._pipeline._patch
    installs = []
    install = patch_module.install

    def counting_install(model, topology, *term_sets):
        installs.append(len(term_sets))
        return install(model, topology, *term_sets)

    monkeypatch.setattr(patch_module, "install", counting_install)
    before = copy.deepcopy(pipe.model.model_options)
    out = from_params(pipe, params)
    assert installs == [2]  # one clone, both regions' terms in it
    assert pipe.model.model_options == before and attn2_patches(pipe.model) == {}
    patches = attn2_patches(out)
    assert len(patches) == 16
    plan = patches[KEY].plan
    assert plan.num_tokens == 16 + 16 and len(plan.segments) == 2 and all(s.mask is not None for s in plan.segments)
    # the second region's term acts only inside its mask (the right half)
    single = from_params(pipe, region(pipe, mask=left)[0])
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 64, 320, generator=g), torch.randn(2, 77, 320, generator=g), torch.randn(2, 77, 320, generator=g)
    extra = {"n_heads": 8, "dim_head": 40, "cond_or_uncond": [1, 0], "original_shape": [2, 4, 8, 8], "sigmas": torch.ones(1)}
    with torch.inference_mode():
        delta = (patches[KEY](q, k, v, extra) - attn2_patches(single)[KEY](q, k, v, extra)).view(2, 8, 8, 320)
    assert delta[:, :, :4].abs().max() < 1e-5
    assert delta[:, :, 4:].abs().amin(dim=(0, 1, 3)).min() > 0


def test_a_region_of_weight_zero_changes_nothing(pipe):
    left, right = halves()
    zero = region(pipe, other_image(), image_weight=0.0, mask=right)[0]
    params = combine(pipe, region(pipe, mask=left)[0], zero)
    out, alone = from_params(pipe, params), from_params(pipe, region(pipe, mask=left)[0])
    assert attn2_patches(out)[KEY].plan.num_tokens == 16 and same_patches(out, alone)
    assert from_params(pipe, combine(pipe, zero, zero)) is pipe.model  # nothing to install: the model itself


def test_a_region_without_mask_acts_everywhere_like_apply(pipe):
    assert same_patches(from_params(pipe, region(pipe)[0]), pipe.apply())


# the conditioning outputs


def test_conditionings_get_the_mask_and_strength_and_the_inputs_are_not_changed(pipe):
    left, _ = halves()
    pos_before, neg_before = copy.copy(pipe.pos[0][1]), copy.copy(pipe.neg[0][1])
    _, pos, neg = region(pipe, mask=left[0], prompt_weight=2.5, positive=pipe.pos, negative=pipe.neg)
    for out, given in ((pos, pipe.pos), (neg, pipe.neg)):
        assert len(out) == len(given) and out is not given
        tensor, extra = out[0]
        assert tensor is given[0][0]  # the text embedding is shared, not copied
        assert extra["mask"].shape == (1, 64, 64) and torch.equal(extra["mask"], left)  # [H, W] gets its batch dimension
        assert extra["mask_strength"] == 2.5 and extra["set_area_to_bounds"] is False
        assert {k: v for k, v in extra.items() if k not in ("mask", "mask_strength", "set_area_to_bounds")} == given[0][1]
    assert pipe.pos[0][1] == pos_before and pipe.neg[0][1] == neg_before and "mask" not in pipe.pos[0][1]


def test_conditionings_without_mask_pass_through_and_missing_ones_are_empty(pipe):
    params, pos, neg = region(pipe, positive=pipe.pos)
    assert pos is pipe.pos and neg == []
    assert params.regions[0].mask is None
    combined = pipe.comfy.outputs("ConditioningCombine", conditioning_1=pipe.pos, conditioning_2=neg)[0]
    assert combined == pipe.pos  # an unconnected conditioning adds nothing to Conditioning (Combine)


def test_regional_text_and_image_prompts_sample_through_the_host(pipe):
    left, right = halves()
    pa, pos_a, _ = region(pipe, mask=left, positive=pipe.pos)
    pb, pos_b, _ = region(pipe, other_image(), mask=right, positive=pipe.neg, prompt_weight=0.5)
    positive = pipe.comfy.outputs("ConditioningCombine", conditioning_1=pos_a, conditioning_2=pos_b)[0]
    samples = pipe.sample(from_params(pipe, combine(pipe, pa, pb)), positive=positive)
    assert samples.shape == (1, 4, 8, 8) and torch.isfinite(samples).all()


# combining


def test_combine_params_concatenates_in_order_and_nests(pipe):
    bundles = [region(pipe, image_weight=w)[0] for w in (0.1, 0.2, 0.3, 0.4, 0.5)]
    regions = [b.regions[0] for b in bundles]
    two = combine(pipe, bundles[0], bundles[1])
    assert two.regions == (regions[0], regions[1])
    assert combine(pipe, *bundles).regions == tuple(regions)
    nested = pipe.comfy.outputs("IPAKitCombineParams", params_1=bundles[4], params_2=two, params_4=bundles[2])[0]
    assert [r.weight for r in nested.regions] == [0.5, 0.1, 0.2, 0.3]
    assert [r.weight for r in two.regions] == [0.1, 0.2]  # the inputs are not changed


# errors


def test_clear_errors(pipe, models_dir):
    with pytest.raises(ValueError, match="all black, so the region covers nothing"):
        region(pipe, mask=torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="a region takes one mask, got a batch of 2"):
        region(pipe, mask=torch.ones(2, 64, 64))
    with pytest.raises(ValueError, match=r"^mask has shape \(1, 2, 64, 64\); a mask is \[H, W\], \[B, H, W\] or \[B, 1, H, W\]"):
        region(pipe, mask=torch.ones(1, 2, 64, 64))
    with pytest.raises(ValueError, match=r"image: expected a batch of images \[B, H, W, C\]"):
        region(pipe, image=torch.rand(224, 224, 3))
    with pytest.raises(ValueError, match="weight_type: unknown type 'sideways'"):
        region(pipe, weight_type="sideways")
    with pytest.raises(ValueError, match=r"^image_weight \(item 1\) is 'x', not a number"):
        region(pipe, image_weight=[1.0, "x"])
    faceid = pipe.comfy.outputs("IPAKitModelLoader", ipadapter_file=_host.ensure_ipadapter("faceid_sd15", models_dir).name)[0]
    with pytest.raises(ValueError, match="is a FaceID adapter, which regional params do not drive"):
        from_params(pipe, region(pipe)[0], ipadapter=faceid)
