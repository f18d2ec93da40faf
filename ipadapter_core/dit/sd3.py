"""InstantX SD3.5-Large-IP-Adapter: SigLIP patch features -> a timestep-conditioned resampler -> 64 image tokens,
attended by the image stream inside every joint block of SD3.5 Large.

File layout (`ip-adapter.bin`, a pickle of `{"image_proj": {...}, "ip_adapter": {...}}`; flat keys shown):
- `image_proj.*`, the resampler ("TimeResampler", width D = 1280, attention width I = 1280 = 20 heads x 64):
  `latents [1, 64, D]`, `proj_in [D, 1152]` (+bias), `time_embedding.linear_1 [D, 320]`, `time_embedding.linear_2
  [D, D]` (+biases), per layer i = 0..3: `layers.i.0.{norm1, norm2}` (LayerNorms of the features and the latents),
  `layers.i.0.{to_q [I, D], to_kv [2I, D], to_out [D, I]}` (no biases), `layers.i.1.0` (LayerNorm before the
  feed-forward), `layers.i.1.1 [4D, D]`, `layers.i.1.3 [D, 4D]` (GELU MLP, no biases), `layers.i.2.1 [4D, D]` (+bias,
  the AdaLN shift/scale of both halves), then `proj_out [2432, D]` (+bias) and `norm_out` (LayerNorm, 2432);
- `ip_adapter.N.*` for the joint blocks N = 0..37: `norm_ip.linear [2 x 2432, D]` (+bias, AdaLN of the tokens),
  `to_k_ip`, `to_v_ip [2432, 2432]` (no biases), `norm_q`, `norm_k`, `norm_ip_k [64]` (RMSNorm weights).

The computation, as diffusers' `IPAdapterTimeImageProjection` and `SD3IPAdapterJointAttnProcessor2_0` do it (our
reference; every LayerNorm eps 1e-5 in the resampler, 1e-6 in the blocks, every RMSNorm eps 1e-6):
- `image_tokens`: the penultimate SigLIP so400m hidden states (B, 729, 1152) and the transformer's timestep (its own
  units, what diffusers passes as `timestep`: sigma x 1000) -> tokens (B, 64, 2432) and the resampler's timestep
  embedding temb (B, D), which also conditions every block's AdaLN;
- block N: `k_ip, v_ip = W_k n, W_v n` with `n = LayerNorm(tokens) * (1 + scale) + shift`, `(shift, scale) =
  norm_ip.linear(silu(temb))` (shift first), split in heads, `k_ip` RMS-normed with `norm_ip_k`;
- the term: `SDPA(norm_q(q), cat[norm_k(k), k_ip], cat[v, v_ip])`, with q, k, v the image stream's own projections
  BEFORE the host's QK-norms (the text tokens take no part), merged to (B, L_img, H x 64) and added times the scale
  to the image stream's attention output before its output projection `to_out`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .common import DitCheckpointError, attend, block_indices, check_contiguous, heads, rms_norm

PROJ = "image_proj."
BLOCKS = "ip_adapter."
RESAMPLER_HEAD_DIM = 64  # fixed in the reference resampler: heads = to_q rows / 64
LN_EPS = 1e-5  # the resampler's LayerNorms (torch default)
BLOCK_EPS = 1e-6  # the blocks' AdaLN LayerNorm and RMSNorms
MAX_PERIOD = 10000  # sinusoidal timestep embedding, cos half first, no frequency shift
WHAT = "InstantX SD3.5 IP-Adapter"
FIX = "Download ip-adapter.bin of InstantX/SD3.5-Large-IP-Adapter again."


def matches(flat: dict[str, torch.Tensor]) -> bool:
    """Whether a file's tensors are this format: the resampler's timestep embedding or the blocks' AdaLN, which
    neither the SD1.5/SDXL "plus" adapters (same `image_proj.latents`/`layers`/`to_k_ip` names) nor Flux have."""
    return any(
        key.startswith(f"{PROJ}time_embedding.")
        or (key.startswith(BLOCKS) and key.endswith(".norm_ip.linear.weight"))
        for key in flat
    )


@dataclass(frozen=True)
class SD35Config:
    """Widths read from a file's shapes; the defaults are the published SD3.5-Large adapter's."""

    embed_dim: int = 1152  # image features (SigLIP so400m)
    dim: int = 1280  # resampler width D
    inner: int = 1280  # resampler attention width (heads x 64)
    ff_dim: int = 5120  # resampler MLP width
    depth: int = 4
    queries: int = 64  # image tokens
    timestep_in_dim: int = 320  # sinusoidal timestep channels
    output_dim: int = 2432  # token width = the transformer's width
    hidden: int = 2432  # to_k_ip / to_v_ip rows = the transformer's width
    head_dim: int = 64  # the host attention's head_dim (norm_q length)
    blocks: int = 38

    @property
    def heads(self) -> int:
        """The resampler's attention heads."""
        return self.inner // RESAMPLER_HEAD_DIM

    @property
    def block_heads(self) -> int:
        """The host attention's heads."""
        return self.hidden // self.head_dim


class _Weight(nn.Module):
    """An RMSNorm's weight under the file's name, applied over the last dimension."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, BLOCK_EPS, self.weight)


class _AdaNorm(nn.Module):
    """`norm_ip`: an affine-free LayerNorm of the tokens, shifted and scaled from temb (shift first)."""

    def __init__(self, cond_dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.linear = nn.Linear(cond_dim, 2 * width)

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=-1)
        normed = F.layer_norm(tokens, (self.width,), eps=BLOCK_EPS)
        return normed * (1 + scale[:, None]) + shift[:, None]


class SD35Block(nn.Module):
    """`ip_adapter.N`: one joint block's image key/value projections and the three RMSNorms of its term."""

    def __init__(self, cfg: SD35Config) -> None:
        super().__init__()
        self.norm_ip = _AdaNorm(cfg.dim, cfg.output_dim)
        self.to_k_ip = nn.Linear(cfg.output_dim, cfg.hidden, bias=False)
        self.to_v_ip = nn.Linear(cfg.output_dim, cfg.hidden, bias=False)
        self.norm_q = _Weight(cfg.head_dim)
        self.norm_k = _Weight(cfg.head_dim)
        self.norm_ip_k = _Weight(cfg.head_dim)


class _PerceiverAttention(nn.Module):
    """`layers.i.0`: latents attend to [image features, latents]; q and k are each scaled by head_dim^-1/4."""

    def __init__(self, cfg: SD35Config) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LN_EPS)  # image features
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LN_EPS)  # latents (then AdaLN-modulated)
        self.to_q = nn.Linear(cfg.dim, cfg.inner, bias=False)
        self.to_kv = nn.Linear(cfg.dim, 2 * cfg.inner, bias=False)
        self.to_out = nn.Linear(cfg.inner, cfg.dim, bias=False)

    def forward(self, feats: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """feats: normed features; latents: normed and modulated latents. Returns the projected attention."""
        q = heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([feats, latents], dim=1)).chunk(2, dim=-1)
        k, v = heads(k, self.heads), heads(v, self.heads)
        s = 1 / math.sqrt(math.sqrt(q.shape[-1]))
        weights = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        out = weights @ v
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))


class _ResamplerLayer(nn.ModuleList):
    """`layers.i`: [0] attention, [1] = [LayerNorm, Linear, GELU, Linear] MLP, [2] = [SiLU, Linear] AdaLN."""

    def __init__(self, cfg: SD35Config) -> None:
        mlp = nn.ModuleList([
            nn.LayerNorm(cfg.dim, eps=LN_EPS), nn.Linear(cfg.dim, cfg.ff_dim, bias=False), nn.GELU(),
            nn.Linear(cfg.ff_dim, cfg.dim, bias=False),
        ])
        super().__init__([_PerceiverAttention(cfg), mlp, nn.ModuleList([nn.SiLU(), nn.Linear(cfg.dim, 4 * cfg.dim)])])

    def forward(self, feats: torch.Tensor, latents: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        attn, mlp, ada = self
        shift_a, scale_a, shift_m, scale_m = ada[1](ada[0](temb)).chunk(4, dim=-1)
        modulated = attn.norm2(latents) * (1 + scale_a[:, None]) + shift_a[:, None]
        latents = attn(attn.norm1(feats), modulated) + latents
        modulated = mlp[0](latents) * (1 + scale_m[:, None]) + shift_m[:, None]
        return mlp[3](mlp[2](mlp[1](modulated))) + latents


class _TimeEmbedding(nn.Module):
    """`time_embedding`: sinusoidal channels -> Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def _sinusoid(timestep: torch.Tensor, channels: int) -> torch.Tensor:
    """(B,) timesteps -> (B, channels) float32 [cos | sin] features at frequencies 10000^(-j / (channels // 2))."""
    half = channels // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep[:, None].float() * freqs[None]
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(out, (0, channels % 2))


class _Resampler(nn.Module):
    """`image_proj`: 64 learned latents refined by `depth` perceiver layers over the timestep-shifted features."""

    def __init__(self, cfg: SD35Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.latents = nn.Parameter(torch.zeros(1, cfg.queries, cfg.dim))
        self.proj_in = nn.Linear(cfg.embed_dim, cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.output_dim)
        self.norm_out = nn.LayerNorm(cfg.output_dim, eps=LN_EPS)
        self.layers = nn.ModuleList([_ResamplerLayer(cfg) for _ in range(cfg.depth)])
        self.time_embedding = _TimeEmbedding(cfg.timestep_in_dim, cfg.dim)

    def forward(self, feats: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temb = self.time_embedding(_sinusoid(timestep, self.cfg.timestep_in_dim).to(feats.dtype))
        feats = self.proj_in(feats) + temb[:, None]
        latents = self.latents.expand(feats.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(feats, latents, temb)
        return self.norm_out(self.proj_out(latents)), temb


class SD35IPAdapter(nn.Module):
    """The whole file as one module: `state_dict()` keys are the file's keys."""

    def __init__(self, cfg: SD35Config) -> None:
        super().__init__()
        self.config = cfg
        self.image_proj = _Resampler(cfg)
        self.ip_adapter = nn.ModuleDict({str(i): SD35Block(cfg) for i in range(cfg.blocks)})

    @property
    def blocks(self) -> int:
        return len(self.ip_adapter)

    def block(self, index: int) -> SD35Block:
        """Joint block `index`'s adapter weights."""
        return self.ip_adapter[str(index)]


def _shape(flat: dict[str, torch.Tensor], key: str, ndim: int, path: Path) -> torch.Size:
    """The shape of a tensor the widths are read from; refuses a file that lacks it or has the wrong rank."""
    t = flat.get(key)
    if t is None or t.ndim != ndim:
        found = "missing" if t is None else f"of shape {tuple(t.shape)}"
        raise DitCheckpointError(
            f"{path.name}: looks like an {WHAT} but `{key}` is {found} (expected a {ndim}-d tensor). "
            f"The file is incomplete or of another format. {FIX}"
        )
    return t.shape


def read_config(flat: dict[str, torch.Tensor], path: str | Path) -> SD35Config:
    """Every width, the depth and the block count from the file's shapes (scaled-down files work alike)."""
    path = Path(path)
    d, e = _shape(flat, f"{PROJ}proj_in.weight", 2, path)
    inner = _shape(flat, f"{PROJ}layers.0.0.to_q.weight", 2, path)[0]
    hidden = _shape(flat, f"{BLOCKS}0.to_k_ip.weight", 2, path)[0]
    head_dim = _shape(flat, f"{BLOCKS}0.norm_q.weight", 1, path)[0]
    if inner % RESAMPLER_HEAD_DIM or hidden % head_dim:
        raise DitCheckpointError(
            f"{path.name}: the resampler's attention width {inner} is not a multiple of {RESAMPLER_HEAD_DIM}, or the "
            f"block width {hidden} not a multiple of the head_dim {head_dim} (norm_q). {FIX}"
        )
    depth = block_indices(flat, f"{PROJ}layers.")
    check_contiguous(path, f"{WHAT} resampler", depth, len(depth))
    blocks = block_indices(flat, BLOCKS)
    check_contiguous(path, WHAT, blocks, len(blocks))
    return SD35Config(
        embed_dim=e, dim=d, inner=inner, ff_dim=_shape(flat, f"{PROJ}layers.0.1.1.weight", 2, path)[0],
        depth=len(depth), queries=_shape(flat, f"{PROJ}latents", 3, path)[1],
        timestep_in_dim=_shape(flat, f"{PROJ}time_embedding.linear_1.weight", 2, path)[1],
        output_dim=_shape(flat, f"{PROJ}proj_out.weight", 2, path)[0], hidden=hidden, head_dim=head_dim,
        blocks=len(blocks),
    )


def load(flat: dict[str, torch.Tensor], path: str | Path, *, blocks: int | None = None) -> SD35IPAdapter:
    """Build the adapter on the meta device and take the file's tensors as its parameters (no copy).

    `blocks` is the host's joint block count; by default the file's width / head_dim, which is the depth of every
    SD3/SD3.5 MMDiT (38 heads and 38 blocks in SD3.5 Large), so a file that lost its last blocks is refused too.
    """
    path = Path(path)
    cfg = read_config(flat, path)
    expected_blocks = blocks if blocks is not None else cfg.block_heads
    check_contiguous(path, WHAT, list(range(cfg.blocks)), expected_blocks)
    with torch.device("meta"):
        model = SD35IPAdapter(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = [f"{k} {tuple(flat[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in flat and flat[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise DitCheckpointError(
            f"{path.name}: not a complete {WHAT} (read {cfg.depth} resampler layers, {cfg.blocks} blocks of width "
            f"{cfg.hidden})" + (f"; missing {missing[:4]}" if missing else "")
            + (f"; unexpected {unexpected[:4]}" if unexpected else "")
            + (f"; wrong shapes {wrong[:3]}" if wrong else "") + f". {FIX}"
        )
    model.load_state_dict({k: flat[k] for k in expected}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def image_tokens(model: SD35IPAdapter, image_hidden: torch.Tensor,
                 timestep: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The resampler at one denoising step: (tokens (B, queries, output_dim), temb (B, dim)).

    image_hidden: SigLIP so400m's penultimate hidden states (B, 729, 1152), one row per batch row (cond and uncond
    rows may differ; diffusers' negative is all zeros). timestep: (B,), (1,) or a number, in the transformer's own
    units (diffusers passes the scheduler's `t` = sigma x 1000). Both outputs depend on it: recompute per step.
    """
    cfg = model.config
    if image_hidden.ndim != 3 or image_hidden.shape[-1] != cfg.embed_dim:
        raise ValueError(
            f"an {WHAT} takes image features of shape (batch, tokens, {cfg.embed_dim}); got "
            f"{tuple(image_hidden.shape)}. Encode the reference with SigLIP so400m (patch14-384) and pass its "
            f"penultimate hidden states."
        )
    dtype = model.image_proj.proj_in.weight.dtype
    b = image_hidden.shape[0]
    t = torch.as_tensor(timestep, device=image_hidden.device).reshape(-1)
    if t.numel() not in (1, b):
        raise ValueError(f"timestep has {t.numel()} values for a batch of {b}; pass one or one per row.")
    return model.image_proj(image_hidden.to(dtype), t.expand(b))


def block_kv(block: SD35Block, tokens: torch.Tensor, temb: torch.Tensor,
             n_heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's image keys (RMS-normed with norm_ip_k) and values, each (B, heads, queries, head_dim).

    tokens and temb come from `image_tokens` (same step, same rows); the result is cacheable for that step.
    n_heads defaults to the block's width / norm_q length (the host's heads).
    """
    dtype = block.to_k_ip.weight.dtype
    width, head_dim = block.to_k_ip.weight.shape[0], block.norm_q.weight.shape[0]
    n_heads = n_heads or width // head_dim
    if n_heads * head_dim != width:
        raise ValueError(f"{n_heads} heads of {head_dim} do not make the adapter's width {width}.")
    normed = block.norm_ip(tokens.to(dtype), temb.to(dtype))
    k = heads(block.to_k_ip(normed), n_heads)
    return block.norm_ip_k(k), heads(block.to_v_ip(normed), n_heads)


def block_term(block: SD35Block, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The unweighted image term of one joint block, (B, L_img, heads x head_dim).

    q, k, v: the image stream's projections (B, heads, L_img, head_dim) BEFORE the host's own QK-norms (the text
    tokens are not included); kv from `block_kv`. The adapter RMS-normalises q with norm_q and k with norm_k, and
    the image queries attend to [image keys | adapter keys]. The reference adds `weight x term` to the image half of
    the joint attention's output BEFORE the output projection `attn.to_out` (so the projection applies to it).
    """
    k_ip, v_ip = kv
    if k_ip.shape[0] != q.shape[0]:
        k_ip, v_ip = k_ip.expand(q.shape[0], -1, -1, -1), v_ip.expand(q.shape[0], -1, -1, -1)
    keys = torch.cat([block.norm_k(k), k_ip.to(k.dtype)], dim=2)
    values = torch.cat([v, v_ip.to(v.dtype)], dim=2)
    return attend(block.norm_q(q), keys, values)
