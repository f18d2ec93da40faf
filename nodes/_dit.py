"""Flux and SD3.5 image prompts in ComfyUI, through its public hooks only.

Each adapted block gets a `patches_replace["dit"]` entry (`("double_block", i)` / `("single_block", i)`: ComfyUI's
Flux `forward_orig` and MMDiT `forward_core_with_concat` call it with the block's inputs and the original block).
The entry runs the original block with one change to the call's `transformer_options`: an
`optimized_attention_override` (honoured by every attention call of current ComfyUI) that watches the block's one
joint attention. From that call it takes the image-stream queries and adds the adapter's image term where the
reference adds it:

- XLabs Flux: `SDPA(q, K_ip, V_ip)` with q the image query after the block's QK-norm, before RoPE, added to the
  image stream after the block. The attention call sees q after RoPE; RoPE is a rotation per pair of channels,
  so the patch rotates it back with the call's own `pe` (exact up to rounding).

Nothing replaces the model's forward, no object of the diffusion model is patched, and no single-slot wrapper is
taken. An entry already at the same key (another pack's, or an earlier adapter's) runs inside ours as the block.
The image keys and values are computed once, when the node runs, on the compute device in the compute dtype; the
patch holds only them (moved with the model by `model_patches_to`). Start/end gate on the call's sigmas on the
device, and cond/uncond rows pick the positive or negative keys without reading anything back to the host.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from ..ipadapter_core import ApplySettings
from ..ipadapter_core.dit import xlabs
from ..ipadapter_core.dit.common import DitFormat, attend
from ..ipadapter_core.dit.formats import DitAdapter
from . import _adapters, _unet

HOSTS = {DitFormat.XLABS_FLUX: "flux", DitFormat.INSTANTX_FLUX: "flux", DitFormat.INSTANTX_SD35: "mmdit"}
HOST_NAMES = {"flux": "Flux", "mmdit": "SD3/SD3.5"}


class DitHostError(RuntimeError):
    """The host's block does not call attention the way this patch was written for (a changed ComfyUI)."""


def comfy_version() -> str:
    try:
        import comfyui_version

        return f"ComfyUI {comfyui_version.__version__}"
    except ImportError:
        return "this ComfyUI version"


def host_of(model) -> str | None:
    """'flux' or 'mmdit' for the diffusion transformers the adapters patch; None for anything else."""
    dm = model.model.diffusion_model
    if hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks"):
        return "flux"
    if hasattr(dm, "joint_blocks"):
        return "mmdit"
    return None


def is_dit(adapter) -> bool:
    return isinstance(adapter, DitAdapter)


# settings


def check_settings(adapter: DitAdapter, settings: ApplySettings) -> None:
    """Refuse the options that have no meaning for a DiT adapter, naming them."""
    wrong = []
    if settings.weight_type != "linear":
        wrong.append(f"weight_type '{settings.weight_type}' (its layer choices are SD1.5/SDXL UNet layers; use linear, "
                     "and block_weights to pick blocks)")
    if settings.embeds_scaling != "V only":
        wrong.append(f"embeds_scaling '{settings.embeds_scaling}' (use V only)")
    if settings.combine_embeds != "concat":
        wrong.append(f"combine_embeds '{settings.combine_embeds}' (several references are concatenated: use concat)")
    if settings.unfold_batch:
        wrong.append("unfold_batch")
    if isinstance(settings.weight, tuple):
        wrong.append("one weight per frame")
    if settings.attn_mask is not None:
        wrong.append("attn_mask (not yet for Flux/SD3.5 adapters)")
    if wrong:
        raise ValueError(f"{adapter.name} is a {adapter.format.value} adapter, which does not take: " + "; ".join(wrong))


def block_weights(text: str, blocks: int) -> tuple[float, ...]:
    """`block_weights` as one scale per adapter block: 'i:w' pairs (unlisted blocks 0); blank: every block 1."""
    text = (text or "").strip()
    if not text:
        return (1.0,) * blocks
    if text.startswith("{"):
        raise ValueError("block_weights: the dict form names UNet blocks; for Flux/SD3.5 adapters write block:weight "
                         f"pairs like '0:1.0, 5:0.5' (blocks 0..{blocks - 1})")
    scales = [0.0] * blocks
    for item in filter(None, (part.strip() for part in re.split(r"[,\n;]", text))):
        m = re.fullmatch(r"(\d+)\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", item)
        if not m:
            raise ValueError(f"block_weights: cannot read '{item[:40]}'; write block:weight pairs like '0:1.0, 5:0.5'")
        index = int(m.group(1))
        if index >= blocks:
            raise ValueError(f"block_weights: block {index} does not exist; this adapter has blocks 0..{blocks - 1}")
        value = float(m.group(2))
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"block_weights: block {index} has no finite weight")
        scales[index] = value
    return tuple(scales)


# terms


@dataclasses.dataclass(frozen=True)
class BlockTerm:
    """One adapter's image keys/values at one block: rows 0 = positive, 1 = negative, (2, heads, tokens, head_dim)."""

    k: torch.Tensor
    v: torch.Tensor
    weight: float
    sigma_range: tuple[float, float] | None
    after_block: bool  # XLabs: added to the image stream after the block; else to the attention output

    def to(self, device) -> BlockTerm:
        return dataclasses.replace(self, k=self.k.to(device), v=self.v.to(device))


def encode_xlabs(adapter: DitAdapter, clip_vision, images: torch.Tensor, image_negative: torch.Tensor | None):
    """CLIP ViT-L image_embeds of the references (and of the negatives; zeros without, as diffusers' pipelines)."""
    if clip_vision is None:
        raise ValueError(f"{adapter.name} needs CLIP ViT-L/14 (clip_vision_l.safetensors): connect clip_vision")
    pos = _image_embeds(adapter, clip_vision, images)
    neg = torch.zeros_like(pos) if image_negative is None else _image_embeds(adapter, clip_vision, image_negative)
    return pos, neg


def _image_embeds(adapter: DitAdapter, clip_vision, images: torch.Tensor) -> torch.Tensor:
    out = clip_vision.encode_image(images)
    embeds = out["image_embeds"] if isinstance(out, dict) or hasattr(out, "__getitem__") else None
    width = adapter.model.embed_dim
    if embeds is None or embeds.ndim != 2 or embeds.shape[-1] != width:
        got = "nothing" if embeds is None else f"image_embeds of shape {tuple(embeds.shape)}"
        raise ValueError(
            f"{adapter.name} reads {width}-wide CLIP ViT-L/14 image_embeds; the connected CLIP vision model gave {got}. "
            "Load clip_vision_l.safetensors (openai/clip-vit-large-patch14) in Load CLIP Vision"
        )
    return embeds.float().cpu()


def xlabs_terms(adapter: DitAdapter, pos: torch.Tensor, neg: torch.Tensor, settings: ApplySettings, model,
                device, dtype, n_heads: int) -> dict[tuple[str, int], BlockTerm]:
    """The per-block keys/values of an XLabs adapter for these references (several references: their tokens
    concatenated, as diffusers does with several images)."""
    _adapters.ready_adapter(adapter, device, dtype)
    m = adapter.model
    with torch.no_grad():
        tokens = xlabs.image_tokens(m, torch.cat([pos, neg]).to(device, dtype))
        n = pos.shape[0]
        tokens = torch.stack([tokens[:n].reshape(-1, m.width), tokens[n:].reshape(-1, m.width)])  # (2, n*N, W)
        scales = block_weights(settings.block_weights, m.blocks)
        sigma_range = _sigma_range(model, settings)
        terms = {}
        for i, scale in enumerate(scales):
            w = float(settings.weight) * scale
            if w == 0:
                continue
            k, v = xlabs.block_kv(m, i, tokens, n_heads)
            terms[("double_block", i)] = BlockTerm(k, v, w, sigma_range, after_block=True)
    return terms


def _sigma_range(model, settings: ApplySettings) -> tuple[float, float] | None:
    if settings.start_at <= 0.0 and settings.end_at >= 1.0:
        return None
    to_sigma = _unet.percent_to_sigma(model)
    return float(to_sigma(settings.start_at)), float(to_sigma(settings.end_at))


# the patch


class DitBlockPatch:
    """The `patches_replace["dit"]` entry of one block: its terms (every adapter chained on this model) and the
    entry that was there before (run as the block), if any."""

    def __init__(self, kind: str, terms: tuple[BlockTerm, ...], inner=None, txt_first: bool = True) -> None:
        self.kind, self.terms, self.inner, self.txt_first = kind, terms, inner, txt_first
        self._rows: dict[tuple, torch.Tensor] = {}

    def to(self, device) -> DitBlockPatch:
        inner = self.inner.to(device) if hasattr(self.inner, "to") else self.inner
        return DitBlockPatch(self.kind, tuple(t.to(device) for t in self.terms), inner, self.txt_first)

    def models(self) -> list:
        return self.inner.models() if hasattr(self.inner, "models") else []

    def chained(self, more: tuple[BlockTerm, ...]) -> DitBlockPatch:
        return DitBlockPatch(self.kind, self.terms + more, self.inner, self.txt_first)

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        if self.inner is not None:
            inner, block = self.inner, original
            original = lambda a: inner(a, {**extra, "original_block": block})  # noqa: E731
        options = args.get("transformer_options") or {}
        call = _BlockCall(self, args, options)
        out = original({**args, "transformer_options": {**options, "optimized_attention_override": call.override}})
        if not call.seen:
            raise DitHostError(
                f"IPAdapter Kit: a {self.kind} of this model did not call attention with "
                f"its transformer_options, so the image prompt cannot enter it. {comfy_version()} is not supported for "
                "Flux/SD3.5 image prompts: update ComfyUI (and IPAdapter Kit)."
            )
        if call.after is not None:
            out = dict(out)
            out["img"] = out["img"] + call.after.to(out["img"].dtype)
        return out

    def rows(self, options: dict, batch: int, device) -> torch.Tensor:
        """Row index into a term's (positive, negative) pair for each batch row, from ComfyUI's cond_or_uncond."""
        cou = tuple(options.get("cond_or_uncond") or (0,))
        key = (cou, batch, str(device))
        index = self._rows.get(key)
        if index is None:
            per = max(batch // len(cou), 1)
            index = torch.tensor([1 if c == 1 else 0 for c in cou for _ in range(per)][:batch], device=device)
            self._rows[key] = index
        return index


class _BlockCall:
    """One run of one patched block: its first attention call is the joint attention the terms enter."""

    def __init__(self, patch: DitBlockPatch, args: dict, options: dict) -> None:
        self.patch, self.args, self.options = patch, args, options
        self.previous = options.get("optimized_attention_override")
        self.seen = False
        self.after: torch.Tensor | None = None

    def override(self, func, *a, **kw):
        out = self.previous(func, *a, **kw) if self.previous is not None else func(*a, **kw)
        if self.seen:
            return out
        self.seen = True
        return self.patch_flux(out, a, kw)

    def patch_flux(self, out: torch.Tensor, a: tuple, kw: dict) -> torch.Tensor:
        q = a[0] if a else kw.get("q")
        pe = self.args.get("pe")
        if q is None or q.ndim != 4 or not kw.get("skip_reshape") or pe is None:
            raise DitHostError(
                "IPAdapter Kit: Flux's joint attention no longer receives (batch, heads, tokens, head_dim) queries with "
                f"rotary embeddings; {comfy_version()} is not supported for Flux image prompts: update IPAdapter Kit."
            )
        txt = self.args["txt"].shape[1] if self.patch.kind == "double_block" else 0
        image = slice(txt, None) if self.patch.txt_first else slice(0, q.shape[2] - txt)
        q_img = unrope(q[:, :, image], pe[:, :, image])
        rows = self.patch.rows(self.options, q.shape[0], q.device)
        sigmas = self.options.get("sigmas")
        total = None
        for term in self.patch.terms:
            k = term.k.index_select(0, rows).to(q_img.dtype)
            v = term.v.index_select(0, rows).to(q_img.dtype)
            add = attend(q_img, k, v) * term.weight
            if term.sigma_range is not None and sigmas is not None:
                s = sigmas.reshape(-1).to(q.device)
                s = s.repeat_interleave(max(q.shape[0] // s.shape[0], 1))[: q.shape[0]] if s.shape[0] != q.shape[0] else s
                start, end = term.sigma_range
                add = add * ((s <= start) & (s >= end)).to(add.dtype).view(-1, 1, 1)
            if term.after_block:
                self.after = add if self.after is None else self.after + add
            else:
                total = add if total is None else total + add
        if total is not None:
            out = out.clone()
            out[:, image] += total.to(out.dtype)
        return out


def unrope(q: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Undo ComfyUI Flux's rotary embedding: q (batch, heads, tokens, head_dim) after RoPE with `pe`
    (batch, 1, tokens, head_dim / 2, 2, 2) -> q before it. Each pair of channels was multiplied by a 2x2 rotation;
    its transpose rotates it back."""
    pairs = q.to(pe.dtype).reshape(*q.shape[:-1], -1, 2)
    back = torch.einsum("...ij,...i->...j", pe, pairs)
    return back.reshape(q.shape).to(q.dtype)


# install


def apply(model, adapter: DitAdapter, images: torch.Tensor, settings: ApplySettings, *, clip_vision=None,
          image_negative: torch.Tensor | None = None):
    """A clone of `model` with the DiT adapter's image prompt on its blocks; `model` itself at weight 0."""
    check_settings(adapter, settings)
    host = host_of(model)
    wanted = HOSTS[adapter.format]
    if host != wanted:
        raise ValueError(
            f"{adapter.name} is a {adapter.format.value} IP-Adapter for {HOST_NAMES[wanted]} models; this model is "
            f"{HOST_NAMES.get(host, 'an SD1.5/SDXL-type UNet or another architecture')}. Load a {HOST_NAMES[wanted]} "
            "model, or pick an adapter made for this one"
        )
    if settings.weight == 0:
        return model
    dm = model.model.diffusion_model
    device, dtype = _unet.compute_device_dtype(model)
    if adapter.format is DitFormat.XLABS_FLUX:
        blocks = len(dm.double_blocks)
        if blocks != adapter.model.blocks or dm.hidden_size != adapter.model.inner:
            raise ValueError(
                f"{adapter.name} has {adapter.model.blocks} double blocks of width {adapter.model.inner}; this Flux model "
                f"has {blocks} of width {dm.hidden_size}. XLabs adapters are made for FLUX.1 dev/schnell"
            )
        pos, neg = encode_xlabs(adapter, clip_vision, images, image_negative)
        terms = xlabs_terms(adapter, pos, neg, settings, model, device, dtype, dm.num_heads)
    else:
        raise ValueError(f"{adapter.format.value} adapters are detected but cannot be applied yet in this version")
    return install(model, terms, txt_first=not getattr(dm.double_blocks[0], "flipped_img_txt", False))


def install(model, terms: dict[tuple[str, int], BlockTerm], *, txt_first: bool = True):
    """A clone with one patch per block, chained onto what is already there."""
    if not terms:
        return model
    model = model.clone()
    to = model.model_options["transformer_options"]
    existing = to.get("patches_replace", {}).get("dit", {})
    for (kind, index), term in terms.items():
        current = existing.get((kind, index))
        if isinstance(current, DitBlockPatch):
            patch = current.chained((term,))
        else:
            patch = DitBlockPatch(kind, (term,), inner=current, txt_first=txt_first)
        model.set_model_patch_replace(patch, "dit", kind, index)
    return model
