"""The one place that speaks ComfyUI's attn2 replace contract: `(q, k, v, extra_options) -> out before to_out`.

A patch object holds the precomputed `LayerPlan` of its layer (every adapter chained on this model)
and, when another pack had already installed a replace patch at the same key, that foreign callable,
which it calls for the base output instead of plain text attention. Patch objects are immutable:
chaining creates a new one, `clone()`'s deepcopy shares it, and `.to()` returns a moved copy.

Frame terms (per-frame references, weights and masks) need each latent's frame index: the latent's
position in the batch, or, when the sampler evaluates a window of frames, the window's indices: ComfyUI's
context windows put an `IndexListContextWindow` (`index_list`, `dim`) at `transformer_options["context_window"]`,
AnimateDiff-Evolved puts `sub_idxs` (and `full_length`) in `transformer_options["ad_params"]`; both reach
the patch through `extra_options`.
"""

from __future__ import annotations

import functools
import logging

import torch

from ..ipadapter_core import FrameTerm, ImageTerm, LayerPlan, Topology

log = logging.getLogger(__name__)


def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """What the unpatched layer computes, with the host's own attention kernel."""
    from comfy.ldm.modules import attention

    heads = extra_options["n_heads"]
    if "attn_precision" in extra_options:  # current ComfyUI: keep the layer's precision choice
        return attention.optimized_attention(q, k, v, heads, attn_precision=extra_options["attn_precision"])
    return attention.optimized_attention(q, k, v, heads)  # 2024 ComfyUI takes no keyword arguments


@functools.lru_cache(maxsize=64)
def _rows(cond_or_uncond: tuple[int, ...]) -> tuple[int, ...]:
    """ComfyUI's `cond_or_uncond` as plan rows: 0 positive, 1 negative; other guiders' conds use the positive."""
    return tuple(1 if c == 1 else 0 for c in cond_or_uncond)


def window_frames(extra_options: dict, latents: int) -> tuple[int, ...] | None:
    """The frame index of each of the `latents` latents of this call when the sampler evaluates a window of
    frames (ComfyUI's context windows along the batch, or AnimateDiff-Evolved's); None: latent j is frame j."""
    window = extra_options.get("context_window")
    indices = getattr(window, "index_list", None)
    if indices is not None and getattr(window, "dim", 0) == 0 and len(indices) == latents:
        return tuple(int(i) for i in indices)
    ad_params = extra_options.get("ad_params")
    indices = ad_params.get("sub_idxs") if isinstance(ad_params, dict) else None
    if indices is not None and len(indices) == latents:
        return tuple(int(i) for i in indices)
    return None


class IPAKitAttn2:
    """attn2 replace patch: text attention (or the wrapped foreign patch) plus every image term of the layer."""

    __slots__ = ("plan", "base")

    def __init__(self, plan: LayerPlan, base=None) -> None:
        self.plan = plan
        self.base = base

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.base is None:
            out = text_attention(q, k, v, extra_options)  # a new tensor: the image attention is added into it in place
        else:
            out = self.base(q, k, v, extra_options).clone(memory_format=torch.contiguous_format)  # never write into theirs
        if not out.is_contiguous():
            out = out.contiguous()
        return self._image_attention(q, extra_options, out)

    def _image_attention(self, q: torch.Tensor, extra_options: dict, out: torch.Tensor) -> torch.Tensor:
        """Adds every image term of the layer into `out` (contiguous, shaped like `q`) for the call that ComfyUI's
        `extra_options` describe (cond/uncond rows, latent shape, sigmas); returns `out`."""
        shape = extra_options.get("original_shape")
        latent_hw = (shape[-2], shape[-1]) if shape is not None and len(shape) >= 4 else None
        rows = _rows(tuple(extra_options.get("cond_or_uncond") or (0,)))
        frames = window_frames(extra_options, q.shape[0] // len(rows)) if self.plan.frame_terms else None
        return self.plan(q, rows=rows, latent_hw=latent_hw, sigmas=extra_options.get("sigmas"), out=out, frames=frames)

    def extend(self, terms: list[ImageTerm | FrameTerm]) -> IPAKitAttn2:
        return IPAKitAttn2(self.plan.extend(terms), self.base)

    def to(self, *args, **kwargs) -> IPAKitAttn2:
        plan = self.plan.to(*args, **kwargs)
        base = self.base.to(*args, **kwargs) if hasattr(self.base, "to") else self.base
        if plan is self.plan and base is self.base:
            return self
        return IPAKitAttn2(plan, base)

    def __deepcopy__(self, memo: dict) -> IPAKitAttn2:
        return self  # immutable: clones share it (ComfyUI deep-copies model_options on every clone)

    def models(self) -> list:
        return []  # nothing to load at sampling time: keys and values were computed when the node ran


def install(model, topology: Topology, terms: dict[tuple[str, int, int], ImageTerm | FrameTerm]):
    """A clone of `model` with `terms` added to its attn2 replace patches (chaining and wrapping as needed)."""
    patched = model.clone()
    replace = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    heads = {layer.key: layer.heads for layer in topology.layers}
    for key, term in terms.items():
        existing = replace.get(key)
        if existing is None:
            existing = replace.get(key[:2])  # a 2-tuple patch (SD1.5 style) would be shadowed by our 3-tuple one
        if isinstance(existing, IPAKitAttn2):
            patch = existing.extend([term])
        else:
            if existing is not None:
                log.info("IPAdapter Kit: wrapping the attn2 patch %s already at %s; it still runs", type(existing).__name__, key)
            patch = IPAKitAttn2(LayerPlan.from_terms([term], heads[key]), base=existing)
        patched.set_model_attn2_replace(patch, key[0], key[1], key[2])
    return patched
