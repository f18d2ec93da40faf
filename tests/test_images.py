"""Image preparation for the CLIP encoders: crops, padding, sharpening and the reference normalisation."""

import pytest
import torch

import ipadapter_core as core
from ipadapter_core.images import CLIP_MEAN, CLIP_STD, sharpen


def gradient(h, w):
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return torch.stack([y, x, (x + y) / 2], -1)[None]


@pytest.mark.parametrize("position", core.CROP_POSITIONS)
@pytest.mark.parametrize("size", [224, 336])
def test_prep_image_sizes(position, size):
    out = core.prep_image(gradient(300, 500), size, crop_position=position, interpolation="BICUBIC")
    assert out.shape == (1, size, size, 3) and out.min() >= 0 and out.max() <= 1


def test_crop_positions_pick_the_right_part():
    img = gradient(100, 400)
    left = core.prep_image(img, 100, crop_position="left", interpolation="NEAREST")
    right = core.prep_image(img, 100, crop_position="right", interpolation="NEAREST")
    assert left[0, :, :, 1].mean() < 0.2 and right[0, :, :, 1].mean() > 0.8
    tall = gradient(400, 100)
    top = core.prep_image(tall, 100, crop_position="top", interpolation="NEAREST")
    bottom = core.prep_image(tall, 100, crop_position="bottom", interpolation="NEAREST")
    assert top[0, :, :, 0].mean() < 0.2 and bottom[0, :, :, 0].mean() > 0.8
    padded = core.prep_image(torch.ones(1, 100, 400, 3), 224, crop_position="pad", interpolation="BILINEAR")
    assert padded[0, :20].max() == 0 and padded[0, 112].min() > 0.99  # black bars above and below


@pytest.mark.parametrize("interpolation", core.INTERPOLATIONS)
def test_every_interpolation_works(interpolation):
    out = core.prep_image(gradient(64, 96), 32, interpolation=interpolation)
    assert out.shape == (1, 32, 32, 3)


def test_sharpening_increases_local_contrast_only_when_asked():
    img = torch.nn.functional.avg_pool2d(gradient(64, 64).permute(0, 3, 1, 2).round(), 3, 1, 1)
    assert torch.equal(sharpen(img, 0.0), img)
    lap = lambda x: (x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]).abs().mean()  # noqa: E731
    assert lap(sharpen(img, 1.0)) > lap(sharpen(img, 0.3)) > lap(img)


def test_clip_pixels_match_the_reference_normalisation():
    img = torch.rand(2, 224, 224, 4)  # alpha is dropped; 224x224 is not resized
    px = core.clip_pixels(img)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    expected = (torch.round(img[..., :3].permute(0, 3, 1, 2) * 255) / 255 - mean) / std
    assert torch.allclose(px, expected, atol=1e-6)
    grey = torch.ones(1, 50, 50, 1) * 0.5
    assert core.clip_pixels(grey, 336).shape == (1, 3, 336, 336)
    mask = torch.zeros(1, 224, 224)
    mask[:, :, :112] = 1
    masked = core.clip_pixels(img[:1], mask=mask)
    assert torch.count_nonzero(masked[..., 112:]) == 0 and torch.equal(masked[..., :112], px[:1, ..., :112])
    assert torch.count_nonzero(core.zero_pixels(2)) == 0
