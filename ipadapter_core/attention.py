"""Decoupled cross-attention of IP-Adapter (Ye et al. 2023, eq. 5): text attention plus weighted image attention.

Axis letters: r rows of the batch that share image tokens (cond / uncond chunks), b latent batch,
n query positions of the layer, m = b*n, s image tokens, h heads, d head width, c = h*d.

Everything constant across sampling steps is prepared once in a `LayerPlan`: the image keys and
values of every adapter on the layer with their weights folded in, split into segments that each get
their own softmax (one per adapter, or one per reference image when per-image masks are used). A
call then costs one attention per segment plus, where masks or start/end gates apply, one multiply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from .masks import layer_grid, resize_masks

Attention4D = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v on `[.., h, n, d]` tensors."""
    return F.scaled_dot_product_attention(q, k, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on `[b, n, c]` tensors, the signature ComfyUI's attention functions share."""
    qh, kh, vh = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    return rearrange(sdpa(qh, kh, vh), "b h n d -> b n (h d)")


def decoupled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ip_k: torch.Tensor,
    ip_v: torch.Tensor,
    *,
    heads: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """Z = Attn(q, k, v) + scale * Attn(q, ip_k, ip_v): the reference formula, one softmax over all image tokens.

    Args:
        q: `[b, n, c]` queries; k, v: `[b, m, c]` projected text; ip_k, ip_v: `[b, s, c]` projected image tokens.
    """
    out = attention(q, k, v, heads)
    if scale == 0:
        return out
    return out + scale * attention(q, ip_k, ip_v, heads)


@dataclass(frozen=True)
class ImageTerm:
    """One adapter's precomputed contribution to one layer.

    `k`, `v` are `[2, s, c]`: row 0 is used by the positive (cond) chunks, row 1 by the negative
    (uncond) chunks; weights are already folded into them. `segments` are the token counts of groups
    that get separate softmaxes (one group = all tokens share one softmax). `masks` is `[g, H, W]`
    with one mask per segment, `[1, H, W]` for one mask over all of them, or None. `sigma_range` is
    `(sigma_start, sigma_end)`; the term is active while sigma_end <= sigma <= sigma_start.
    """

    k: torch.Tensor
    v: torch.Tensor
    segments: tuple[int, ...]
    masks: torch.Tensor | None = None
    sigma_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.k.shape != self.v.shape or self.k.ndim != 3 or self.k.shape[0] != 2:
            raise ValueError(f"image keys/values must both be [2, s, c]; got {tuple(self.k.shape)} and {tuple(self.v.shape)}")
        if sum(self.segments) != self.k.shape[1]:
            raise ValueError(f"segments {self.segments} do not add up to {self.k.shape[1]} tokens")
        if self.masks is not None and self.masks.shape[0] not in (1, len(self.segments)):
            raise ValueError(f"{self.masks.shape[0]} masks for {len(self.segments)} segments; give 1 or one per segment")


@dataclass(frozen=True)
class _Segment:
    start: int
    stop: int
    mask: torch.Tensor | None  # [H, W] at reference resolution
    sigma_range: tuple[float, float] | None


class LayerPlan:
    """Every image term of one cross-attention layer, ready to run; immutable (extend returns a new plan)."""

    __slots__ = ("k", "v", "heads", "segments", "_cache")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, heads: int, segments: tuple[_Segment, ...]) -> None:
        self.k, self.v, self.heads, self.segments = k, v, heads, segments
        self._cache: dict = {}

    @classmethod
    def from_terms(cls, terms: list[ImageTerm] | tuple[ImageTerm, ...], heads: int) -> LayerPlan:
        segments, start = [], 0
        for term in terms:
            for i, length in enumerate(term.segments):
                mask = None if term.masks is None else term.masks[min(i, term.masks.shape[0] - 1)]
                segments.append(_Segment(start, start + length, mask, term.sigma_range))
                start += length
        k = torch.cat([t.k for t in terms], dim=1)
        v = torch.cat([t.v.to(k) for t in terms], dim=1)
        return cls(k, v, heads, tuple(segments))

    def extend(self, terms: list[ImageTerm] | tuple[ImageTerm, ...]) -> LayerPlan:
        """A new plan with more terms after this plan's (used when adapters are chained)."""
        more = LayerPlan.from_terms(terms, self.heads)
        offset = self.k.shape[1]
        shifted = tuple(_Segment(s.start + offset, s.stop + offset, s.mask, s.sigma_range) for s in more.segments)
        k = torch.cat([self.k, more.k.to(self.k)], dim=1)
        v = torch.cat([self.v, more.v.to(self.v)], dim=1)
        return LayerPlan(k, v, self.heads, self.segments + shifted)

    @property
    def num_tokens(self) -> int:
        return self.k.shape[1]

    def to(self, *args, **kwargs) -> LayerPlan:
        """Move to a device or a floating dtype; non-float16/32/64 dtypes (fp8 storage) are ignored."""
        target = args[0] if args else kwargs.get("device", kwargs.get("dtype"))
        if isinstance(target, torch.dtype):
            if not target.is_floating_point or target.itemsize < 2 or target == self.k.dtype:
                return self
            moved = {"dtype": target}
        else:
            device = torch.device(target)
            if device == self.k.device:
                return self
            moved = {"device": device}
        segments = tuple(
            _Segment(s.start, s.stop, None if s.mask is None else s.mask.to(**moved), s.sigma_range) for s in self.segments
        )
        return LayerPlan(self.k.to(**moved), self.v.to(**moved), self.heads, segments)

    # running

    def __call__(
        self,
        q: torch.Tensor,
        *,
        rows: tuple[int, ...],
        latent_hw: tuple[int, int] | None = None,
        sigmas: torch.Tensor | None = None,
        attention_fn: Attention4D = sdpa,
    ) -> torch.Tensor:
        """The summed image attention for queries `q [r*b, n, c]` (to be added to the text attention).

        Args:
            rows: for each of the r equal chunks of the batch, 0 to use the positive image tokens
                (cond) or 1 for the negative ones (uncond).
            latent_hw: latent height and width, for the exact mask grid at any aspect ratio.
            sigmas: the current sigma per latent `[b]` (or `[r*b]`); needed only by start/end gates.
        """
        r = len(rows)
        total, n, c = q.shape
        b = total // r
        qh = rearrange(q.reshape(r, b * n, c), "r m (h d) -> r h m d", h=self.heads)
        parts = self._kv(rows, q.device, q.dtype)
        out = None
        for segment, (kh, vh) in zip(self.segments, parts):
            o = rearrange(attention_fn(qh, kh, vh), "r h (b n) d -> r b n (h d)", b=b)
            scale = self._scale(segment, n, latent_hw, sigmas, r, b, q)
            if scale is not None:
                o = o * scale
            out = o if out is None else out + o
        return out.reshape(total, n, c)

    def _kv(self, rows: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> list:
        key = ("kv", rows, device, dtype)
        hit = self._cache.get(key)
        if hit is None:
            k, v = self.k.to(device, dtype), self.v.to(device, dtype)
            k = torch.cat([k[i : i + 1] for i in rows])
            v = torch.cat([v[i : i + 1] for i in rows])
            hit = [
                tuple(
                    rearrange(t[:, s.start : s.stop], "r s (h d) -> r h s d", h=self.heads).contiguous() for t in (k, v)
                )
                for s in self.segments
            ]
            self._cache[key] = hit
        return hit

    def _scale(self, segment, n, latent_hw, sigmas, r, b, q) -> torch.Tensor | None:
        scale = None
        if segment.mask is not None:
            grid = layer_grid(n, latent_hw, aspect=segment.mask.shape[1] / segment.mask.shape[0])
            key = ("mask", id(segment), grid, q.device, q.dtype)
            scale = self._cache.get(key)
            if scale is None:
                scale = resize_masks(segment.mask[None], grid).to(q.device, q.dtype).reshape(1, 1, n, 1)
                self._cache[key] = scale
        if segment.sigma_range is not None and sigmas is not None:
            start, end = segment.sigma_range
            s = sigmas.reshape(-1)
            gate = ((s <= start) & (s >= end)).to(q.dtype)
            gate = gate.reshape(r, b, 1, 1) if gate.numel() == r * b else gate[:b].reshape(1, -1, 1, 1)
            scale = gate if scale is None else scale * gate
        return scale
