"""Random-weight InstantX SD3.5-Large-IP-Adapter files in the published key layout (`ip-adapter.bin` of
InstantX/SD3.5-Large-IP-Adapter, a pickle of `{"image_proj": {...}, "ip_adapter": {...}}`).

"full" gives the published shapes: SigLIP so400m features 1152 -> a 4-layer resampler of width 1280 (20 heads x 64,
MLP 5120, 64 latents, 320 timestep channels) -> 64 tokens of 2432, and 38 joint blocks with 2432 x 2432 key/value
projections and 64-wide RMSNorms. "tiny" keeps the key set with the widths of a tiny diffusers SD3Transformer2DModel
(4 layers, 4 heads x 8 = 32): width 32, head_dim 8, 4 blocks; the resampler keeps head_dim 64 (its reference
hard-codes it), so its width is 128 = 2 heads. Every width can be overridden. Weights are seeded normals (numpy
PCG64): the same arguments give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

FULL = {"embed_dim": 1152, "dim": 1280, "inner": 1280, "depth": 4, "queries": 64, "timestep_in_dim": 320,
        "hidden": 2432, "head_dim": 64, "blocks": 38}
TINY = {"embed_dim": 48, "dim": 128, "inner": 128, "depth": 4, "queries": 8, "timestep_in_dim": 32,
        "hidden": 32, "head_dim": 8, "blocks": 4}
SCALES = {"full": FULL, "tiny": TINY}


def _widths(scale: str, widths: dict[str, int]) -> dict[str, int]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    unknown = set(widths) - set(FULL) - {"ff_dim"}
    if unknown:
        raise ValueError(f"unknown widths {sorted(unknown)}; expected some of {sorted(FULL)} or ff_dim")
    out = {**SCALES[scale], **widths}
    out.setdefault("ff_dim", 4 * out["dim"])
    return out


def sd35_specs(scale: str = "full", **widths: int) -> list[tuple[str, tuple[int, ...]]]:
    """(flat key, shape) pairs of an SD3.5 adapter in file order: `image_proj.*` then `ip_adapter.N.*`."""
    w = _widths(scale, widths)
    d, inner, ff, out = w["dim"], w["inner"], w["ff_dim"], w["hidden"]
    p = "image_proj."
    specs = [(f"{p}latents", (1, w["queries"], d)), (f"{p}proj_in.weight", (d, w["embed_dim"])),
             (f"{p}proj_in.bias", (d,)), (f"{p}proj_out.weight", (out, d)), (f"{p}proj_out.bias", (out,)),
             (f"{p}norm_out.weight", (out,)), (f"{p}norm_out.bias", (out,))]
    for i in range(w["depth"]):
        layer = f"{p}layers.{i}."
        specs += [(f"{layer}0.norm1.weight", (d,)), (f"{layer}0.norm1.bias", (d,)),
                  (f"{layer}0.norm2.weight", (d,)), (f"{layer}0.norm2.bias", (d,)),
                  (f"{layer}0.to_q.weight", (inner, d)), (f"{layer}0.to_kv.weight", (2 * inner, d)),
                  (f"{layer}0.to_out.weight", (d, inner)),
                  (f"{layer}1.0.weight", (d,)), (f"{layer}1.0.bias", (d,)),
                  (f"{layer}1.1.weight", (ff, d)), (f"{layer}1.3.weight", (d, ff)),
                  (f"{layer}2.1.weight", (4 * d, d)), (f"{layer}2.1.bias", (4 * d,))]
    specs += [(f"{p}time_embedding.linear_1.weight", (d, w["timestep_in_dim"])),
              (f"{p}time_embedding.linear_1.bias", (d,)),
              (f"{p}time_embedding.linear_2.weight", (d, d)), (f"{p}time_embedding.linear_2.bias", (d,))]
    for n in range(w["blocks"]):
        b = f"ip_adapter.{n}."
        specs += [(f"{b}norm_ip.linear.weight", (2 * out, d)), (f"{b}norm_ip.linear.bias", (2 * out,)),
                  (f"{b}to_k_ip.weight", (out, out)), (f"{b}to_v_ip.weight", (out, out)),
                  (f"{b}norm_q.weight", (w["head_dim"],)), (f"{b}norm_k.weight", (w["head_dim"],)),
                  (f"{b}norm_ip_k.weight", (w["head_dim"],))]
    return specs


def _value(key: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Modest values: matrices ~ N(0, 1/fan_in) (clipped to std 0.02..0.1), norm weights near 1, small biases."""
    x = rng.standard_normal(shape, dtype=np.float32)
    if key.endswith("latents"):
        return x / np.sqrt(shape[-1])
    if len(shape) == 2:
        return x * np.float32(min(0.1, max(0.02, 1.0 / np.sqrt(shape[1]))))
    is_norm = any(s in key for s in ("norm", ".1.0.")) and key.endswith(".weight")
    return 1.0 + 0.1 * x if is_norm else 0.05 * x


def sd35_state_dict(scale: str = "full", seed: int = 0, dtype: torch.dtype = torch.float32,
                    **widths: int) -> dict[str, torch.Tensor]:
    """Seeded random tensors for `sd35_specs(scale, **widths)`, flat keys."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return {key: torch.from_numpy(_value(key, shape, rng)).to(dtype) for key, shape in sd35_specs(scale, **widths)}


def nest(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Flat `image_proj.x` / `ip_adapter.N.y` keys -> the published pickle's `{"image_proj": .., "ip_adapter": ..}`."""
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, rest = key.split(".", 1)
        out[group][rest] = value
    return out


def write_sd35(path: str | Path, scale: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
               **widths: int) -> Path:
    """Write an adapter file: `.safetensors` with flat keys, or a `.bin` torch pickle of the nested dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = sd35_state_dict(scale, seed, dtype, **widths)
    if path.suffix == ".safetensors":
        save_file(flat, str(path), metadata={"format": "pt"})
    elif path.suffix == ".bin":
        with open(path, "wb") as f:
            torch.save(nest(flat), f)
    else:
        raise ValueError(f"{path.name}: write .safetensors or .bin")
    return path
