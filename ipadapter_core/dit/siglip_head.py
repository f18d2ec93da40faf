"""SigLIP's attention-pooling ("MAP") head, which turns the vision tower's tokens into the pooled vector.

InstantX's Flux IP-Adapter consumes SigLIP's `pooler_output`: a learned probe token attends once over the
post-layernorm last hidden state (so400m at 384 px: 729 x 1152), then a pre-norm MLP with a residual. ComfyUI's
SigLIP CLIP-vision model stops at the post-layernorm tokens, so the head is rebuilt here from the SigLIP file's
`vision_model.head.*` tensors and applied to those tokens.

The module mirrors transformers' `SiglipMultiheadAttentionPoolingHead` (an `nn.MultiheadAttention` with packed
in-projection and biases, LayerNorm with the config's eps, `SiglipMLP` with tanh-approximated GELU); its parameter
names are the file's names without `HEAD_PREFIX`, so a strict `load_state_dict` checks the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import safe_load
from .common import DitCheckpointError, attend, heads

HEAD_PREFIX = "vision_model.head."
SO400M_HEADS = 16  # google/siglip-so400m-patch14-384: hidden 1152, 16 heads, intermediate 4304
SIGLIP_LN_EPS = 1e-6  # SiglipVisionConfig.layer_norm_eps

_SHAPES = {  # key (without prefix) -> shape in terms of C (width) and I (MLP width)
    "probe": ("1", "1", "C"),
    "attention.in_proj_weight": ("3C", "C"),
    "attention.in_proj_bias": ("3C",),
    "attention.out_proj.weight": ("C", "C"),
    "attention.out_proj.bias": ("C",),
    "layernorm.weight": ("C",),
    "layernorm.bias": ("C",),
    "mlp.fc1.weight": ("I", "C"),
    "mlp.fc1.bias": ("I",),
    "mlp.fc2.weight": ("C", "I"),
    "mlp.fc2.bias": ("C",),
}
_FIX = ("The SigLIP file must be the full SigLIP vision model that includes `vision_model.head.*` (the attention-"
        "pooling head), e.g. google/siglip-so400m-patch14-384's model.safetensors.")


def has_head(flat: dict[str, torch.Tensor]) -> bool:
    """Whether a SigLIP state dict carries the attention-pooling head's tensors."""
    return any(key.startswith(HEAD_PREFIX) for key in flat)


class _PoolingAttention(nn.Module):
    """The parameters of `nn.MultiheadAttention(C, heads, bias=True)`: packed q/k/v in-projection, out_proj."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)


class _Mlp(nn.Module):
    """SiglipMLP: fc1, tanh-approximated GELU, fc2."""

    def __init__(self, width: int, intermediate: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, intermediate)
        self.fc2 = nn.Linear(intermediate, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipPoolingHead(nn.Module):
    """probe -> multi-head attention over the tokens -> x + MLP(LayerNorm(x)) -> the probe's row."""

    def __init__(self, width: int, intermediate: int, n_heads: int = SO400M_HEADS, eps: float = SIGLIP_LN_EPS) -> None:
        super().__init__()
        if n_heads < 1 or width % n_heads:
            raise ValueError(f"SigLIP head width {width} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attention = _PoolingAttention(width)
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.mlp = _Mlp(width, intermediate)

    @property
    def width(self) -> int:
        return self.probe.shape[-1]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, C) post-layernorm last hidden state -> (batch, C), SigLIP's `pooler_output`."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.width:
            raise ValueError(f"SigLIP head expects (batch, tokens, {self.width}), got {tuple(hidden.shape)}")
        att = self.attention
        hidden = hidden.to(self.probe.dtype)
        w_q, w_k, w_v = att.in_proj_weight.chunk(3)
        b_q, b_k, b_v = att.in_proj_bias.chunk(3)
        probe = self.probe.expand(hidden.shape[0], -1, -1)
        q = heads(F.linear(probe, w_q, b_q), self.n_heads)
        k = heads(F.linear(hidden, w_k, b_k), self.n_heads)
        v = heads(F.linear(hidden, w_v, b_v), self.n_heads)
        x = att.out_proj(attend(q, k, v))
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0]


def load_head(flat_or_path: dict[str, torch.Tensor] | str | Path, *, name: str | None = None,
              n_heads: int = SO400M_HEADS, eps: float = SIGLIP_LN_EPS) -> SiglipPoolingHead:
    """The pooling head of a SigLIP vision file (or its state dict), loaded strictly.

    Width and MLP width come from the tensors; the head count cannot (the packed projection hides it), so it is
    a parameter with so400m's 16 as default. `name` names the file in errors when a dict is given. From a
    `.safetensors` path only the head's tensors are read, so the 3.5 GB full SigLIP file costs a few MB."""
    if isinstance(flat_or_path, (str, Path)):
        path = Path(flat_or_path)
        name = name or path.name
        tensors = _read_head_tensors(path)
    else:
        name = name or "SigLIP state dict"
        tensors = {k[len(HEAD_PREFIX):]: v for k, v in flat_or_path.items() if k.startswith(HEAD_PREFIX)}
    if not tensors:
        raise DitCheckpointError(f"{name}: no SigLIP attention-pooling head (no `{HEAD_PREFIX}*` tensors). {_FIX}")
    missing = [k for k in _SHAPES if k not in tensors]
    unexpected = sorted(k for k in tensors if k not in _SHAPES)
    if missing or unexpected:
        raise DitCheckpointError(
            f"{name}: the SigLIP head is incomplete or not SigLIP's"
            + (f"; missing {[HEAD_PREFIX + k for k in missing]}" if missing else "")
            + (f"; unexpected {[HEAD_PREFIX + k for k in unexpected]}" if unexpected else "") + f". {_FIX}")
    width, intermediate = tensors["probe"].shape[-1], tensors["mlp.fc1.weight"].shape[0]
    sizes = {"1": 1, "C": width, "3C": 3 * width, "I": intermediate}
    wrong = [f"{HEAD_PREFIX}{k} {tuple(tensors[k].shape)} (expected {tuple(sizes[d] for d in dims)})"
             for k, dims in _SHAPES.items() if tuple(tensors[k].shape) != tuple(sizes[d] for d in dims)]
    if wrong:
        raise DitCheckpointError(f"{name}: SigLIP head tensors of the wrong shape: {'; '.join(wrong)}. {_FIX}")
    if width % n_heads:
        raise DitCheckpointError(f"{name}: SigLIP head width {width} is not divisible by {n_heads} attention heads; "
                                 "pass the model's head count (so400m: 16).")
    with torch.device("meta"):
        head = SiglipPoolingHead(width, intermediate, n_heads, eps)
    head.load_state_dict(tensors, strict=True, assign=True)
    return head.eval()


def _read_head_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The head's tensors of a file, without the prefix; a safetensors file is read for those tensors only."""
    what = "SigLIP vision model"
    if path.suffix.lower() not in safe_load.SAFETENSORS_SUFFIXES:
        flat = safe_load.state_dict(path, what=what)
        return {k[len(HEAD_PREFIX):]: v for k, v in flat.items() if k.startswith(HEAD_PREFIX)}
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path.name}")
    header = safe_load.read_safetensors_header(path, what=what)
    keys = [k for k in header if k.startswith(HEAD_PREFIX)]
    if not keys:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k[len(HEAD_PREFIX):]: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises its own types for truncated or corrupt data
        raise safe_load.DamagedFileError(f"{path.name}: not a readable safetensors file ({e}).") from e
