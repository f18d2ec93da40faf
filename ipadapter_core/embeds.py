"""Image embeds: the encoder features of reference images and their negatives, before projection.

Embeds hold what the encoders produce (CLIP `image_embeds` or penultimate tokens, InsightFace
identity vectors), not projected tokens, so one encode serves every adapter that reads the same
encoder output, and embeds can be combined, saved and checked against an adapter before use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import checks
from .adapter import IPAdapterModel, project
from .images import clip_pixels, zero_pixels
from .spec import AdapterKind, AdapterSpec, ClipOutput

COMBINE_METHODS = ("concat", "add", "subtract", "average", "norm average", "max", "min")

ClipEncoder = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""Normalised pixels `[B, 3, S, S]` -> {"image_embeds": [B, P], "penultimate": [B, N, E]}."""


@dataclass(frozen=True)
class ImageEmbeds:
    """Features of n references: `cond[name]` is `[n, ...]`; `uncond` has the same keys and shapes, or is
    empty when the negative is to be built by the reference rule at apply time."""

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] = field(default_factory=dict)
    clip_encoder: str | None = None
    clip_output: ClipOutput | None = None
    face_normed: bool | None = None
    adapter_kind: AdapterKind | None = None  # what they were encoded for (informational)

    def __post_init__(self) -> None:
        sizes = {t.shape[0] for t in self.cond.values()}
        if not self.cond or len(sizes) != 1:
            raise ValueError("embeds need at least one feature and the same number of references in each")
        for name, t in self.uncond.items():
            if name not in self.cond or t.shape != self.cond[name].shape:
                raise ValueError(f"negative '{name}' has shape {tuple(t.shape)}, expected {tuple(self.cond[name].shape)}")

    @property
    def count(self) -> int:
        return next(iter(self.cond.values())).shape[0]

    def to(self, device: torch.device | str) -> ImageEmbeds:
        """The same embeds with every feature on `device`."""
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return replace(self, cond=move(self.cond), uncond=move(self.uncond))

    def describe(self) -> str:
        parts = [f"{self.count} reference(s)"]
        if "clip" in self.cond:
            parts.append(f"CLIP {self.clip_encoder or ''} {self.clip_output.value if self.clip_output else ''} {tuple(self.cond['clip'].shape[1:])}")
        if "face" in self.cond:
            parts.append(f"face {'normed' if self.face_normed else 'raw'} {tuple(self.cond['face'].shape[1:])}")
        return ", ".join(" ".join(p.split()) for p in parts)

    def check(self, spec: AdapterSpec, *, source: str = "these embeds") -> None:
        """Raise ValueError when the features cannot drive the adapter, saying what differs and the fix."""
        problems = []
        if spec.kind.uses_clip:
            clip = self.cond.get("clip")
            want = "[n, tokens, width]" if spec.clip_output is ClipOutput.PENULTIMATE else "[n, width]"
            if clip is None:
                problems.append("it needs CLIP features but these have none")
            elif self.clip_output is not spec.clip_output or clip.shape[-1] != spec.clip_dim:
                have = f"{self.clip_output.value if self.clip_output else 'unknown'} width {clip.shape[-1]}"
                problems.append(f"it reads CLIP {spec.clip_output.value} {want} of width {spec.clip_dim}, these are {have}")
        if spec.kind.uses_face:
            face = self.cond.get("face")
            if face is None:
                problems.append("it needs an InsightFace embedding but these have none")
            elif face.shape[-1] != spec.face_dim:
                problems.append(f"it reads {spec.face_dim}-wide face embeddings, these are {face.shape[-1]} wide")
            elif self.face_normed is not None and self.face_normed != spec.face_normed:
                problems.append(
                    f"it reads {'normed' if spec.face_normed else 'raw (unnorm)'} face embeddings, these are "
                    f"{'normed' if self.face_normed else 'raw'}"
                )
        if self.count == 0:
            raise ValueError(f"{source} hold 0 references; encode at least one image (an empty batch or every face skipped gives none)")
        for name, t in (*self.cond.items(), *(("negative " + k, v) for k, v in self.uncond.items())):
            checks.finite(f"{source} ({name} features)", t, "encode the images again (check them for NaN pixels), or load intact embeds")
        if problems:
            encoder = f" ({spec.clip_encoder})" if spec.clip_encoder else ""
            raise ValueError(
                f"{source} do not fit the adapter {spec.variant}{encoder}: {'; '.join(problems)}. Encode the images "
                "again with this adapter and its matching encoder."
            )


# combining


def combine_features(x: torch.Tensor, method: str) -> torch.Tensor:
    """Combine n references `[n, ...]` into `[1, ...]` (or keep all n for concat)."""
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method '{method}'; choose one of: {', '.join(COMBINE_METHODS)}")
    if method == "concat" or x.shape[0] == 1:
        return x
    if method == "add":
        return x.sum(0, keepdim=True)
    if method == "subtract":
        return x[:1] - x[1:].mean(0, keepdim=True)
    if method == "average":
        return x.mean(0, keepdim=True)
    if method == "norm average":  # average directions, keep the average length
        # in float64: squaring float32 features overflows from about 1e19 (the norms would be inf, the result NaN)
        wide = x.double()
        norms = wide.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return ((wide / norms).mean(0, keepdim=True) * norms.mean(0, keepdim=True)).to(x.dtype)
    return x.amax(0, keepdim=True) if method == "max" else x.amin(0, keepdim=True)


def combine(embeds: ImageEmbeds, method: str) -> ImageEmbeds:
    """Apply a combine method over the references; negatives are averaged for every method but concat."""
    if method == "concat" or embeds.count == 1:
        return embeds
    cond = {k: combine_features(v, method) for k, v in embeds.cond.items()}
    uncond = {k: v.mean(0, keepdim=True) for k, v in embeds.uncond.items()}
    return replace(embeds, cond=cond, uncond=uncond)


def concat(items: list[ImageEmbeds]) -> ImageEmbeds:
    """All references of several embeds in one, after checking they come from the same encoders."""
    first = items[0]
    for other in items[1:]:
        if set(other.cond) != set(first.cond) or other.clip_output is not first.clip_output or any(
            other.cond[k].shape[1:] != first.cond[k].shape[1:] for k in first.cond
        ):
            raise ValueError(f"cannot combine embeds of different kinds: {first.describe()} vs {other.describe()}")
    has_uncond = all(e.uncond for e in items)
    cond = {k: torch.cat([e.cond[k] for e in items]) for k in first.cond}
    uncond = {k: torch.cat([e.uncond[k] for e in items]) for k in first.cond} if has_uncond else {}
    return replace(first, cond=cond, uncond=uncond)


def scaled(embeds: ImageEmbeds, weight: float) -> ImageEmbeds:
    """The embeds with every positive feature times `weight` (the negatives unchanged): a stronger or weaker
    reference before projection, as the Encode node's weight."""
    if weight == 1.0:
        return embeds
    return replace(embeds, cond={k: v * weight for k, v in embeds.cond.items()})


def with_negative(embeds: ImageEmbeds, negative: ImageEmbeds) -> ImageEmbeds:
    """`embeds` whose negatives are the positive features of `negative` (one reference for all, or one per reference),
    replacing the negatives `embeds` carry."""
    if set(negative.cond) != set(embeds.cond) or negative.clip_output is not embeds.clip_output or any(
        negative.cond[k].shape[1:] != v.shape[1:] for k, v in embeds.cond.items()
    ):
        raise ValueError(f"the negative embeds do not match the embeds: {negative.describe()} vs {embeds.describe()}; "
                         "encode both with the same adapter")
    n, m = embeds.count, negative.count
    if m not in (1, n):
        raise ValueError(f"the negative embeds hold {m} references for {n}; give 1, or one per reference")
    uncond = {k: v.to(embeds.cond[k]).expand_as(embeds.cond[k]).contiguous() for k, v in negative.cond.items()}
    return replace(embeds, uncond=uncond)


# encoding


def encode_clip(
    spec: AdapterSpec,
    encode: ClipEncoder,
    images: torch.Tensor,
    *,
    negative_images: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    batch_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP features of references and their negatives, in as few encoder passes as possible.

    The negative is the reference rule (zeros for `image_embeds` and for Kolors FaceID; the encoder's view
    of an all-zero normalised image for token adapters) unless `negative_images` are given (1, or one per image).
    Returns `(cond [n, ...], uncond [n, ...])`.
    """
    size = spec.clip_size or 224
    pixels = clip_pixels(images, size, mask)
    n = pixels.shape[0]
    if negative_images is not None:
        negatives = clip_pixels(negative_images, size)
        if negatives.shape[0] not in (1, n):
            raise ValueError(f"{negatives.shape[0]} negative images for {n} images; give 1 or {n}")
    elif not spec.zero_clip_negative:
        negatives = zero_pixels(1, size, device=pixels.device)
    else:
        negatives = None
    batch = pixels if negatives is None else torch.cat([pixels, negatives.to(pixels)])
    features = _encode_batched(encode, batch, "penultimate" if spec.clip_output is ClipOutput.PENULTIMATE else "image_embeds", batch_size)
    cond = features[:n]
    if negatives is None:
        uncond = torch.zeros_like(cond)
    else:
        uncond = features[n:].expand(n, *features.shape[1:]) if negatives.shape[0] == 1 else features[n:]
    return cond, uncond.contiguous()


def _encode_batched(encode: ClipEncoder, pixels: torch.Tensor, output: str, batch_size: int) -> torch.Tensor:
    if batch_size <= 0 or pixels.shape[0] <= batch_size:
        return encode(pixels)[output]
    return torch.cat([encode(chunk)[output] for chunk in pixels.split(batch_size)])


def negative_features(spec: AdapterSpec, embeds: ImageEmbeds, encode: ClipEncoder | None = None) -> dict[str, torch.Tensor]:
    """The reference negative for embeds that carry none (zeros, or CLIP of a zero image)."""
    out = {}
    n = embeds.count
    if "face" in embeds.cond:
        out["face"] = torch.zeros_like(embeds.cond["face"])
    if "clip" in embeds.cond:
        clip = embeds.cond["clip"]
        if not spec.zero_clip_negative:
            if encode is None:
                raise ValueError(
                    f"these embeds carry no negative, and {spec.variant} needs the CLIP encoding of an empty image for it: "
                    "connect a clip_vision model, or encode the embeds with this pack's Encode node"
                )
            zero = encode(zero_pixels(1, spec.clip_size or 224, device=clip.device))["penultimate"]
            out["clip"] = zero.to(clip).expand(n, *clip.shape[1:]).contiguous()
        else:
            out["clip"] = torch.zeros_like(clip)
    return out


def project_embeds(model: IPAdapterModel, embeds: ImageEmbeds, *, shortcut_scale: float = 1.0, encode: ClipEncoder | None = None):
    """Projected tokens `(cond [n, T, C], uncond [n, T, C])` of embeds for an adapter model."""
    spec = model.spec
    embeds.check(spec)
    uncond = embeds.uncond or negative_features(spec, embeds, encode)

    n = embeds.count
    both = {k: torch.cat([embeds.cond[k], uncond[k].to(embeds.cond[k])]) for k in embeds.cond}
    with torch.inference_mode():  # one pass for positives and negatives
        tokens = project(model, clip=both.get("clip"), face=both.get("face"), shortcut_scale=shortcut_scale)
    return tokens[:n], tokens[n:]

