"""InstantX FLUX.1-dev-IP-Adapter: SigLIP pooled vector -> 128 image tokens -> an extra attention in all 57 blocks.

Published layout (`ip-adapter.bin`, a torch pickle `{"image_proj": {...}, "ip_adapter": {...}}`):
- `image_proj.proj.0` Linear(1152 -> 2304), GELU (exact), `image_proj.proj.2` Linear(2304 -> 128 x 4096),
  reshape to (128, 4096), `image_proj.norm` LayerNorm(4096, eps 1e-5). 4096 is Flux's joint_attention_dim.
- `ip_adapter.{i}.to_k_ip.weight` / `.to_v_ip.weight` [3072, 4096], no bias, i = 0..56: diffusers'
  `transformer.attn_processors` order, i.e. the 19 double blocks (0..18) then the 38 single blocks (19..56).

Published processor (`IPAFluxAttnProcessor2_0`), per block with heads H and head_dim D:
    q = the block's own image query after its QK RMSNorm, BEFORE RoPE (double blocks: image rows only;
        single blocks: the whole txt+img sequence)
    k = RMSNorm_eps1e-5(to_k_ip(tokens) split into heads), no weight;  v = to_v_ip(tokens) split into heads
        (a `norm_added_v` is declared in some copies but its call is commented out: values are not normalised)
    out += scale * merge_heads(SDPA(q, k, v))   added to the attention output before the output projection
        (double: image stream before `to_out`; single: every row before the block's `proj_out`)
`block_term` returns that term unscaled; the caller multiplies by its weight.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .common import DitCheckpointError, attend, block_indices, check_contiguous, heads, rms_norm

DOUBLE_BLOCKS = 19  # Flux.1 double-stream blocks (adapter indices 0..18)
SINGLE_BLOCKS = 38  # Flux.1 single-stream blocks (adapter indices 19..56)
KEY_NORM_EPS = 1e-5  # RMSNorm(128, eps=1e-5, elementwise_affine=False) on the image keys
TOKEN_NORM_EPS = 1e-5  # torch.nn.LayerNorm default, the projection's final norm
WHAT = "InstantX Flux IP-Adapter"

_PROJ_KEYS = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
_BLOCK_KEYS = ("to_k_ip.weight", "to_v_ip.weight")


class ImageProjection(nn.Module):
    """Linear, GELU, Linear, reshape to `tokens` rows, LayerNorm: SigLIP pooled (E) -> (tokens, width)."""

    def __init__(self, embed_dim: int, hidden: int, tokens: int, width: int) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.proj = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, tokens * width))
        self.norm = nn.LayerNorm(width, eps=TOKEN_NORM_EPS)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.proj(pooled).reshape(-1, self.tokens, self.width)
        return self.norm(x)


class BlockAdapter(nn.Module):
    """One block's image key/value projections (token width -> the block's heads x head_dim)."""

    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(width, inner, bias=False)
        self.to_v_ip = nn.Linear(width, inner, bias=False)


class InstantXFluxAdapter(nn.Module):
    """`image_proj` and `ip_adapter` ("0".."N-1"); `state_dict()` keys are the published file's keys."""

    def __init__(self, embed_dim: int, hidden: int, tokens: int, width: int, inner: int, n_blocks: int,
                 double_blocks: int = DOUBLE_BLOCKS) -> None:
        super().__init__()
        if not 0 <= double_blocks <= n_blocks:
            raise ValueError(f"double_blocks {double_blocks} must be within 0..{n_blocks}")
        self.double_blocks = double_blocks
        self.image_proj = ImageProjection(embed_dim, hidden, tokens, width)
        self.ip_adapter = nn.ModuleDict({str(i): BlockAdapter(width, inner) for i in range(n_blocks)})

    @property
    def tokens(self) -> int:
        return self.image_proj.tokens

    @property
    def n_blocks(self) -> int:
        return len(self.ip_adapter)

    @property
    def single_blocks(self) -> int:
        return self.n_blocks - self.double_blocks

    def layer(self, index: int) -> BlockAdapter:
        """The adapter of block `index` in file order (doubles first)."""
        return self.ip_adapter[str(index)]

    def is_double(self, index: int) -> bool:
        return is_double(index, self.double_blocks, self.n_blocks)


def is_double(index: int, double_blocks: int = DOUBLE_BLOCKS, n_blocks: int = DOUBLE_BLOCKS + SINGLE_BLOCKS) -> bool:
    """Whether adapter block `index` serves a double-stream block (else a single-stream one)."""
    if not 0 <= index < n_blocks:
        raise IndexError(f"adapter block {index} is out of range 0..{n_blocks - 1}")
    return index < double_blocks


def adapter_index(kind: str, block: int, double_blocks: int = DOUBLE_BLOCKS) -> int:
    """The adapter block serving the host's double block `block` (kind "double") or single block `block`."""
    if kind == "double":
        return block
    if kind == "single":
        return double_blocks + block
    raise ValueError(f"kind must be 'double' or 'single', got {kind!r}")


def matches(flat: dict[str, torch.Tensor]) -> bool:
    """Whether a flat tensor dict is this format, from names and shapes only (works on meta tensors).

    The SD1.5/SDXL FaceID files share the projection's names (`proj.0`, `proj.2`, `norm`), so the adapter group
    decides: here every block 0..N-1 (N >= 1) has exactly `to_k_ip`/`to_v_ip` of one shape [inner, token width],
    while UNet files number their adapters 1, 3, 5, ... (index 0 is a self-attention with no image weights)
    and FaceID files add LoRA keys. The block count is not checked, so scaled-down files match too."""
    proj = {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")}
    blocks = {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}
    if set(proj) != set(_PROJ_KEYS) or not blocks or len(proj) + len(blocks) != len(flat):
        return False
    w0, w2, norm = proj["proj.0.weight"], proj["proj.2.weight"], proj["norm.weight"]
    if w0.dim() != 2 or w2.dim() != 2 or norm.dim() != 1 or w2.shape[1] != w0.shape[0]:
        return False
    width = norm.shape[0]
    if width == 0 or w2.shape[0] % width:
        return False
    n = len(block_indices(blocks, ""))
    if set(blocks) != {f"{i}.{k}" for i in range(n) for k in _BLOCK_KEYS}:
        return False
    shape = blocks["0.to_k_ip.weight"].shape
    return len(shape) == 2 and shape[1] == width and all(t.shape == shape for t in blocks.values())


def load(flat: dict[str, torch.Tensor], path: str | Path, *, double_blocks: int = DOUBLE_BLOCKS,
         single_blocks: int = SINGLE_BLOCKS) -> InstantXFluxAdapter:
    """Build the adapter on the meta device from `flat`'s shapes and assign its tensors (strict).

    The host's block counts (Flux.1: 19 double, 38 single) say how many adapter blocks the file must hold.
    Every problem raises DitCheckpointError naming `path`'s file."""
    path = Path(path)
    sizes = _infer_sizes(flat, path)
    n_blocks = double_blocks + single_blocks
    check_contiguous(path, f"{WHAT} ({double_blocks} double + {single_blocks} single)",
                     block_indices(flat, "ip_adapter."), n_blocks)
    expected = dict(specs(**sizes, n_blocks=n_blocks))
    missing = [k for k in expected if k not in flat]
    unexpected = sorted(k for k in flat if k not in expected)
    wrong = [f"{k} {tuple(flat[k].shape)} (expected {expected[k]})" for k in expected
             if k in flat and tuple(flat[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise DitCheckpointError(
            f"{path.name}: not a complete {WHAT} file"
            + (f"; missing {missing[:6]}" if missing else "") + (f"; unexpected {unexpected[:6]}" if unexpected else "")
            + (f"; wrong shape: {'; '.join(wrong[:6])}" if wrong else "") + ". Download the file again.")
    with torch.device("meta"):
        model = InstantXFluxAdapter(**sizes, n_blocks=n_blocks, double_blocks=double_blocks)
    try:
        model.load_state_dict(flat, strict=True, assign=True)
    except RuntimeError as e:
        raise DitCheckpointError(f"{path.name}: cannot load as {WHAT}: {e}") from e
    return model.eval()


def specs(embed_dim: int, hidden: int, tokens: int, width: int, inner: int,
          n_blocks: int) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of a file with these sizes, in the published modules' order."""
    rows = [("image_proj.proj.0.weight", (hidden, embed_dim)), ("image_proj.proj.0.bias", (hidden,)),
            ("image_proj.proj.2.weight", (tokens * width, hidden)), ("image_proj.proj.2.bias", (tokens * width,)),
            ("image_proj.norm.weight", (width,)), ("image_proj.norm.bias", (width,))]
    for i in range(n_blocks):
        rows += [(f"ip_adapter.{i}.{k}", (inner, width)) for k in _BLOCK_KEYS]
    return rows


def _infer_sizes(flat: dict[str, torch.Tensor], path: Path) -> dict[str, int]:
    """embed_dim, hidden, tokens, width and inner from the anchor tensors' shapes."""
    anchors = ("image_proj.proj.0.weight", "image_proj.proj.2.weight", "image_proj.norm.weight",
               "ip_adapter.0.to_k_ip.weight")
    missing = [k for k in anchors if k not in flat]
    if missing:
        raise DitCheckpointError(f"{path.name}: not a complete {WHAT} file; missing {missing}. Download it again.")
    w0, w2, norm, k0 = (flat[k] for k in anchors)
    if w0.dim() != 2 or w2.dim() != 2 or norm.dim() != 1 or k0.dim() != 2 or norm.shape[0] == 0:
        raise DitCheckpointError(f"{path.name}: {WHAT} tensors of unexpected rank: proj.0 {tuple(w0.shape)}, "
                                 f"proj.2 {tuple(w2.shape)}, norm {tuple(norm.shape)}, to_k_ip {tuple(k0.shape)}.")
    width = norm.shape[0]
    if w2.shape[0] % width:
        raise DitCheckpointError(f"{path.name}: image_proj.proj.2 has {w2.shape[0]} rows, not a multiple of the "
                                 f"token width {width} (image_proj.norm); not an {WHAT} file.")
    return {"embed_dim": w0.shape[1], "hidden": w0.shape[0], "tokens": w2.shape[0] // width, "width": width,
            "inner": k0.shape[0]}


def image_tokens(model: InstantXFluxAdapter, pooled: torch.Tensor) -> torch.Tensor:
    """SigLIP `pooler_output` (batch, E) -> image tokens (batch, tokens, width), in the adapter's dtype."""
    proj = model.image_proj
    embed_dim = proj.proj[0].in_features
    if pooled.dim() != 2 or pooled.shape[-1] != embed_dim:
        raise ValueError(f"{WHAT} expects SigLIP pooled embeddings (batch, {embed_dim}), got {tuple(pooled.shape)}")
    return proj(pooled.to(proj.norm.weight.dtype))


def block_kv(layer: BlockAdapter, tokens: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image keys (RMS-normalised per head, no weight, eps 1e-5) and values, each (batch, heads, tokens, D)."""
    inner = layer.to_k_ip.out_features
    if n_heads < 1 or inner % n_heads:
        raise ValueError(f"{WHAT}: block width {inner} is not divisible by {n_heads} heads")
    tokens = tokens.to(layer.to_k_ip.weight.dtype)
    k = rms_norm(heads(F.linear(tokens, layer.to_k_ip.weight), n_heads), KEY_NORM_EPS)
    v = heads(F.linear(tokens, layer.to_v_ip.weight), n_heads)
    return k, v


def block_term(q: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """SDPA of the block's pre-RoPE normed query (batch, heads, L, D) over the image keys/values, merged to
    (batch, L, heads x D) in q's dtype; UNSCALED. A batch-1 kv serves every row of q."""
    k, v = kv
    if k.shape[0] != q.shape[0]:
        if k.shape[0] != 1:
            raise ValueError(f"{WHAT}: image tokens batch {k.shape[0]} does not match the query batch {q.shape[0]}")
        k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
    if k.shape[1] != q.shape[1] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{WHAT}: image keys {tuple(k.shape)} do not fit the query {tuple(q.shape)} (heads, D)")
    return attend(q, k, v)
