"""Turn projected image tokens into per-layer `ImageTerm`s (or `FrameTerm`s, when latent frames differ): keys,
values, weights and masks, computed once."""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange

from .adapter import IPAdapterModel, layer_kv
from .attention import FrameTerm, ImageTerm
from .schedules import EMBEDS_SCALING, TransformerWeight
from .topology import Topology

C_PENALTY_WIDTH = 1280  # the "C penalty" scales weights by layer width / 1280


def adapter_terms(
    model: IPAdapterModel,
    topology: Topology,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    weights: tuple[TransformerWeight, ...],
    *,
    embeds_scaling: str = "V only",
    masks: torch.Tensor | None = None,
    sigma_range: tuple[float, float] | None = None,
    pre: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[tuple[str, int, int], ImageTerm]:
    """Image terms keyed by layer `(block, id, depth)`; layers whose weight is 0 get none.

    Args:
        cond, uncond: projected tokens `[g, s, c]` for g references (positive and negative).
        weights: one per layer of `topology`, execution order.
        masks: None, `[1, H, W]` (one mask for the whole adapter) or `[g, H, W]` with g > 1 (one per
            reference: each then gets its own softmax, as diffusers does for masked images).
        pre: optional map applied to tokens before to_k_ip / to_v_ip (Kolors FaceID's encoder_hid_proj).
    """
    _check(embeds_scaling, cond, uncond)
    if len(weights) != len(topology.layers):
        raise ValueError(f"{len(weights)} layer weights for {len(topology.layers)} layers")
    g, s, _ = cond.shape
    per_image = masks is not None and masks.shape[0] > 1
    if per_image and masks.shape[0] != g:
        raise ValueError(f"{masks.shape[0]} masks for {g} reference images; give one mask, or one per image")
    segments = (s,) * g if per_image else (g * s,)
    tokens = torch.cat([rearrange(cond, "g s c -> (g s) c"), rearrange(uncond, "g s c -> (g s) c")])
    terms = {}
    for layer, tw in zip(topology.layers, weights):
        if tw.weight == 0:
            continue
        k, v = layer_kv(model, layer.checkpoint_index, tokens, pre=pre)
        k, v = (rearrange(t.float(), "(r m) c -> r m c", r=2) for t in (k, v))
        k, v = _weighted(k, v, tw, embeds_scaling, layer.width, segments)
        terms[layer.key] = ImageTerm(k=k, v=v, segments=segments, masks=masks, sigma_range=sigma_range)
    return terms


def frame_adapter_terms(
    model: IPAdapterModel,
    topology: Topology,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    slot_weights: tuple[tuple[TransformerWeight, ...], ...],
    slots: tuple[tuple[int, int], ...],
    frame_slots: tuple[int, ...],
    *,
    segments: tuple[int, ...],
    embeds_scaling: str = "V only",
    masks: torch.Tensor | None = None,
    frame_masks: bool = False,
    sigma_range: tuple[float, float] | None = None,
    pre: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[tuple[str, int, int], FrameTerm]:
    """Frame terms keyed by layer: every latent frame attends to its own token set with its own weight.

    Args:
        cond, uncond: `[G, t, c]`, G token sets (one per reference when unfolding, else one set of all
            references' tokens) of t tokens each.
        slot_weights: per distinct frame weight, one `TransformerWeight` per layer of `topology`.
        slots: the distinct (token set, weight index) pairs that frames use.
        frame_slots: the slot of each frame (frames past the end use the last).
        segments: token groups of a set that get their own softmax.
        masks, frame_masks: see `FrameTerm`.
    Layers where every slot's weight is 0 get no term; a frame whose weight is 0 on a layer is skipped there.
    """
    _check(embeds_scaling, cond, uncond)
    if any(len(w) != len(topology.layers) for w in slot_weights):
        raise ValueError(f"layer weights for {len(topology.layers)} layers expected per frame weight")
    sets = cond.shape[0]
    tokens = torch.cat([rearrange(cond, "g s c -> (g s) c"), rearrange(uncond, "g s c -> (g s) c")])
    terms = {}
    for i, layer in enumerate(topology.layers):
        active = [n for n, (_, w) in enumerate(slots) if slot_weights[w][i].weight != 0]
        if not active:
            continue
        k, v = layer_kv(model, layer.checkpoint_index, tokens, pre=pre)
        k, v = (rearrange(t.float(), "(r g m) c -> g r m c", r=2, g=sets) for t in (k, v))
        ks, vs = [], []
        for n in active:
            token_set, w = slots[n]
            tw = slot_weights[w][i]
            sk, sv = _weighted(k[token_set], v[token_set], tw, embeds_scaling, layer.width, segments)
            ks.append(sk)
            vs.append(sv)
        position = {n: j for j, n in enumerate(active)}
        terms[layer.key] = FrameTerm(
            k=torch.stack(ks), v=torch.stack(vs), frame_slots=tuple(position.get(n) for n in frame_slots),
            segments=segments, masks=masks, frame_masks=frame_masks, sigma_range=sigma_range,
        )
    return terms


def _check(embeds_scaling: str, cond: torch.Tensor, uncond: torch.Tensor) -> None:
    if embeds_scaling not in EMBEDS_SCALING:
        raise ValueError(f"unknown embeds_scaling '{embeds_scaling}'; choose one of: {', '.join(EMBEDS_SCALING)}")
    if cond.shape != uncond.shape:
        raise ValueError(f"positive and negative tokens differ in shape: {tuple(cond.shape)} vs {tuple(uncond.shape)}")


def _weighted(k, v, tw: TransformerWeight, mode: str, width: int, segments: tuple[int, ...]):
    """Keys and values `[2, m, c]` with a layer's weight folded in as `mode` says; a swapped weight is negative
    guidance: the positive pass sees nothing, the negative pass sees the image."""
    k, v = _scale(k, v, tw.weight, mode, width, segments)
    if tw.swap:
        k = torch.stack([k[0], k[0]])
        v = torch.stack([torch.zeros_like(v[0]), v[0]])
    return k, v


def _scale(k, v, w: float, mode: str, width: int, segments: tuple[int, ...]):
    if mode == "V only":
        return k, v * w
    if mode != "K+V":
        w = w * width / C_PENALTY_WIDTH
    if mode == "K+mean(V) w/ C penalty":
        parts = []
        for chunk in v.split(list(segments), dim=1):
            mean = chunk.mean(dim=1, keepdim=True)
            parts.append(chunk - mean + mean * w)
        return k * w, torch.cat(parts, dim=1)
    return k * w, v * w
