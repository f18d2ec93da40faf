"""XLabs-AI flux-ip-adapter v1 and v2: CLIP ViT-L/14 `image_embeds` -> N tokens, attended in Flux's 19 double blocks.

File layout (`ip_adapter.safetensors`):
- `ip_adapter_proj_model.proj.{weight [N*4096, 768], bias}` and `ip_adapter_proj_model.norm.{weight, bias} [4096]`:
  a linear map of the projected CLIP embedding to N tokens of the text width (N = 4 in v1, 16 in v2), then a
  LayerNorm (eps 1e-5) per token;
- `double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight [3072, 4096], bias [3072]}` for the
  double blocks i = 0..18.

The image term of double block i, as diffusers' `FluxIPAdapterAttnProcessor` computes it (our reference):
`SDPA(q, K_i(tokens), V_i(tokens))` with q the block's image-stream query after its own QK-norm and before RoPE,
merged to (batch, tokens, heads * head_dim) and added, times the weight, to the image stream at the END of the
block (after its MLP, without the attention's output projection or gate). The original XLabs code also averages
that term over the batch (cond and uncond together); the diffusers reference does not, and neither do we.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .common import DitCheckpointError, attend, block_indices, check_contiguous, heads

PROJ = "ip_adapter_proj_model."
BLOCKS = "double_blocks."
K_PROJ = "ip_adapter_double_stream_k_proj"
V_PROJ = "ip_adapter_double_stream_v_proj"
DOUBLE_BLOCKS = 19  # FLUX.1's double-stream blocks; the adapter has one K/V pair per block
NORM_EPS = 1e-5


def matches(flat: dict[str, torch.Tensor]) -> bool:
    """Whether a file's tensors are an XLabs Flux adapter (its projection and double-block processor keys)."""
    return f"{PROJ}proj.weight" in flat and any(key.startswith(BLOCKS) and K_PROJ in key for key in flat)


class _Processor(nn.Module):
    """One double block's image key/value projections, named as in the file."""

    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        setattr(self, K_PROJ, nn.Linear(width, inner))
        setattr(self, V_PROJ, nn.Linear(width, inner))

    def kv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, K_PROJ)(tokens), getattr(self, V_PROJ)(tokens)


class _Block(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.processor = _Processor(width, inner)


class _Projection(nn.Module):
    def __init__(self, embed_dim: int, tokens: int, width: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(embed_dim, tokens * width)
        self.norm = nn.LayerNorm(width, eps=NORM_EPS)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(embeds.to(self.proj.weight.dtype))
        return self.norm(x.reshape(embeds.shape[0], self.tokens, -1))


class XLabsFluxAdapter(nn.Module):
    """The whole file as one module: `state_dict()` keys are the file's keys."""

    def __init__(self, embed_dim: int, tokens: int, width: int, inner: int, blocks: int) -> None:
        super().__init__()
        self.embed_dim, self.tokens, self.width, self.inner = embed_dim, tokens, width, inner
        self.ip_adapter_proj_model = _Projection(embed_dim, tokens, width)
        self.double_blocks = nn.ModuleDict({str(i): _Block(width, inner) for i in range(blocks)})

    @property
    def blocks(self) -> int:
        return len(self.double_blocks)

    def processor(self, block: int) -> _Processor:
        return self.double_blocks[str(block)].processor


def load(flat: dict[str, torch.Tensor], path: str | Path, *, expected_blocks: int | None = None) -> XLabsFluxAdapter:
    """Build the adapter from a file's tensors without copying them. The blocks must be numbered 0..n-1; with
    `expected_blocks` n must be that (FLUX.1 has 19). Apply checks the count against the model it patches."""
    path = Path(path)
    proj = flat[f"{PROJ}proj.weight"]
    norm = flat.get(f"{PROJ}norm.weight")
    first = flat.get(f"{BLOCKS}0.processor.{K_PROJ}.weight")
    if proj.ndim != 2 or norm is None or norm.ndim != 1 or first is None or first.ndim != 2:
        raise DitCheckpointError(
            f"{path.name}: looks like an XLabs Flux IP-Adapter but lacks `{PROJ}norm.weight` or "
            f"`{BLOCKS}0.processor.{K_PROJ}.weight` (or they are not matrices/vectors). Download the file again."
        )
    width = norm.shape[0]
    if proj.shape[0] % width:
        raise DitCheckpointError(
            f"{path.name}: the projection has {proj.shape[0]} outputs, not a multiple of the {width}-wide tokens."
        )
    indices = block_indices(flat, BLOCKS)
    check_contiguous(path, "XLabs Flux IP-Adapter", indices, expected_blocks if expected_blocks else len(indices))
    with torch.device("meta"):
        model = XLabsFluxAdapter(proj.shape[1], proj.shape[0] // width, width, first.shape[0], len(indices))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(k for k in set(flat) - set(expected) if k.startswith((PROJ, BLOCKS)))
    wrong = [f"{k} {tuple(flat[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in flat and flat[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise DitCheckpointError(
            f"{path.name}: not a complete XLabs Flux IP-Adapter"
            + (f"; missing {missing[:4]}" if missing else "") + (f"; unexpected {unexpected[:4]}" if unexpected else "")
            + (f"; wrong shapes {wrong[:3]}" if wrong else "") + ". Download the file again."
        )
    model.load_state_dict({k: flat[k] for k in expected}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def image_tokens(model: XLabsFluxAdapter, embeds: torch.Tensor) -> torch.Tensor:
    """(batch, 768) projected CLIP image embeddings -> (batch, N, width) image tokens."""
    if embeds.ndim == 3 and embeds.shape[1] == 1:
        embeds = embeds[:, 0]
    if embeds.ndim != 2 or embeds.shape[-1] != model.embed_dim:
        raise ValueError(
            f"an XLabs Flux adapter takes CLIP ViT-L/14 image_embeds of width {model.embed_dim}; got a tensor of shape "
            f"{tuple(embeds.shape)}. Encode the reference with CLIP ViT-L/14 (clip_vision_l.safetensors)."
        )
    return model.ip_adapter_proj_model(embeds)


def block_kv(model: XLabsFluxAdapter, block: int, tokens: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Double block `block`'s image keys and values, (batch, heads, N, head_dim)."""
    k, v = model.processor(block).kv(tokens.to(model.processor(block).ip_adapter_double_stream_k_proj.weight.dtype))
    return heads(k, n_heads), heads(v, n_heads)


def block_term(q: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The unweighted image term for image queries q (batch, heads, L, head_dim): (batch, L, heads * head_dim)."""
    k, v = kv
    return attend(q, k, v)
