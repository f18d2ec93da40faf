"""InstantX SD3.5-Large-IP-Adapter: detection, loading, and parity with diffusers' SD3 IP-Adapter.

The diffusers side loads the same random `.bin` (the nested dict the published `ip-adapter.bin` is) through
`SD3Transformer2DModel._load_ip_adapter_weights` (what `SD3IPAdapterMixin.load_ip_adapter` calls) into a tiny random
SD3.5-like transformer (QK RMSNorm) and runs its `SD3IPAdapterJointAttnProcessor2_0`; the core side loads the file
with `ipadapter_core.dit.sd3` and drives the same transformer through plain `JointAttnProcessor2_0`s that add our
term where the reference adds its own (the input of `attn.to_out[0]`).
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from dev.standins.dit_sd3 import TINY, sd35_specs, sd35_state_dict, write_sd35
from ipadapter_core.dit import common, sd3

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import (  # noqa: E402
    JointAttnProcessor2_0,
    SD3IPAdapterJointAttnProcessor2_0,
)
from diffusers.models.embeddings import IPAdapterTimeImageProjection  # noqa: E402
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel  # noqa: E402

TOL = 1e-4
SCALE = 0.7


def tiny_sd3(seed: int = 0) -> SD3Transformer2DModel:
    """A random SD3.5-Large-like transformer at the tiny adapter's widths: 4 blocks of 4 heads x 8, QK RMSNorm."""
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=TINY["blocks"], attention_head_dim=TINY["head_dim"],
        num_attention_heads=TINY["hidden"] // TINY["head_dim"], joint_attention_dim=16,
        caption_projection_dim=TINY["hidden"], pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8,
        qk_norm="rms_norm",
    )
    with torch.no_grad():  # host QK-norm weights away from 1, so the adapter's own norms are told apart
        for name, p in model.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


class OurProcessor:
    """Plain joint attention plus `weight x block_term` from our module, added to the input of `attn.to_out[0]`."""

    def __init__(self, block: sd3.SD35Block, kv: tuple[torch.Tensor, torch.Tensor], weight: float) -> None:
        self.block, self.kv, self.weight = block, kv, weight
        self.plain = JointAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        q, k, v = (common.heads(proj(hidden_states), attn.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
        term = sd3.block_term(self.block, q, k, v, self.kv)
        handle = attn.to_out[0].register_forward_pre_hook(lambda _m, args: (args[0] + self.weight * term,))
        try:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask)
        finally:
            handle.remove()


def _block_index(name: str) -> int:
    return int(name.split("transformer_blocks.", 1)[1].split(".", 1)[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sd35")
    return {fmt: write_sd35(d / f"ip-adapter.{fmt}", "tiny", seed=3) for fmt in ("bin", "safetensors")}


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(11)
    return {
        "hidden_states": torch.randn(2, 4, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 5, 16, generator=g),
        "pooled_projections": torch.randn(2, 16, generator=g),
        "timestep": torch.tensor([700.0, 250.0]),
        "image": torch.randn(2, 729, TINY["embed_dim"], generator=g),  # a different reference per row
    }


def _run(model, inputs, kwargs=None) -> torch.Tensor:
    with torch.no_grad():
        return model(hidden_states=inputs["hidden_states"], encoder_hidden_states=inputs["encoder_hidden_states"],
                     pooled_projections=inputs["pooled_projections"], timestep=inputs["timestep"],
                     joint_attention_kwargs=kwargs, return_dict=False)[0]


def _ours(model, adapter, inputs, weight):
    """Every block's processor replaced by OurProcessor with our tokens/kv for these inputs."""
    with torch.no_grad():
        tokens, temb = sd3.image_tokens(adapter, inputs["image"], inputs["timestep"])
        procs = dict(model.attn_processors)  # the resampler's own Attention modules keep theirs (never called)
        for name in procs:
            if name.startswith("transformer_blocks."):
                block = adapter.block(_block_index(name))
                procs[name] = OurProcessor(block, sd3.block_kv(block, tokens, temb), weight)
    model.set_attn_processor(procs)
    return _run(model, inputs)


# detection


def test_matches_this_layout_only():
    full = {k: torch.empty(s, device="meta") for k, s in sd35_specs("full")}
    tiny = {k: torch.empty(s, device="meta") for k, s in sd35_specs("tiny")}
    assert sd3.matches(full) and sd3.matches(tiny)
    meta = lambda *s: torch.empty(s, device="meta")  # noqa: E731
    sdxl_plus = {"image_proj.latents": meta(1, 16, 1280), "image_proj.proj_in.weight": meta(1280, 1280),
                 "image_proj.proj_out.weight": meta(2048, 1280), "image_proj.norm_out.weight": meta(2048),
                 "image_proj.layers.0.0.to_q.weight": meta(1280, 1280),
                 "image_proj.layers.0.0.norm1.weight": meta(1280), "image_proj.layers.0.1.1.weight": meta(5120, 1280),
                 "ip_adapter.1.to_k_ip.weight": meta(640, 2048), "ip_adapter.1.to_v_ip.weight": meta(640, 2048)}
    flux = {"image_proj.proj.0.weight": meta(4096, 1152), "image_proj.norm.weight": meta(4096),
            "ip_adapter.0.to_k_ip.weight": meta(3072, 4096), "ip_adapter.0.norm_added_k.weight": meta(128)}
    xlabs = {"ip_adapter_proj_model.proj.weight": meta(16384, 768),
             "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight": meta(3072, 4096)}
    assert not any(sd3.matches(flat) for flat in (sdxl_plus, flux, xlabs, {}))


# the published shapes, on the meta device


def test_full_layout_config_and_parameter_count():
    flat = {k: torch.empty(s, device="meta") for k, s in sd35_specs("full")}
    model = sd3.load(flat, "ip-adapter.bin")
    cfg = model.config
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.queries) == (1280, 4, 20, 64)
    assert (cfg.embed_dim, cfg.output_dim, cfg.timestep_in_dim, cfg.blocks) == (1152, 2432, 320, 38)
    assert (cfg.hidden, cfg.head_dim, cfg.block_heads, cfg.ff_dim) == (2432, 64, 38, 5120)
    assert all(p.is_meta for p in model.parameters())
    assert list(model.state_dict()) == list(flat)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(math.prod(s) for _, s in sd35_specs("full"))
    with torch.device("meta"):  # the reference's modules at the published configuration
        proj = IPAdapterTimeImageProjection()
        proc = SD3IPAdapterJointAttnProcessor2_0(hidden_size=2432, ip_hidden_states_dim=2432, head_dim=64,
                                                 timesteps_emb_dim=1280)
    ours_block = {k: tuple(v.shape) for k, v in model.block(0).state_dict().items()}
    assert ours_block == {k: tuple(v.shape) for k, v in proc.state_dict().items()}
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count == numel(proj) + 38 * numel(proc)
    assert sum(p.numel() for p in model.image_proj.parameters()) == numel(proj)


# loading errors


def _rewrite(tmp_path, name, flat):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
    return path


@pytest.mark.parametrize("damage", ["missing_key", "wrong_shape", "last_block_dropped", "block_gap", "extra_key"])
def test_damaged_files_name_the_file(tmp_path, damage):
    flat = sd35_state_dict("tiny", seed=1)
    if damage == "missing_key":
        del flat["image_proj.layers.2.0.to_kv.weight"]
    elif damage == "wrong_shape":
        flat["ip_adapter.1.to_v_ip.weight"] = torch.zeros(32, 16)
    elif damage in ("last_block_dropped", "block_gap"):
        drop = "ip_adapter.3." if damage == "last_block_dropped" else "ip_adapter.1."
        flat = {k: v for k, v in flat.items() if not k.startswith(drop)}
    else:
        flat["image_proj.layers.0.0.to_k.weight"] = torch.zeros(128, 128)
    path = _rewrite(tmp_path, f"broken-{damage}.safetensors", flat)
    with pytest.raises(common.DitCheckpointError, match=f"broken-{damage}.safetensors") as err:
        sd3.load(common.read_flat(path), path)
    expected = {"missing_key": "to_kv", "wrong_shape": "to_v_ip", "last_block_dropped": "missing [3]",
                "block_gap": "missing [1]", "extra_key": "to_k.weight"}[damage]
    assert expected in str(err.value)


def test_full_layout_truncated_blocks_refused():
    flat = {k: torch.empty(s, device="meta") for k, s in sd35_specs("full", blocks=30)}
    with pytest.raises(common.DitCheckpointError, match=r"ip-adapter\.bin.*numbered 0\.\.37"):
        sd3.load(flat, "ip-adapter.bin")
    assert sd3.load(flat, "ip-adapter.bin", blocks=30).blocks == 30  # a host with 30 blocks takes it


def test_bin_and_safetensors_load_identically(files):
    a = sd3.load(common.read_flat(files["bin"]), files["bin"]).state_dict()
    b = sd3.load(common.read_flat(files["safetensors"]), files["safetensors"]).state_dict()
    assert list(a) == list(b) == [k for k, _ in sd35_specs("tiny")]
    assert all(torch.equal(a[k], b[k]) for k in a)


# parity with diffusers


@pytest.fixture(scope="module")
def loaded(files):
    adapter = sd3.load(common.read_flat(files["safetensors"]), files["safetensors"])
    model = tiny_sd3()
    model._load_ip_adapter_weights(torch.load(files["bin"], weights_only=True), low_cpu_mem_usage=False)
    reference = dict(model.attn_processors)  # also lists the unused processors of diffusers' resampler attention
    blocks = [p for name, p in reference.items() if name.startswith("transformer_blocks.")]
    assert len(blocks) == TINY["blocks"] and all(isinstance(p, SD3IPAdapterJointAttnProcessor2_0) for p in blocks)
    return model, adapter, reference


def test_image_tokens_match_diffusers(loaded, inputs):
    model, adapter, _ = loaded
    with torch.no_grad():
        ref_tokens, ref_temb = model.image_proj(inputs["image"], inputs["timestep"])
        tokens, temb = sd3.image_tokens(adapter, inputs["image"], inputs["timestep"])
        other, _ = sd3.image_tokens(adapter, inputs["image"], 100.0)
    assert tokens.shape == (2, TINY["queries"], TINY["hidden"]) and temb.shape == (2, TINY["dim"])
    err = max((tokens - ref_tokens).abs().max().item(), (temb - ref_temb).abs().max().item())
    print(f"image_tokens max |ours - diffusers| = {err:.3g}")
    assert err <= TOL
    assert not torch.allclose(tokens, other, atol=1e-3)  # the resampler depends on the timestep


def test_transformer_output_matches_diffusers(loaded, inputs):
    model, adapter, reference = loaded
    for proc in reference.values():
        proc.scale = SCALE  # only the IP processors read it
    model.set_attn_processor(reference)
    expected = _run(model, inputs, {"ip_adapter_image_embeds": inputs["image"]})
    model.set_attn_processor(JointAttnProcessor2_0())
    plain = _run(model, inputs)
    ours = _ours(model, adapter, inputs, SCALE)
    err = (ours - expected).abs().max().item()
    effect = (expected - plain).abs().max().item()
    print(f"transformer output max |ours - diffusers| = {err:.3g} (the adapter moves it by {effect:.3g})")
    assert err <= TOL
    assert effect > 100 * TOL  # the comparison is not vacuous
    # rows are independent: row 0 alone gives row 0 of the batch
    row = {k: v[:1] for k, v in inputs.items()}
    assert torch.allclose(_ours(model, adapter, row, SCALE), ours[:1], atol=1e-5)


def test_weight_zero_is_bit_identical_to_the_plain_transformer(loaded, inputs):
    model, adapter, _ = loaded
    model.set_attn_processor(JointAttnProcessor2_0())
    plain = _run(model, inputs)
    assert torch.equal(_ours(model, adapter, inputs, 0.0), plain)

