"""Random-weight XLabs Flux IP-Adapter files in the published key layout (`ip_adapter.safetensors` of
XLabs-AI/flux-ip-adapter and flux-ip-adapter-v2).

"full" gives the published shapes: CLIP ViT-L/14 embedding 768, N x 4096 projection (N = 4 for v1, 16 for v2),
19 double blocks with 4096 -> 3072 key/value projections. Smaller widths and fewer blocks keep the key names, for
tiny Flux transformers. Weights are seeded normals (numpy PCG64), so the same arguments give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

FULL = {"embed_dim": 768, "width": 4096, "inner": 3072, "blocks": 19}


def xlabs_specs(*, tokens: int = 4, embed_dim: int = 768, width: int = 4096, inner: int = 3072,
                blocks: int = 19) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) pairs of an XLabs Flux adapter in file order."""
    specs = [
        ("ip_adapter_proj_model.proj.weight", (tokens * width, embed_dim)),
        ("ip_adapter_proj_model.proj.bias", (tokens * width,)),
        ("ip_adapter_proj_model.norm.weight", (width,)),
        ("ip_adapter_proj_model.norm.bias", (width,)),
    ]
    for i in range(blocks):
        for kv in ("k", "v"):
            stem = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            specs += [(f"{stem}.weight", (inner, width)), (f"{stem}.bias", (inner,))]
    return specs


def xlabs_state_dict(seed: int = 0, dtype: torch.dtype = torch.float32, **dims) -> dict[str, torch.Tensor]:
    """Seeded random tensors for `xlabs_specs(**dims)`: weights ~ N(0, 1/fan_in), norm weights near 1."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for key, shape in xlabs_specs(**dims):
        if key.endswith("norm.weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 2:
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            value = 0.1 * rng.standard_normal(shape)
        out[key] = torch.from_numpy(value.astype(np.float32)).to(dtype)
    return out


def write_xlabs(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, **dims) -> Path:
    """Write an XLabs Flux adapter file (safetensors, flat keys as published)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(xlabs_state_dict(seed, dtype, **dims), str(path))
    return path
