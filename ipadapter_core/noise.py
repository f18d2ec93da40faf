"""Noisy negative images for `image_negative`: fade, dissolve, gaussian and shuffle, with blur.

The node the older IPAdapter Plus pack calls IPAdapter Noise, restated from its documented behaviour (four
types, a strength, a blur radius, a 224-px output); the formulas below are ours, and unlike that node the
result depends only on its inputs: every random draw comes from a `torch.Generator` seeded with `seed`, on
the CPU, so the same inputs give the same image on any device and whatever else used the global RNG.

Images follow ComfyUI's convention, float `[B, H, W, C]` in 0..1. The steps, in order:

1. **base**: the image's centre square resized to `size` (bilinear, antialiased), or one mid-grey (0.5)
   image when there is none.
2. **type**, with `s = strength` (0 leaves the base exactly as it is) and `u` uniform noise in 0..1, drawn
   per pixel and channel:
   - `fade`: `(1 - s) * base + s * u`, a blend toward noise (at 1 the input no longer matters).
   - `dissolve`: `round(s * size²)` pixels of each image, chosen at random, replaced by `u`; the rest kept.
   - `gaussian`: `base + GAUSSIAN_STD * s * n` with `n` standard normal, clamped to 0..1.
   - `shuffle`: an elastic distortion (a smooth random displacement field, at most `ELASTIC_AMPLITUDE * s`
     of the half-width along each axis, applied with `grid_sample`), then a horizontal and a vertical flip
     each with probability `s / 2`, then a fade toward `u` by `SHUFFLE_NOISE * s`.
3. **blur**: a Gaussian blur of radius `blur` pixels (standard deviation `blur / 2`, truncated at the
   radius, reflected at the borders); 0 is off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .images import rgb

NOISE_TYPES = ("fade", "dissolve", "gaussian", "shuffle")
NEGATIVE_SIZE = 224  # CLIP vision input of the ViT-H / ViT-bigG encoders
MAX_BLUR = 32
GAUSSIAN_STD = 0.5  # standard deviation of the gaussian type's noise at strength 1
ELASTIC_AMPLITUDE = 0.25  # shuffle: largest displacement at strength 1, in units of the half-width (= 28 px at 224)
ELASTIC_CELLS = 4  # shuffle: the displacement field is interpolated from a (cells + 1)² grid of random vectors
SHUFFLE_NOISE = 0.25  # shuffle: fade toward noise by this much at strength 1
MAX_SEED = 2**64 - 1


# validation


def _check(image: torch.Tensor | None, noise_type: str, strength: float, blur: int, seed: int, size: int) -> None:
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise type must be one of {', '.join(NOISE_TYPES)}; got '{noise_type}'")
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be a number from 0 to 1 (0 = no noise, 1 = the most); got {strength!r}")
    if isinstance(blur, bool) or not isinstance(blur, int) or not 0 <= blur <= MAX_BLUR:
        raise ValueError(f"blur must be a whole number of pixels from 0 to {MAX_BLUR} (0 = no blur); got {blur!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}; got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2 * MAX_BLUR + 1:
        raise ValueError(f"size must be a whole number of pixels, at least {2 * MAX_BLUR + 1}; got {size!r}")
    if image is None:
        return
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        found = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a ComfyUI image batch [B, H, W, C]; got {found}")
    if image.ndim == 4 and image.shape[0] == 0:
        raise ValueError("the image batch is empty: connect at least one image, or leave `image` unconnected for grey")
    if image.shape[-3] == 0 or image.shape[-2] == 0:
        raise ValueError(f"the image has no pixels (shape {tuple(image.shape)})")
    if not torch.isfinite(image).all():
        raise ValueError("the image holds NaN or infinite pixels; fix the node that produced it")


# steps


def base_image(image: torch.Tensor | None, size: int = NEGATIVE_SIZE) -> torch.Tensor:
    """`[B, H, W, C]` images (or None) -> `[B, 3, size, size]`: the centre square resized (bilinear,
    antialiased), or one mid-grey image."""
    if image is None:
        return torch.full((1, 3, size, size), 0.5)
    x = rearrange(rgb(image).float(), "b h w c -> b c h w")
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def elastic_warp(x: torch.Tensor, amplitude: float, generator: torch.Generator) -> torch.Tensor:
    """NCHW images warped by a smooth random displacement field of at most `amplitude` (in `grid_sample`'s
    normalised coordinates, -1..1) along each axis: random vectors on a coarse grid, bilinearly interpolated
    to every pixel. Borders reflect."""
    b, _, h, w = x.shape
    # drawn even when amplitude is 0, so the draws after it do not depend on the strength
    coarse = torch.rand(b, 2, ELASTIC_CELLS + 1, ELASTIC_CELLS + 1, generator=generator) * 2 - 1
    if amplitude == 0:
        return x
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True).to(x) * amplitude
    ys = (torch.arange(h, dtype=x.dtype, device=x.device) * 2 + 1) / h - 1  # pixel centres (align_corners=False)
    xs = (torch.arange(w, dtype=x.dtype, device=x.device) * 2 + 1) / w - 1
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h, w, (x, y)]
    grid = identity + rearrange(field, "b two h w -> b h w two")
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_flips(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Each NCHW image flipped left-right with `probability`, and independently upside down with it."""
    flip_lr, flip_ud = (torch.rand(2, x.shape[0], generator=generator) < probability).to(x.device)
    x = torch.where(rearrange(flip_lr, "b -> b 1 1 1"), x.flip(-1), x)
    return torch.where(rearrange(flip_ud, "b -> b 1 1 1"), x.flip(-2), x)


def gaussian_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """NCHW images blurred by a Gaussian of standard deviation `radius / 2`, truncated at `radius` pixels
    (a separable `2 * radius + 1` tap filter, weights summing to 1), borders reflected; 0 returns `x`."""
    if radius == 0:
        return x
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / (radius / 2)) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, repeat(kernel, "k -> c 1 1 k", c=c), groups=c)
    return F.conv2d(x, repeat(kernel, "k -> c 1 k 1", c=c), groups=c)


def _noisy(x: torch.Tensor, noise_type: str, s: float, g: torch.Generator) -> torch.Tensor:
    """Step 2 of the module docstring on NCHW `x`; random draws on the CPU from `g`, in a fixed order."""
    b, c, h, w = x.shape

    def uniform() -> torch.Tensor:
        return torch.rand(b, c, h, w, generator=g).to(x)

    if noise_type == "fade":
        return torch.lerp(x, uniform(), s)
    if noise_type == "dissolve":
        order = torch.rand(b, h * w, generator=g).argsort(dim=1)
        chosen = torch.zeros(b, h * w, dtype=torch.bool).scatter_(1, order[:, : round(s * h * w)], True)
        mask = rearrange(chosen, "b (h w) -> b 1 h w", h=h).to(x.device)
        return torch.where(mask, uniform(), x)
    if noise_type == "gaussian":
        return (x + GAUSSIAN_STD * s * torch.randn(b, c, h, w, generator=g).to(x)).clamp(0, 1)
    x = elastic_warp(x, ELASTIC_AMPLITUDE * s, g)
    x = random_flips(x, s / 2, g)
    return torch.lerp(x, uniform(), SHUFFLE_NOISE * s).clamp(0, 1)


# entry point


def noise_image(
    image: torch.Tensor | None = None,
    noise_type: str = "fade",
    strength: float = 1.0,
    blur: int = 0,
    *,
    seed: int = 0,
    size: int = NEGATIVE_SIZE,
) -> torch.Tensor:
    """A negative image for `image_negative`, as the module docstring describes.

    Args:
        image: `[B, H, W, C]` (or `[H, W, C]`) in 0..1 with 1, 3 or 4 channels, or None for mid grey.
        noise_type: one of `NOISE_TYPES`.
        strength: 0..1; 0 returns the resized image (blurred when `blur` > 0).
        blur: Gaussian blur radius in output pixels, 0..32.
        seed: seeds every random draw; the same inputs and seed give the same image.
        size: output side (224 for the ViT-H and ViT-bigG encoders).

    Returns:
        `[B, size, size, 3]` float32 in 0..1 on the image's device (B = 1 without an image).
    """
    _check(image, noise_type, strength, blur, seed, size)
    x = base_image(image, size)
    if image is not None:
        x = x.to(image.device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = gaussian_blur(_noisy(x, noise_type, float(strength), g), blur)
    return rearrange(x.clamp(0, 1), "b c h w -> b h w c").contiguous()
