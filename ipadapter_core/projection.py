"""Projection models that turn image (or face) features into IP-Adapter tokens.

Architectures from the IP-Adapter reference implementation (Ye et al. 2023) and the Perceiver
Resampler of Flamingo (Alayrac et al. 2022), rewritten here. Attribute paths equal the published
checkpoints' `image_proj.*` key names, so `load_state_dict(strict=True)` is the validator.

Axis letters: b batch, n tokens of the input, q latent queries, h heads, d head width, c channels.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

HEAD_DIM = 64  # every published perceiver uses 64-wide heads; heads = to_q rows / 64


# layers


class Linear(nn.Linear):
    """nn.Linear without the random init: every weight comes from the checkpoint (strict load, assigned)."""

    def reset_parameters(self) -> None:
        pass


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm without the init, for the same reason."""

    def reset_parameters(self) -> None:
        pass


class PerceiverAttention(nn.Module):
    """Latents attend to the image features and to themselves (keys from both)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        inner = heads * HEAD_DIM
        self.heads = heads
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.to_q = Linear(dim, inner, bias=False)
        self.to_kv = Linear(dim, 2 * inner, bias=False)
        self.to_out = Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = rearrange(self.to_q(latents), "b q (h d) -> b h q d", h=self.heads)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        k = rearrange(k, "b n (h d) -> b h n d", h=self.heads)
        v = rearrange(v, "b n (h d) -> b h n d", h=self.heads)
        scale = HEAD_DIM**-0.25  # split between q and k, as the reference does, for fp16 headroom
        weights = ((q * scale) @ (k * scale).transpose(-2, -1)).float().softmax(dim=-1).to(q.dtype)
        return self.to_out(rearrange(weights @ v, "b h q d -> b q (h d)"))


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, bias-free (keys .0, .1, .3)."""
    return nn.Sequential(
        LayerNorm(dim),
        Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        Linear(dim * mult, dim, bias=False),
    )


class PerceiverStack(nn.Module):
    """proj_in, `depth` x (attention + feed-forward with residuals), proj_out, norm_out."""

    def __init__(self, *, dim: int, depth: int, heads: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj_in = Linear(in_dim, dim)
        self.proj_out = Linear(dim, out_dim)
        self.norm_out = LayerNorm(out_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim)]) for _ in range(depth)
        )

    def resample(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(features)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


# projection models


class ImageProjModel(nn.Module):
    """Base adapters: one CLIP image embedding -> `tokens` tokens of width `dim` (keys proj, norm)."""

    def __init__(self, *, in_dim: int, dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = Linear(in_dim, tokens * dim)
        self.norm = LayerNorm(dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """[b, in_dim] -> [b, tokens, dim]."""
        return self.norm(rearrange(self.proj(embeds), "b (t c) -> b t c", t=self.tokens))


class FullFaceProjModel(nn.Module):
    """Full-face adapter: a per-token MLP over all CLIP penultimate tokens (keys proj.0, proj.2, proj.3)."""

    def __init__(self, *, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(Linear(in_dim, in_dim), nn.GELU(), Linear(in_dim, dim), LayerNorm(dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[b, n, in_dim] -> [b, n, dim]."""
        return self.proj(features)


class Resampler(PerceiverStack):
    """Plus adapters: learned latent queries read the CLIP penultimate tokens (keys latents, proj_in, ...)."""

    def __init__(self, *, dim: int, depth: int, heads: int, queries: int, in_dim: int, out_dim: int) -> None:
        super().__init__(dim=dim, depth=depth, heads=heads, in_dim=in_dim, out_dim=out_dim)
        self.latents = nn.Parameter(torch.zeros(1, queries, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[b, n, in_dim] -> [b, queries, out_dim]."""
        return self.resample(features, self.latents.expand(features.shape[0], -1, -1))


class FaceIDProjModel(nn.Module):
    """FaceID and portrait adapters: identity embedding -> tokens via a 2-layer MLP (keys proj.0, proj.2, norm)."""

    def __init__(self, *, in_dim: int, hidden: int, dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Sequential(Linear(in_dim, hidden), nn.GELU(), Linear(hidden, tokens * dim))
        self.norm = LayerNorm(dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        """[b, in_dim] -> [b, tokens, dim]."""
        return self.norm(rearrange(self.proj(face), "b (t c) -> b t c", t=self.tokens))


class FaceIDPlusProjModel(nn.Module):
    """FaceID Plus: identity tokens refined by a perceiver over the face crop's CLIP tokens.

    v1 returns the perceiver output; v2 adds the identity tokens back scaled by `shortcut_scale`
    (the `weight_faceidv2` knob). Keys: proj.0, proj.2, norm, perceiver_resampler.*.
    """

    def __init__(self, *, face_dim: int, hidden: int, dim: int, tokens: int, clip_dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Sequential(Linear(face_dim, hidden), nn.GELU(), Linear(hidden, tokens * dim))
        self.norm = LayerNorm(dim)
        self.perceiver_resampler = PerceiverStack(dim=dim, depth=depth, heads=heads, in_dim=clip_dim, out_dim=dim)

    def forward(self, face: torch.Tensor, clip: torch.Tensor, *, shortcut: bool, shortcut_scale: float = 1.0) -> torch.Tensor:
        """face [b, face_dim], clip [b, n, clip_dim] -> [b, tokens, dim]."""
        ident = self.norm(rearrange(self.proj(face), "b (t c) -> b t c", t=self.tokens))
        out = self.perceiver_resampler.resample(clip, ident)
        return ident + shortcut_scale * out if shortcut else out
