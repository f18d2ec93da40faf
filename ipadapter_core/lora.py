"""The FaceID LoRA that ships inside FaceID adapter files, in the standard diffusers LoRA layout.

The file keys it by attention processor index N (`N.to_q_lora.down.weight`); hosts key LoRAs by
layer name. Converting to the diffusers processor form
(`down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight`) gives
exactly the tensors the separately published `*_lora.safetensors` files hold, so any LoRA loader that
reads that form applies the embedded LoRA identically. No alpha: the update is up @ down, scale 1.
"""

from __future__ import annotations

import re

import torch

from .topology import Topology

LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
"""A FaceID LoRA tensor of an adapter file's ip_adapter group: processor index, projection, down/up."""


def is_lora_key(key: str) -> bool:
    return LORA_KEY.match(key) is not None


def processor_names(topology: Topology) -> dict[int, str]:
    """Processor index N (attn1 even, attn2 odd) -> diffusers processor name."""
    names = {}
    for layer in topology.layers:
        names[layer.checkpoint_index - 1] = layer.diffusers_processor(1)
        names[layer.checkpoint_index] = layer.diffusers_processor(2)
    return names


def to_diffusers_lora(lora: dict[str, torch.Tensor], topology: Topology) -> dict[str, torch.Tensor]:
    """Embedded LoRA tensors -> `<processor>.to_{q,k,v,out}_lora.{down,up}.weight` keys."""
    names = processor_names(topology)
    out = {}
    for key, tensor in lora.items():
        m = LORA_KEY.match(key)
        if m is None:
            raise ValueError(f"unexpected FaceID LoRA key '{key}'")
        n = int(m.group(1))
        if n not in names:
            raise ValueError(f"FaceID LoRA key '{key}' is for processor {n}, but this UNet has {len(names)} processors")
        out[f"{names[n]}.to_{m.group(2)}_lora.{m.group(3)}.weight"] = tensor
    return out


def lora_delta(down: torch.Tensor, up: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The weight update a LoRA pair makes: strength * up @ down."""
    return strength * (up.float() @ down.float())
