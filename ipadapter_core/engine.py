"""The engine's entry point: from a loaded adapter, a UNet topology, embeds and one frozen settings object
to the per-layer image terms a host installs.

Every option of an apply node enters here, in `ApplySettings`; the host adapter (ComfyUI's `nodes/`)
only supplies what the host knows: the topology read from its UNet, the compute device (by readying
the adapter there), the sampler's percent-to-sigma map for start/end, the CLIP encoder for legacy
embeds without a negative and Kolors' `encoder_hid_proj`. Whether an apply changes anything at all is
decided once, by `changes_nothing`.

Frame-level image prompting (animation): `weight` may be one weight per latent frame, and `unfold_batch`
gives latent frame i the i-th reference (and the i-th mask); both make `FrameTerm`s, whose keys and values
are computed here once per distinct (reference, weight) and selected per frame when the patch runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Callable

import torch

from . import checks
from .adapter import LoadedAdapter
from .attention import FrameTerm, ImageTerm
from .embeds import ClipEncoder, ImageEmbeds, combine, project_embeds
from .frames import as_weight_list
from .masks import as_mask_batch
from .schedules import TransformerWeight, layer_weights
from .spec import AdapterKind
from .terms import adapter_terms, frame_adapter_terms
from .topology import Topology

SCHEDULE_INPUTS = ("weight", "weight_type", "combine_embeds", "start_at", "end_at", "embeds_scaling")
"""The widgets every apply node has, in the order saved workflows store them."""

_CONCAT_ONLY = (AdapterKind.PORTRAIT, AdapterKind.PORTRAIT_UNNORM)  # portrait adapters read several faces of one person together


@dataclass(frozen=True)
class ApplySettings:
    """Everything an apply node decides about one adapter's image prompt; the defaults are the nodes' defaults.

    Attributes:
        weight: strength; 0 leaves the model as it was, negative pushes away from the image. A sequence gives
            one weight per latent frame (frames past its end use the last); frames of weight 0 are skipped.
        weight_type: how the weight is spread over the layers (`schedules.WEIGHT_TYPES`).
        combine_embeds: how several references are merged (`embeds.COMBINE_METHODS`); portrait adapters always concat.
        start_at, end_at: fractions of sampling between which the image prompt acts.
        embeds_scaling: where the weight acts inside attention (`schedules.EMBEDS_SCALING`).
        block_weights: per-block scales (`schedules.parse_block_weights`); "" for none.
        weight_faceidv2: FaceID Plus v2's shortcut scale.
        weight_composition: the composition weight of "style and composition" (None: 1.0, as in the older pack).
        style_boost, composition_boost: the opposite feature's weight of the precise types (None: `weight`).
        attn_mask: `[H, W]` or `[n, H, W]` masks (one for all references, or one per reference; with
            unfold_batch one per latent frame, the last repeated), or None.
        unfold_batch: latent frame i gets the i-th reference (the last one past the end; extra references are
            unused) and attends to it alone; combine_embeds is then not used.
    """

    weight: float | tuple[float, ...] = 1.0
    weight_type: str = "linear"
    combine_embeds: str = "concat"
    start_at: float = 0.0
    end_at: float = 1.0
    embeds_scaling: str = "V only"
    block_weights: str = ""
    weight_faceidv2: float = 1.0
    weight_composition: float | None = None
    style_boost: float | None = None
    composition_boost: float | None = None
    attn_mask: torch.Tensor | None = None
    unfold_batch: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.weight, (Sequence, torch.Tensor)) and not isinstance(self.weight, str):
            values = as_weight_list(self.weight, "weight")
            if not values:
                raise ValueError("weight: the list of frame weights is empty; give one weight, or one per frame")
            object.__setattr__(self, "weight", values[0] if len(values) == 1 else tuple(values))
        else:
            checks.number("weight", self.weight)
        checks.number("start_at", self.start_at, low=0.0, high=1.0)
        checks.number("end_at", self.end_at, low=0.0, high=1.0)
        checks.number("weight_faceidv2", self.weight_faceidv2)
        for name in ("weight_composition", "style_boost", "composition_boost"):
            if getattr(self, name) is not None:
                checks.number(name, getattr(self, name))
        if self.attn_mask is not None:
            checks.mask_batch("attn_mask", self.attn_mask)
        object.__setattr__(self, "unfold_batch", bool(self.unfold_batch))

    @property
    def frame_weights(self) -> tuple[float, ...]:
        """The weight of each frame (one value: every frame)."""
        return self.weight if isinstance(self.weight, tuple) else (float(self.weight),)

    @classmethod
    def from_inputs(cls, inputs: dict) -> ApplySettings:
        """Settings from node inputs named like the fields (inputs the settings do not hold are ignored; None = default)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in inputs.items() if k in names and v is not None})

    def schedule_inputs(self) -> dict:
        """The values of the widgets every apply node has (`SCHEDULE_INPUTS`), as node inputs."""
        return {name: getattr(self, name) for name in SCHEDULE_INPUTS}


def plan_weights(topology: Topology, settings: ApplySettings, weight: float | None = None) -> tuple[TransformerWeight, ...]:
    """One weight per cross-attention layer of `topology` (execution order), for `weight` (default: the
    settings' weight; with per-frame weights, the first frame's)."""
    return layer_weights(
        topology,
        settings.weight_type,
        settings.frame_weights[0] if weight is None else weight,
        block_weights=settings.block_weights or "",
        weight_composition=settings.weight_composition,
        style_boost=settings.style_boost,
        composition_boost=settings.composition_boost,
    )


def changes_nothing(topology: Topology, settings: ApplySettings) -> bool:
    """True when every layer's weight is 0 for every frame weight: applying then leaves the model exactly as it was."""
    return not any(w.weight for f in dict.fromkeys(settings.frame_weights) for w in plan_weights(topology, settings, f))


def check_topology(adapter: LoadedAdapter, topology: Topology) -> None:
    """Refuse an adapter made for another UNet, naming both and the fix."""
    spec = adapter.spec
    widths = topology.widths_checkpoint_order
    if spec.layer_widths != widths or spec.cross_attention_dim != topology.context_dim:
        model = topology.describe()
        if topology.family == spec.family:  # same family, other layers or context: say what differs
            model = f"a different {topology.family.label} UNet ({_shape(widths, topology.context_dim)})"
        raise ValueError(
            f"{adapter.name} is an adapter for {spec.family.value.upper()} ({_shape(spec.layer_widths, spec.cross_attention_dim)}), "
            f"but the model is {model}. Pick an adapter made for this model (SD1.5 adapters end in _sd15, SDXL ones in _sdxl), "
            "or use the Unified Loader."
        )


def _shape(widths: tuple[int, ...], context: int) -> str:
    """For messages: "70 cross-attention layers of widths 640, 1280, context 2048"."""
    return f"{len(widths)} cross-attention layers of widths {', '.join(map(str, dict.fromkeys(widths)))}, context {context}"


def image_terms(
    adapter: LoadedAdapter,
    topology: Topology,
    embeds: ImageEmbeds,
    settings: ApplySettings,
    *,
    percent_to_sigma: Callable[[float], float] | None = None,
    encode: ClipEncoder | None = None,
    pre: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[tuple[str, int, int], ImageTerm]:
    """The image terms of one adapter, keyed by layer `(block, id, depth)`; empty when the settings change nothing.

    The terms are computed on the device and in the dtype of the adapter's weights.

    Args:
        percent_to_sigma: the sampler's map from a fraction of sampling to a sigma; needed when start_at > 0
            or end_at < 1.
        encode: a CLIP encoder, only for embeds without a negative whose adapter needs the encoder's view of
            an empty image.
        pre: a map applied to the tokens before to_k_ip / to_v_ip (Kolors FaceID's `encoder_hid_proj`).
    """
    check_topology(adapter, topology)
    if changes_nothing(topology, settings):
        return {}
    spec = adapter.spec
    embeds.check(spec, source=f"The embeds for {adapter.name}")
    if _per_frame(settings, embeds):
        return _frame_terms(adapter, topology, embeds, settings, percent_to_sigma=percent_to_sigma, encode=encode, pre=pre)
    weights = plan_weights(topology, settings)
    embeds = combine(embeds, "concat" if spec.kind in _CONCAT_ONLY else settings.combine_embeds)
    masks = _masks(settings.attn_mask, embeds.count)
    device = next(adapter.model.parameters()).device
    cond, uncond = _tokens(adapter, embeds.to(device), settings, encode)
    return adapter_terms(
        adapter.model,
        topology,
        cond,
        uncond.to(cond),
        weights,
        embeds_scaling=settings.embeds_scaling,
        masks=None if masks is None else masks.to(device),
        sigma_range=sigma_range(settings, percent_to_sigma),
        pre=pre,
    )


def _per_frame(settings: ApplySettings, embeds: ImageEmbeds) -> bool:
    """Whether frames differ: per-frame weights, or unfolding several references or masks (unfolding one
    reference with one mask is the shared image prompt)."""
    if isinstance(settings.weight, tuple):
        return True
    masks = 0 if settings.attn_mask is None else as_mask_batch(settings.attn_mask).shape[0]
    return settings.unfold_batch and (embeds.count > 1 or masks > 1)


def _frame_terms(adapter: LoadedAdapter, topology: Topology, embeds: ImageEmbeds, settings: ApplySettings, *,
                 percent_to_sigma, encode, pre) -> dict[tuple[str, int, int], FrameTerm]:
    """Frame terms: per frame f, the token set (unfolding: reference f; else all references, combined as
    usual), weight f and (unfolding) mask f, each clamped to its last entry; keys and values once per
    distinct (token set, weight)."""
    spec = adapter.spec
    device = next(adapter.model.parameters()).device
    weights = settings.frame_weights
    if settings.unfold_batch:
        masks = None if settings.attn_mask is None else as_mask_batch(settings.attn_mask)
        count = max(embeds.count, len(weights), 1 if masks is None else masks.shape[0])
        frame_set = [min(f, embeds.count - 1) for f in range(count)]
    else:
        embeds = combine(embeds, "concat" if spec.kind in _CONCAT_ONLY else settings.combine_embeds)
        masks = _masks(settings.attn_mask, embeds.count)
        count = len(weights)
        frame_set = [0] * count
    cond, uncond = _tokens(adapter, embeds.to(device), settings, encode)
    uncond = uncond.to(cond)
    g, s, _ = cond.shape
    if settings.unfold_batch:
        segments = (s,)
    else:  # one token set of every reference, split per reference when each has its own mask
        segments = (s,) * g if masks is not None and masks.shape[0] > 1 else (g * s,)
        cond, uncond = (t.reshape(1, g * s, -1) for t in (cond, uncond))
    frame_weight = [weights[min(f, len(weights) - 1)] for f in range(count)]
    distinct = list(dict.fromkeys(frame_weight))
    pairs = [(frame_set[f], distinct.index(frame_weight[f])) for f in range(count)]
    slots = tuple(dict.fromkeys(pairs))
    return frame_adapter_terms(
        adapter.model,
        topology,
        cond,
        uncond,
        tuple(plan_weights(topology, settings, w) for w in distinct),
        slots,
        tuple(slots.index(p) for p in pairs),
        segments=segments,
        embeds_scaling=settings.embeds_scaling,
        masks=None if masks is None else masks.to(device),
        frame_masks=settings.unfold_batch and masks is not None,
        sigma_range=sigma_range(settings, percent_to_sigma),
        pre=pre,
    )


def _tokens(adapter: LoadedAdapter, embeds: ImageEmbeds, settings: ApplySettings, encode) -> tuple[torch.Tensor, torch.Tensor]:
    """The projected tokens (cond, uncond), refused when not finite (a NaN there would give a black image)."""
    cond, uncond = project_embeds(adapter.model, embeds, shortcut_scale=settings.weight_faceidv2, encode=encode)
    fix = (f"the weights of {adapter.name} or the embeds hold NaN/inf values (or overflow in this dtype); use an intact adapter "
           "file, re-encode the embeds, or run the model in fp32")
    checks.finite(f"the projected image tokens of {adapter.name}", cond, fix)
    checks.finite(f"the projected negative tokens of {adapter.name}", uncond, fix)
    return cond, uncond


def _masks(attn_mask: torch.Tensor | None, references: int) -> torch.Tensor | None:
    if attn_mask is None:
        return None
    masks = as_mask_batch(attn_mask)
    if masks.shape[0] not in (1, references):
        raise ValueError(
            f"attn_mask has {masks.shape[0]} masks for {references} reference image(s): give one mask for the whole image "
            "prompt, or one per reference image (with combine_embeds = concat) to place each image in its own region"
        )
    return masks


def sigma_range(settings: ApplySettings, percent_to_sigma: Callable[[float], float] | None) -> tuple[float, float] | None:
    """(sigma_start, sigma_end) for start_at/end_at; None when the image prompt acts over all of sampling."""
    if settings.start_at <= 0.0 and settings.end_at >= 1.0:
        return None
    if percent_to_sigma is None:
        raise ValueError("start_at/end_at need the model's sampling schedule (percent_to_sigma)")
    return float(percent_to_sigma(settings.start_at)), float(percent_to_sigma(settings.end_at))
