"""Random-weight IP-Adapter checkpoints in the published key layouts of Ye et al. (2023).

Real model files cannot be downloaded in CI, so the tests and the README's main job use these instead.
Every key name and shape is the published files' (the reference implementation's modules); the weights are
random but drawn from numpy PCG64, so a given (variant, options, seed) gives byte-identical `.safetensors` across torch
versions.

Scales:
- "full": the published shapes exactly.
- "tiny": the same key SET with small widths, for fast tests. It keeps these relations:
  - topology: same number of cross-attention layers (SD1.5 16, SDXL/Kolors 70) and the same N numbering;
    default widths and C are those of tiny test UNets (SD1.5 block_out (32, 32, 64, 64), C=64;
    SDXL/Kolors block_out (16, 32, 32), C=128);
  - T (image tokens) unchanged: ImageProj T = proj rows / norm width = 4, Resampler T = latents.shape[1]
    = 16, FaceID MLP T = proj.2 rows / norm width = 4 (16 for portrait), FaceID-Plus 4 (Kolors 6);
  - head_dim stays 64, so heads = to_q rows / 64 everywhere (Resampler and FaceID-Plus perceiver);
  - Resampler: D = C where the real file has D = C (SD1.5 plus, Kolors plus), else D = 64 (SDXL plus
    and portrait-unnorm, real D 1280 != C); inner width I = D (heads = D/64) except Kolors plus, whose
    I < D is kept as I = 64;
  - FaceID-Plus perceiver D = token width, heads = token width / 64; Kolors FaceID token width = 2 C
    (4096 = 2 x 2048 in the real file), every other variant's token width = C;
  - CLIP widths are the real ones // 32 (1024 -> 32, 1280 -> 40), so widths equal in the real files stay
    equal; the insightface embedding stays 512 (portrait-unnorm proj_in [D, 512]) and the FaceID MLP
    hidden width stays 2 x 512 = 1024 (diffusers reads mult = proj.0 rows / cols);
  - LoRA rank 4 instead of 128.
  Full-face's 257 tokens is the CLIP token count, not a weight shape, so it needs no special care.
  Tiny cannot keep the magic sizes detectors probe (C 2048 for SDXL, to_out rows 2048/4096 for Kolors).

Layout order follows the reference modules' registration order, so `state_dict()` order matches too.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ipadapter_core.spec import FACE_DIM  # insightface embedding width

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the bytes for the same arguments change (invalidates caches)
HEAD_DIM = 64  # hard-coded dim_head of every perceiver in the reference code
FACE_HIDDEN = 1024  # FaceID MLP hidden width (2 x FACE_DIM)
DEPTH = 4  # perceiver layers
FF_MULT = 4

# configuration: per-cross-attention-layer widths h_N in checkpoint order (N = 1, 3, 5, ...)

SD15_WIDTHS = (320,) * 2 + (640,) * 2 + (1280,) * 2 + (1280,) * 3 + (640,) * 3 + (320,) * 3 + (1280,)
SDXL_WIDTHS = (640,) * 4 + (1280,) * 20 + (1280,) * 30 + (640,) * 6 + (1280,) * 10
TINY_SD15_WIDTHS = (32,) * 4 + (64,) * 2 + (64,) * 3 + (32,) * 3 + (32,) * 3 + (64,)
TINY_SDXL_WIDTHS = (32,) * 70

FAMILIES = {  # family -> (full widths, full C, tiny widths, tiny C)
    "sd15": (SD15_WIDTHS, 768, TINY_SD15_WIDTHS, 64),
    "sdxl": (SDXL_WIDTHS, 2048, TINY_SDXL_WIDTHS, 128),
    "kolors": (SDXL_WIDTHS, 2048, TINY_SDXL_WIDTHS, 128),
}
PROJECTIONS = ("image_proj", "resampler", "full_face_mlp", "faceid_mlp", "faceid_plus")
KEY_STYLES = {"published": "ip_adapter", "adapter_modules": "adapter_modules"}  # name of the adapter group
FORMATS = {"safetensors": ".safetensors", "bin": ".bin"}


@dataclass(frozen=True)
class Variant:
    """One published file and its dimensions."""

    stem: str  # published file name without extension
    family: str  # "sd15" | "sdxl" | "kolors" (UNet topology and C)
    projection: str  # one of PROJECTIONS
    encoder: str  # what the projection consumes
    tokens: int  # T (per face for portrait)
    clip_dim: int | None = None  # P (image_embeds) or E/Ecl (penult width); None: no CLIP input
    resampler_dim: int | None = None  # Resampler D
    resampler_heads: int | None = None  # Resampler heads (I = heads x 64)
    face_dim: int | None = None  # insightface embedding width, when consumed
    token_dim: int | None = None  # width of the image tokens when it is not C (Kolors FaceID 4096)
    lora: bool = False  # FaceID LoRA on every processor
    shortcut: bool = False  # FaceID-Plus v2 shortcut (told apart only by filename)
    key_style: str = "published"  # group names of the published file
    inferred: bool = False  # layout inferred, not read from a published file's keys

    def __post_init__(self):
        if self.family not in FAMILIES or self.projection not in PROJECTIONS:
            raise ValueError(f"{self.stem}: unknown family {self.family!r} or projection {self.projection!r}")

    @property
    def cross_dim(self) -> int:
        """C of the published file (the UNet's cross_attention_dim)."""
        return FAMILIES[self.family][1]


def _plus(stem, family, **kw):
    dims = {"sd15": (768, 12), "sdxl": (1280, 20)}[family]
    return Variant(stem, family, "resampler", "ViT-H penult [257, 1280]", 16, 1280, *dims, **kw)


def _faceid(stem, family, tokens=4, **kw):
    return Variant(stem, family, "faceid_mlp", "insightface normed_embedding (512)", tokens, face_dim=FACE_DIM, **kw)


def _faceid_plus(stem, family, **kw):
    return Variant(stem, family, "faceid_plus", "insightface id (512) + ViT-H penult", 4, 1280, face_dim=FACE_DIM,
                   lora=True, **kw)


VARIANTS: dict[str, Variant] = {
    "sd15": Variant("ip-adapter_sd15", "sd15", "image_proj", "ViT-H image_embeds (1024)", 4, 1024),
    "sd15_light": Variant("ip-adapter_sd15_light_v11", "sd15", "image_proj", "ViT-H image_embeds (1024)", 4, 1024),
    "sd15_vit-G": Variant("ip-adapter_sd15_vit-G", "sd15", "image_proj", "bigG image_embeds (1280)", 4, 1280),
    "plus_sd15": _plus("ip-adapter-plus_sd15", "sd15"),
    "plus-face_sd15": _plus("ip-adapter-plus-face_sd15", "sd15"),
    "full-face_sd15": Variant("ip-adapter-full-face_sd15", "sd15", "full_face_mlp", "ViT-H penult [257, 1280]",
                              257, 1280),
    "composition_sd15": _plus("ip_plus_composition_sd15", "sd15", inferred=True),
    "sdxl": Variant("ip-adapter_sdxl", "sdxl", "image_proj", "bigG image_embeds (1280)", 4, 1280),
    "sdxl_vit-h": Variant("ip-adapter_sdxl_vit-h", "sdxl", "image_proj", "ViT-H image_embeds (1024)", 4, 1024),
    "plus_sdxl_vit-h": _plus("ip-adapter-plus_sdxl_vit-h", "sdxl"),
    "plus-face_sdxl_vit-h": _plus("ip-adapter-plus-face_sdxl_vit-h", "sdxl"),
    "composition_sdxl": _plus("ip_plus_composition_sdxl", "sdxl", inferred=True),
    "faceid_sd15": _faceid("ip-adapter-faceid_sd15", "sd15", lora=True),
    "faceid-plus_sd15": _faceid_plus("ip-adapter-faceid-plus_sd15", "sd15"),
    "faceid-plusv2_sd15": _faceid_plus("ip-adapter-faceid-plusv2_sd15", "sd15", shortcut=True),
    "faceid-portrait_sd15": _faceid("ip-adapter-faceid-portrait_sd15", "sd15", 16),
    "faceid-portrait-v11_sd15": _faceid("ip-adapter-faceid-portrait-v11_sd15", "sd15", 16, inferred=True),
    "faceid_sdxl": _faceid("ip-adapter-faceid_sdxl", "sdxl", lora=True),
    "faceid-plusv2_sdxl": _faceid_plus("ip-adapter-faceid-plusv2_sdxl", "sdxl", shortcut=True),
    "faceid-portrait_sdxl": _faceid("ip-adapter-faceid-portrait_sdxl", "sdxl", 16, inferred=True),
    "faceid-portrait_sdxl_unnorm": Variant("ip-adapter-faceid-portrait_sdxl_unnorm", "sdxl", "resampler",
                                           "raw insightface embedding as a length-1 sequence", 16,
                                           resampler_dim=1280, resampler_heads=20, face_dim=FACE_DIM,
                                           inferred=True),
    "kolors_plus": Variant("ip_adapter_plus_general", "kolors", "resampler", "CLIP ViT-L/14-336 penult [577, 1024]",
                           16, 1024, resampler_dim=2048, resampler_heads=12, inferred=True),
    "kolors_faceid_plus": Variant("ipa-faceid-plus", "kolors", "faceid_plus",
                                  "insightface id (512) + CLIP ViT-L/14-336 penult", 6, 1024, face_dim=FACE_DIM,
                                  token_dim=4096, shortcut=True, key_style="adapter_modules"),
}


@dataclass(frozen=True)
class Dims:
    """Resolved dimensions of one generated checkpoint."""

    widths: tuple[int, ...]  # h_N per cross-attention layer, checkpoint order
    cross_dim: int  # C: to_k_ip input width
    token_dim: int  # width of the projected image tokens (C, or 2C for Kolors FaceID)
    clip_dim: int | None  # CLIP input width (P or E)
    resampler_dim: int | None  # D of the Resampler / FaceID-Plus perceiver
    heads: int | None  # perceiver heads (to_q rows / 64)
    lora_rank: int | None  # None: no LoRA keys


def resolve_dims(variant: str, *, widths: Sequence[int] | None = None, cross_dim: int | None = None,
                 clip_dim: int | None = None, scale: str = "full", lora_rank: int | None = None) -> Dims:
    """The dimensions `make_state_dict` uses for `variant` at `scale` (see the module docstring)."""
    v = _variant(variant)
    if scale not in ("full", "tiny"):
        raise ValueError(f"scale must be 'full' or 'tiny', got {scale!r}")
    tiny = scale == "tiny"
    full_widths, full_c, tiny_widths, tiny_c = FAMILIES[v.family]
    widths = tuple(int(w) for w in (widths if widths is not None else tiny_widths if tiny else full_widths))
    if not widths or min(widths) <= 0:
        raise ValueError(f"widths must be a non-empty tuple of positive ints, got {widths!r}")
    c = int(cross_dim or (tiny_c if tiny else full_c))
    token_dim = c * v.token_dim // full_c if v.token_dim else c
    if clip_dim is not None and v.clip_dim is None:
        raise ValueError(f"{variant}: takes no CLIP input, so clip_dim={clip_dim} has no meaning")
    clip = int(clip_dim or (v.clip_dim // 32 if tiny else v.clip_dim)) if v.clip_dim else None
    dim = heads = None
    if v.projection == "resampler":
        dim = c if v.resampler_dim == full_c else (64 if tiny else v.resampler_dim)
        if v.resampler_heads * HEAD_DIM == v.resampler_dim:
            heads = _heads(variant, dim)
        else:  # Kolors plus: inner width 768 < D
            heads = 1 if tiny else v.resampler_heads
    elif v.projection == "faceid_plus":
        dim, heads = token_dim, _heads(variant, token_dim)
    rank = (lora_rank or (4 if tiny else 128)) if v.lora else None
    return Dims(widths, c, token_dim, clip, dim, heads, rank)


def _heads(variant, dim):
    if dim % HEAD_DIM:
        raise ValueError(f"{variant}: perceiver width {dim} must be a multiple of {HEAD_DIM} (heads = width / 64)")
    return dim // HEAD_DIM


def _variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[variant]


# layouts: (key, shape, init) rows; init is a fan-in (Linear weight) or one of the names below

NORM, BIAS, LATENTS = "norm", "bias", "latents"


def _linear(name, out, inp, bias=True):
    yield f"{name}.weight", (out, inp), inp
    if bias:
        yield f"{name}.bias", (out,), BIAS


def _norm(name, dim):
    yield f"{name}.weight", (dim,), NORM
    yield f"{name}.bias", (dim,), BIAS


def _perceiver_layers(dim, heads):
    """The four PerceiverAttention + FeedForward pairs of a perceiver (Resampler, FaceID-Plus)."""
    inner = heads * HEAD_DIM
    for i in range(DEPTH):
        yield from _norm(f"layers.{i}.0.norm1", dim)
        yield from _norm(f"layers.{i}.0.norm2", dim)
        yield from _linear(f"layers.{i}.0.to_q", inner, dim, bias=False)
        yield from _linear(f"layers.{i}.0.to_kv", 2 * inner, dim, bias=False)
        yield from _linear(f"layers.{i}.0.to_out", dim, inner, bias=False)
        yield from _norm(f"layers.{i}.1.0", dim)
        yield from _linear(f"layers.{i}.1.1", FF_MULT * dim, dim, bias=False)
        yield from _linear(f"layers.{i}.1.3", dim, FF_MULT * dim, bias=False)


def _face_mlp(tokens, width):
    yield from _linear("proj.0", FACE_HIDDEN, FACE_DIM)
    yield from _linear("proj.2", tokens * width, FACE_HIDDEN)
    yield from _norm("norm", width)


def image_proj_layout(variant: str, dims: Dims) -> list[tuple[str, tuple[int, ...], object]]:
    """(key, shape, init) rows of the `image_proj` group."""
    v, c, w = _variant(variant), dims.cross_dim, dims.token_dim
    if v.projection == "image_proj":
        rows = [*_linear("proj", v.tokens * c, dims.clip_dim), *_norm("norm", c)]
    elif v.projection == "full_face_mlp":
        rows = [*_linear("proj.0", dims.clip_dim, dims.clip_dim), *_linear("proj.2", c, dims.clip_dim),
                *_norm("proj.3", c)]
    elif v.projection == "faceid_mlp":
        rows = list(_face_mlp(v.tokens, c))
    elif v.projection == "resampler":
        d, e = dims.resampler_dim, dims.clip_dim or v.face_dim
        rows = [("latents", (1, v.tokens, d), LATENTS), *_linear("proj_in", d, e), *_linear("proj_out", c, d),
                *_norm("norm_out", c), *_perceiver_layers(d, dims.heads)]
    else:  # faceid_plus: MLP tokens are the perceiver's latents, so no `latents` key
        perceiver = [*_linear("proj_in", w, dims.clip_dim), *_linear("proj_out", w, w), *_norm("norm_out", w),
                     *_perceiver_layers(w, dims.heads)]
        rows = [*_face_mlp(v.tokens, w), *((f"perceiver_resampler.{k}", s, i) for k, s, i in perceiver)]
    return rows


def ip_adapter_layout(variant: str, dims: Dims) -> list[tuple[str, tuple[int, ...], object]]:
    """(key, shape, init) rows of the `ip_adapter` group (FaceID LoRA keys included)."""
    rows = []
    for n in range(2 * len(dims.widths)):
        h, cross = dims.widths[n // 2], n % 2 == 1
        if dims.lora_rank:
            r, c_n = dims.lora_rank, dims.cross_dim if cross else h
            for proj, inp in (("to_q", h), ("to_k", c_n), ("to_v", c_n), ("to_out", h)):
                rows += [(f"{n}.{proj}_lora.down.weight", (r, inp), inp), (f"{n}.{proj}_lora.up.weight", (h, r), r)]
        if cross:
            rows += [(f"{n}.to_k_ip.weight", (h, dims.cross_dim), dims.cross_dim),
                     (f"{n}.to_v_ip.weight", (h, dims.cross_dim), dims.cross_dim)]
    return rows


# weights


def _draw(shape, init, seed, index, dtype):
    """One tensor from its own PCG64 stream (seed, jumped `index` times), drawn in float32."""
    rng = np.random.Generator(np.random.PCG64(seed).jumped(index))
    a = rng.standard_normal(math.prod(shape), dtype=np.float32)
    if init == NORM:
        a *= 0.02
        a += 1.0
    elif init == BIAS:
        a *= 0.02
    else:
        a *= 1.0 / math.sqrt(shape[-1] if init == LATENTS else init)
    return torch.from_numpy(a.reshape(shape)).to(dtype)


def make_state_dict(variant: str, *, widths: Sequence[int] | None = None, cross_dim: int | None = None,
                    clip_dim: int | None = None, scale: str = "full", lora_rank: int | None = None, seed: int = 0,
                    dtype: torch.dtype = torch.float16,
                    device: str | torch.device | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Random `{"image_proj": {...}, "ip_adapter": {...}}` in the published layout of `variant`.

    Args:
        widths: h_N per cross-attention layer in checkpoint order (N = 1, 3, ...: down, up, mid LAST);
            defaults to the family's table at `scale`.
        cross_dim, clip_dim: override C and the CLIP input width (P or E).
        lora_rank: FaceID LoRA rank (default 128 full, 4 tiny); ignored by variants without LoRA.
        device: "meta" gives shape-only tensors without drawing anything.
    """
    dims = resolve_dims(variant, widths=widths, cross_dim=cross_dim, clip_dim=clip_dim, scale=scale,
                        lora_rank=lora_rank)
    groups = {"image_proj": image_proj_layout(variant, dims), "ip_adapter": ip_adapter_layout(variant, dims)}
    rows = [(g, *row) for g, layout in groups.items() for row in layout]
    if str(device) == "meta":
        tensors = [torch.empty(shape, dtype=dtype, device="meta") for _, _, shape, _ in rows]
    else:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            tensors = list(pool.map(lambda i: _draw(rows[i][2], rows[i][3], seed, i, dtype), range(len(rows))))
        if device is not None:
            tensors = [t.to(device) for t in tensors]
    out = {g: {} for g in groups}
    for (g, key, _, _), t in zip(rows, tensors):
        out[g][key] = t
    return out


# files


def published_filename(variant: str, fmt: str = "safetensors") -> str:
    """`<published stem>.<ext>`, e.g. `ip-adapter-plus_sd15.safetensors`."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    return _variant(variant).stem + FORMATS[fmt]


def write_checkpoint(nested: dict, path: str | os.PathLike, *, fmt: str | None = None,
                     key_style: str = "published") -> Path:
    """Write `nested` as `.safetensors` (flat `image_proj.<k>` / `ip_adapter.<k>`) or `.bin` (torch pickle).

    key_style "adapter_modules" names the adapter group `adapter_modules` (IPAdapter Plus's alias; the
    Kolors FaceID-Plus file is published that way). fmt defaults to the one the suffix names.
    """
    path = Path(path)
    if fmt is None:
        fmt = next((f for f, ext in FORMATS.items() if path.suffix == ext), None)
        if fmt is None:
            raise ValueError(f"{path.name}: cannot tell the format from the suffix; pass fmt='safetensors' or 'bin'")
    if fmt not in FORMATS or key_style not in KEY_STYLES:
        raise ValueError(f"fmt {fmt!r} / key_style {key_style!r}: expected {list(FORMATS)} / {list(KEY_STYLES)}")
    adapter = nested.get("ip_adapter", nested.get("adapter_modules"))
    if "image_proj" not in nested or adapter is None:
        raise ValueError(f"expected groups image_proj and ip_adapter, got {sorted(nested)}")
    groups = {"image_proj": nested["image_proj"], KEY_STYLES[key_style]: adapter}
    if any(t.is_meta for sd in groups.values() for t in sd.values()):
        raise ValueError("meta tensors hold no data; call make_state_dict without device='meta'")
    if fmt == "safetensors":
        flat = {f"{g}.{k}": t.contiguous() for g, sd in groups.items() for k, t in sd.items()}
        save_file(flat, str(path), metadata={"format": "pt"})
        mask = os.umask(0)  # safetensors creates files 0600; give them the usual permissions
        os.umask(mask)
        os.chmod(path, 0o666 & ~mask)
    else:
        with open(path, "wb") as f:  # a file object keeps the archive name ("archive/") independent of the path
            torch.save(groups, f)
    return path


def ensure_checkpoint(variant: str, directory: str | os.PathLike, *, fmt: str = "safetensors",
                      key_style: str | None = None, **make_kwargs) -> Path:
    """Write `<directory>/<published stem>.<ext>` unless an identical one is there; return its path.

    A hidden `.<file>.gen.json` stamp records the arguments, so a cached file made with other arguments is
    regenerated. The file is written under a temporary name and renamed, so a killed run leaves no half file.
    """
    v = _variant(variant)
    key_style = key_style or v.key_style
    directory = Path(directory)
    path = directory / published_filename(variant, fmt)
    stamp_path = directory / f".{path.name}.gen.json"
    if str(make_kwargs.get("device")) == "meta":
        raise ValueError("ensure_checkpoint writes real tensors; drop device='meta'")
    args = inspect.signature(make_state_dict).bind(variant, **make_kwargs)
    args.apply_defaults()  # so omitted and explicit default arguments stamp alike
    stamp = json.dumps({"version": GENERATOR_VERSION, "fmt": fmt, "key_style": key_style, **args.arguments},
                       sort_keys=True, default=lambda x: str(x) if isinstance(x, torch.dtype) else list(x))
    if path.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    log.info("generating %s (%s)", path, stamp)
    nested = make_state_dict(variant, **make_kwargs)
    _atomic(path, lambda tmp: write_checkpoint(nested, tmp, fmt=fmt, key_style=key_style))
    _atomic(stamp_path, lambda tmp: tmp.write_text(stamp))
    return path


def _atomic(path, write):
    """Run `write(tmp)` on a hidden temporary path next to `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# command line


def main(argv: list[str] | None = None) -> None:
    """`python -m dev.standins.ipadapter --out DIR [--variants ...] [--scale full|tiny] [--fmt ...]`."""
    parser = argparse.ArgumentParser(description="Write random-weight IP-Adapter checkpoints in published layouts.")
    parser.add_argument("--out", required=True, type=Path, help="directory to write into (cached by name)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="ID",
                        help=f"variant ids (default: all): {', '.join(VARIANTS)}")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--fmt", choices=list(FORMATS), default="safetensors")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for variant in args.variants:
        path = ensure_checkpoint(variant, args.out, fmt=args.fmt, scale=args.scale, seed=args.seed)
        log.info("%s -> %s", variant, path)


if __name__ == "__main__":
    main()
