"""Apply a Flux or SD3.5 adapter: check the model and options, encode the references, build the block terms.

XLabs and InstantX Flux keys/values depend only on the references, so they are computed once here, on the compute
device in the compute dtype, and the patch holds only them: the adapter's weights are used under ComfyUI's model
management (`_adapters.ready_adapter`) while this node runs and can be offloaded afterwards. The SD3.5 resampler
depends on the timestep, so its terms keep the adapter (its ModelPatcher is returned by the patch's `models()`, so
ComfyUI loads it with the model) and compute its tokens once per model call, shared by the 38 blocks.
"""

from __future__ import annotations

import threading
import weakref

import torch

from ..ipadapter_core import ApplySettings, ImageEmbeds, as_mask_batch, parse_index_weights, sigma_range
from ..ipadapter_core.dit import instantx_flux, sd3, siglip_head, xlabs
from ..ipadapter_core.dit.common import DitCheckpointError, DitFormat
from ..ipadapter_core.dit.formats import DitAdapter
from . import _adapters, _dit, _folders, _unet
from ._dit import FLUX, MMDIT, KVTerm, Term

HOSTS = {DitFormat.XLABS_FLUX: FLUX, DitFormat.INSTANTX_FLUX: FLUX, DitFormat.INSTANTX_SD35: MMDIT}
HOST_NAMES = {FLUX: "Flux", MMDIT: "SD3.5"}
ENCODERS = {
    DitFormat.XLABS_FLUX: "CLIP ViT-L/14 (clip_vision_l.safetensors, openai/clip-vit-large-patch14)",
    DitFormat.INSTANTX_FLUX: "SigLIP so400m-patch14-384 (google/siglip-so400m-patch14-384 model.safetensors)",
    DitFormat.INSTANTX_SD35: "SigLIP so400m-patch14-384 (google/siglip-so400m-patch14-384 model.safetensors)",
}


def is_dit(adapter) -> bool:
    return isinstance(adapter, DitAdapter)


def host_of(model) -> str | None:
    """'flux' or 'mmdit' for the diffusion transformers the adapters patch; None for anything else."""
    dm = model.model.diffusion_model
    if hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks"):
        return FLUX
    if hasattr(dm, "joint_blocks"):
        return MMDIT
    return None


# options


def check_settings(adapter: DitAdapter, settings: ApplySettings) -> None:
    """Refuse, by name, the options that have no meaning for a DiT adapter."""
    wrong = []
    if settings.weight_type != "linear":
        wrong.append(f"weight_type '{settings.weight_type}' (its layer choices are SD1.5/SDXL UNet layers; use linear "
                     "and block_weights)")
    if settings.embeds_scaling != "V only":
        wrong.append(f"embeds_scaling '{settings.embeds_scaling}' (use V only)")
    if settings.combine_embeds != "concat":
        wrong.append(f"combine_embeds '{settings.combine_embeds}' (several references are concatenated: use concat)")
    if settings.unfold_batch:
        wrong.append("unfold_batch")
    if isinstance(settings.weight, tuple):
        wrong.append("one weight per frame")
    if settings.attn_mask is not None and as_mask_batch(settings.attn_mask).shape[0] != 1:
        wrong.append("a batch of attn_masks (one mask acts for all references here: to give each reference its own "
                     "region, chain one Apply node per reference with its mask)")
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
    return parse_index_weights(text, blocks, unit="block", owner="adapter", example="'0:1.0, 5:0.5'")


# encoders


def _encode(adapter: DitAdapter, clip_vision, images: torch.Tensor, output: str) -> torch.Tensor:
    if clip_vision is None:
        raise ValueError(f"{adapter.name} needs {ENCODERS[adapter.format]}: connect clip_vision (Load CLIP Vision)")
    out = clip_vision.encode_image(images)
    try:
        return out[output].float()
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"the connected CLIP vision model gives no {output}; {adapter.name} needs "
                         f"{ENCODERS[adapter.format]}") from None


def _wrong_encoder(adapter: DitAdapter, got: torch.Tensor, wanted: str) -> ValueError:
    return ValueError(f"{adapter.name} reads {wanted}; the connected CLIP vision model gave features of shape "
                      f"{tuple(got.shape)}. Load {ENCODERS[adapter.format]} in Load CLIP Vision")


def xlabs_features(adapter: DitAdapter, clip_vision, images: torch.Tensor) -> torch.Tensor:
    embeds = _encode(adapter, clip_vision, images, "image_embeds")
    if embeds.ndim != 2 or embeds.shape[-1] != adapter.model.embed_dim:
        raise _wrong_encoder(adapter, embeds, f"{adapter.model.embed_dim}-wide CLIP ViT-L/14 image_embeds")
    return embeds


def instantx_features(adapter: DitAdapter, clip_vision, images: torch.Tensor) -> torch.Tensor:
    hidden = _encode(adapter, clip_vision, images, "last_hidden_state")
    width = adapter.model.image_proj.proj[0].in_features
    if hidden.ndim != 3 or hidden.shape[-1] != width:
        raise _wrong_encoder(adapter, hidden, f"{width}-wide SigLIP features")
    head = siglip_head_for(clip_vision)
    with torch.no_grad():
        return head.to(hidden.device)(hidden)


def sd3_features(adapter: DitAdapter, clip_vision, images: torch.Tensor) -> torch.Tensor:
    hidden = _encode(adapter, clip_vision, images, "penultimate_hidden_states")
    width = adapter.model.config.embed_dim
    if hidden.ndim != 3 or hidden.shape[-1] != width:
        raise _wrong_encoder(adapter, hidden, f"{width}-wide SigLIP penultimate hidden states")
    return hidden


_heads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_heads_lock = threading.Lock()
POST_LN = "vision_model.post_layernorm.weight"


def siglip_head_for(clip_vision) -> siglip_head.SiglipPoolingHead:
    """SigLIP's attention-pooling head for a loaded SigLIP CLIP vision model. ComfyUI does not keep the head, so it
    is read from the file in models/clip_vision that holds this model: the `.safetensors` file with a
    `vision_model.head.*` whose post-layernorm weight equals the model's."""
    with _heads_lock:
        head = _heads.get(clip_vision)
        if head is not None:
            return head
    state = clip_vision.get_sd()
    wanted = state.get(POST_LN)
    if wanted is None:
        raise ValueError("the connected CLIP vision model is not SigLIP (it has no post-layernorm); load "
                         f"{ENCODERS[DitFormat.INSTANTX_FLUX]}")
    from safetensors import safe_open

    searched = []
    for name in _folders.file_list("clip_vision"):
        if not name.lower().endswith((".safetensors", ".sft")):
            continue
        path = _folders.resolve("clip_vision", name)
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                if not siglip_head.has_head(dict.fromkeys(keys)) or POST_LN not in keys:
                    searched.append(f"{name} (no head)")
                    continue
                if not torch.equal(f.get_tensor(POST_LN).float(), wanted.float().cpu()):
                    continue
        except Exception:  # an unreadable file is not the one we look for
            continue
        head = siglip_head.load_head(path)
        with _heads_lock:
            _heads[clip_vision] = head
        return head
    raise DitCheckpointError(
        "InstantX Flux adapters read SigLIP's pooled output, made by the attention-pooling head that ComfyUI's SigLIP "
        "model does not keep; no SigLIP file in models/clip_vision has that head (`vision_model.head.*`) and the "
        f"connected model's weights. Use {ENCODERS[DitFormat.INSTANTX_FLUX]}, whose file includes the head"
        + (f". Checked: {', '.join(searched[:6])}" if searched else "")
    )


# terms


def _pair(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """(2, n * tokens, width): the references' tokens concatenated, positive row then negative row."""
    return torch.stack([pos.reshape(-1, pos.shape[-1]), neg.reshape(-1, neg.shape[-1])])


def xlabs_terms(adapter, pos, neg, scales, weight, sigma_range, mask, n_heads) -> dict[tuple[str, int], Term]:
    m = adapter.model
    tokens = _pair(xlabs.image_tokens(m, pos), xlabs.image_tokens(m, neg))
    return {("double_block", i): KVTerm(*xlabs.block_kv(m, i, tokens, n_heads), weight * s, sigma_range, after=True,
                                        mask=mask)
            for i, s in enumerate(scales) if weight * s != 0}


def instantx_terms(adapter, pos, neg, scales, weight, sigma_range, mask, n_heads,
                   doubles) -> dict[tuple[str, int], Term]:
    m = adapter.model
    tokens = _pair(instantx_flux.image_tokens(m, pos), instantx_flux.image_tokens(m, neg))
    terms = {}
    for i, s in enumerate(scales):
        if weight * s == 0:
            continue
        key = ("double_block", i) if i < doubles else ("single_block", i - doubles)
        terms[key] = KVTerm(*instantx_flux.block_kv(m.layer(i), tokens, n_heads), weight * s, sigma_range, after=False,
                            mask=mask)
    return terms


class SD3Prompt:
    """What the 38 block terms of one SD3.5 image prompt share: the adapter, the references' features (row 0
    positive, 1 negative) and, per model call, the resampler's tokens for that call's rows and timesteps."""

    def __init__(self, adapter: DitAdapter, features: torch.Tensor, timestep, patcher) -> None:
        self.adapter, self.features, self.timestep, self.patcher = adapter, features, timestep, patcher
        self._cache: tuple = (None, None, None)
        self._moved: dict[str, SD3Prompt] = {}

    def to(self, target) -> SD3Prompt:
        """The prompt with its features on a device: one object per device, so the 38 block terms moved there
        still share one resampler result per model call. A dtype leaves it as it is (the features are cast to the
        adapter's dtype where they are used)."""
        moved = _dit.move_args(target)
        if moved is None or "dtype" in moved:
            return self
        key = str(moved["device"])
        prompt = self._moved.get(key)
        if prompt is None:
            same = self.features.device == moved["device"]
            prompt = self if same else SD3Prompt(self.adapter, self.features.to(**moved), self.timestep, self.patcher)
            self._moved[key] = prompt
        return prompt

    def tokens(self, call) -> tuple[torch.Tensor, torch.Tensor]:
        """The resampler's (tokens, temb) for this call's rows and sigmas: computed by the call's first block, then
        reused by the others (the same `sigmas` tensor object reaches every block of one model call)."""
        sigmas = call.options.get("sigmas")
        rows = call.rows(call.q.device)
        key = (tuple(call.options.get("cond_or_uncond") or ()), rows.numel())
        ref, cached_key, value = self._cache
        if ref is not None and ref() is sigmas and cached_key == key:
            return value
        model = self.adapter.model
        dtype = model.image_proj.proj_in.weight.dtype
        feats = self.features.to(call.q.device, dtype).index_select(0, rows)
        t = self.timestep(sigmas.reshape(-1).to(call.q.device)) if sigmas is not None else torch.zeros(1)
        value = sd3.image_tokens(model, feats, t if t.numel() == rows.numel() else t[:1])
        self._cache = (weakref.ref(sigmas) if sigmas is not None else None, key, value)
        return value


class SD3Term(Term):
    def __init__(self, prompt: SD3Prompt, block: int, attn, weight: float, sigma_range, mask=None) -> None:
        super().__init__(weight, sigma_range)
        self.prompt, self.block, self.attn, self.mask = prompt, block, attn, mask

    def to(self, target) -> SD3Term:
        moved = _dit.move_args(target)
        if moved is None:
            return self
        mask = None if self.mask is None else self.mask.to(**moved)
        return SD3Term(self.prompt.to(target), self.block, self.attn, self.weight, self.sigma_range, mask)

    def models(self) -> list:
        return [self.prompt.patcher] if self.prompt.patcher is not None else []

    def compute(self, call) -> torch.Tensor:
        block = self.prompt.adapter.model.block(self.block)
        q, k = _unnorm(call.q, self.attn.ln_q), _unnorm(call.k, self.attn.ln_k)
        tokens, temb = self.prompt.tokens(call)
        kv = sd3.block_kv(block, tokens, temb, q.shape[1])
        return sd3.block_term(block, q, k, call.v.to(q.dtype), kv)


def _unnorm(x: torch.Tensor, norm) -> torch.Tensor:
    """The host's RMS-normed heads divided by the norm's weight: x / rms(x), which the adapter's own RMSNorm maps to
    what it makes of x itself. Identity norms (SD3 without QK-norm) give x."""
    weight = getattr(norm, "weight", None)
    return x if weight is None else x / weight.to(x.device, x.dtype)


def _check_sd3_norms(adapter: DitAdapter, dm) -> None:
    for i, jb in enumerate(dm.joint_blocks):
        attn = jb.x_block.attn
        for name in ("ln_q", "ln_k"):
            norm = getattr(attn, name, None)
            ok = isinstance(norm, torch.nn.Identity) or (
                type(norm).__name__ == "RMSNorm" and getattr(norm, "weight", None) is not None
                and bool((norm.weight.abs() > 1e-6).all()))
            if not ok:
                raise _dit.DitHostError(
                    f"IPAdapter Kit: joint block {i} of this SD3 model normalises {name[3:]} with "
                    f"{type(norm).__name__}; {adapter.name} can enter only blocks with an RMSNorm (SD3.5 Large) or no "
                    f"QK-norm ({_dit.comfy_version()})"
                )
        if getattr(jb.x_block, "x_block_self_attn", False):
            raise ValueError(f"{adapter.name} is for SD3.5 Large; this model's block {i} has the extra self-attention "
                             "of SD3.5 Medium")


# apply


ENCODE = {DitFormat.XLABS_FLUX: xlabs_features, DitFormat.INSTANTX_FLUX: instantx_features,
          DitFormat.INSTANTX_SD35: sd3_features}
FEATURES = {  # what embeds made for each format hold (ImageEmbeds.clip_encoder), so Apply Embeds can check them
    DitFormat.XLABS_FLUX: "CLIP ViT-L/14 image_embeds",
    DitFormat.INSTANTX_FLUX: "SigLIP so400m pooled",
    DitFormat.INSTANTX_SD35: "SigLIP so400m penultimate",
}
EMBEDS_KEY = "dit"


def apply(model, adapter: DitAdapter, images: torch.Tensor, settings: ApplySettings, *, clip_vision=None,
          image_negative: torch.Tensor | None = None):
    """A clone of `model` with the adapter's image prompt on its blocks; `model` itself at weight 0. The model and
    the options are checked before anything is encoded."""
    _check(model, adapter, settings)
    if settings.weight == 0:
        return model
    pos, neg = _features(adapter, ENCODE[adapter.format], clip_vision, images, image_negative)
    return _install(model, adapter, pos, neg, settings)


def encode_embeds(adapter: DitAdapter, images: torch.Tensor, *, clip_vision=None,
                  image_negative: torch.Tensor | None = None) -> ImageEmbeds:
    """The encoder features a DiT adapter reads, as embeds (positive and negative) for Apply Embeds, Combine, Save."""
    pos, neg = _features(adapter, ENCODE[adapter.format], clip_vision, images, image_negative)
    return ImageEmbeds(cond={EMBEDS_KEY: pos}, uncond={EMBEDS_KEY: neg}, clip_encoder=FEATURES[adapter.format])


def apply_embeds(model, adapter: DitAdapter, embeds: ImageEmbeds, settings: ApplySettings):
    """`apply` from embeds made by `encode_embeds` for an adapter of the same format (checked)."""
    _check(model, adapter, settings)
    pos = embeds.cond.get(EMBEDS_KEY)
    if pos is None or embeds.clip_encoder != FEATURES[adapter.format]:
        raise ValueError(f"{adapter.name} reads {FEATURES[adapter.format]} features; these embeds hold "
                         f"{embeds.clip_encoder or embeds.describe()}. Encode the references with this adapter")
    if settings.weight == 0:
        return model
    neg = embeds.uncond.get(EMBEDS_KEY)
    return _install(model, adapter, pos, torch.zeros_like(pos) if neg is None else neg, settings)


def _check(model, adapter: DitAdapter, settings: ApplySettings) -> None:
    """The options, the model family, and the model's blocks against the adapter's."""
    check_settings(adapter, settings)
    host, wanted = host_of(model), HOSTS[adapter.format]
    if host != wanted:
        raise ValueError(
            f"{adapter.name} is a {adapter.format.value} IP-Adapter for {HOST_NAMES[wanted]} models; this model is "
            f"{HOST_NAMES.get(host, 'an SD1.5/SDXL-type UNet or another architecture')}. Load a {HOST_NAMES[wanted]} "
            "model, or an adapter made for this one"
        )
    dm, m = model.model.diffusion_model, adapter.model
    if adapter.format is DitFormat.XLABS_FLUX:
        _check_blocks(adapter, m.blocks, m.inner, len(dm.double_blocks), dm.hidden_size, "double blocks")
    elif adapter.format is DitFormat.INSTANTX_FLUX:
        _check_blocks(adapter, m.n_blocks, m.layer(0).to_k_ip.out_features,
                      len(dm.double_blocks) + len(dm.single_blocks), dm.hidden_size, "double + single blocks")
    else:
        width = dm.joint_blocks[0].x_block.attn.qkv.weight.shape[0] // 3
        _check_blocks(adapter, m.blocks, m.config.hidden, len(dm.joint_blocks), width, "joint blocks")
        _check_sd3_norms(adapter, dm)


def _install(model, adapter: DitAdapter, pos: torch.Tensor, neg: torch.Tensor, settings: ApplySettings):
    dm = model.model.diffusion_model
    device, dtype = _unet.compute_device_dtype(model)
    weight, gate = float(settings.weight), sigma_range(settings, _unet.percent_to_sigma(model))
    mask = None if settings.attn_mask is None else as_mask_batch(settings.attn_mask)[0].to(device)
    _adapters.ready_adapter(adapter, device, dtype)
    if adapter.format is DitFormat.INSTANTX_SD35:
        return _apply_sd3(model, adapter, pos, neg, settings, weight, gate, mask)
    m = adapter.model
    if adapter.format is DitFormat.XLABS_FLUX:
        make, extra = xlabs_terms, ()
    else:
        make, extra = instantx_terms, (len(dm.double_blocks),)
    scales = block_weights(settings.block_weights, m.n_blocks if hasattr(m, "n_blocks") else m.blocks)
    with torch.no_grad():
        terms = make(adapter, pos.to(device, dtype), neg.to(device, dtype), scales, weight, gate, mask,
                     dm.num_heads, *extra)
    txt_first = not getattr(dm.double_blocks[0], "flipped_img_txt", False)
    return _dit.install(model, FLUX, terms, txt_first=txt_first, patch_size=dm.patch_size)


def _apply_sd3(model, adapter, pos, neg, settings, weight, sigma_range, mask):
    dm = model.model.diffusion_model
    pos = pos.reshape(1, -1, pos.shape[-1])  # several references: their patch features side by side, as tokens
    neg = neg.reshape(1, -1, neg.shape[-1])
    sampling = model.get_model_object("model_sampling")
    prompt = SD3Prompt(adapter, torch.cat([pos, neg]), sampling.timestep, _adapters.patcher_of(adapter))
    scales = block_weights(settings.block_weights, adapter.model.blocks)
    terms = {("double_block", i): SD3Term(prompt, i, dm.joint_blocks[i].x_block.attn, weight * s, sigma_range, mask)
             for i, s in enumerate(scales) if weight * s != 0}
    return _dit.install(model, MMDIT, terms, patch_size=dm.x_embedder.patch_size[0])


def _features(adapter, encode, clip_vision, images, image_negative) -> tuple[torch.Tensor, torch.Tensor]:
    """The references' features and their negatives' (zeros without image_negative, as diffusers' pipelines; one
    negative image serves every reference)."""
    pos = encode(adapter, clip_vision, images)
    if image_negative is None:
        return pos, torch.zeros_like(pos)
    neg = encode(adapter, clip_vision, image_negative)
    if neg.shape[0] == 1 and pos.shape[0] > 1:
        neg = neg.expand_as(pos)
    if neg.shape != pos.shape:
        raise ValueError(f"image_negative has {neg.shape[0]} images and image {pos.shape[0]}: give one negative image, "
                         "or one per reference")
    return pos, neg


def _check_blocks(adapter: DitAdapter, blocks: int, width: int, host_blocks: int, host_width: int, what: str) -> None:
    if blocks != host_blocks or width != host_width:
        raise ValueError(
            f"{adapter.name} has {blocks} {what} of width {width}; this model has {host_blocks} of width {host_width}. "
            f"{adapter.format.value} adapters are made for "
            + ("SD3.5 Large" if adapter.format is DitFormat.INSTANTX_SD35 else "FLUX.1 (dev or schnell)")
        )
