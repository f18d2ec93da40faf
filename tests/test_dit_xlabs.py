"""XLabs Flux IP-Adapter: detection, loading, and parity with diffusers' FluxIPAdapterAttnProcessor.

The diffusers side loads the same `.safetensors` file through its own XLabs key conversion
(`FluxIPAdapterMixin.load_ip_adapter`) into a tiny random `FluxTransformer2DModel`; the core side loads it with
`ipadapter_core.dit.xlabs` and drives the same transformer through a processor that adds our image term.
"""

from __future__ import annotations

import pytest
import torch

from dev.standins.dit_xlabs import FULL, write_xlabs, xlabs_specs
from ipadapter_core.dit import common, xlabs

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.ip_adapter import FluxIPAdapterMixin  # noqa: E402
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxTransformer2DModel  # noqa: E402

TOL = 1e-4
TINY = {"embed_dim": 24, "width": 32, "inner": 32, "blocks": 2}  # joint_attention_dim 32, 2 heads x 16


def tiny_flux(seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=TINY["blocks"], num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TINY["width"], pooled_projection_dim=8, axes_dims_rope=(4, 6, 6),
    )
    with torch.no_grad():  # random init leaves the modulations at zero-ish scale; make every path matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs(batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    h = w = 4
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    return {
        "hidden_states": torch.randn(batch, h * w, 4, generator=g),
        "encoder_hidden_states": torch.randn(batch, 5, TINY["width"], generator=g),
        "pooled_projections": torch.randn(batch, 8, generator=g),
        "timestep": torch.tensor([0.7] * batch),
        "img_ids": img_ids.reshape(-1, 3),
        "txt_ids": torch.zeros(5, 3),
    }


class _Host(FluxIPAdapterMixin):
    """The smallest object diffusers' loader accepts: it only needs `transformer` (no image encoder attribute)."""

    def __init__(self, transformer):
        self.transformer = transformer


class CoreProcessor:
    """Plain Flux attention plus our image term, returned as the block's third output like the reference."""

    def __init__(self, adapter, block: int, tokens: torch.Tensor, weight: float):
        self.adapter, self.block, self.tokens, self.weight = adapter, block, tokens, weight
        self.plain = FluxAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        out = self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if encoder_hidden_states is None or self.weight == 0:
            return out
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))).transpose(1, 2)
        kv = xlabs.block_kv(self.adapter, self.block, self.tokens, attn.heads)
        return (*out, self.weight * xlabs.block_term(q, kv))


def drive_with_core(model, adapter, embeds, weight):
    tokens = xlabs.image_tokens(adapter, embeds)
    procs = {}
    block = 0
    for name in model.attn_processors:
        if name.startswith("transformer_blocks."):
            procs[name] = CoreProcessor(adapter, block, tokens, weight)
            block += 1
        else:
            procs[name] = FluxAttnProcessor()
    model.set_attn_processor(procs)


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    return write_xlabs(tmp_path_factory.mktemp("xlabs") / "ip_adapter.safetensors", seed=5, tokens=4, **TINY)


def test_detected_and_loaded_with_the_file_widths(adapter_file):
    flat = common.read_flat(adapter_file)
    assert xlabs.matches(flat)
    model = xlabs.load(flat, adapter_file)
    assert (model.embed_dim, model.tokens, model.width, model.inner, model.blocks) == (24, 4, 32, 32, 2)
    assert set(model.state_dict()) == set(flat)
    for key, value in model.state_dict().items():
        assert value.data_ptr() == flat[key].data_ptr()  # assigned, not copied


@pytest.mark.parametrize("tokens", [4, 16])  # v1, v2
def test_full_size_layout_on_shapes_only(tokens):
    with torch.device("meta"):
        flat = {k: torch.empty(shape) for k, shape in xlabs_specs(tokens=tokens, **FULL)}
    model = xlabs.load(flat, "ip_adapter.safetensors", expected_blocks=xlabs.DOUBLE_BLOCKS)
    assert (model.embed_dim, model.tokens, model.width, model.inner, model.blocks) == (768, tokens, 4096, 3072, 19)
    params = 768 * tokens * 4096 + tokens * 4096 + 2 * 4096 + 19 * 2 * (4096 * 3072 + 3072)  # the published shapes
    assert sum(p.numel() for p in model.parameters()) == params  # v2: 528.7 M


def test_other_layouts_are_not_xlabs():
    sd15 = {"image_proj.proj.weight": torch.zeros(3072, 1024), "image_proj.norm.weight": torch.zeros(768),
            "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)}
    assert not xlabs.matches(sd15)


def test_incomplete_files_name_the_file(tmp_path):
    flat = dict(zip(*zip(*[(k, torch.zeros(s)) for k, s in xlabs_specs(tokens=4, **TINY)])))
    del flat["double_blocks.1.processor.ip_adapter_double_stream_v_proj.bias"]
    with pytest.raises(common.DitCheckpointError, match=r"broken\.safetensors.*missing"):
        xlabs.load(flat, tmp_path / "broken.safetensors")
    flat = {k: torch.zeros(s) for k, s in xlabs_specs(tokens=4, **TINY)}
    with pytest.raises(common.DitCheckpointError, match=r"short\.safetensors.*blocks numbered 0\.\.18; this file has 2"):
        xlabs.load(flat, tmp_path / "short.safetensors", expected_blocks=xlabs.DOUBLE_BLOCKS)
    del flat["double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"]
    del flat["double_blocks.0.processor.ip_adapter_double_stream_k_proj.bias"]
    del flat["double_blocks.0.processor.ip_adapter_double_stream_v_proj.weight"]
    del flat["double_blocks.0.processor.ip_adapter_double_stream_v_proj.bias"]
    with pytest.raises(common.DitCheckpointError, match=r"gap\.safetensors"):
        xlabs.load(flat, tmp_path / "gap.safetensors")
    flat = {k: torch.zeros(s) for k, s in xlabs_specs(tokens=4, **TINY)}
    flat["double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"] = torch.zeros(32, 31)
    with pytest.raises(common.DitCheckpointError, match="wrong shapes"):
        xlabs.load(flat, tmp_path / "odd.safetensors")


def test_wrong_encoder_width_is_a_clear_error(adapter_file):
    model = xlabs.load(common.read_flat(adapter_file), adapter_file)
    with pytest.raises(ValueError, match="CLIP ViT-L/14"):
        xlabs.image_tokens(model, torch.zeros(1, 1280))


@torch.no_grad()
def test_transformer_output_matches_diffusers(adapter_file):
    embeds = torch.randn(2, 24, generator=torch.Generator().manual_seed(3))  # a different reference per row
    x = inputs()

    reference = tiny_flux()
    _Host(reference).load_ip_adapter(str(adapter_file.parent), weight_name=adapter_file.name,
                                     image_encoder_pretrained_model_name_or_path=None)
    for proc in reference.attn_processors.values():
        if hasattr(proc, "scale"):
            proc.scale = [0.8]
    expected = reference(**x, joint_attention_kwargs={"ip_adapter_image_embeds": [embeds[:, None]]}).sample

    ours = tiny_flux()
    adapter = xlabs.load(common.read_flat(adapter_file), adapter_file)
    torch.testing.assert_close(
        xlabs.image_tokens(adapter, embeds),
        reference.encoder_hid_proj.image_projection_layers[0](embeds), atol=1e-6, rtol=0,
    )
    drive_with_core(ours, adapter, embeds, 0.8)
    got = ours(**x).sample
    assert (got - expected).abs().max() <= TOL

    plain = tiny_flux()(**x).sample
    assert (got - plain).abs().max() > 1e-2  # the adapter changes the output
    drive_with_core(ours, adapter, embeds, 0.0)
    assert torch.equal(ours(**x).sample, plain)  # weight 0 adds nothing at all
