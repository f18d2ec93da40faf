"""The ClipVision Enhancer (issue 13): tile geometry, merge semantics and negatives in the core, with a synthetic
encoder whose tokens are pooled pixels (so a token says where it came from); then the node on the real host with
the random SD1.5 models, against Apply and Apply Embeds fed with hand-built tile features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import _host
from _pipe import APPLY
from dev.host.torch_probes import attn2_patches
from ipadapter_core import AdapterKind, AdapterSpec, ClipOutput, Family, clip_pixels, encode_clip, zero_pixels
from ipadapter_core.enhance import (
    Enhance,
    check_enhanceable,
    encode_enhanced,
    encoder_calls,
    merge_tiles,
    tile_pixels,
    tiled_features,
)
from ipadapter_core.images import CLIP_MEAN, CLIP_STD

SIZE, PATCH = 32, 8  # the synthetic encoder: 32 px input, 8 px patches -> a 4 x 4 grid
GRID = SIZE // PATCH
SPEC = AdapterSpec(
    kind=AdapterKind.PLUS, family=Family.SD15, variant="plus (test)", num_tokens=16, token_dim=8, cross_attention_dim=8,
    layer_widths=(8,), clip_encoder="test", clip_output=ClipOutput.PENULTIMATE, clip_dim=3, clip_size=SIZE,
)


class PooledPixels:
    """Encoder stand-in: the class token is the mean pixel, patch token (i, j) the mean of patch (i, j); counts calls."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append(pixels.shape[0])
        cls = pixels.mean(dim=(2, 3))[:, None]
        patches = rearrange(F.avg_pool2d(pixels, PATCH), "n c h w -> n (h w) c")
        return {"penultimate": torch.cat([cls, patches], dim=1), "image_embeds": cls[:, 0]}


def positions(size: int) -> torch.Tensor:
    """A `[1, size, size, 3]` image whose red is the pixel's column and green its row (in 8-bit steps)."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([cols, rows, (rows + cols) % 7], dim=-1)[None].float() / 255


def pixel_values(tokens: torch.Tensor) -> torch.Tensor:
    """Undo CLIP's normalisation of pooled tokens `[..., 3]`, in 8-bit steps."""
    return (tokens * torch.tensor(CLIP_STD) + torch.tensor(CLIP_MEAN)) * 255


def images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, size, size, 3, generator=torch.Generator().manual_seed(seed))


# tiles


def test_tiles_are_the_prepared_image_cut_row_by_row():
    image = images(2, size=80)  # not a multiple of the tile size: prepared (resized) to 2 x 32 first
    tiles = tile_pixels(image, 2, SIZE)
    prepared = clip_pixels(image, 2 * SIZE)
    assert tiles.shape == (8, 3, SIZE, SIZE)
    for b in range(2):
        for ty in range(2):
            for tx in range(2):
                want = prepared[b, :, ty * SIZE : (ty + 1) * SIZE, tx * SIZE : (tx + 1) * SIZE]
                assert torch.equal(tiles[b * 4 + ty * 2 + tx], want)


@pytest.mark.parametrize("t", [2, 3])
def test_merged_tiles_are_the_patch_grid_of_the_whole_tiled_image(t):
    image = positions(t * SIZE)
    merged = tiled_features(PooledPixels(), image, t, SIZE)
    assert merged.shape == (1, 1 + GRID * GRID, 3)
    values = pixel_values(merged[0])
    block = t * PATCH  # each pooled token covers t x t tile patches: a square of t * PATCH pixels
    centre = (torch.arange(GRID) * block + (block - 1) / 2).float()
    cols, rows = values[1:, 0].view(GRID, GRID), values[1:, 1].view(GRID, GRID)
    assert torch.allclose(cols, centre[None, :].expand(GRID, GRID), atol=1e-3)  # token (i, j) sits at column block j
    assert torch.allclose(rows, centre[:, None].expand(GRID, GRID), atol=1e-3)  # ... and at row block i
    assert torch.allclose(values[0, :2], torch.full((2,), (t * SIZE - 1) / 2), atol=1e-3)  # class: the mean of all tiles
    whole = clip_pixels(image, t * SIZE)  # the same as pooling the t-times-larger image directly
    assert torch.allclose(merged[0, 1:], rearrange(F.avg_pool2d(whole, block), "1 c h w -> (h w) c"), atol=1e-5)


def test_merge_needs_a_class_token_and_a_square_grid():
    with pytest.raises(ValueError, match="square grid"):
        merge_tiles(torch.zeros(4, 1 + 12, 3), 2)


# merging with the whole image


def test_one_tile_is_the_plain_encoding_whatever_the_ratio():
    image, negative = images(2), images(1, seed=1)
    plain = encode_clip(SPEC, PooledPixels(), image, negative_images=negative)
    for unfold in (False, True):
        enhanced = encode_enhanced(SPEC, PooledPixels(), image, Enhance(1, 0.3, unfold), negative_images=negative)
        assert all(torch.equal(a, b) for a, b in zip(enhanced, plain))


def test_without_unfold_the_whole_image_times_ratio_and_the_tiles_are_two_references():
    encoder, image = PooledPixels(), images(2)
    whole, whole_negative = encode_clip(SPEC, encoder, image)
    cond, uncond = encode_enhanced(SPEC, encoder, image, Enhance(2, 0.25))
    assert cond.shape == uncond.shape == (4, 1 + GRID * GRID, 3)
    assert torch.allclose(cond[:2], whole * 0.25) and torch.allclose(uncond[:2], whole_negative * 0.25)
    assert torch.allclose(cond[2:], tiled_features(encoder, image, 2, SIZE))
    empty_tiles = merge_tiles(encoder(zero_pixels(4, SIZE))["penultimate"], 2)  # the empty image's tiles, merged
    assert torch.allclose(uncond[2:], empty_tiles.expand(2, -1, -1))


def test_with_unfold_each_frame_blends_whole_and_tiles():
    encoder, image, negative = PooledPixels(), images(3), images(1, seed=5)
    whole, whole_negative = encode_clip(SPEC, encoder, image, negative_images=negative)
    cond, uncond = encode_enhanced(SPEC, encoder, image, Enhance(2, 0.25, unfold=True), negative_images=negative)
    tiles, negative_tiles = tiled_features(encoder, image, 2, SIZE), tiled_features(encoder, negative, 2, SIZE)
    assert cond.shape == (3, 1 + GRID * GRID, 3)
    assert torch.allclose(cond, whole * 0.25 + tiles * 0.75)
    assert torch.allclose(uncond, whole_negative * 0.25 + negative_tiles.expand(3, -1, -1) * 0.75)
    encoder.calls.clear()
    same, _ = encode_enhanced(SPEC, encoder, image, Enhance(2, 1.0, unfold=True), negative_images=negative)
    assert torch.equal(same, whole) and len(encoder.calls) == 1  # ratio 1: the whole image alone, no tile encoded


def test_a_zero_negative_stays_zero():
    kolors_face = dataclasses.replace(SPEC, kind=AdapterKind.FACEID_PLUS_V2, family=Family.KOLORS)
    assert kolors_face.zero_clip_negative
    _, uncond = encode_enhanced(kolors_face, PooledPixels(), images(2), Enhance(3, 0.5))
    assert uncond.shape[0] == 4 and not uncond.any()


def test_the_mask_hides_the_same_parts_of_whole_and_tiles():
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1  # the right half is visible
    tiles = tile_pixels(images(1), 2, SIZE, mask)
    assert not tiles[[0, 2]].any() and tiles[[1, 3]].abs().sum() > 0


def test_references_masks_and_repeats_follow_the_layout():
    two = Enhance(2, 0.5)
    masks = torch.rand(2, 8, 8)
    assert torch.equal(two.reference_masks(masks, 2), torch.cat([masks, masks]))
    assert two.reference_masks(masks[:1], 2).shape[0] == 1
    assert Enhance(2, 0.5, unfold=True).reference_masks(masks, 2) is masks
    assert Enhance(1, 0.5).repeat(masks) is masks
    with pytest.raises(ValueError, match="enhance_tiles"):
        Enhance(0, 0.5)
    with pytest.raises(ValueError, match="enhance_ratio"):
        Enhance(2, 1.5)


@pytest.mark.parametrize("enhance", [None, Enhance(1), Enhance(2), Enhance(3, 0.5, unfold=True), Enhance(3, 1.0, unfold=True)])
@pytest.mark.parametrize("batch_size", [0, 2, 9, 40])
@pytest.mark.parametrize("negatives", [None, 1, 3])
def test_encoder_calls_counts_the_calls(enhance, batch_size, negatives):
    encoder = PooledPixels()
    negative = None if negatives is None else images(negatives, seed=2)
    if enhance is None:
        encode_clip(SPEC, encoder, images(3), negative_images=negative, batch_size=batch_size)
    else:
        encode_enhanced(SPEC, encoder, images(3), enhance, negative_images=negative, batch_size=batch_size)
    assert len(encoder.calls) == encoder_calls(SPEC, 3, negatives, enhance, batch_size)
    if batch_size and enhance is not None:  # a call holds at most batch_size rows, or one image's tiles
        assert max(encoder.calls) <= max(batch_size, enhance.tiles**2)


def test_image_embeds_and_face_only_adapters_are_refused_with_the_fix():
    base = dataclasses.replace(SPEC, kind=AdapterKind.IMAGE_PROJ, variant="base (SD1.5)", clip_output=ClipOutput.IMAGE_EMBEDS)
    with pytest.raises(ValueError, match=r"ip-adapter_sd15\.safetensors \(base \(SD1\.5\)\) reads CLIP image_embeds.*Use Apply IPAdapter"):
        check_enhanceable(base, source="ip-adapter_sd15.safetensors")
    with pytest.raises(ValueError, match="image_embeds"):
        encode_enhanced(base, PooledPixels(), images(1), Enhance(2))
    faceid = dataclasses.replace(SPEC, kind=AdapterKind.FACEID, clip_output=None)
    with pytest.raises(ValueError, match="no CLIP features.*Apply IPAdapter FaceID"):
        check_enhanceable(faceid)


# the node on the real host


def enhanced(pipe, image, ipadapter=None, **kw):
    args = dict(APPLY, clip_vision=pipe.clip_vision, enhance_tiles=2, enhance_ratio=1.0)
    args.update(kw)
    return pipe.comfy.outputs("IPAKitApplyClipVisionEnhancer", model=pipe.model, ipadapter=ipadapter or pipe.plus, image=image, **args)[0]


def plan(model, key=("middle", 0, 0)):
    return attn2_patches(model)[key].plan


def by_hand(features: torch.Tensor) -> torch.Tensor:
    """2 x 2 tiles' penultimate states `[4, 257, E]` merged with loops: each tile's 16 x 16 grid in its quadrant of
    a 32 x 32 grid, 2 x 2 blocks averaged; class tokens averaged."""
    e = features.shape[-1]
    grid = torch.zeros(32, 32, e)
    for ty in range(2):
        for tx in range(2):
            grid[ty * 16 : ty * 16 + 16, tx * 16 : tx * 16 + 16] = features[ty * 2 + tx, 1:].reshape(16, 16, e)
    pooled = grid.reshape(16, 2, 16, 2, e).mean(dim=(1, 3)).reshape(256, e)
    return torch.cat([features[:, :1].mean(0), pooled])[None]


# The node tests share their images, so the CLIP vision model's per-image cache spares most of the (slow) encodes:
# a 448 px reference whose 2 x 2 tiles of 224 are exact crops (no resizing), two of them alike, and those crops.
TOP, BOTTOM = images(1, size=224, seed=4), images(1, size=224, seed=4).flip(2)
REFERENCE = torch.cat([torch.cat([TOP, TOP], dim=2), torch.cat([BOTTOM, BOTTOM], dim=2)], dim=1)


def test_one_tile_node_equals_apply(pipe):
    one = enhanced(pipe, REFERENCE, enhance_tiles=1, enhance_ratio=0.2)
    direct = pipe.apply(image=REFERENCE)
    assert torch.equal(plan(one).k, plan(direct).k) and torch.equal(plan(one).v, plan(direct).v)


def test_node_equals_apply_embeds_of_hand_merged_tile_features(pipe, comfy):
    whole = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=REFERENCE, clip_vision=pipe.clip_vision)[0]
    crops = torch.cat([REFERENCE[:, y : y + 224, x : x + 224] for y in (0, 224) for x in (0, 224)])
    tiles = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=crops, clip_vision=pipe.clip_vision)[0]
    ratio = 0.6
    embeds = dataclasses.replace(
        whole,
        cond={"clip": torch.cat([whole.cond["clip"] * ratio, by_hand(tiles.cond["clip"])])},
        uncond={"clip": torch.cat([whole.uncond["clip"] * ratio, by_hand(tiles.uncond["clip"])])},
    )
    for combine in ("concat", "average"):
        settings = dict(APPLY, combine_embeds=combine)
        reference = comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.plus, embeds=embeds, **settings)[0]
        patched = enhanced(pipe, REFERENCE, enhance_ratio=ratio, combine_embeds=combine)
        assert plan(patched).k.shape == plan(reference).k.shape == (2, 16 * (2 if combine == "concat" else 1), 1280)
        assert torch.allclose(plan(patched).k, plan(reference).k, atol=1e-5)
        assert torch.allclose(plan(patched).v, plan(reference).v, atol=1e-5)
    assert not torch.allclose(plan(patched).k, plan(pipe.apply(image=REFERENCE, combine_embeds="average")).k, atol=1e-3)


def test_node_unfolds_frames_and_places_each_references_mask(pipe):
    frames = torch.cat([TOP, BOTTOM])
    unfolded = enhanced(pipe, frames, unfold_batch=True)  # ratio 1: each frame is its whole image, as Apply gives it
    assert torch.equal(pipe.eps(unfolded, batch=2), pipe.eps(pipe.apply(image=frames, unfold_batch=True), batch=2))
    masks = torch.zeros(2, 64, 64)
    masks[0, :, :32], masks[1, :, 32:] = 1, 1
    regions = enhanced(pipe, REFERENCE.expand(2, -1, -1, -1), attn_mask=masks, enhance_ratio=0.5)
    segments = plan(regions, ("input", 1, 0)).segments
    assert len(segments) == 4  # whole 1, whole 2, tiles 1, tiles 2, each with its image's mask
    assert [torch.equal(s.mask, masks[i]) for s, i in zip(segments, (0, 1, 0, 1))] == [True] * 4


def test_node_refuses_image_embeds_adapters(pipe):
    with pytest.raises(ValueError, match=r"ip-adapter_sd15\.safetensors.*image_embeds.*Use Apply IPAdapter"):
        enhanced(pipe, images(1), ipadapter=pipe.base)


def test_node_takes_faceid_plus_through_insightface(pipe, comfy, models_dir):
    pytest.importorskip("insightface")
    from dev.standins.insightface_pack import ensure_pack

    ensure_pack(models_dir / "insightface", "buffalo_l")
    insightface = comfy.outputs("IPAKitInsightFaceLoader", provider="CPU", model_name="buffalo_l")[0]
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=_host.ensure_ipadapter("faceid-plusv2_sd15", models_dir).name)[0]
    face = _host.face_image()
    faceid = comfy.outputs("IPAKitApplyFaceID", model=pipe.model, ipadapter=adapter, image=face, insightface=insightface,
                           clip_vision=pipe.clip_vision, weight_faceidv2=1.0, face_selection="largest", face_index=0,
                           on_missing_face="error", lora_strength=0.0, **APPLY)[0]
    one = enhanced(pipe, face, ipadapter=adapter, insightface=insightface, enhance_tiles=1, lora_strength=0.0)
    assert torch.equal(plan(one).k, plan(faceid).k)
    with pytest.raises(ValueError, match="connect an InsightFace Loader"):
        enhanced(pipe, face, ipadapter=adapter)
