"""What the apply and encode nodes do, between their widgets and the core: encode, project, weigh, patch."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ..ipadapter_core import (
    AdapterKind,
    ImageEmbeds,
    LoadedAdapter,
    adapter_terms,
    as_mask_batch,
    combine,
    encode_clip,
    layer_weights,
    project_embeds,
)
from . import _comfy, _faceid, _patch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterBundle:
    """What flows on an IPAKIT_ADAPTER socket: the shared adapter and, from the unified loader, its encoders."""

    adapter: LoadedAdapter
    clip_vision: object | None = None
    insightface: object | None = None

    @property
    def spec(self):
        return self.adapter.spec

    @property
    def name(self) -> str:
        return self.adapter.name


def check_model(bundle: AdapterBundle, model) -> None:
    """Refuse an adapter made for another UNet, naming both and the fix."""
    topo = _comfy.topology(model)
    spec = bundle.spec
    if spec.layer_widths != topo.widths_checkpoint_order or spec.cross_attention_dim != topo.context_dim:
        raise ValueError(
            f"{bundle.name} is an adapter for {spec.family.value.upper()} ({spec.num_layers} cross-attention layers, context "
            f"{spec.cross_attention_dim}), but the model is {_comfy.model_name(topo)}. Pick an adapter made for this "
            "model (SD1.5 adapters end in _sd15, SDXL ones in _sdxl), or use the Unified Loader."
        )


def encode(
    bundle: AdapterBundle,
    images: torch.Tensor | None,
    *,
    clip_vision=None,
    image_negative: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    faces=None,
) -> ImageEmbeds:
    """Encoder features of the references (and their negatives) for this adapter.

    `faces` is a FaceBatch from the InsightFace stage (FaceID adapters); images whose face was not
    found are dropped there, so every row here is a real reference.
    """
    spec = bundle.spec
    cond: dict[str, torch.Tensor] = {}
    uncond: dict[str, torch.Tensor] = {}
    if spec.kind.uses_face:
        if faces is None:
            raise ValueError(f"{bundle.name} is a FaceID adapter: use Apply FaceID (or Encode with an InsightFace model)")
        face = faces.normed if spec.face_normed else faces.raw
        cond["face"] = face.float()
        uncond["face"] = torch.zeros_like(cond["face"])
        images = faces.crops
    if spec.kind.uses_clip:
        clip_vision = clip_vision if clip_vision is not None else bundle.clip_vision
        if clip_vision is None:
            raise ValueError(
                f"{bundle.name} needs a CLIP vision model ({_comfy.clip_file_hint(spec)}): connect clip_vision, or load "
                "the adapter with the Unified Loader, which brings it along"
            )
        _comfy.check_clip(spec, clip_vision, bundle.name)
        bar = _comfy.progress(1)
        cond["clip"], uncond["clip"] = encode_clip(
            spec, _comfy.clip_encoder(clip_vision), images, negative_images=image_negative, mask=mask
        )
        bar.update(1)
    return ImageEmbeds(
        cond=cond,
        uncond=uncond,
        clip_encoder=spec.clip_encoder,
        clip_output=spec.clip_output,
        face_normed=spec.face_normed if spec.kind.uses_face else None,
        adapter_kind=spec.kind,
    )


def apply(
    model,
    bundle: AdapterBundle,
    embeds: ImageEmbeds,
    *,
    weight: float,
    weight_type: str = "linear",
    combine_embeds: str = "concat",
    start_at: float = 0.0,
    end_at: float = 1.0,
    embeds_scaling: str = "V only",
    attn_mask: torch.Tensor | None = None,
    block_weights: str = "",
    clip_vision=None,
    weight_faceidv2: float = 1.0,
    weight_composition: float | None = None,
    lora_strength: float = 0.0,
):
    """A clone of `model` with the adapter's image prompt installed; `model` itself when nothing would change.

    FaceID adapters that ship a LoRA get it at `lora_strength` unless the model already carries it.
    """
    spec = bundle.spec
    check_model(bundle, model)
    topo = _comfy.topology(model)
    weights = layer_weights(topo, weight_type, weight, block_weights=block_weights or "", weight_composition=weight_composition)
    if all(w.weight == 0 for w in weights):
        return model
    embeds.check(spec, source=f"The embeds for {bundle.name}")
    if spec.kind in (AdapterKind.PORTRAIT, AdapterKind.PORTRAIT_UNNORM):
        combine_embeds = "concat"  # portrait adapters read several faces of one person together
    embeds = combine(embeds, combine_embeds)
    masks = _masks(attn_mask, embeds.count)
    device, dtype = _comfy.compute_device_dtype(model)
    _comfy.ready_adapter(bundle.adapter, device, dtype)
    embeds = _to(embeds, device)
    encoder = None
    if spec.kind.uses_clip and not embeds.uncond:
        cv = clip_vision if clip_vision is not None else bundle.clip_vision
        encoder = _comfy.clip_encoder(cv) if cv is not None else None
    cond, uncond = project_embeds(bundle.adapter.model, embeds, shortcut_scale=weight_faceidv2, encode=encoder)
    terms = adapter_terms(
        bundle.adapter.model,
        topo,
        cond,
        uncond.to(cond),
        weights,
        embeds_scaling=embeds_scaling,
        masks=None if masks is None else masks.to(device),
        sigma_range=_comfy.sigma_range(model, start_at, end_at),
        pre=_kolors_pre(model, spec),
    )
    if lora_strength and bundle.adapter.lora and not _faceid.has_lora(model, bundle.adapter):
        model = _faceid.apply_lora(model, bundle.adapter, lora_strength)
    return _patch.install(model, topo, terms)


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


def _to(embeds: ImageEmbeds, device: torch.device) -> ImageEmbeds:
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return replace(embeds, cond=move(embeds.cond), uncond=move(embeds.uncond))


def _kolors_pre(model, spec):
    if spec.token_dim == spec.cross_attention_dim:
        return None
    proj = getattr(model.model.diffusion_model, "encoder_hid_proj", None)
    if proj is None:
        raise ValueError(
            f"{spec.variant} makes {spec.token_dim}-wide tokens that only a Kolors UNet can read (through its encoder_hid_proj); "
            "load a Kolors checkpoint"
        )
    return proj
