"""What the apply and encode nodes do between their widgets and the engine: adapt ComfyUI to it.

The engine (`ipadapter_core.engine`) turns an adapter, embeds and `ApplySettings` into image terms; this
module supplies what only the host knows (the UNet's topology, the compute device and dtype, the sampling
schedule, the CLIP vision encoder, Kolors' `encoder_hid_proj`), applies the FaceID LoRA and installs
the patch.
"""

from __future__ import annotations

import dataclasses

import torch

from ..ipadapter_core import ApplySettings, ImageEmbeds, changes_nothing, check_topology, encode_clip, image_terms
from ..ipadapter_core.enhance import Enhance, check_enhanceable, encode_enhanced, encoder_calls
from . import _adapters, _clip, _dit_apply, _faceid, _patch, _progress, _unet
from ._adapters import AdapterBundle


def changes_nothing_on(model, settings: ApplySettings) -> bool:
    """True when applying with these settings would leave `model` as it is (then nothing needs encoding)."""
    return changes_nothing(_unet.topology(model), settings)


def encode(
    bundle: AdapterBundle,
    images: torch.Tensor | None,
    *,
    clip_vision=None,
    image_negative: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    faces=None,
    batch_size: int = 0,
    enhance: Enhance | None = None,
) -> ImageEmbeds:
    """Encoder features of the references (and their negatives) for this adapter.

    `faces` is a FaceBatch from the InsightFace stage (FaceID adapters); images whose face was not
    found are dropped there, so every row here is a real reference. CLIP vision runs on `batch_size` images
    (or tiles) at a time (0: `DEFAULT_ENCODE_BATCH`); the progress bar counts the encoder calls, and /interrupt
    is honoured before each call. `enhance` asks for the
    ClipVision Enhancer's tiled CLIP features (`ipadapter_core.enhance`); a FaceID identity is then repeated
    to match their references.
    """
    spec = bundle.spec
    if enhance is not None:
        check_enhanceable(spec, source=bundle.name)
    cond: dict[str, torch.Tensor] = {}
    uncond: dict[str, torch.Tensor] = {}
    if spec.kind.uses_face:
        if faces is None:
            raise ValueError(f"{bundle.name} is a FaceID adapter: use Apply FaceID (or Encode with an InsightFace model)")
        face = faces.normed if spec.face_normed else faces.raw
        cond["face"] = face.float() if enhance is None else enhance.repeat(face.float())
        uncond["face"] = torch.zeros_like(cond["face"])
        images = faces.crops
    if spec.kind.uses_clip:
        clip_vision = clip_vision if clip_vision is not None else bundle.clip_vision
        if clip_vision is None:
            raise ValueError(
                f"{bundle.name} needs a CLIP vision model ({_clip.clip_file_hint(spec)}): connect clip_vision, or load "
                "the adapter with the Unified Loader, which brings it along. If clip_vision is connected, its loader "
                "returned nothing: ComfyUI did not recognise that file as a CLIP vision model; pick another file there"
            )
        _clip.check_clip(spec, clip_vision, bundle.name)
        negatives = None if image_negative is None else image_negative.shape[0]
        batch_size = batch_size if batch_size > 0 else DEFAULT_ENCODE_BATCH
        bar = _progress.progress(encoder_calls(spec, images.shape[0], negatives, enhance, batch_size))

        def clip_encoder(pixels, _encode=_clip.encoder(clip_vision)):  # one bar step per encoder call
            _stop_if_interrupted()
            out = _encode(pixels)
            bar.update(1)
            return out

        options = dict(negative_images=image_negative, mask=mask, batch_size=batch_size)
        if enhance is None:
            cond["clip"], uncond["clip"] = encode_clip(spec, clip_encoder, images, **options)
        else:
            cond["clip"], uncond["clip"] = encode_enhanced(spec, clip_encoder, images, enhance, source=bundle.name, **options)
    return ImageEmbeds(
        cond=cond,
        uncond=uncond,
        clip_encoder=spec.clip_encoder,
        clip_output=spec.clip_output,
        face_normed=spec.face_normed if spec.kind.uses_face else None,
        adapter_kind=spec.kind,
    )


DEFAULT_ENCODE_BATCH = 32
"""Encoder rows per CLIP vision call when encode_batch_size is 0: big batches are encoded in chunks, each one a
progress step and an interrupt point, and never hold more than one chunk's activations."""


def _stop_if_interrupted() -> None:
    """Raise the host's interrupt exception when the user pressed Cancel (/interrupt) since the node started."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def encode_faces(bundle, image, insightface, *, clip_vision=None, image_negative=None, choice="largest",
                 on_missing: str = "error", batch_size: int = 0):
    """Embeds of the faces found in `image` (images without a face dropped; None when no image has one) and the aligned crops.

    `choice` is "largest" or a face index; `on_missing` is "error" or "skip".
    """
    embeds, crops, _ = encode_face_frames(bundle, image, insightface, clip_vision=clip_vision, image_negative=image_negative,
                                          choice=choice, on_missing=on_missing, batch_size=batch_size, keep_frames=False)
    return embeds, crops


def encode_face_frames(bundle, image, insightface, *, clip_vision=None, image_negative=None, choice="largest",
                       on_missing: str = "error", batch_size: int = 0, keep_frames: bool = True):
    """`encode_faces` plus which images had a face (a list of bools). With `keep_frames` (unfolding a batch)
    an image without a face keeps its place instead of being dropped: it borrows the first found face's
    features, and `face_frame_weights` gives its frame weight 0."""
    spec = bundle.spec
    if not spec.kind.uses_face:
        raise ValueError(
            f"{bundle.name} is not a FaceID adapter (it is {spec.variant}, which reads CLIP image features, not a face "
            "identity): use Apply IPAdapter for it, or give this node a FaceID adapter (ip-adapter-faceid*, or the Unified "
            "Loader's FaceID presets)"
        )
    faces = _faceid.analyze(face_analyzer(bundle, insightface), image, crop_size=spec.face_crop_size or 224, choice=choice, on_missing=on_missing)
    keep = faces.found
    crops = faces.crops
    found = [bool(x) for x in keep.tolist()]
    if not any(found):
        return None, crops, found
    rows = keep
    if keep_frames and not all(found):
        first = found.index(True)
        rows = torch.tensor([i if f else first for i, f in enumerate(found)], dtype=torch.long)
    picked = dataclasses.replace(faces, normed=faces.normed[rows], raw=faces.raw[rows], crops=crops[rows], found=keep[rows])
    return encode(bundle, None, clip_vision=clip_vision, image_negative=image_negative, faces=picked, batch_size=batch_size), crops, found


def face_analyzer(bundle: AdapterBundle, insightface=None):
    """The InsightFace analyzer for a FaceID adapter: the connected one, else the one the Unified Loader brought."""
    analyzer = insightface if insightface is not None else bundle.insightface
    if analyzer is None:
        raise ValueError(
            f"{bundle.name} is a FaceID adapter: connect an InsightFace Loader to insightface, or load the adapter with a "
            "FaceID preset of the Unified Loader"
        )
    return analyzer


def face_frame_weights(weight, found: list[bool]) -> list[float]:
    """Per-frame weights when unfolding faces: frame f keeps its weight when image f (the last image for later
    frames) has a face, else 0."""
    weights = ApplySettings(weight=weight).frame_weights
    count = max(len(weights), len(found))
    return [weights[min(f, len(weights) - 1)] if found[min(f, len(found) - 1)] else 0.0 for f in range(count)]


def apply(model, bundle: AdapterBundle, embeds: ImageEmbeds, settings: ApplySettings, *, clip_vision=None,
          lora_strength: float = 0.0, kolors_scale: float = 1.0):
    """A clone of `model` with the adapter's image prompt installed; `model` itself when nothing would change.

    FaceID adapters that ship a LoRA get it at `lora_strength` unless the model already carries it.
    `kolors_scale` scales Kolors' `encoder_hid_proj` output for this adapter's tokens (Kolors FaceID's weight_kolors).
    Flux/SD3.5 adapters take embeds made for them by Encode.
    """
    if _dit_apply.is_dit(bundle.adapter):
        return _dit_apply.apply_embeds(model, bundle.adapter, embeds, settings)
    return apply_all(model, [Prompt(bundle, embeds, settings, clip_vision=clip_vision, kolors_scale=kolors_scale)],
                     lora_strength=lora_strength)


def apply_images(model, bundle: AdapterBundle, images: torch.Tensor, settings: ApplySettings, *, clip_vision=None,
                 image_negative: torch.Tensor | None = None, batch_size: int = 0):
    """`apply` from reference images: they are encoded only when the settings change something."""
    if _dit_apply.is_dit(bundle.adapter):
        return _dit_apply.apply(model, bundle.adapter, images, settings, image_negative=image_negative,
                          clip_vision=clip_vision if clip_vision is not None else bundle.clip_vision)
    if changes_nothing_on(model, settings):
        return model  # nothing to encode
    embeds = encode(bundle, images, clip_vision=clip_vision, image_negative=image_negative, batch_size=batch_size)
    return apply(model, bundle, embeds, settings, clip_vision=clip_vision)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One image prompt to install: an adapter, its embeds and settings (and the CLIP vision model for legacy embeds)."""

    bundle: AdapterBundle
    embeds: ImageEmbeds
    settings: ApplySettings
    clip_vision: object = None
    kolors_scale: float = 1.0


def apply_all(model, prompts: list[Prompt], *, lora_strength: float = 0.0):
    """A clone of `model` with every prompt installed (one clone, one patch per layer holding all their terms);
    `model` itself when none changes anything. The FaceID LoRA of the prompts' adapters is applied once each."""
    for prompt in prompts:
        if _dit_apply.is_dit(prompt.bundle.adapter):
            raise ValueError(f"{prompt.bundle.name} is a {prompt.bundle.adapter.format.value} adapter: use it with Apply "
                             "IPAdapter (reference images); this node works with SD1.5/SDXL adapters only")
    topo = _unet.topology(model)
    for prompt in prompts:
        check_topology(prompt.bundle.adapter, topo)
    prompts = [p for p in prompts if not changes_nothing(topo, p.settings)]
    if not prompts:
        return model
    device, dtype = _unet.compute_device_dtype(model)
    percent_to_sigma = _unet.percent_to_sigma(model)
    term_sets = []
    for prompt in prompts:
        spec = prompt.bundle.spec
        _adapters.ready_adapter(prompt.bundle.adapter, device, dtype)
        encoder = None
        if spec.kind.uses_clip and not prompt.embeds.uncond:
            cv = prompt.clip_vision if prompt.clip_vision is not None else prompt.bundle.clip_vision
            encoder = _clip.encoder(cv) if cv is not None else None
        term_sets.append(image_terms(
            prompt.bundle.adapter, topo, prompt.embeds, prompt.settings, percent_to_sigma=percent_to_sigma, encode=encoder,
            pre=_kolors_pre(model, spec, prompt.kolors_scale),
        ))
    for adapter in dict.fromkeys(p.bundle.adapter for p in prompts):
        if lora_strength and adapter.lora and not _faceid.has_lora(model, adapter):
            model = _faceid.apply_lora(model, adapter, lora_strength)
    return _patch.install(model, topo, *term_sets)


def _kolors_pre(model, spec, scale: float = 1.0):
    if spec.token_dim == spec.cross_attention_dim:
        return None
    proj = getattr(model.model.diffusion_model, "encoder_hid_proj", None)
    if proj is None:
        raise ValueError(
            f"{spec.variant} makes {spec.token_dim}-wide tokens that only a Kolors UNet can read (through its encoder_hid_proj); "
            "load a Kolors checkpoint"
        )
    if scale == 1.0:
        return proj
    return lambda tokens: proj(tokens) * scale
