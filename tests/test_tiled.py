"""Tiled references: the tile geometry and masks of `ipadapter_core.tiles`, and the Apply Tiled node, which must be
exactly Apply with its tiles as masked references, each tile acting as plain Apply does on it, inside its mask."""

from __future__ import annotations

import math

import pytest
import torch

import ipadapter_core as core
from _pipe import APPLY
from dev.host.torch_probes import attn2_patches
from ipadapter_core.images import sharpen
from ipadapter_core.tiles import TILE, TileLayout, cut_tiles, merge_positions, tile_layout, tile_masks

QUADRANTS = ((0, 0), (0, TILE), (TILE, 0), (TILE, TILE))


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def rect(height, width, top, left, bottom, right):
    out = torch.zeros(height, width)
    out[top:bottom, left:right] = 1
    return out


# geometry


@pytest.mark.parametrize("height, width, crop", [
    (600, 600, (0, 0, 600, 600)),
    (480, 640, (0, 80, 480, 480)),  # 4:3 landscape and portrait are both near square
    (640, 480, (80, 0, 480, 480)),
    (31, 40, (0, 4, 31, 31)),
    (1, 1, (0, 0, 1, 1)),
])
def test_near_square_references_are_the_centre_square_at_512_in_2x2_tiles(height, width, crop):
    layout = tile_layout(height, width)
    assert layout.crop == crop and layout.size == (2 * TILE, 2 * TILE) and layout.origins == QUADRANTS


@pytest.mark.parametrize("height, width, size, starts", [
    (300, 500, (256, 427), (0, 171)),  # just past 4:3: two tiles
    (256, 600, (256, 600), (0, 172, 344)),
    (100, 400, (256, 1024), (0, 256, 512, 768)),  # exactly 4:1: four tiles side by side
])
def test_wide_and_tall_references_get_short_side_256_and_tiles_along_the_long_side(height, width, size, starts):
    wide, tall = tile_layout(height, width), tile_layout(width, height)
    assert wide.crop == (0, 0, height, width) and wide.size == size and wide.origins == tuple((0, s) for s in starts)
    assert tall.crop == (0, 0, width, height) and tall.size == size[::-1] and tall.origins == tuple((s, 0) for s in starts)


def test_a_reference_longer_than_4_to_1_keeps_its_centred_4_to_1_part_and_stays_cheap():
    assert tile_layout(100, 4096) == TileLayout((0, 1848, 100, 400), (256, 1024), ((0, 0), (0, 256), (0, 512), (0, 768)))
    assert tile_layout(4096, 100).crop == (1848, 0, 400, 100)
    ramp = torch.linspace(0, 1, 4096)[None, :, None].expand(100, 4096, 3)  # value = horizontal position
    tiles = cut_tiles(ramp)
    assert tiles.images.shape == (4, TILE, TILE, 3) and tiles.masks.shape == (4, 256, 1024)
    centres = tiles.images[..., 0].mean(dim=(1, 2))  # tile i covers source columns 1848 + 100 i .. + 100
    expected = torch.tensor([(1848 + 100 * i + 50) / 4095 for i in range(4)])
    assert torch.allclose(centres, expected, atol=2e-3)


def test_tiles_overlap_evenly_and_as_few_as_cover_the_long_side():
    for length in range(342, 4 * TILE + 1):
        layout = tile_layout(TILE, length)
        assert layout.size == (TILE, length)
        starts = [left for _, left in layout.origins]
        count = len(starts)
        assert count == math.ceil(length / TILE) and 2 <= count <= 4  # fewer could not cover the side
        assert starts[0] == 0 and starts[-1] + TILE == length
        steps = [b - a for a, b in zip(starts, starts[1:])]
        assert max(steps) - min(steps) <= 1 and max(steps) <= TILE  # even, and no gap between neighbours


def test_odd_sizes_round_the_long_side():
    for height, width in [(3, 5), (7, 10), (333, 999), (1, 2), (10, 41)]:
        layout = tile_layout(height, width)
        kept = min(width, 4 * height)
        assert layout.size == (TILE, round(kept * TILE / height)) and layout.crop == (0, (width - kept) // 2, height, kept)
        assert layout.origins[-1][1] + TILE == layout.size[1]


# tiles and masks


def test_tiles_are_the_processed_reference_cut_at_the_origins():
    square = rand(512, 512, 3)  # already at the processed size: nothing is resized
    tiles = cut_tiles(square)
    for image, (top, left) in zip(tiles.images, QUADRANTS):
        assert torch.equal(image, square[top : top + TILE, left : left + TILE])
    wide = rand(1, 256, 600, 4)  # alpha is dropped
    tiles = cut_tiles(wide, sharpening=0.5)
    sharp = sharpen(wide[..., :3].permute(0, 3, 1, 2), 0.5).permute(0, 2, 3, 1)[0]  # the whole reference, then cut
    assert tiles.images.shape == (3, TILE, TILE, 3)
    for image, (_, left) in zip(tiles.images, tiles.layout.origins):
        assert torch.equal(image, sharp[:, left : left + TILE])
    assert not torch.equal(tiles.images, cut_tiles(wide).images)


def test_masks_are_the_tile_rectangles_on_the_processed_reference():
    tiles = cut_tiles(rand(600, 700, 3))
    assert tiles.masks.shape == (4, 512, 512)
    for mask, (top, left) in zip(tiles.masks, QUADRANTS):
        assert torch.equal(mask, rect(512, 512, top, left, top + TILE, left + TILE))
    assert torch.equal(tiles.masks.sum(0), torch.ones(512, 512))  # the quadrants tile the reference
    wide = cut_tiles(rand(256, 600, 3))
    for mask, (_, left) in zip(wide.masks, wide.layout.origins):
        assert torch.equal(mask, rect(256, 600, 0, left, 256, left + TILE))
    assert wide.masks.amax(0).min() == 1  # overlapping tiles cover the whole reference


def test_the_attn_mask_is_cut_per_tile_on_its_own_canvas():
    attn = rand(64, 32, seed=1)  # another size and aspect than the 512x512 reference: the mask keeps its own
    tiles = cut_tiles(rand(1, 600, 600, 3), attn_mask=attn)
    assert tiles.masks.shape == (4, 64, 32)
    for mask, (top, left) in zip(tiles.masks, QUADRANTS):
        assert torch.equal(mask, attn * rect(64, 32, top // 8, left // 16, (top + TILE) // 8, (left + TILE) // 16))
    # tile edges between canvas pixels cover them in part: tile 1 of a 256x600 reference spans 17.2..42.8 of 60 columns
    masks = tile_masks(tile_layout(256, 600), 1, torch.ones(1, 1, 30, 60))
    assert masks.shape == (3, 30, 60)
    column = masks[1, 0]
    assert torch.allclose(column[17:19], torch.tensor([0.8, 1.0])) and torch.allclose(column[42:44], torch.tensor([0.8, 0.0]))
    assert column[:17].max() == 0 and torch.allclose(masks[1].sum(), torch.tensor(30 * 25.6))


def test_several_references_each_get_their_tiles_and_their_mask():
    images = rand(2, 300, 500, 3)
    left = torch.zeros(2, 16, 16)
    left[0, :, :8] = 1
    left[1, :, 8:] = 1
    tiles = cut_tiles(images, attn_mask=left)
    assert tiles.reference == (0, 0, 1, 1) and tiles.references == 2 and tiles.images.shape == (4, TILE, TILE, 3)
    assert torch.equal(tiles.images[2:], cut_tiles(images[1]).images)
    rects = tile_masks(tiles.layout, 1, torch.ones(16, 16))  # the two tiles' rectangles on the mask's 16x16 canvas
    assert torch.equal(tiles.masks, torch.cat([rects * left[0], rects * left[1]]))
    assert torch.equal(cut_tiles(images).masks, tile_masks(tiles.layout, 2)) and tile_masks(tiles.layout, 2).shape == (4, 256, 427)
    with pytest.raises(ValueError, match="attn_mask has 3 masks for 2 reference image"):
        cut_tiles(images, attn_mask=torch.ones(3, 16, 16))


def test_negatives_are_one_for_all_tiles_or_one_per_reference():
    tiles = cut_tiles(rand(2, 300, 500, 3))
    one, two = rand(1, 224, 224, 3), rand(2, 224, 224, 3)
    assert tiles.per_tile(one, "negative images") is one
    assert torch.equal(tiles.per_tile(two, "negative images"), two[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="3 negative images for 2 reference image"):
        tiles.per_tile(rand(3, 224, 224, 3), "negative images")


def test_other_combine_methods_merge_the_references_tiles_position_by_position():
    tiles = cut_tiles(rand(3, 256, 600, 3), attn_mask=rand(20, 40))  # 3 references x 3 positions
    features = rand(9, 5)
    embeds = core.ImageEmbeds(cond={"clip": features}, uncond={"clip": -features})
    same, masks = merge_positions(embeds, tiles, "concat")
    assert same is embeds and masks is tiles.masks
    merged, masks = merge_positions(embeds, tiles, "average")
    assert merged.count == 3 and torch.equal(masks, tiles.masks[:3])
    for p in range(3):
        assert torch.allclose(merged.cond["clip"][p], features[[p, p + 3, p + 6]].mean(0))
        assert torch.allclose(merged.uncond["clip"][p], -features[[p, p + 3, p + 6]].mean(0))
    one = cut_tiles(rand(256, 600, 3))
    alone = core.ImageEmbeds(cond={"clip": features[:3]})
    assert merge_positions(alone, one, "max") == (alone, one.masks)  # one reference: nothing to merge
    own = cut_tiles(rand(3, 256, 600, 3), attn_mask=rand(3, 20, 40))
    with pytest.raises(ValueError, match="need the same attn_mask"):
        merge_positions(embeds, own, "average")


# the node, in process, on the random SD1.5 models


def tiled(pipe, image, **kw):
    """The Apply Tiled node's outputs (model, tiles, masks) with the examples' settings and the Plus adapter."""
    args = dict(APPLY, sharpening=0.0, clip_vision=pipe.clip_vision)
    args.update(kw)
    return pipe.comfy.outputs("IPAKitApplyTiled", model=pipe.model, ipadapter=pipe.plus, image=image, **args)


WIDE = rand(1, 112, 280, 3, seed=4)  # short side 256 -> 256x640: three tiles, overlapping by 64


def test_the_node_is_registered_with_tiles_and_masks_outputs(comfy):
    cls = comfy.NODE_CLASS_MAPPINGS["IPAKitApplyTiled"]
    assert comfy.pack.NODE_DISPLAY_NAME_MAPPINGS["IPAKitApplyTiled"] == "Apply IPAdapter Tiled (IPAKit)"
    assert cls.CATEGORY == "ipadapter_kit/tiled" and cls.RETURN_TYPES == ("MODEL", "IMAGE", "MASK")
    required = cls.INPUT_TYPES()["required"]
    assert list(required)[3:] == [*APPLY, "sharpening"]
    assert list(cls.INPUT_TYPES()["optional"])[-1] == "unfold_batch"  # after the existing ones: saved widgets keep their places


def test_the_tiled_node_equals_apply_with_its_tiles_as_masked_references(pipe):
    model, tiles, masks = tiled(pipe, WIDE)
    assert tiles.shape == (3, TILE, TILE, 3) and masks.shape == (3, 256, 640)
    plan = attn2_patches(model)[("middle", 0, 0)].plan
    assert [s.stop - s.start for s in plan.segments] == [16, 16, 16]  # one softmax per tile
    assert all(s.mask is not None for s in plan.segments)
    as_references = pipe.apply(image=tiles, attn_mask=masks)
    out = pipe.eps(model)
    assert torch.equal(out, pipe.eps(as_references))
    assert (out - pipe.eps(pipe.model)).abs().max() > 1e-2


def test_each_tile_acts_as_plain_apply_on_it_inside_its_mask(pipe, comfy):
    """The tiled layer's image attention is the sum over tiles of the plain (unmasked) Apply's image attention on
    that tile alone, times the tile's mask on the layer grid: one tile with a full mask is the plain path."""
    model, tiles, masks = tiled(pipe, WIDE)
    key, hw = ("input", 1, 0), (8, 16)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, hw[0] * hw[1], 320, generator=g)
    extra = {"n_heads": 8, "dim_head": 40, "cond_or_uncond": [1, 0], "original_shape": [2, 4, *hw], "sigmas": torch.ones(1)}

    def image_attention(patched):
        with torch.inference_mode():
            return comfy.observe.image_attention(attn2_patches(patched)[key], q, extra, torch.zeros_like(q))

    on_grid = core.resize_masks(masks, core.layer_grid(q.shape[1], hw))  # [tiles, n]
    expected = sum(on_grid[i][None, :, None] * image_attention(pipe.apply(image=tiles[i : i + 1])) for i in range(3))
    assert torch.allclose(image_attention(model), expected, atol=1e-5)
    assert on_grid[0, -1] == 0 and on_grid[2, 0] == 0  # each tile acts in its own part only


def test_a_batch_of_identical_references_averaged_is_one_reference(pipe):
    model, tiles, masks = tiled(pipe, torch.cat([WIDE, WIDE]), combine_embeds="average")
    assert tiles.shape[0] == 6 and masks.shape[0] == 6  # the outputs list every reference's tiles
    assert len(attn2_patches(model)[("middle", 0, 0)].plan.segments) == 3  # merged per position
    one, _, _ = tiled(pipe, WIDE)
    assert torch.allclose(pipe.eps(model), pipe.eps(one), atol=1e-5)


def test_weight_zero_returns_the_model_itself_with_the_tiles(pipe):
    model, tiles, masks = tiled(pipe, WIDE, weight=0.0)
    assert model is pipe.model and tiles.shape == (3, TILE, TILE, 3) and masks.shape == (3, 256, 640)


def test_unfolded_tiles_equal_one_unfolded_apply_per_tile_position(pipe):
    """IPAdapter Plus's Tiled Batch: latent frame i gets reference i's tiles, each in its region. That is, per tile
    position, Apply with that position's tile of every reference, unfolded, with their masks, chained."""
    refs = torch.cat([WIDE, rand(1, 112, 280, 3, seed=9)])
    model, tiles, masks = tiled(pipe, refs, unfold_batch=True)
    assert tiles.shape[0] == 6 and masks.shape[0] == 6
    chained = pipe.model
    for p in range(3):
        chained = pipe.apply(model=chained, image=tiles[p::3], attn_mask=masks[p::3], unfold_batch=True)
    out = pipe.eps(model, batch=2)
    assert torch.allclose(out, pipe.eps(chained, batch=2), atol=1e-5)
    frame = lambda t, f: t.view(2, 2, *t.shape[1:])[:, f]  # noqa: E731 (rows: cond frames 0, 1, then uncond)
    solo = [tiled(pipe, refs[f : f + 1])[0] for f in range(2)]
    assert all(torch.allclose(frame(out, f), frame(pipe.eps(solo[f], batch=2), f), atol=1e-4) for f in range(2))
    assert (frame(out, 0) - frame(out, 1)).abs().max() > 1e-3
