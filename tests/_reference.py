"""diffusers as the reference implementation: tiny UNets with the real attention topology, a test-only
attention processor that drives a diffusers UNet with the core's attention, and weight helpers."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

import ipadapter_core as core
from ipadapter_core.attention import attention

# the real UNet configurations (diffusers form)
REAL_SD15_CONFIG = dict(
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
REAL_SDXL_CONFIG = dict(
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
# the SDXL-small test checkpoint: the real SDXL layout with every level 320 wide (5 heads of 64)
SDXL_SMALL_CONFIG = dict(REAL_SDXL_CONFIG, block_out_channels=(320, 320, 320), attention_head_dim=(5, 5, 5))

# tiny UNets with the real attention topology
SD15_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=16,
)
SDXL_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32, 64),  # different widths per level, so a misplaced layer cannot hide
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    cross_attention_dim=128,
    attention_head_dim=(2, 4, 8),
    norm_num_groups=8,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
)


def fill_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deterministic weights from numpy PCG64: weights N(0, 1/fan_in), biases small, norms near 1."""
    rng = np.random.Generator(np.random.PCG64(seed))
    with torch.no_grad():
        for name, p in module.named_parameters():
            a = rng.standard_normal(p.numel(), dtype=np.float32).reshape(p.shape)
            if p.ndim == 1:
                a = (1.0 + 0.1 * a) if "norm" in name else 0.05 * a
            else:
                a = a / math.sqrt(p[0].numel())
            p.copy_(torch.from_numpy(a))
    return module


def tiny_unet(family: str, seed: int = 0):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**(SD15_CONFIG if family == "sd15" else SDXL_CONFIG))
    return fill_(unet, seed).eval()


def unet_inputs(unet, batch: int = 2, hw=(8, 8), seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    kwargs = dict(
        sample=torch.randn(batch, 4, *hw, generator=g),
        timestep=torch.tensor(500.0),
        encoder_hidden_states=torch.randn(batch, 7, cfg.cross_attention_dim, generator=g),
    )
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, 32, generator=g), time_ids=torch.randn(batch, 6, generator=g)
        )
    return kwargs


def topology_of(unet) -> core.Topology:
    """The core's layer table for a diffusers UNet (input ids as ComfyUI numbers them)."""
    cfg = unet.config
    nrb = cfg.layers_per_block
    entries = []
    for k, block in enumerate(unet.down_blocks):
        for j, attn in enumerate(getattr(block, "attentions", None) or []):
            entries.append(("input", 1 + k * (nrb + 1) + j, attn))
    entries.append(("middle", 0, unet.mid_block.attentions[0]))
    for k, block in enumerate(unet.up_blocks):
        for j, attn in enumerate(getattr(block, "attentions", None) or []):
            entries.append(("output", k * (nrb + 1) + j, attn))
    transformers = [
        (blk, bid, len(t.transformer_blocks), t.transformer_blocks[0].attn2.to_q.out_features, t.transformer_blocks[0].attn2.heads)
        for blk, bid, t in entries
    ]
    return core.Topology.from_transformers(transformers, context_dim=cfg.cross_attention_dim, num_res_blocks=nrb)


class CoreAttnProcessor:
    """Test-only diffusers processor: q, k, v from the layer, attention and image terms from the core."""

    def __init__(self, plan: core.LayerPlan | None, rows: tuple[int, ...], latent_hw: tuple[int, int]) -> None:
        self.plan, self.rows, self.latent_hw = plan, rows, latent_hw

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.to_q(hidden_states)
        out = attention(q, attn.to_k(context), attn.to_v(context), attn.heads)
        if self.plan is not None:
            out = out + self.plan(q, rows=self.rows, latent_hw=self.latent_hw)
        return attn.to_out[1](attn.to_out[0](out))


def drive_with_core(unet, topology: core.Topology, terms: dict, rows, latent_hw):
    """A copy of `unet` whose attn2 layers with an image term run the core's decoupled attention."""
    driven = copy.deepcopy(unet)
    by_name = {layer.diffusers_processor(2).removesuffix(".processor"): layer for layer in topology.layers}
    procs = {}
    for name, proc in driven.attn_processors.items():
        layer = by_name.get(name.removesuffix(".processor"))
        term = terms.get(layer.key) if layer else None
        if term is not None:
            proc = CoreAttnProcessor(core.LayerPlan.from_terms([term], layer.heads), rows, latent_hw)
        procs[name] = proc
    driven.set_attn_processor(procs)
    return driven


def diffusers_with_adapter(unet, nested_state_dict: dict, scale=1.0):
    """A copy of `unet` with diffusers' own IP-Adapter loaded from the same tensors (LoRA keys dropped)."""
    ref = copy.deepcopy(unet)
    sd = {
        "image_proj": {k: v.float() for k, v in nested_state_dict["image_proj"].items()},
        "ip_adapter": {k: v.float() for k, v in nested_state_dict["ip_adapter"].items() if "_lora." not in k},
    }
    ref._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
    set_scale(ref, scale)
    return ref


def set_scale(unet, scale) -> None:
    """What `IPAdapterMixin.set_ip_adapter_scale` does, for a bare UNet."""
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    config = _maybe_expand_lora_scales(unet, [scale], default_scale=0.0)[0]
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            if isinstance(config, dict):
                for prefix, s in config.items():
                    if name.startswith(prefix):
                        proc.scale[0] = s
            else:
                proc.scale[0] = config
