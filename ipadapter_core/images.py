"""Image preparation for CLIP vision encoders: resize, crop or pad, sharpen, normalise.

Images follow ComfyUI's convention: float `[B, H, W, C]` in 0..1. Encoder input is `[B, 3, S, S]`
normalised with the OpenAI CLIP mean and std, as `CLIPImageProcessor` produces it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_POSITIONS = ("center", "top", "bottom", "left", "right", "pad")
INTERPOLATIONS = ("LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST")


def rgb(images: torch.Tensor) -> torch.Tensor:
    """`[B, H, W, C]` with 1, 3 or 4 channels -> `[B, H, W, 3]`."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected an image batch [B, H, W, C]; got shape {tuple(images.shape)}")
    c = images.shape[-1]
    if c == 1:
        return images.expand(-1, -1, -1, 3)
    if c in (3, 4):
        return images[..., :3]
    raise ValueError(f"expected 1, 3 or 4 colour channels; got {c}")


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str = "BICUBIC") -> torch.Tensor:
    """Resize NCHW float images; PIL for the filters torch lacks."""
    if tuple(x.shape[-2:]) == size:
        return x
    if interpolation in ("LANCZOS", "HAMMING"):
        return _resize_pil(x, size, interpolation)
    mode = {"BICUBIC": "bicubic", "BILINEAR": "bilinear", "BOX": "area", "NEAREST": "nearest-exact"}[interpolation]
    kwargs = {"antialias": True} if mode in ("bicubic", "bilinear") else {}
    return F.interpolate(x, size=size, mode=mode, **kwargs).clamp(0, 1)


def _resize_pil(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    resample = getattr(Image.Resampling, interpolation)
    out = []
    for img in x:
        arr = (rearrange(img, "c h w -> h w c").clamp(0, 1).cpu().float().numpy() * 255).round().astype(np.uint8)
        pil = Image.fromarray(arr).resize((size[1], size[0]), resample=resample)
        out.append(torch.from_numpy(np.asarray(pil).astype(np.float32) / 255))
    return rearrange(torch.stack(out), "b h w c -> b c h w").to(x)


def square(x: torch.Tensor, size: int, crop_position: str = "center", interpolation: str = "BICUBIC") -> torch.Tensor:
    """NCHW images -> `[B, C, size, size]`: resize the short side and crop, or pad the long side (black)."""
    if crop_position not in CROP_POSITIONS:
        raise ValueError(f"crop_position must be one of {', '.join(CROP_POSITIONS)}; got '{crop_position}'")
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if crop_position == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = resize(x, (nh, nw), interpolation)
        top, left = (size - nh) // 2, (size - nw) // 2
        return F.pad(x, (left, size - nw - left, top, size - nh - top))
    x = _crop_window(x, crop_position)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = resize(x, (nh, nw), interpolation)
    top = {"top": 0, "bottom": nh - size}.get(crop_position, (nh - size) // 2)
    left = {"left": 0, "right": nw - size}.get(crop_position, (nw - size) // 2)
    return x[..., top : top + size, left : left + size]


MAX_RESIZE_ASPECT = 4
"""Cropping keeps at most this long side per short side of the source before resizing: the resized image is then at
most size x 4*size, whatever the input's aspect (a 16384x1 image would otherwise resize to 224 x 3.7M pixels)."""


def _crop_window(x: torch.Tensor, crop_position: str) -> torch.Tensor:
    """The part of NCHW `x` that cropping can use, cut before resizing so memory follows the output size.

    Images up to 4:1 are returned whole (so the crop is exactly resize-then-crop); longer ones keep a 4:1 window at the
    crop position along the long side (centred for the positions of the other axis).
    """
    h, w = x.shape[-2:]
    short = min(h, w)
    keep = min(max(h, w), MAX_RESIZE_ASPECT * short)
    if keep == max(h, w):
        return x
    if h > w:
        top = {"top": 0, "bottom": h - keep}.get(crop_position, (h - keep) // 2)
        return x[..., top : top + keep, :]
    left = {"left": 0, "right": w - keep}.get(crop_position, (w - keep) // 2)
    return x[..., :, left : left + keep]


def sharpen(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Contrast-adaptive sharpening of NCHW images in 0..1 (0 = unchanged, 1 = strongest).

    After AMD FidelityFX CAS: a negative-lobe cross filter whose strength falls where the local
    neighbourhood is already near black or white, so edges sharpen without halos.
    """
    if amount <= 0:
        return x
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    up, down = p[..., :-2, 1:-1], p[..., 2:, 1:-1]
    left, right = p[..., 1:-1, :-2], p[..., 1:-1, 2:]
    cross = torch.stack([up, down, left, right, x])
    lo, hi = cross.amin(0), cross.amax(0)
    amp = (torch.minimum(lo, 1 - hi) / hi.clamp_min(1e-5)).clamp(0, 1).sqrt()
    lobe = -amp / (8 - 3 * amount)  # between -1/8 (gentle) and -1/5 (strong)
    out = (x + lobe * (up + down + left + right)) / (1 + 4 * lobe)
    return out.clamp(0, 1)


def prep_image(
    images: torch.Tensor,
    size: int = 224,
    *,
    crop_position: str = "center",
    interpolation: str = "LANCZOS",
    sharpening: float = 0.0,
) -> torch.Tensor:
    """`[B, H, W, C]` images -> `[B, size, size, 3]`, ready for an encoder of that input size."""
    x = rearrange(rgb(images).float(), "b h w c -> b c h w")
    x = sharpen(square(x, size, crop_position, interpolation), sharpening)
    return rearrange(x, "b c h w -> b h w c")


def clip_pixels(images: torch.Tensor, size: int = 224, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ComfyUI images -> normalised encoder input `[B, 3, size, size]` (centre crop, bicubic, 8-bit rounding).

    `mask` (`[B or 1, H, W]`) multiplies the normalised pixels after the same crop, so masked-out
    areas read as the mean colour, which the encoder treats as "nothing here".
    """
    x = square(rearrange(rgb(images).float(), "b h w c -> b c h w"), size)
    x = torch.round(x * 255) / 255
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if mask is not None:
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.ndim != 3 or 0 in mask.shape or mask.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)} for {x.shape[0]} image(s); give one mask [H, W] for all images, or "
                "one per image, each at least 1x1 pixel"
            )
        m = square(mask.float().to(x.device)[:, None], size)
        x = x * m
    return x


def zero_pixels(n: int, size: int = 224, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The reference implementation's negative image for CLIP-token adapters: zeros after normalisation."""
    return torch.zeros(n, 3, size, size, device=device, dtype=dtype)
