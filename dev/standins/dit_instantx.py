"""Random-weight InstantX FLUX.1-dev-IP-Adapter files in the published key layout, and SigLIP head key specs.

Scales:
- "full": the published shapes (SigLIP 1152 -> hidden 2304 -> 128 tokens x 4096, 57 blocks of [3072, 4096]);
  2.65 B parameters, so the tests only build it on the meta device.
- "tiny": the same key names with small widths matching a tiny diffusers Flux transformer: SigLIP width 32
  (hidden 2 x 32, the published ratio), 8 tokens of width 48 (= the tiny transformer's joint_attention_dim, as
  4096 is Flux's), blocks of [32, 48] (inner 32 = 2 heads x head_dim 16, != the token width like 3072 != 4096),
  2 double + 2 single blocks. Any width may be overridden.

Weights are drawn from numpy PCG64 per tensor (seed, jumped by index), so files are reproducible across torch versions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ipadapter_core.dit import instantx_flux

FULL = {"embed_dim": 1152, "hidden": 2304, "tokens": 128, "width": 4096, "inner": 3072, "double_blocks": 19,
        "single_blocks": 38}
TINY = {"embed_dim": 32, "hidden": 64, "tokens": 8, "width": 48, "inner": 32, "double_blocks": 2,
        "single_blocks": 2}
SO400M = {"width": 1152, "intermediate": 4304}


def instantx_flux_sizes(scale: str = "full", **widths: int) -> dict[str, int]:
    """The sizes of `scale` with `widths` (any of FULL's keys) overriding them."""
    if scale not in ("full", "tiny"):
        raise ValueError(f"scale must be 'full' or 'tiny', got {scale!r}")
    base = dict(FULL if scale == "full" else TINY)
    unknown = set(widths) - set(base)
    if unknown:
        raise ValueError(f"unknown sizes {sorted(unknown)}; known: {sorted(base)}")
    base.update({k: int(v) for k, v in widths.items()})
    return base


def instantx_flux_specs(scale: str = "full", **widths: int) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of an InstantX Flux file at `scale`, in the published modules' order."""
    s = instantx_flux_sizes(scale, **widths)
    return instantx_flux.specs(s["embed_dim"], s["hidden"], s["tokens"], s["width"], s["inner"],
                               s["double_blocks"] + s["single_blocks"])


def _draw(name: str, shape: tuple[int, ...], seed: int, index: int) -> torch.Tensor:
    """Norm weights near 1, biases small, weights ~ N(0, 1/fan_in), from the tensor's own PCG64 stream."""
    rng = np.random.Generator(np.random.PCG64(seed).jumped(index))
    a = rng.standard_normal(math.prod(shape), dtype=np.float32)
    if name.endswith("norm.weight"):
        a = 1.0 + 0.1 * a
    elif name.endswith("bias"):
        a *= 0.1
    else:
        a *= 1.0 / math.sqrt(shape[-1])
    return torch.from_numpy(a.reshape(shape))


def make_instantx_flux(scale: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
                       **widths: int) -> dict[str, torch.Tensor]:
    """A flat `{"image_proj.x": t, "ip_adapter.N.y": t}` dict of random weights at `scale`."""
    return {name: _draw(name, shape, seed, i).to(dtype)
            for i, (name, shape) in enumerate(instantx_flux_specs(scale, **widths))}


def write_instantx_flux(path: str | Path, scale: str = "tiny", seed: int = 0, *, dtype: torch.dtype = torch.float32,
                        flat: dict[str, torch.Tensor] | None = None, **widths: int) -> Path:
    """Write a file: `.safetensors` flat as stored, anything else (`.bin`) as the published nested torch pickle
    `{"image_proj": {...}, "ip_adapter": {...}}`. `flat` writes given tensors (e.g. a damaged set) instead."""
    path = Path(path)
    if flat is None:
        flat = make_instantx_flux(scale, seed, dtype, **widths)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in flat.items()}, str(path), metadata={"format": "pt"})
        return path
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        group, rest = key.split(".", 1)
        nested.setdefault(group, {})[rest] = tensor
    with open(path, "wb") as f:
        torch.save(nested, f)
    return path


def siglip_head_specs(width: int = SO400M["width"],
                      intermediate: int = SO400M["intermediate"]) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of SigLIP's attention-pooling head as a transformers SigLIP file stores it."""
    p = "vision_model.head."
    return [(p + "probe", (1, 1, width)),
            (p + "attention.in_proj_weight", (3 * width, width)), (p + "attention.in_proj_bias", (3 * width,)),
            (p + "attention.out_proj.weight", (width, width)), (p + "attention.out_proj.bias", (width,)),
            (p + "layernorm.weight", (width,)), (p + "layernorm.bias", (width,)),
            (p + "mlp.fc1.weight", (intermediate, width)), (p + "mlp.fc1.bias", (intermediate,)),
            (p + "mlp.fc2.weight", (width, intermediate)), (p + "mlp.fc2.bias", (width,))]
