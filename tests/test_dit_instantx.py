"""InstantX FLUX.1-dev-IP-Adapter and SigLIP's pooling head, against transformers and diffusers.

- The head: a tiny random transformers SigLIP saved in the published key layout; our head from that file on the
  model's `last_hidden_state` equals its `pooler_output`.
- The layout: the full published shapes on the meta device (2.65 B parameters, nothing materialised).
- Loading: `.bin` (nested, as published) and `.safetensors` agree; damaged files name themselves; detection.
- The formula: a diffusers Flux transformer with the published processor written out here (its projection and
  processors loaded from the `.bin` exactly as the published pipeline does) against diffusers' own
  FluxAttnProcessor plus `scale * block_term(...)` from our module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from safetensors.torch import save_file
from torch import nn
from transformers import SiglipConfig, SiglipModel

from dev.standins import dit_instantx as standin
from dev.standins import ipadapter as sd_standins
from ipadapter_core.dit import instantx_flux as ix
from ipadapter_core.dit.common import DitCheckpointError, heads, read_flat
from ipadapter_core.dit.siglip_head import HEAD_PREFIX, has_head, load_head

SEED = 1234


# --- SigLIP attention-pooling head -----------------------------------------------------------------------------


def _tiny_siglip() -> SiglipModel:
    """A tiny full SigLIP (text + vision, as google/siglip-so400m-patch14-384's model.safetensors) whose head
    parameters are all perturbed, so zero-initialised biases and unit norms are exercised too."""
    torch.manual_seed(SEED)
    text = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                  patch_size=14)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        for p in model.vision_model.head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_siglip_head_matches_transformers_pooler_output(tmp_path):
    model = _tiny_siglip()
    sd = model.state_dict()
    head_keys = {k: tuple(v.shape) for k, v in sd.items() if k.startswith(HEAD_PREFIX)}
    assert head_keys == dict(standin.siglip_head_specs(32, 48))  # the stand-in spec is the real layout
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))

    head = load_head(path, n_heads=2)
    assert [n for n, _ in head.named_parameters()] == [k[len(HEAD_PREFIX):] for k in head_keys]
    pixels = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        out = model.vision_model(pixel_values=pixels)
        ours = head(out.last_hidden_state)
        from_dict = load_head(sd, n_heads=2)(out.last_hidden_state)
        one_head = load_head(path, n_heads=1)(out.last_hidden_state)
    err = (ours - out.pooler_output).abs().max().item()
    print(f"SigLIP head vs transformers pooler_output: max |diff| {err:.2e}")
    assert ours.shape == (3, 32) and err <= 1e-5
    assert torch.equal(ours, from_dict)
    assert (one_head - out.pooler_output).abs().max() > 1e-3  # the head count matters, so the test can see it


def test_siglip_file_without_head_and_bad_head_count(tmp_path):
    sd = _tiny_siglip().state_dict()
    assert has_head(sd)
    headless = {k: v.contiguous() for k, v in sd.items() if not k.startswith(HEAD_PREFIX)}
    assert not has_head(headless)
    path = tmp_path / "sigclip_vision_patch14_384.safetensors"
    save_file(headless, str(path))
    with pytest.raises(DitCheckpointError, match="sigclip_vision_patch14_384.safetensors.*vision_model.head") as e:
        load_head(path)
    assert "siglip-so400m-patch14-384" in str(e.value)
    partial = dict(headless, **{k: v for k, v in sd.items() if k.startswith(HEAD_PREFIX + "mlp.")})
    with pytest.raises(DitCheckpointError, match=r"my\.bin.*missing.*vision_model\.head\.probe"):
        load_head(partial, name="my.bin")
    with pytest.raises(DitCheckpointError, match="not divisible by 3"):
        load_head(sd, n_heads=3)


# --- full-size layout, shapes only -------------------------------------------------------------------------------


def test_full_layout_on_meta_device():
    specs = standin.instantx_flux_specs("full")
    flat = {k: torch.empty(s, dtype=torch.bfloat16, device="meta") for k, s in specs}
    assert flat["image_proj.proj.0.weight"].shape == (2304, 1152)
    assert flat["image_proj.proj.2.weight"].shape == (524288, 2304) and 524288 == 128 * 4096
    assert flat["ip_adapter.56.to_v_ip.weight"].shape == (3072, 4096) and "ip_adapter.57.to_k_ip.weight" not in flat
    assert ix.matches(flat)

    model = ix.load(flat, Path("ip-adapter.bin"))
    assert (model.tokens, model.n_blocks, model.double_blocks, model.single_blocks) == (128, 57, 19, 38)
    assert [model.is_double(i) for i in range(57)] == [True] * 19 + [False] * 38
    assert ix.adapter_index("double", 18) == 18 and ix.adapter_index("single", 0) == 19
    assert ix.adapter_index("single", 37) == 56
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == specs
    count = sum(p.numel() for p in model.parameters())
    expected = (2304 * 1152 + 2304) + (128 * 4096 * 2304 + 128 * 4096) + 2 * 4096 + 57 * 2 * 3072 * 4096
    assert count == expected == 2_645_600_512
    assert all(p.is_meta for p in model.parameters())

    tokens = ix.image_tokens(model, torch.empty(2, 1152, dtype=torch.bfloat16, device="meta"))
    assert tokens.shape == (2, 128, 4096) and tokens.is_meta
    k, v = ix.block_kv(model.layer(56), tokens, 24)
    assert k.shape == v.shape == (2, 24, 128, 128)
    q = torch.empty(2, 24, 512 + 4096, 128, dtype=torch.bfloat16, device="meta")
    assert ix.block_term(q, (k, v)).shape == (2, 512 + 4096, 3072)


# --- loading and detection ---------------------------------------------------------------------------------------


def test_bin_and_safetensors_load_identically(tmp_path):
    st = standin.write_instantx_flux(tmp_path / "ip-adapter.safetensors", "tiny", SEED)
    pt = standin.write_instantx_flux(tmp_path / "ip-adapter.bin", "tiny", SEED)
    raw = torch.load(pt, weights_only=True)
    assert set(raw) == {"image_proj", "ip_adapter"} and "0.to_k_ip.weight" in raw["ip_adapter"]
    a = ix.load(read_flat(st), st, double_blocks=2, single_blocks=2).state_dict()
    b = ix.load(read_flat(pt), pt, double_blocks=2, single_blocks=2).state_dict()
    assert list(a) == list(b) == [k for k, _ in standin.instantx_flux_specs("tiny")]
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)


def _drop(flat, *prefixes):
    return {k: v for k, v in flat.items() if not k.startswith(prefixes)}


DAMAGE = {
    "missing key": lambda f: _drop(f, "ip_adapter.1.to_v_ip.weight"),
    "missing projection": lambda f: _drop(f, "image_proj.norm.bias"),
    "wrong shape": lambda f: {**f, "ip_adapter.2.to_k_ip.weight": torch.zeros(32, 40)},
    "wrong bias shape": lambda f: {**f, "image_proj.proj.2.bias": torch.zeros(7)},
    "missing middle block": lambda f: _drop(f, "ip_adapter.1."),
    "missing last block": lambda f: _drop(f, "ip_adapter.3."),
    "missing block 0": lambda f: _drop(f, "ip_adapter.0."),
    "extra block": lambda f: {**f, "ip_adapter.4.to_k_ip.weight": torch.zeros(32, 48),
                              "ip_adapter.4.to_v_ip.weight": torch.zeros(32, 48)},
    "unexpected key": lambda f: {**f, "image_proj.proj.1.weight": torch.zeros(3)},
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_damaged_files_name_themselves(tmp_path, damage, suffix):
    flat = DAMAGE[damage](standin.make_instantx_flux("tiny"))
    path = standin.write_instantx_flux(tmp_path / f"broken-ipa{suffix}", flat=flat)
    with pytest.raises(DitCheckpointError, match=f"broken-ipa{suffix.replace('.', '[.]')}"):
        ix.load(read_flat(path), path, double_blocks=2, single_blocks=2)


def test_block_count_comes_from_the_host():
    flat = standin.make_instantx_flux("tiny")
    with pytest.raises(DitCheckpointError, match=r"ipa\.bin.*numbered 0\.\.56"):
        ix.load(flat, "ipa.bin")  # Flux.1 defaults: 19 + 38
    assert ix.load(flat, "ipa.bin", double_blocks=1, single_blocks=3).double_blocks == 1


def _sd_keysets() -> dict[str, dict[str, torch.Tensor]]:
    """IP-Adapter files of UNet models: hand-written small ones (the FaceID MLP shares this format's projection
    names) and every tiny stand-in variant of dev/standins/ipadapter.py (on meta, shapes only)."""
    t = torch.zeros
    faceid_like = {"image_proj.proj.0.weight": t(64, 32), "image_proj.proj.0.bias": t(64),
                   "image_proj.proj.2.weight": t(4 * 48, 64), "image_proj.proj.2.bias": t(4 * 48),
                   "image_proj.norm.weight": t(48), "image_proj.norm.bias": t(48)}
    sets = {
        "sd15 plain": {"image_proj.proj.weight": t(4 * 48, 32), "image_proj.proj.bias": t(4 * 48),
                       "image_proj.norm.weight": t(48), "image_proj.norm.bias": t(48),
                       **{f"ip_adapter.{n}.to_{x}_ip.weight": t(32, 48) for n in (1, 3, 5) for x in "kv"}},
        "faceid mlp, odd blocks": {**faceid_like,
                                   **{f"ip_adapter.{n}.to_{x}_ip.weight": t(32, 48) for n in (1, 3) for x in "kv"}},
        "faceid mlp + lora": {**faceid_like, "ip_adapter.0.to_q_lora.down.weight": t(4, 32),
                              **{f"ip_adapter.{n}.to_{x}_ip.weight": t(32, 48) for n in (0, 1) for x in "kv"}},
        "full-face": {"image_proj.proj.0.weight": t(32, 32), "image_proj.proj.0.bias": t(32),
                      "image_proj.proj.2.weight": t(48, 32), "image_proj.proj.2.bias": t(48),
                      "image_proj.proj.3.weight": t(48), "image_proj.proj.3.bias": t(48),
                      **{f"ip_adapter.{n}.to_{x}_ip.weight": t(32, 48) for n in (0, 1) for x in "kv"}},
        "xlabs": {"ip_adapter_proj_model.proj.weight": t(48, 32),
                  "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight": t(32, 48)},
    }
    for variant in sd_standins.VARIANTS:
        nested = sd_standins.make_state_dict(variant, scale="tiny", device="meta")
        sets[variant] = {f"{g}.{k}": v for g, sd in nested.items() for k, v in sd.items()}
    return sets


def test_matches_only_this_format():
    assert ix.matches(standin.make_instantx_flux("tiny"))
    assert ix.matches(standin.make_instantx_flux("tiny", double_blocks=1, single_blocks=0))
    assert ix.matches({k: torch.empty(s, device="meta") for k, s in standin.instantx_flux_specs("full")})
    for name, flat in _sd_keysets().items():
        assert not ix.matches(flat), name
    tiny = standin.make_instantx_flux("tiny")
    assert not ix.matches(_drop(tiny, "ip_adapter.1."))  # a hole in the numbering
    assert not ix.matches({**tiny, "ip_adapter.0.to_k_ip.weight": torch.zeros(32, 40)})  # in-width != token width


# --- the published formula in a diffusers Flux transformer ------------------------------------------------------


class PublishedProjection(nn.Module):
    """The published MLP projection: Linear, GELU, Linear, reshape to `tokens`, LayerNorm."""

    def __init__(self, embed_dim: int, width: int, tokens: int) -> None:
        super().__init__()
        self.width, self.tokens = width, tokens
        self.proj = nn.Sequential(nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(),
                                  nn.Linear(2 * embed_dim, width * tokens))
        self.norm = nn.LayerNorm(width)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pooled).reshape(-1, self.tokens, self.width))


class PublishedProcessor(nn.Module):
    """The published formula written out: image K/V from the tokens, weightless key RMSNorm (eps 1e-5), SDPA with
    the block's pre-RoPE normed query, `scale *` that added before `to_out` (double) / to every row (single)."""

    def __init__(self, inner: int, width: int, scale: float) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(width, inner, bias=False)
        self.to_v_ip = nn.Linear(width, inner, bias=False)
        self.scale = scale
        self.image_emb: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        b, h = hidden_states.shape[0], attn.heads

        def split(x):
            return x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2)

        query = attn.norm_q(split(attn.to_q(hidden_states)))
        key = attn.norm_k(split(attn.to_k(hidden_states)))
        value = split(attn.to_v(hidden_states))

        ip_key = split(self.to_k_ip(self.image_emb))
        ip_key = ip_key * torch.rsqrt(ip_key.pow(2).mean(-1, keepdim=True) + 1e-5)
        ip_value = split(self.to_v_ip(self.image_emb))
        ip = F.scaled_dot_product_attention(query, ip_key, ip_value).transpose(1, 2).reshape(b, -1, h * query.shape[-1])

        if encoder_hidden_states is not None:
            query = torch.cat([attn.norm_added_q(split(attn.add_q_proj(encoder_hidden_states))), query], dim=2)
            key = torch.cat([attn.norm_added_k(split(attn.add_k_proj(encoder_hidden_states))), key], dim=2)
            value = torch.cat([split(attn.add_v_proj(encoder_hidden_states)), value], dim=2)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        out = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).reshape(b, -1, h * query.shape[-1])
        if encoder_hidden_states is None:
            return out + self.scale * ip
        txt, img = out[:, :encoder_hidden_states.shape[1]], out[:, encoder_hidden_states.shape[1]:]
        img = attn.to_out[1](attn.to_out[0](img + self.scale * ip))
        return img, attn.to_add_out(txt)


class OursProcessor:
    """diffusers' own FluxAttnProcessor, plus `scale * block_term` of our module on the attention output before
    the output projection (`to_out[0]` is affine, so adding `scale * W term` after it is the same sum)."""

    def __init__(self, kv: tuple[torch.Tensor, torch.Tensor], scale: float) -> None:
        self.plain, self.kv, self.scale = FluxAttnProcessor(), kv, scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        out = self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        q = attn.norm_q(heads(attn.to_q(hidden_states), attn.heads))
        term = ix.block_term(q, self.kv)
        if encoder_hidden_states is None:
            return out + self.scale * term
        img, txt = out
        return img + self.scale * F.linear(term, attn.to_out[0].weight), txt


def _tiny_flux() -> FluxTransformer2DModel:
    torch.manual_seed(SEED)
    tiny = standin.TINY
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=tiny["double_blocks"],
                                  num_single_layers=tiny["single_blocks"], attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=tiny["width"], pooled_projection_dim=32,
                                  axes_dims_rope=(4, 6, 6)).eval()


def _flux_inputs(g: torch.Generator) -> dict[str, torch.Tensor]:
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return {"hidden_states": torch.randn(2, 16, 4, generator=g),
            "encoder_hidden_states": torch.randn(2, 6, standin.TINY["width"], generator=g),
            "pooled_projections": torch.randn(2, 32, generator=g), "timestep": torch.tensor([0.3, 0.7]),
            "img_ids": img_ids.reshape(16, 3), "txt_ids": torch.zeros(6, 3)}


def _run(flux, processors, inputs) -> torch.Tensor:
    flux.set_attn_processor(processors)
    with torch.no_grad():
        return flux(**inputs, return_dict=False)[0]


def test_published_formula_in_diffusers_flux(tmp_path):
    sizes = standin.instantx_flux_sizes("tiny")
    path = standin.write_instantx_flux(tmp_path / "ip-adapter.bin", "tiny", SEED)
    flux = _tiny_flux()
    names = list(flux.attn_processors)
    inputs = _flux_inputs(torch.Generator().manual_seed(SEED))
    pooled = torch.randn(2, sizes["embed_dim"], generator=torch.Generator().manual_seed(SEED + 1))  # one per row
    plain = _run(flux, {n: FluxAttnProcessor() for n in names}, inputs)

    # the reference, loaded as the published pipeline loads `ip-adapter.bin`
    state = torch.load(path, map_location="cpu", weights_only=True)
    projection = PublishedProjection(sizes["embed_dim"], sizes["width"], sizes["tokens"]).eval()
    projection.load_state_dict(state["image_proj"], strict=True)
    published = {n: PublishedProcessor(sizes["inner"], sizes["width"], 0.8) for n in names}
    nn.ModuleList(published.values()).load_state_dict(state["ip_adapter"], strict=True)
    with torch.no_grad():
        ref_tokens = projection(pooled)
    for p in published.values():
        p.image_emb = ref_tokens
    reference = _run(flux, published, inputs)

    # ours, through the loading code
    model = ix.load(read_flat(path), path, double_blocks=2, single_blocks=2)
    assert [model.is_double(i) for i in range(len(names))] == [n.startswith("transformer_blocks.") for n in names]
    with torch.no_grad():
        tokens = ix.image_tokens(model, pooled)
        kvs = [ix.block_kv(model.layer(i), tokens, flux.config.num_attention_heads) for i in range(len(names))]
    token_err = (tokens - ref_tokens).abs().max().item()
    assert tokens.shape == (2, sizes["tokens"], sizes["width"]) and token_err <= 1e-6
    assert not torch.allclose(tokens[0], tokens[1])

    ours = _run(flux, {n: OursProcessor(kv, 0.8) for n, kv in zip(names, kvs)}, inputs)
    err = (ours - reference).abs().max().item()
    effect = (reference - plain).abs().max().item()
    print(f"InstantX Flux parity: tokens {token_err:.2e}, transformer output max |diff| {err:.2e} "
          f"(image prompt effect {effect:.2e}, output scale {reference.abs().max().item():.2e})")
    assert err <= 1e-4 and effect > 1e-2

    swapped = _run(flux, {n: OursProcessor((k.flip(0), v.flip(0)), 0.8) for n, (k, v) in zip(names, kvs)}, inputs)
    assert (swapped - ours).abs().max() > 1e-3  # each row's own reference, not a mix

    zero = _run(flux, {n: OursProcessor(kv, 0.0) for n, kv in zip(names, kvs)}, inputs)
    assert torch.equal(zero, plain)
    published_zero = {n: PublishedProcessor(sizes["inner"], sizes["width"], 0.0) for n in names}
    nn.ModuleList(published_zero.values()).load_state_dict(state["ip_adapter"], strict=True)
    for p in published_zero.values():
        p.image_emb = ref_tokens
    assert (_run(flux, published_zero, inputs) - plain).abs().max() <= 1e-5


def test_sizes_and_specs_agree():
    assert standin.instantx_flux_sizes("full") == standin.FULL
    assert len(standin.instantx_flux_specs("tiny", double_blocks=1, single_blocks=1)) == 6 + 2 * 2
    with pytest.raises(ValueError):
        standin.instantx_flux_sizes("tiny", heads=3)
