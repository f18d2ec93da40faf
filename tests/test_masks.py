"""Mask grids for any latent size and aspect, and mask resizing."""

import pytest
import torch

from ipadapter_core import as_mask_batch, layer_grid, resize_masks


@pytest.mark.parametrize(
    "latent, levels",
    [
        ((64, 64), [(64, 64), (32, 32), (16, 16), (8, 8)]),  # SD1.5 512x512
        ((128, 128), [(128, 128), (64, 64), (32, 32)]),  # SDXL 1024x1024
        ((64, 96), [(64, 96), (32, 48), (16, 24), (8, 12)]),  # 512x768
        ((9, 13), [(9, 13), (5, 7), (3, 4), (2, 2)]),  # odd sizes round up at each downsampling
        ((1, 40), [(1, 40), (1, 20), (1, 10), (1, 5)]),
    ],
)
def test_layer_grid_is_exact_with_the_latent_size(latent, levels):
    for h, w in levels:
        assert layer_grid(h * w, latent) == (h, w)


def test_layer_grid_without_latent_follows_the_aspect_rule():
    assert layer_grid(4096) == (64, 64)
    assert layer_grid(64 * 96, aspect=96 / 64) == (64, 96)


def test_resize_keeps_aligned_binary_masks_exact_and_never_overshoots():
    m = torch.zeros(1, 512, 768)
    m[:, :, :384] = 1
    for grid in [(64, 96), (32, 48), (16, 24), (8, 12)]:
        r = resize_masks(m, grid).view(*grid)
        expected = torch.zeros(grid)
        expected[:, : grid[1] // 2] = 1
        assert torch.equal(r, expected)
    hard = torch.zeros(1, 8, 12)
    hard[:, :, :5] = 1  # an edge that does not fall on the grid
    r = resize_masks(hard, (4, 6))
    assert r.min() >= 0 and r.max() <= 1 and 0 < r[0, 2] < 1


def test_mask_batch_shapes():
    assert as_mask_batch(torch.ones(5, 7)).shape == (1, 5, 7)
    assert as_mask_batch(torch.ones(2, 1, 5, 7)).shape == (2, 5, 7)
    with pytest.raises(ValueError, match="attention mask"):
        as_mask_batch(torch.ones(2, 3, 5, 7))
