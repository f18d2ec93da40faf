"""Decoupled cross-attention of IP-Adapter (Ye et al. 2023, eq. 5): text attention plus weighted image attention.

Axis letters: r rows of the batch that share image tokens (cond / uncond chunks), b latent batch,
n query positions of the layer, m = b*n, s image tokens, h heads, d head width, c = h*d.

Everything constant across sampling steps is prepared once in a `LayerPlan`: the image keys and
values of every adapter on the layer with their weights folded in, split into segments that each get
their own softmax (one per adapter, or one per reference image when per-image masks are used). A
call adds into the text attention in place: a lone segment costs one SDPA; segments of equal length
(chained adapters of one kind, per-image masks) share one fused pass (one q kᵀ, a softmax per
segment, one p v); masks and start/end gates cost one multiply (gates are compared on the device, so
no call reads a value back to the host). Keys and values are head-split, moved and cached per
(rows, device, dtype); resized masks per layer size. On the CPU, where small-key attention is bound
by per-query costs rather than FLOPs, lone segments under 64 tokens also run as a fused pass and short
segments (under 16 tokens) are repeated or transposed (see `CPU_SHORT_SEGMENT`, bench/RESULTS.md).

Frame-level terms (`FrameTerm`: one reference, weight and mask per latent frame, for animation) keep one
key/value set per distinct (reference, weight) "slot", head-split once per device and dtype. A call maps
each latent row to its frame (the row's position in the batch, or the frame index the sampler's context
window gives), gathers each active row's slot in one indexed read and runs one batched attention over
the active rows only: frames whose weight is 0 on the layer cost nothing. The row selection is built on
the host from Python ints (cached per rows/frames), so no call reads a value back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from .masks import layer_grid, resize_masks


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
class FrameTerm:
    """One adapter's contribution to one layer when latent frames differ (per-frame references or weights).

    `k`, `v` are `[S, 2, t, c]`: one key/value set per slot (a distinct reference and weight), row 0 for
    the positive chunks, row 1 for the negative ones, weights folded in. `frame_slots[f]` is the slot of
    latent frame f, or None when the frame's weight is 0 on this layer; frames past the end use the last
    entry. `segments` are token groups with their own softmax, shared by every slot. `masks` is None,
    `[1 or len(segments), H, W]` (per segment, as in `ImageTerm`) or, with `frame_masks`, `[M, H, W]` with
    one mask per frame (frames past the end use the last). `sigma_range` as in `ImageTerm`.
    """

    k: torch.Tensor
    v: torch.Tensor
    frame_slots: tuple[int | None, ...]
    segments: tuple[int, ...]
    masks: torch.Tensor | None = None
    frame_masks: bool = False
    sigma_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.k.shape != self.v.shape or self.k.ndim != 4 or self.k.shape[1] != 2:
            raise ValueError(f"frame keys/values must both be [S, 2, t, c]; got {tuple(self.k.shape)} and {tuple(self.v.shape)}")
        if sum(self.segments) != self.k.shape[2]:
            raise ValueError(f"segments {self.segments} do not add up to {self.k.shape[2]} tokens")
        if not self.frame_slots or any(s is not None and not 0 <= s < self.k.shape[0] for s in self.frame_slots):
            raise ValueError(f"frame slots {self.frame_slots} must name slots 0..{self.k.shape[0] - 1} (or None)")
        if self.masks is not None and not self.frame_masks and self.masks.shape[0] not in (1, len(self.segments)):
            raise ValueError(f"{self.masks.shape[0]} masks for {len(self.segments)} segments; give 1 or one per segment")

    def to(self, **moved) -> FrameTerm:
        return FrameTerm(self.k.to(**moved), self.v.to(**moved), self.frame_slots, self.segments,
                         None if self.masks is None else self.masks.to(**moved), self.frame_masks, self.sigma_range)


@dataclass(frozen=True)
class _FrameSelection:
    """The active rows of one call for one frame term: batch row, slot, cond/uncond row, position in the
    chunk and mask index of each (index tensors on the compute device), and whether every row is active."""

    batch: torch.Tensor
    slot: torch.Tensor
    row: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor | None
    every_row: bool


@dataclass(frozen=True)
class _Segment:
    start: int
    stop: int
    mask: torch.Tensor | None  # [H, W] at reference resolution
    sigma_range: tuple[float, float] | None


class LayerPlan:
    """Every image term of one cross-attention layer, ready to run; immutable (extend returns a new plan)."""

    __slots__ = ("k", "v", "heads", "segments", "frame_terms", "_cache")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, heads: int, segments: tuple[_Segment, ...],
                 frame_terms: tuple[FrameTerm, ...] = ()) -> None:
        self.k, self.v, self.heads, self.segments, self.frame_terms = k, v, heads, segments, tuple(frame_terms)
        self._cache: dict = {}

    @classmethod
    def from_terms(cls, terms: list[ImageTerm | FrameTerm] | tuple[ImageTerm | FrameTerm, ...], heads: int) -> LayerPlan:
        frame_terms = tuple(t for t in terms if isinstance(t, FrameTerm))
        terms = [t for t in terms if not isinstance(t, FrameTerm)]
        if not terms:  # frame terms only: no shared tokens
            like = frame_terms[0].k
            empty = like.new_zeros(2, 0, like.shape[-1])
            return cls(empty, empty, heads, (), frame_terms)
        segments, start = [], 0
        for term in terms:
            for i, length in enumerate(term.segments):
                mask = None if term.masks is None else term.masks[min(i, term.masks.shape[0] - 1)]
                segments.append(_Segment(start, start + length, mask, term.sigma_range))
                start += length
        k = torch.cat([t.k for t in terms], dim=1)
        v = torch.cat([t.v.to(k) for t in terms], dim=1)
        return cls(k, v, heads, tuple(segments), frame_terms)

    def extend(self, terms: list[ImageTerm | FrameTerm] | tuple[ImageTerm | FrameTerm, ...]) -> LayerPlan:
        """A new plan with more terms after this plan's (used when adapters are chained)."""
        more = LayerPlan.from_terms(terms, self.heads)
        offset = self.k.shape[1]
        shifted = tuple(_Segment(s.start + offset, s.stop + offset, s.mask, s.sigma_range) for s in more.segments)
        if not self.segments and more.segments:  # this plan had frame terms only: take the new shared tokens as they are
            k, v = more.k, more.v
        else:
            k = torch.cat([self.k, more.k.to(self.k)], dim=1)
            v = torch.cat([self.v, more.v.to(self.v)], dim=1)
        return LayerPlan(k, v, self.heads, self.segments + shifted, self.frame_terms + more.frame_terms)

    @property
    def num_tokens(self) -> int:
        return self.k.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the plan keeps alive: keys, values, masks and what it has cached for running."""
        held = [self.k, self.v, *(s.mask for s in self.segments if s.mask is not None)]
        for term in self.frame_terms:
            held += [term.k, term.v, *(() if term.masks is None else (term.masks,))]
        for value in self._cache.values():
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if isinstance(item, torch.Tensor):
                    held.append(item)
                elif isinstance(item, _Run):
                    held += [item.k, item.v]
                elif isinstance(item, _FrameSelection):
                    held += [t for t in (item.batch, item.slot, item.row, item.pos, item.mask) if t is not None]
        return held

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
        frame_terms = tuple(t.to(**moved) for t in self.frame_terms)
        return LayerPlan(self.k.to(**moved), self.v.to(**moved), self.heads, segments, frame_terms)

    # running

    def __call__(
        self,
        q: torch.Tensor,
        *,
        rows: tuple[int, ...],
        latent_hw: tuple[int, int] | None = None,
        sigmas: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
        frames: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """The summed image attention for queries `q [r*b, n, c]`, added into `out` in place when given.

        Args:
            rows: for each of the r equal chunks of the batch, 0 to use the positive image tokens
                (cond) or 1 for the negative ones (uncond).
            latent_hw: latent height and width, for the exact mask grid at any aspect ratio.
            sigmas: the current sigma per latent `[b]` (or `[r*b]`); needed only by start/end gates.
            out: contiguous `[r*b, n, c]` to add the image attention to (usually the text
                attention); a new tensor is returned when None.
            frames: the latent frame index of each of the b latents (a context window's indices);
                None: latent j is frame j. Only frame terms read it.
        """
        r, h = len(rows), self.heads
        b, n = q.shape[0] // r, q.shape[1]
        if out is None:
            out = torch.zeros_like(q)
        qh, oh = _split_heads(q.contiguous(), r, h), _split_heads(out, r, h)  # oh is a view: adding to it adds to out
        for run in self._runs(rows, q.device, q.dtype):
            scale = self._scale(run, n, b, r, latent_hw, sigmas, q) if run.masked or run.gated else None
            if run.kind == SDPA:
                o = sdpa(qh, run.k, run.v)
                if scale is None:
                    oh.add_(o)
                else:  # r h b n d
                    oh.view(r, h, b, n, -1).addcmul_(o.view(r, h, b, n, -1), scale)
                continue
            if run.kind == FUSED:  # scores r h (b n) (g s): each segment's softmax along the last axis
                p = torch.matmul(qh, run.k).view(r, h, b, n, run.groups, -1).softmax(-1)
            else:  # FUSED_T, scores r h (g s) (b n): the softmax runs down the columns, vectorised over queries
                p = torch.matmul(run.k, qh.transpose(-1, -2)).view(r, h, run.groups, -1, b, n).softmax(3)
            if scale is not None:
                p.mul_(scale)
            if run.kind == FUSED:
                oh.add_(torch.matmul(p.view(r, h, b * n, -1), run.v))
            else:
                oh.add_(torch.matmul(p.view(r, h, -1, b * n).transpose(-1, -2), run.v))
        if self.frame_terms:
            if frames is None or len(frames) != b:
                frames = tuple(range(b))
            for index, term in enumerate(self.frame_terms):
                self._run_frames(index, term, q, out, rows, frames, latent_hw, sigmas)
        return out

    # frame terms

    def _run_frames(self, index: int, term: FrameTerm, q: torch.Tensor, out: torch.Tensor, rows: tuple[int, ...],
                    frames: tuple[int, ...], latent_hw, sigmas) -> None:
        """Adds one frame term's attention into `out` for the active rows (frames with a non-zero weight)."""
        r, h, b, n = len(rows), self.heads, len(frames), q.shape[1]
        selection = self._frame_selection(index, term, rows, frames, q.device)
        if selection is None:  # every frame of this call has weight 0 on this layer
            return
        k_bank, v_bank = self._frame_bank(index, term, q.device, q.dtype)
        k, v = k_bank[selection.slot, selection.row], v_bank[selection.slot, selection.row]  # [a, h, t, d]
        qa = q if selection.every_row else q.index_select(0, selection.batch)
        a = qa.shape[0]
        qh = qa.reshape(a, n, h, -1).transpose(1, 2)  # [a, h, n, d]
        segment_masks = None
        if term.masks is not None and not term.frame_masks:
            segment_masks = self._frame_masks(index, term, n, latent_hw, q.device, q.dtype)  # [1 or g, n]
        o, start = None, 0
        for g, length in enumerate(term.segments):
            part = sdpa(qh, k[:, :, start : start + length], v[:, :, start : start + length])
            start += length
            if segment_masks is not None and segment_masks.shape[0] > 1:
                part = part * segment_masks[g].view(1, 1, n, 1)
            o = part if o is None else o.add_(part)
        scale = None  # [a, 1, n or 1, 1]
        if segment_masks is not None and segment_masks.shape[0] == 1:
            scale = segment_masks.view(1, 1, n, 1)
        elif term.masks is not None and term.frame_masks:
            resized = self._frame_masks(index, term, n, latent_hw, q.device, q.dtype)  # [M, n]
            scale = resized.index_select(0, selection.mask).view(a, 1, n, 1)
        if term.sigma_range is not None and sigmas is not None:
            s = sigmas.reshape(-1).to(q.device)
            if s.numel() == r * b:
                s = s.index_select(0, selection.batch)
            elif s.numel() >= b:
                s = s.index_select(0, selection.pos)
            else:
                s = s[:1].expand(a)
            start_sigma, end_sigma = term.sigma_range
            gate = ((s <= start_sigma) & (s >= end_sigma)).to(q.dtype).view(a, 1, 1, 1)
            scale = gate if scale is None else scale * gate
        if scale is not None:
            o = o * scale
        o = o.transpose(1, 2).reshape(a, n, -1)  # [a, n, c]
        if selection.every_row:
            out.add_(o)
        else:
            out.index_add_(0, selection.batch, o)

    def _frame_selection(self, index: int, term: FrameTerm, rows: tuple[int, ...], frames: tuple[int, ...], device):
        """The active rows of a call (cached per rows and frames); None when no row is active."""
        key = ("frames", index, rows, frames, device)
        if key in self._cache:
            return self._cache[key]
        slots, last = term.frame_slots, len(term.frame_slots) - 1
        mask_last = term.masks.shape[0] - 1 if term.masks is not None else 0
        active = [(j, f, slots[min(f, last)]) for j, f in enumerate(frames)]
        active = [(j, f, s) for j, f, s in active if s is not None]
        selection = None
        if active:
            b = len(frames)
            as_index = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
            selection = _FrameSelection(
                batch=as_index([i * b + j for i in range(len(rows)) for j, _, _ in active]),
                slot=as_index([s for _ in rows for _, _, s in active]),
                row=as_index([row for row in rows for _ in active]),
                pos=as_index([j for _ in rows for j, _, _ in active]),
                mask=as_index([min(f, mask_last) for _ in rows for _, f, _ in active]) if term.frame_masks else None,
                every_row=len(active) == b,
            )
        if len(self._cache) > 512:  # many context windows: keep the cache bounded (selections are cheap to rebuild)
            for stale in [k for k in self._cache if k[0] == "frames"]:
                del self._cache[stale]
        self._cache[key] = selection
        return selection

    def _frame_bank(self, index: int, term: FrameTerm, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The term's keys and values head-split, `[S, 2, h, t, d]`, on the compute device (cached)."""
        key = ("bank", index, device, dtype)
        bank = self._cache.get(key)
        if bank is None:
            bank = tuple(
                rearrange(t.to(device, dtype), "S r t (h d) -> S r h t d", h=self.heads).contiguous() for t in (term.k, term.v)
            )
            self._cache[key] = bank
        return bank

    def _frame_masks(self, index: int, term: FrameTerm, n: int, latent_hw, device, dtype) -> torch.Tensor:
        """The term's masks on this layer's grid, `[masks, n]` (cached per layer size)."""
        key = ("frame_masks", index, n, latent_hw, device, dtype)
        resized = self._cache.get(key)
        if resized is None:
            masks = term.masks
            grid = layer_grid(n, latent_hw, aspect=masks.shape[2] / masks.shape[1])
            resized = resize_masks(masks, grid).to(device, dtype)
            self._cache[key] = resized
        return resized

    def _runs(self, rows: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[_Run, ...]:
        """The attention passes for these rows, device and dtype, with head-split keys and values (cached)."""
        key = ("runs", rows, device, dtype)
        runs = self._cache.get(key)
        if runs is None:
            passes = _pass_members(self.segments)
            runs = tuple(_Run.build(self, rows, device, dtype, members) for members in passes)
            self._cache[key] = runs
        return runs

    def _scale(self, run: _Run, n: int, b: int, r: int, latent_hw, sigmas, q) -> torch.Tensor | None:
        """Per-query mask times per-latent start/end gate, shaped to multiply the run's output or scores (None: 1)."""
        scale = None
        if run.masked:
            key = ("mask", run.members, n, latent_hw, q.device, q.dtype)
            scale = self._cache.get(key)
            if scale is None:
                scale = rearrange(self._resized_masks(run, n, latent_hw, q.device, q.dtype), _MASK_LAYOUT[run.kind])
                self._cache[key] = scale
        if run.gated and sigmas is not None:
            s = sigmas.reshape(-1)
            s = s.reshape(r, b) if s.numel() == r * b else s[:b].reshape(1, b)
            start, end = self._sigma_bounds(run, s)
            g, rr = run.groups, s.shape[0]
            if run.kind == FUSED_T:  # r 1 g 1 b 1
                s = s.view(rr, 1, b)
                gate = ((s <= start) & (s >= end)).to(q.dtype).view(rr, 1, g, 1, b, 1)
            else:  # r 1 b 1 g 1 (FUSED) or r 1 b 1 1 (SDPA)
                s = s.view(rr, b, 1)
                gate = ((s <= start.view(g)) & (s >= end.view(g))).to(q.dtype)
                gate = gate.view(rr, 1, b, 1, g, 1) if run.kind == FUSED else gate.view(rr, 1, b, 1, 1)
            scale = gate if scale is None else scale * gate
        return scale

    def _sigma_bounds(self, run: _Run, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-segment (sigma_start, sigma_end) as `[g, 1]` tensors in the sigmas' dtype (always-on segments: ±inf)."""
        key = ("bounds", run.members, sigmas.device, sigmas.dtype)
        bounds = self._cache.get(key)
        if bounds is None:
            inf = float("inf")
            ranges = [self.segments[i].sigma_range or (inf, -inf) for i in run.members]
            bounds = tuple(torch.tensor([[x[j]] for x in ranges], device=sigmas.device, dtype=sigmas.dtype) for j in (0, 1))
            self._cache[key] = bounds
        return bounds

    def _resized_masks(self, run: _Run, n: int, latent_hw, device, dtype) -> torch.Tensor:
        """`[g, n]`: each segment's mask on this layer's grid (ones for a segment without one)."""
        resized = []
        for i in run.members:
            mask = self.segments[i].mask
            if mask is None:
                resized.append(torch.ones(n, device=device, dtype=dtype))
                continue
            grid = layer_grid(n, latent_hw, aspect=mask.shape[1] / mask.shape[0])
            resized.append(resize_masks(mask[None], grid)[0].to(device, dtype))
        return torch.stack(resized)


def _split_heads(x: torch.Tensor, r: int, h: int) -> torch.Tensor:
    """`rearrange(x, "(r b) n (h d) -> r h (b n) d")` as a view of a contiguous `x`.

    Written with view/transpose because this runs on every layer call, where einops' ~10 µs per
    rearrange is a measurable share of the whole image attention at small latents (bench/RESULTS.md).
    """
    return x.view(r, -1, h, x.shape[-1] // h).transpose(1, 2)


# passes: which segments run together, and how (choices measured in bench/RESULTS.md)

SDPA, FUSED, FUSED_T = "sdpa", "fused", "fused_t"
_MASK_LAYOUT = {SDPA: "g n -> 1 1 1 n g", FUSED: "g n -> 1 1 1 n g 1", FUSED_T: "g n -> 1 1 g 1 1 n"}
FUSE_MAX_TOKENS = 256
"""Segments of equal length share one pass (one q kᵀ, a softmax per segment, one p v) up to this many tokens."""
CPU_SHORT_SEGMENT = 16
"""On the CPU, attention over fewer keys than this is slow (SDPA, and a softmax along a short last axis): a
lone shorter segment runs on its tokens repeated (a softmax over k equal copies is the same softmax),
several shorter segments run FUSED_T."""
CPU_SDPA_FROM = 64
"""On the CPU, a lone segment shorter than this runs as a FUSED pass of one segment (matmul, softmax,
matmul): as fast as SDPA on one thread, 5-30% faster on two."""


def _pass_members(segments: tuple[_Segment, ...]) -> list[tuple[int, ...]]:
    """Which segments run together: equal-length segments in one fused pass, any other alone (SDPA)."""
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(segments):
        by_length.setdefault(s.stop - s.start, []).append(i)
    passes = []
    for length, members in by_length.items():
        per_pass = max(1, FUSE_MAX_TOKENS // length)
        passes += [tuple(members[j : j + per_pass]) for j in range(0, len(members), per_pass)]
    return passes


@dataclass(frozen=True)
class _Run:
    """One attention pass over some segments: keys/values head-split for the rows, on the compute device.

    SDPA (one segment): `k`, `v` are `[r, h, s, d]`. FUSED (one or more
    segments): `k` is `[r, h, d, g*s]`; FUSED_T (several short ones): `k` is `[r, h, g*s, d]`; both are
    already scaled by 1/sqrt(d), and `v` is `[r, h, g*s, d]`.
    """

    members: tuple[int, ...]
    kind: str
    k: torch.Tensor
    v: torch.Tensor
    masked: bool
    gated: bool

    @property
    def groups(self) -> int:
        return len(self.members)

    @staticmethod
    def build(plan: LayerPlan, rows: tuple[int, ...], device, dtype, members: tuple[int, ...]) -> _Run:
        segments = [plan.segments[i] for i in members]
        k, v = (
            torch.cat([t[list(rows), s.start : s.stop] for s in segments], dim=1).to(device, dtype) for t in (plan.k, plan.v)
        )
        k, v = (rearrange(t, "r s (h d) -> r h s d", h=plan.heads) for t in (k, v))
        length = segments[0].stop - segments[0].start
        cpu = torch.device(device).type == "cpu"
        if len(members) == 1:
            if cpu and length < CPU_SHORT_SEGMENT:  # each token k times: the same softmax, faster kernels
                repeat = -(-CPU_SHORT_SEGMENT // length)
                k, v = (t.repeat_interleave(repeat, dim=2) for t in (k, v))
                length *= repeat
            kind = FUSED if cpu and length < CPU_SDPA_FROM else SDPA
        else:
            kind = FUSED_T if cpu and length < CPU_SHORT_SEGMENT else FUSED
        if kind != SDPA:
            k = k * k.shape[-1] ** -0.5  # the softmax scale, folded into the keys once
            if kind == FUSED:
                k = rearrange(k, "r h s d -> r h d s")
        masked = any(s.mask is not None for s in segments)
        return _Run(members, kind, k.contiguous(), v.contiguous(), masked, any(s.sigma_range is not None for s in segments))
