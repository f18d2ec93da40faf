"""Property-based tests (hypothesis) of the core's pure functions: mask resizing, weight schedules, block-weight
parsing, embeds combine and image preprocessing, over shapes, dtypes and extreme values. No ComfyUI."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipadapter_core import (
    COMBINE_METHODS,
    EXPANDED_STYLE,
    WEIGHT_TYPES,
    Topology,
    as_mask_batch,
    checks,
    clip_pixels,
    combine_features,
    layer_grid,
    layer_weights,
    parse_block_weights,
    prep_image,
    resize_masks,
)
from ipadapter_core.images import CROP_POSITIONS, square

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOPOLOGIES = {"sd15": Topology.sd15(), "sdxl": Topology.sdxl()}
finite = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False, allow_infinity=False)
side = st.integers(min_value=1, max_value=48)


# masks


@FAST
@given(g=st.integers(1, 3), h=side, w=side, gh=st.integers(1, 16), gw=st.integers(1, 16),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_resized_masks_have_the_grid_shape_their_dtype_and_stay_in_0_1(g, h, w, gh, gw, dtype, seed):
    masks = torch.rand(g, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)
    out = resize_masks(masks, (gh, gw))
    assert out.shape == (g, gh * gw) and out.dtype == dtype
    assert bool(torch.isfinite(out.float()).all()) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@FAST
@given(value=st.sampled_from([0.0, 1.0, 0.25]), h=side, w=side, gh=st.integers(1, 16), gw=st.integers(1, 16))
def test_a_constant_mask_stays_constant_on_any_grid(value, h, w, gh, gw):
    out = resize_masks(torch.full((1, h, w), value), (gh, gw))
    assert torch.allclose(out, torch.full_like(out, value), atol=1e-5)


@FAST
@given(h=st.integers(1, 256), w=st.integers(1, 256), level=st.integers(0, 3))
def test_layer_grid_inverts_the_unet_downsampling(h, w, level):
    f = 2**level
    gh, gw = math.ceil(h / f), math.ceil(w / f)
    rows, cols = layer_grid(gh * gw, (h, w))
    assert rows * cols == gh * gw and rows >= 1 and cols >= 1


@FAST
@given(shape=st.sampled_from([(5, 7), (2, 5, 7), (3, 1, 5, 7)]))
def test_mask_batches_come_out_as_b_h_w_float(shape):
    out = as_mask_batch(torch.ones(shape, dtype=torch.float16))
    assert out.ndim == 3 and out.dtype == torch.float32 and out.shape[-2:] == (5, 7)


@given(shape=st.sampled_from([(0, 7), (3, 0), (0, 4, 4), (2, 4, 0)]))
def test_masks_without_pixels_are_refused_by_name(shape):
    with pytest.raises(ValueError, match="no masks or no pixels"):
        as_mask_batch(torch.ones(shape))


# weight schedules


@FAST
@given(topo=st.sampled_from(sorted(TOPOLOGIES)), weight_type=st.sampled_from([*WEIGHT_TYPES, EXPANDED_STYLE]), weight=finite,
       wc=st.none() | finite, boost=st.none() | finite)
def test_every_weight_type_gives_one_finite_weight_per_layer(topo, weight_type, weight, wc, boost):
    topology = TOPOLOGIES[topo]
    out = layer_weights(topology, weight_type, weight, weight_composition=wc, style_boost=boost, composition_boost=boost)
    assert len(out) == len(topology.layers)
    assert all(math.isfinite(w.weight) for w in out)
    assert all(abs(w.weight) <= 5.0 * 1.0 + 1e-9 for w in out)  # no type amplifies beyond its largest input


@FAST
@given(topo=st.sampled_from(sorted(TOPOLOGIES)), weight_type=st.sampled_from([*WEIGHT_TYPES, EXPANDED_STYLE]))
def test_weight_zero_with_zero_extras_changes_no_layer(topo, weight_type):
    out = layer_weights(TOPOLOGIES[topo], weight_type, 0.0, weight_composition=0.0)
    assert all(w.weight == 0.0 for w in out)


@FAST
@given(weight=finite)
def test_linear_is_the_weight_everywhere(weight):
    assert {w.weight for w in layer_weights(TOPOLOGIES["sdxl"], "linear", weight)} == {weight}


# block weights


@FAST
@given(pairs=st.dictionaries(st.integers(0, 15), finite, min_size=1, max_size=16))
def test_layer_weight_pairs_round_trip(pairs):
    text = ", ".join(f"{i}:{v!r}" for i, v in pairs.items())
    scales = parse_block_weights(text, TOPOLOGIES["sd15"])
    assert len(scales) == 16
    assert all(scales[i] == (pairs[i] if i in pairs else 0.0) for i in range(16))


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("{}[]()0123456789:.,-+eE\"' midupblock_naNIfinty\n")), max_size=200))
def test_any_block_weights_text_parses_to_finite_scales_or_a_value_error(text):
    try:
        scales = parse_block_weights(text, TOPOLOGIES["sdxl"])
    except ValueError as e:
        assert str(e).startswith("block_weights")
        return
    assert scales is None or (len(scales) == 11 and all(math.isfinite(s) for s in scales))


@given(depth=st.integers(9, 20000), opener=st.sampled_from("[{("))
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(depth, opener):
    with pytest.raises(ValueError, match="nested"):
        parse_block_weights("{" + opener * depth, TOPOLOGIES["sd15"])


@given(bad=st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999", "NaN", "Infinity"]))
def test_non_finite_block_weights_are_refused(bad):
    for text in (f'{{"mid": {bad}}}', f"3:{bad}"):
        try:
            scales = parse_block_weights(text, TOPOLOGIES["sdxl"])
        except ValueError:
            continue
        raise AssertionError(f"{text!r} parsed to {scales}")


# embeds combine


@FAST
@given(n=st.integers(1, 5), shape=st.sampled_from([(8,), (3, 8)]), method=st.sampled_from(COMBINE_METHODS),
       scale=st.sampled_from([1e-30, 1.0, 1e15]), seed=st.integers(0, 2**16))
def test_combine_keeps_the_feature_shape_and_finite_values(n, shape, method, scale, seed):
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)) * scale
    out = combine_features(x, method)
    assert out.shape == ((n, *shape) if method == "concat" else (1, *shape))
    assert bool(torch.isfinite(out).all())


def test_norm_average_of_huge_features_stays_finite():
    """Found by hypothesis: squared in float32, features from about 1e19 gave inf norms and NaN tokens."""
    x = torch.full((2, 8), 1e30)
    out = combine_features(x, "norm average")
    assert out.dtype == x.dtype and torch.allclose(out, x[:1], rtol=1e-6)


@FAST
@given(n=st.integers(1, 5), method=st.sampled_from(["average", "norm average", "max", "min", "concat"]), seed=st.integers(0, 99))
def test_combining_copies_of_one_reference_gives_that_reference(n, method, seed):
    row = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(seed))
    out = combine_features(row.expand(n, -1, -1).clone(), method)
    assert torch.allclose(out[:1], row, atol=1e-5)


# image preprocessing


@FAST
@given(b=st.integers(1, 2), h=st.integers(1, 300), w=st.integers(1, 300), c=st.sampled_from([1, 3, 4]),
       size=st.sampled_from([16, 32]), crop=st.sampled_from(CROP_POSITIONS),
       interpolation=st.sampled_from(["BICUBIC", "BILINEAR", "NEAREST", "BOX", "LANCZOS"]),
       sharpening=st.sampled_from([0.0, 0.5, 1.0]), fill=st.sampled_from(["rand", "zeros", "ones"]))
def test_prep_image_gives_size_x_size_rgb_in_0_1(b, h, w, c, size, crop, interpolation, sharpening, fill):
    images = {"rand": torch.rand, "zeros": torch.zeros, "ones": torch.ones}[fill](b, h, w, c)
    out = prep_image(images, size, crop_position=crop, interpolation=interpolation, sharpening=sharpening)
    assert out.shape == (b, size, size, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@FAST
@given(h=st.integers(1, 2000), w=st.integers(1, 2000), dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]))
def test_clip_pixels_are_finite_normalised_squares(h, w, dtype):
    x = clip_pixels(torch.rand(1, h, w, 3).to(dtype), 16)
    assert x.shape == (1, 3, 16, 16) and bool(torch.isfinite(x).all())
    assert float(x.min()) >= (0 - 0.49) / 0.26 - 1e-3 and float(x.max()) <= (1 - 0.40) / 0.26 + 1e-3


@FAST
@given(short=st.integers(1, 8), aspect=st.integers(1, 4000), tall=st.booleans(), crop=st.sampled_from(CROP_POSITIONS[:-1]))
def test_the_resize_before_cropping_is_bounded_by_the_output_size(short, aspect, tall, crop):
    """Whatever the aspect, the image that gets resized is at most 4:1, so the resized one is at most size x 4*size."""
    from ipadapter_core import images as images_module

    size = 16
    seen = []
    real = images_module.resize

    def spy(x, size, interpolation="BICUBIC"):
        seen.append(size)
        return real(x, size, interpolation)

    h, w = (short * aspect, short) if tall else (short, short * aspect)
    images_module.resize, original = spy, images_module.resize
    try:
        out = square(torch.rand(1, 3, h, w), size, crop)
    finally:
        images_module.resize = original
    assert out.shape == (1, 3, size, size)
    assert all(rh * rw <= 4 * size * size + 2 * size for rh, rw in seen)


# checks


@FAST
@given(value=st.floats(allow_nan=True, allow_infinity=True), low=st.just(-1.0), high=st.just(5.0))
def test_number_check_accepts_exactly_the_finite_values_in_range(value, low, high):
    ok = math.isfinite(value) and low <= value <= high
    if ok:
        assert checks.number("weight", value, low=low, high=high) == value
    else:
        with pytest.raises(ValueError, match="^weight"):
            checks.number("weight", value, low=low, high=high)
