"""Input checks at the pack's borders: numbers finite and in range, tensors finite and not empty.

Each check names the input, says what was found and how to fix it, so a NaN weight or an empty batch
fails where it enters instead of giving a black image or an IndexError deep in sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def number(name: str, value, *, low: float | None = None, high: float | None = None) -> float | int:
    """`value` itself when it is a finite number within [low, high]; ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is {value!r}, not a number; give a plain number{_span(low, high)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} is {_show(value)}, not a finite number; give a plain number{_span(low, high)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} = {_show(value)} is outside its range{_span(low, high)}; set it within that range")
    return value


def _span(low, high) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" (at least {_show(low)})"
    if low is None:
        return f" (at most {_show(high)})"
    return f" from {_show(low)} to {_show(high)}"


def numbers(name: str, values, *, low: float | None = None, high: float | None = None) -> None:
    """Every item of a list (or 1-D tensor) of numbers finite and within [low, high]."""
    items = values.flatten().tolist() if isinstance(values, torch.Tensor) else list(values)
    if not items:
        raise ValueError(f"{name}: the list is empty; give at least one number")
    for i, v in enumerate(items):
        number(f"{name} (item {i})", v, low=low, high=high)


def finite(name: str, t: torch.Tensor, fix: str = "fix the node that produced it") -> torch.Tensor:
    """`t` when every value is finite; a ValueError counting the NaN and infinite values otherwise."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        nan = int(torch.isnan(t).sum())
        inf = int(torch.isinf(t).sum())
        raise ValueError(f"{name} holds {nan} NaN and {inf} infinite value(s) (of {t.numel()}, shape {tuple(t.shape)}); {fix}")
    return t


def image_batch(name: str, images) -> torch.Tensor:
    """A ComfyUI image batch `[B, H, W, C]` (or one `[H, W, C]` image) with at least one image and one pixel, all finite."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} is {type(images).__name__}, not an image batch; connect an IMAGE output")
    if images.ndim not in (3, 4):
        raise ValueError(f"{name} has shape {tuple(images.shape)}; an image batch is [B, H, W, C]")
    if images.ndim == 4 and images.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (0 images); connect at least one image")
    if images.shape[-3] == 0 or images.shape[-2] == 0 or images.shape[-1] == 0:
        raise ValueError(f"{name} has no pixels (shape {tuple(images.shape)}); give an image at least 1x1 pixel wide")
    return finite(name, images, "fix the node that produced it (e.g. an fp16 VAE decode that overflowed) or clamp the image to 0..1")


def mask_batch(name: str, mask) -> torch.Tensor:
    """A mask `[H, W]`, `[B, H, W]` or `[B, 1, H, W]` with at least one mask and one pixel, all finite."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} is {type(mask).__name__}, not a mask; connect a MASK output")
    if mask.ndim not in (2, 3, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; a mask is [H, W], [B, H, W] or [B, 1, H, W]")
    if mask.ndim >= 3 and mask.shape[0] == 0:
        raise ValueError(f"{name}: the mask batch is empty (0 masks); connect at least one mask, or disconnect {name}")
    if mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise ValueError(f"{name} has no pixels (shape {tuple(mask.shape)}); draw a mask at least 1x1 pixel wide, or disconnect {name}")
    return finite(name, mask, "fix the node that produced it, or clamp the mask to 0..1")


def weight_values(name: str, value, *, low: float | None = None, high: float | None = None) -> None:
    """A number, or a list of numbers linked in (per-frame weights): finite, and within [low, high] when one number."""
    if isinstance(value, (Sequence, torch.Tensor)) and not isinstance(value, str):
        numbers(name, value)
    else:
        number(name, value, low=low, high=high)
