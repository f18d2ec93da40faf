"""What tests and benchmarks may observe or reset of the pack while it runs in ComfyUI.

A small public surface, so that nothing outside `nodes/` reaches into its private modules: the topology the
pack reads from a model, the two halves of a patched layer call (the host's text attention and the image
attention added to it), and the adapter cache. The patches themselves sit in ComfyUI's public
`model_options["transformer_options"]["patches_replace"]["attn2"]`, and the tensors a patch keeps are its
plan's `LayerPlan.tensors()`. Nothing here is used by the nodes.
"""

from __future__ import annotations

import torch

from . import _adapters, _patch, _unet
from ._patch import IPAKitAttn2


def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """What an unpatched layer computes, with the host's attention kernel: what the image attention is added to."""
    return _patch.text_attention(q, k, v, extra_options)


def image_attention(patch: IPAKitAttn2, q: torch.Tensor, extra_options: dict, out: torch.Tensor) -> torch.Tensor:
    """The patch's image attention alone, added into `out` (contiguous, shaped like `q`); returns `out`."""
    return patch._image_attention(q, extra_options, out)


def clear_adapter_cache() -> None:
    """Forget every loaded adapter, so the next load reads its file again."""
    _adapters.clear_cache()


def topology(model):
    """The cross-attention layers the pack reads from a ComfyUI model (an `ipadapter_core.Topology`)."""
    return _unet.topology(model)
