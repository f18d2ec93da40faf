"""The one place that speaks ComfyUI's attn2 replace contract: `(q, k, v, extra_options) -> out before to_out`.

A patch object holds the precomputed `LayerPlan` of its layer (every adapter chained on this model)
and, when another pack had already installed a replace patch at the same key, that foreign callable,
which it calls for the base output instead of plain text attention. Chaining our own adapters creates a new
object; `.to()` returns a moved copy.

Other attention packs (IPAdapter Plus, InstantID, PuLID) stack on a patch they find at their key by calling
`.add(callback, **kwargs)` on it, after `model.clone()`, mutating that object in place (cubiq/ComfyUI_InstantID
`CrossAttentionPatch.py` `Attn2Replace` and `InstantID.py` `_set_model_patch_replace`; cubiq/PuLID_ComfyUI
`pulid.py`). Our objects accept that: the callbacks run after our image terms, each gated on `sigma_start` /
`sigma_end` and adding its return value. That list is the only mutable part, and each object owns its own:
`clone()`'s deepcopy makes a new object that shares the plan and the wrapped patch and copies the list, so a
pack adding to a clone never reaches the model it was cloned from.

Frame terms (per-frame references, weights and masks) need each latent's frame index: the latent's
position in the batch, or, when the sampler evaluates a window of frames, the window's indices: ComfyUI's
context windows put an `IndexListContextWindow` (`index_list`, `dim`) at `transformer_options["context_window"]`,
AnimateDiff-Evolved puts `sub_idxs` (and `full_length`) in `transformer_options["ad_params"]`; both reach
the patch through `extra_options`.
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch

from ..ipadapter_core import FrameTerm, ImageTerm, LayerPlan, Topology

log = logging.getLogger(__name__)

# What ComfyUI's `percent_to_sigma(0.0)` returns, and the sigma the `.add` convention assumes when a call has no
# "sigmas": a callback whose range reaches from here down to 0 runs at every step, without reading the sigma.
NO_SIGMA = 999999999.9


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


_last_sigma: tuple = (None, NO_SIGMA)  # (weak reference to a call's "sigmas", its first value)


def first_sigma(sigmas: torch.Tensor | None) -> float:
    """`sigmas[0]` as a float, as the `.add` convention gates on it (NO_SIGMA when absent). Every layer of one UNet
    call gets the same tensor, so the value is read (a host sync on a GPU) once per call, not once per layer."""
    global _last_sigma
    if sigmas is None:
        return NO_SIGMA
    ref, value = _last_sigma
    if ref is not None and ref() is sigmas:
        return value
    value = float(sigmas.reshape(-1)[0])
    _last_sigma = (weakref.ref(sigmas), value)
    return value


def _sigma_range(kwargs: dict) -> tuple[float, float] | None:
    """The (sigma_start, sigma_end) gate of an added callback; None when it covers every sigma (the default range)."""
    start, end = kwargs.get("sigma_start"), kwargs.get("sigma_end")
    start, end = NO_SIGMA if start is None else float(start), 0.0 if end is None else float(end)
    return None if start >= NO_SIGMA and end <= 0.0 else (start, end)


class IPAKitAttn2:
    """attn2 replace patch: text attention (or the wrapped foreign patch) plus every image term of the layer, then
    the callbacks other packs added with `.add`."""

    __slots__ = ("plan", "base", "added")

    def __init__(self, plan: LayerPlan, base=None, added: list | None = None) -> None:
        self.plan = plan
        self.base = base
        self.added = [] if added is None else added  # (callback, kwargs, sigma range or None), owned by this object

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.base is None:
            out = text_attention(q, k, v, extra_options)  # a new tensor: the image attention is added into it in place
        elif isinstance(self.base, IPAKitAttn2):
            out = self.base(q, k, v, extra_options)  # ours (chained after another pack's callbacks): a new tensor too
        else:
            out = self.base(q, k, v, extra_options).clone(memory_format=torch.contiguous_format)  # never write into theirs
        if not out.is_contiguous():
            out = out.contiguous()
        out = self._image_attention(q, extra_options, out)
        return self._run_added(out, q, k, v, extra_options) if self.added else out

    def _image_attention(self, q: torch.Tensor, extra_options: dict, out: torch.Tensor) -> torch.Tensor:
        """Adds every image term of the layer into `out` (contiguous, shaped like `q`) for the call that ComfyUI's
        `extra_options` describe (cond/uncond rows, latent shape, sigmas); returns `out`."""
        shape = extra_options.get("original_shape")
        latent_hw = (shape[-2], shape[-1]) if shape is not None and len(shape) >= 4 else None
        rows = _rows(tuple(extra_options.get("cond_or_uncond") or (0,)))
        frames = window_frames(extra_options, q.shape[0] // len(rows)) if self.plan.frame_terms else None
        return self.plan(q, rows=rows, latent_hw=latent_hw, sigmas=extra_options.get("sigmas"), out=out, frames=frames)

    def _run_added(self, out, q, k, v, extra_options: dict) -> torch.Tensor:
        """The `.add` convention: each callback in turn gets the running output and its return value is added to it,
        when `sigma_end <= sigmas[0] <= sigma_start`; the sum is cast to q's dtype."""
        sigma = None
        for callback, kwargs, sigma_range in self.added:
            if sigma_range is not None:
                sigma = first_sigma(extra_options.get("sigmas")) if sigma is None else sigma
                if not sigma_range[1] <= sigma <= sigma_range[0]:
                    continue
            out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(dtype=q.dtype)

    def add(self, callback, **kwargs) -> None:
        """Stack another pack's attention on this layer, as IPAdapter Plus, InstantID and PuLID do on the patch they
        find at their key: `callback(out, q, k, v, extra_options, **kwargs)` returns what to add to the output (a
        tensor shaped like q, or 0); optional `sigma_start`/`sigma_end` kwargs restrict it to those sigmas. Changes
        this object in place, and no other: the models it was cloned from keep their own."""
        if not callable(callback):
            raise TypeError(f"IPAdapter Kit attn2 patch: add() needs a callable, got {type(callback).__name__}")
        self.added.append((callback, kwargs, _sigma_range(kwargs)))

    def set_new_condition(self, *args, **kwargs):
        """The convention before `.add` (InstantID before May 2024): it passes data for the caller's own attention
        code, which this object cannot run."""
        raise RuntimeError(
            "IPAdapter Kit: another node called set_new_condition() on our attention patch; that is the convention of "
            "older releases of InstantID (before May 2024) and packs of that generation, which cannot stack on another "
            "pack's patch. Update that pack (current releases call .add(), which IPAdapter Kit supports), or apply it "
            "before the IPAdapter Kit nodes."
        )

    def extend(self, terms: list[ImageTerm | FrameTerm]) -> IPAKitAttn2:
        if self.added:  # keep the order: another pack's callbacks saw our earlier terms only, the new ones come after
            return IPAKitAttn2(LayerPlan.from_terms(terms, self.plan.heads), base=self._copy())
        return IPAKitAttn2(self.plan.extend(terms), self.base)

    def to(self, *args, **kwargs) -> IPAKitAttn2:
        """Moves the plan (and the wrapped patch, when it can move); added callbacks keep their data where their pack
        put it, as they would in that pack's own patch object."""
        plan = self.plan.to(*args, **kwargs)
        base = self.base.to(*args, **kwargs) if hasattr(self.base, "to") else self.base
        if plan is self.plan and base is self.base:
            return self
        return IPAKitAttn2(plan, base, list(self.added))

    def _copy(self) -> IPAKitAttn2:
        return IPAKitAttn2(self.plan, self.base, list(self.added))

    def __deepcopy__(self, memo: dict) -> IPAKitAttn2:
        return self._copy()  # ComfyUI deep-copies model_options on every clone: share the plan, copy the `.add` list

    __copy__ = _copy

    def models(self) -> list:
        """Nothing of ours to load at sampling time (keys and values were computed when the node ran); a wrapped
        patch's models are still loaded."""
        models = getattr(self.base, "models", None)
        return list(models()) if callable(models) else []


def install(model, topology: Topology, *term_sets: dict[tuple[str, int, int], ImageTerm | FrameTerm]):
    """A clone of `model` with every term of `term_sets` (each keyed by layer, e.g. one per adapter or region) added
    to its attn2 replace patches, chaining and wrapping as needed; one clone, one patch object per layer."""
    patched = model.clone()
    replace = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    heads = {layer.key: layer.heads for layer in topology.layers}
    by_layer: dict[tuple[str, int, int], list] = {}
    for terms in term_sets:
        for key, term in terms.items():
            by_layer.setdefault(key, []).append(term)
    depth = {}
    for layer in topology.layers:
        depth[layer.key[:2]] = depth.get(layer.key[:2], 0) + 1
    for key, layer_terms in by_layer.items():
        target = key
        existing = replace.get(key)
        if existing is None:
            # a block with one transformer layer (all of SD1.5) is patched at its 2-tuple key, where packs that use
            # 2-tuple keys (IPAdapter Plus on SD1.5) find us and stack onto us; a 2-tuple patch of a deeper block
            # would be shadowed by our 3-tuple one, so it is wrapped
            existing = replace.get(key[:2])
            if depth[key[:2]] == 1:
                target = key[:2]
        if isinstance(existing, IPAKitAttn2):
            patch = existing.extend(layer_terms)
        else:
            if existing is not None:
                log.info("IPAdapter Kit: wrapping the attn2 patch %s already at %s; it still runs", type(existing).__name__, key)
            patch = IPAKitAttn2(LayerPlan.from_terms(layer_terms, heads[key]), base=existing)
        patched.set_model_attn2_replace(patch, *target)
    return patched
