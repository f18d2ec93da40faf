"""The ComfyUI model being patched: its cross-attention topology, compute device and dtype, and sampling schedule."""

from __future__ import annotations

import weakref

import torch

from ..ipadapter_core import Topology


def compute_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype the UNet computes (fp32 on CPU; fp8 storage computes in fp16)."""
    import comfy.model_management as mm

    device = mm.get_torch_device()
    if device.type == "cpu":
        return device, torch.float32
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    if not dtype.is_floating_point or dtype.itemsize < 2:
        dtype = torch.float16
    return device, dtype


_topologies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def topology(model) -> Topology:
    """The cross-attention layers of a ComfyUI UNet, read from its modules (cached per UNet)."""
    unet = model.model.diffusion_model
    cached = _topologies.get(unet)
    if cached is not None:
        return cached
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        kind = "a Flux" if hasattr(unet, "double_blocks") else "an SD3" if hasattr(unet, "joint_blocks") else "a"
        raise ValueError(
            f"this is {kind} diffusion transformer ({type(unet).__name__}), not an SD1.5/SDXL UNet: SD1.5/SDXL adapters "
            "and this pack's UNet-only nodes cannot patch it. Flux and SD3.5 Large take their own adapters (XLabs, "
            "InstantX) through Apply IPAdapter or Apply Embeds"
        )
    transformers = []
    groups = [("input", list(unet.input_blocks)), ("middle", [unet.middle_block]), ("output", list(unet.output_blocks))]
    for block, modules in groups:
        for block_id, seq in enumerate(modules):
            for module in seq if isinstance(seq, torch.nn.Sequential) else [seq]:
                blocks = getattr(module, "transformer_blocks", None)
                if blocks and getattr(blocks[0], "attn2", None) is not None:
                    attn2 = blocks[0].attn2
                    transformers.append((block, block_id, len(blocks), attn2.to_q.out_features, attn2.heads))
    if not transformers:
        raise ValueError("this model has no cross-attention layers an IP-Adapter can patch (is it a UNet model?)")
    nrb = getattr(unet, "num_res_blocks", [2])
    nrb = nrb[0] if isinstance(nrb, (list, tuple)) else nrb
    topo = Topology.from_transformers(transformers, context_dim=_context_dim(unet), num_res_blocks=nrb)
    _topologies[unet] = topo
    return topo


def _context_dim(unet) -> int:
    for module in unet.modules():
        attn2 = getattr(module, "attn2", None)
        if attn2 is not None:
            return attn2.to_k.in_features
    return 0


def percent_to_sigma(model):
    """The model's map from a fraction of sampling to a sigma (start_at / end_at)."""
    if hasattr(model, "get_model_object"):
        sampling = model.get_model_object("model_sampling")
    else:
        sampling = model.object_patches.get("model_sampling", model.model.model_sampling)
    return sampling.percent_to_sigma
