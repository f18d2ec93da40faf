"""Noise negatives (ipadapter_core.noise): each type does what its docstring says, deterministically; and the node."""

from __future__ import annotations

import math

import pytest
import torch

from ipadapter_core.noise import (
    ELASTIC_CELLS,
    GAUSSIAN_STD,
    NOISE_TYPES,
    SHUFFLE_NOISE,
    elastic_warp,
    gaussian_blur,
    noise_image,
    random_flips,
)

SIZE = 224


def picture(h: int = 160, w: int = 200, b: int = 1, seed: int = 7) -> torch.Tensor:
    """A smooth colourful test image batch `[B, H, W, 3]` (gradients plus a few sinusoids)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h)[:, None]
    xs = torch.linspace(0, 1, w)[None, :]
    out = []
    for _ in range(b):
        f = torch.rand(3, generator=g) * 6 + 1
        chans = [0.5 + 0.4 * torch.sin(f[c] * (xs + ys * (c + 1))) * torch.cos(f[c] * ys) for c in range(3)]
        out.append(torch.stack(chans, dim=-1))
    return torch.stack(out)


def high_frequency_energy(images: torch.Tensor) -> float:
    """Mean squared difference between horizontal and vertical neighbours of `[B, H, W, C]` images."""
    dx = images[:, :, 1:] - images[:, :, :-1]
    dy = images[:, 1:] - images[:, :-1]
    return float((dx**2).mean() + (dy**2).mean())


# shapes, range, determinism


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_any_image_becomes_224_square_rgb_in_range(noise_type):
    for image in (picture(160, 200, b=2), picture(300, 90)[..., :1], torch.cat([picture(50, 50), torch.ones(1, 50, 50, 1)], -1),
                  picture(240, 320)[0]):
        out = noise_image(image, noise_type, 1.0, 5, seed=1)
        batch = image.shape[0] if image.ndim == 4 else 1
        assert out.shape == (batch, SIZE, SIZE, 3) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert noise_image(picture().half(), noise_type).dtype == torch.float32
    assert noise_image(None, noise_type, 0.5).shape == (1, SIZE, SIZE, 3)


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_the_same_inputs_give_the_same_image_whatever_the_global_rng(noise_type):
    image = picture(b=2)
    torch.manual_seed(1)
    first = noise_image(image, noise_type, 0.7, 2, seed=11)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = noise_image(image, noise_type, 0.7, 2, seed=11)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    assert torch.equal(first, second)
    other = noise_image(image, noise_type, 0.7, 2, seed=12)
    assert (other - first).abs().max() > 0.05
    # each image of a batch gets its own noise
    twins = noise_image(image[:1].expand(2, -1, -1, -1), noise_type, 0.7, 0, seed=11)
    assert not torch.equal(twins[0], twins[1])


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_strength_0_is_the_centre_square_or_grey_exactly(noise_type):
    wide = picture(SIZE, 300)  # already 224 high: the centre square needs no resize
    out = noise_image(wide, noise_type, 0.0, 0, seed=3)
    assert torch.equal(out, wide[:, :, 38:262])
    tall = picture(400, SIZE)
    assert torch.equal(noise_image(tall, noise_type, 0.0, 0), tall[:, 88:312])
    assert torch.equal(noise_image(None, noise_type, 0.0, 0), torch.full((1, SIZE, SIZE, 3), 0.5))


def test_the_resize_keeps_the_centre_square_only():
    # black bars left and right outside the centre square: none of them may reach the output
    image = torch.ones(1, 100, 160, 3)
    image[:, :, :30] = 0
    image[:, :, 130:] = 0
    out = noise_image(image, "fade", 0.0)
    assert out.shape == (1, SIZE, SIZE, 3) and out.min() > 0.9999
    # the resize is smooth: a constant colour stays that colour, going down or up
    for h, w in ((900, 700), (60, 80)):
        flat = torch.tensor([0.2, 0.5, 0.9]).expand(1, h, w, 3)
        assert torch.allclose(noise_image(flat, "dissolve", 0.0), torch.tensor([0.2, 0.5, 0.9]).expand(1, SIZE, SIZE, 3), atol=1e-6)


# each type


def test_fade_blends_linearly_toward_noise_that_ignores_the_input():
    a, b = picture(seed=1), picture(seed=2)
    pure = noise_image(a, "fade", 1.0, seed=5)
    assert torch.equal(pure, noise_image(b, "fade", 1.0, seed=5)), "at strength 1 the input must not matter"
    assert abs(float(pure.mean()) - 0.5) < 0.01 and abs(float(pure.std()) - 1 / math.sqrt(12)) < 0.01  # uniform
    base = noise_image(a, "fade", 0.0)
    for s in (0.25, 0.6):
        assert torch.allclose(noise_image(a, "fade", s, seed=5), (1 - s) * base + s * pure, atol=1e-6)


def test_dissolve_replaces_exactly_that_fraction_of_pixels_and_keeps_the_rest():
    image = picture(b=2)
    base = noise_image(image, "dissolve", 0.0)
    for s in (0.1, 0.5, 0.93):
        out = noise_image(image, "dissolve", s, seed=4)
        changed = (out != base).any(dim=-1)  # a replaced pixel gets noise in all three channels
        assert changed.flatten(1).sum(1).tolist() == [round(s * SIZE * SIZE)] * 2
        assert (out != base).all(dim=-1)[changed].float().mean() > 0.999
        # the replacements are uniform noise, wherever they land
        assert abs(float(out[changed].mean()) - 0.5) < 0.02
    assert (noise_image(image, "dissolve", 1.0) != base).all(dim=-1).float().mean() > 0.999


def test_gaussian_adds_noise_with_a_standard_deviation_proportional_to_strength():
    spread = {}
    for s in (0.1, 0.2):
        out = noise_image(None, "gaussian", s, seed=9)  # grey: at 0.1 std, clamping at 0 and 1 is 5 sigma away
        spread[s] = float((out - 0.5).std())
        assert abs(float(out.mean()) - 0.5) < 0.002
        assert spread[s] == pytest.approx(GAUSSIAN_STD * s, rel=0.02)
    assert spread[0.2] / spread[0.1] == pytest.approx(2.0, rel=0.02)
    # the noise is independent per pixel: neighbours do not correlate
    out = noise_image(None, "gaussian", 0.2, seed=9)[0, ..., 0] - 0.5
    assert abs(float((out[:, 1:] * out[:, :-1]).mean() / out.var())) < 0.02


def test_elastic_warp_moves_pixels_by_a_smooth_field_bounded_by_the_amplitude():
    # on a horizontal ramp v = (x + 1) / 2 a bilinear warp reads back its displacement: dx = 2 * (warped - v)
    n = SIZE
    ramp = ((torch.arange(n) * 2 + 1) / n).expand(1, 1, n, n).contiguous() * 0.5
    amp = 0.2
    warped = elastic_warp(ramp, amp, torch.Generator().manual_seed(0))
    xs = (torch.arange(n) * 2 + 1) / n - 1
    inside = xs.abs() < 1 - amp  # away from the reflected borders
    dx = (2 * (warped - ramp))[0, 0][:, inside]
    assert dx.abs().max() <= amp + 1e-5 and dx.abs().max() > amp / 4
    slope = 2 * amp / (n / ELASTIC_CELLS)  # the most a bilinear field of +-amp per cell changes per pixel
    assert (dx[:, 1:] - dx[:, :-1]).abs().max() <= slope * 1.05
    assert (dx[1:] - dx[:-1]).abs().max() <= slope * 1.05
    assert torch.equal(elastic_warp(ramp, 0.0, torch.Generator()), ramp)


def test_random_flips_follow_their_probability():
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 1, 6, 4).expand(64, 3, -1, -1)
    never = random_flips(image, 0.0, torch.Generator().manual_seed(0))
    always = random_flips(image, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(never, image) and torch.equal(always, image.flip(-1).flip(-2))
    half = random_flips(image, 0.5, torch.Generator().manual_seed(0))
    kinds = {(bool(torch.equal(x, image[0].flip(-1)) or torch.equal(x, image[0].flip(-1).flip(-2))),
              bool(torch.equal(x, image[0].flip(-2)) or torch.equal(x, image[0].flip(-1).flip(-2)))) for x in half}
    assert kinds == {(False, False), (True, False), (False, True), (True, True)}


def test_shuffle_scrambles_the_layout_flips_and_keeps_the_colours_with_a_little_noise():
    # a flat colour: warps and flips change nothing, only the fade toward noise by SHUFFLE_NOISE * strength
    flat = torch.tensor([0.2, 0.5, 0.9]).expand(1, 64, 64, 3)
    out = noise_image(flat, "shuffle", 0.8, seed=2)
    f = SHUFFLE_NOISE * 0.8
    lo, hi = (1 - f) * torch.tensor([0.2, 0.5, 0.9]), (1 - f) * torch.tensor([0.2, 0.5, 0.9]) + f
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()
    assert float((out - (lo + hi) / 2).std()) == pytest.approx(f / math.sqrt(12), rel=0.05)
    # a left-dark / right-light image: over seeds, some come back flipped left-right, some not
    split = torch.zeros(1, 64, 64, 3)
    split[:, :, 32:] = 1.0
    flipped = []
    for seed in range(24):
        o = noise_image(split, "shuffle", 1.0, seed=seed)[0]
        left, right = float(o[:, :80].mean()), float(o[:, -80:].mean())
        assert abs(left - right) > 0.4  # the warp moves the edge (at 112 px) by at most 28 px: not into either side
        flipped.append(left > right)
    assert 0 < sum(flipped) < len(flipped)
    # the elastic warp bends that straight edge: how many light pixels each row has varies by row (noise alone
    # cannot move a pixel across 0.5: dark stays below 0.25, light above 0.75), by at most 28 px, and differs
    # between two copies of the image in one batch (each gets its own field, not a flipped copy of one)
    assert ((noise_image(split, "shuffle", 0.0)[0].mean(-1) > 0.5).sum(1) == 112).all()
    twins = noise_image(split.expand(2, -1, -1, -1), "shuffle", 1.0, seed=0)
    widths = (twins.mean(-1) > 0.5).sum(2)  # [2, rows]
    assert ((widths - 112).abs() <= 29).all() and (widths.amax(1) - widths.amin(1) >= 8).all()
    bend = (widths - 112).abs()  # the same whether or not the image came back flipped left-right
    assert (bend[0] - bend[1]).abs().max() > 4 and (bend[0] - bend[1].flip(0)).abs().max() > 4
    # a real picture: the layout changes a lot, the colours hardly (unlike fade)
    image = picture(b=1, seed=3)
    base = noise_image(image, "shuffle", 0.0)
    out = noise_image(image, "shuffle", 1.0, seed=1)
    assert float((out - base).abs().mean()) > 0.05
    expected_mean = (1 - SHUFFLE_NOISE) * base.mean(dim=(1, 2)) + SHUFFLE_NOISE * 0.5
    assert torch.allclose(out.mean(dim=(1, 2)), expected_mean, atol=0.03)


# blur


def test_blur_lowers_high_frequency_energy_and_keeps_the_mean():
    noisy = noise_image(picture(), "fade", 1.0, 0, seed=8)
    energies = [high_frequency_energy(noise_image(picture(), "fade", 1.0, r, seed=8)) for r in (0, 1, 4, 16, 32)]
    assert all(a > 2 * b for a, b in zip(energies, energies[1:])), energies
    assert float(noise_image(picture(), "fade", 1.0, 16, seed=8).mean()) == pytest.approx(float(noisy.mean()), abs=2e-3)
    flat = torch.full((1, 80, 80, 3), 0.3)
    assert torch.allclose(noise_image(flat, "fade", 0.0, 32), torch.full((1, SIZE, SIZE, 3), 0.3), atol=1e-6)


def test_the_blur_kernel_is_a_normalised_gaussian_truncated_at_the_radius():
    impulse = torch.zeros(1, 1, 81, 81)
    impulse[..., 40, 40] = 1.0
    for r in (1, 3, 8):
        response = gaussian_blur(impulse, r)[0, 0]
        assert float(response.sum()) == pytest.approx(1.0, abs=1e-6)
        assert response[40 - r : 41 + r, 40 - r : 41 + r].min() > 0
        support = torch.zeros_like(response, dtype=torch.bool)
        support[40 - r : 41 + r, 40 - r : 41 + r] = True
        assert float(response[~support].abs().max()) == 0.0
        d = max(1, r // 2)
        ratio = float(response[40, 40 + d] / response[40, 40])  # a Gaussian of standard deviation r / 2
        assert ratio == pytest.approx(math.exp(-0.5 * (d / (r / 2)) ** 2), rel=1e-4)
    assert torch.equal(gaussian_blur(impulse, 0), impulse)


# errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise_type="salt"), "noise type must be one of fade, dissolve, gaussian, shuffle; got 'salt'"),
        (dict(strength=-0.1), "strength must be a number from 0 to 1"),
        (dict(strength=1.5), "strength must be a number from 0 to 1"),
        (dict(strength=float("nan")), "strength must be a number from 0 to 1"),
        (dict(blur=-1), "blur must be a whole number of pixels from 0 to 32"),
        (dict(blur=33), "blur must be a whole number of pixels from 0 to 32"),
        (dict(blur=2.5), "blur must be a whole number"),
        (dict(seed=-1), "seed must be a whole number"),
        (dict(image=torch.zeros(0, 8, 8, 3)), "the image batch is empty"),
        (dict(image=torch.zeros(1, 0, 8, 3)), "the image has no pixels"),
        (dict(image=torch.zeros(8, 8)), r"image must be a ComfyUI image batch \[B, H, W, C\]; got \(8, 8\)"),
        (dict(image=torch.full((1, 8, 8, 3), float("nan"))), "NaN or infinite pixels"),
        (dict(image=torch.full((1, 8, 8, 3), float("inf"))), "NaN or infinite pixels"),
        (dict(image=torch.zeros(1, 8, 8, 2)), "1, 3 or 4 colour channels"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise_image(**{"image": picture(), **kwargs})


# the node, in process


def test_node_is_registered_documented_and_calls_the_core(comfy):
    cls = comfy.NODE_CLASS_MAPPINGS["IPAKitNoise"]
    assert comfy.pack.NODE_DISPLAY_NAME_MAPPINGS["IPAKitNoise"] == "IPAdapter Noise (IPAKit)"
    assert cls.CATEGORY == "ipadapter_kit/utils" and len(cls.DESCRIPTION) > 40
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS) == 1
    inputs = {name: opts for group in cls.INPUT_TYPES().values() for name, (_, opts) in group.items()}
    assert set(inputs) == {"type", "strength", "blur", "image", "pattern_seed"}  # not "seed": no randomising widget
    assert all(opts.get("tooltip") for opts in inputs.values())
    assert cls.INPUT_TYPES()["required"]["type"][0] == list(NOISE_TYPES)

    image = picture(b=2)
    (out,) = comfy.outputs("IPAKitNoise", type="shuffle", strength=0.6, blur=2, image=image, pattern_seed=5)
    assert out.shape == (2, SIZE, SIZE, 3) and torch.equal(out, noise_image(image, "shuffle", 0.6, 2, seed=5))
    (grey,) = comfy.outputs("IPAKitNoise", type="fade", strength=0.0, blur=0)
    assert torch.equal(grey, torch.full((1, SIZE, SIZE, 3), 0.5))
    # the node's input check answers first, from the widget's declared range (the core's own check is tested above)
    with pytest.raises(ValueError, match=r"^strength = 2 is outside its range from 0 to 1"):
        comfy.outputs("IPAKitNoise", type="fade", strength=2.0, blur=0)
