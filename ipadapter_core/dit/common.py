"""What the DiT adapter formats share: their names, the flat tensor dict of a file, norms and attention."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import safe_load


class DitFormat(str, Enum):
    XLABS_FLUX = "XLabs Flux"
    INSTANTX_FLUX = "InstantX Flux"
    INSTANTX_SD35 = "InstantX SD3.5"


class DitCheckpointError(ValueError):
    """A DiT adapter file that cannot be used; the message names the file, what was found and the fix."""


def read_flat(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an adapter file under its dotted name: `.safetensors` as stored, a `.bin` pickle's nested
    `{"image_proj": {...}, "ip_adapter": {...}}` groups flattened to `image_proj.<key>` / `ip_adapter.<key>`.
    Pickles are read as plain tensors only (`safe_load`), so a file that would run code is refused."""
    path = Path(path)
    obj = safe_load.load_file(path, what="IP-Adapter")
    if not isinstance(obj, dict):
        raise DitCheckpointError(f"{path.name}: expected a dict of tensors, found {type(obj).__name__}.")
    flat: dict[str, torch.Tensor] = {}
    _flatten(obj, "", flat)
    return flat


def _flatten(obj: dict, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)


def rms_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension as diffusers computes it: the mean square in float32, the result in the
    input's dtype, then the weight (if any)."""
    dtype = x.dtype
    x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return x.to(dtype)
    if weight.dtype in (torch.float16, torch.bfloat16):
        return x.to(weight.dtype) * weight
    return x * weight


def heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)."""
    b, n, _ = x.shape
    return x.view(b, n, n_heads, -1).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over (batch, heads, tokens, head_dim) tensors, returned as (batch, tokens, heads *
    head_dim) in q's dtype."""
    out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def block_indices(flat: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """The sorted integer indices `i` of keys `<prefix><i>.`."""
    found = set()
    for key in flat:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def check_contiguous(path: Path, what: str, indices: list[int], expected: int) -> None:
    """Refuse a file whose numbered blocks are not exactly 0..expected-1."""
    if indices != list(range(expected)):
        missing = sorted(set(range(expected)) - set(indices))
        extra = sorted(set(indices) - set(range(expected)))
        raise DitCheckpointError(
            f"{path.name}: expected {what} blocks numbered 0..{expected - 1}; this file has "
            f"{len(indices)}" + (f", missing {missing[:8]}" if missing else "") + (f", unexpected {extra[:8]}" if extra else "")
            + ". The file is incomplete or of another format: download it again."
        )
