"""Random-weight ComfyUI model files in the real key layouts.

Usage: python -m dev.standins.comfy_models --out DIR [--only sd15 sdxl-small vit-h controlnet-sd15] [--force]

Each model is built from ComfyUI's own classes on the `meta` device (no memory), which gives every key,
shape and owning layer; the tensors are then drawn one at a time and streamed into a `.safetensors`
file (fp16), so peak memory stays near one tensor whatever the model size. Initialisation: biases 0,
norm scales 1, embeddings N(0, 0.02), everything else N(0, 1/sqrt(fan_in)); each tensor has its own
generator seeded from (model seed, key), so files are byte-identical run to run on the pinned torch.
Files are written to a temporary name and renamed, and only when missing.

Models (written under the paths of dev/standins/names.py, in a folder laid out like ComfyUI's models/):
  sd15             full SD1.5 checkpoint: UNet 859.5M, CLIP-L, VAE
  sdxl-small       SDXL checkpoint, detected as SDXL: the real 70-layer cross-attention layout (depths 2/10,
                   middle 10) at width 320 on every level (channel_mult [1, 1, 1]); CLIP-L and CLIP-G
                   (OpenCLIP keys) at real size; VAE
  vit-h            ViT-H/14 CLIP vision image encoder, 632M (under its published name)
  controlnet-sd15  full SD1.5 ControlNet, 361M
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dev.host import comfy_host
from dev.standins import names

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # recorded in each file's metadata; bump when the tensors written for a model change

# configuration

SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=768, num_heads=8,
    num_head_channels=-1, use_spatial_transformer=True, use_linear_in_transformer=False, legacy=False,
    adm_in_channels=None, use_checkpoint=False, use_temporal_resblock=False, use_temporal_attention=False,
)

# SDXL's match keys in comfy/supported_models.py are model_channels 320, transformer_depth
# [0, 0, 2, 2, 10, 10], context_dim 2048, adm_in_channels 2816, linear transformer; channel_mult is not
# one of them, so [1, 1, 1] keeps every level at 320 (5 heads of 64) and the real 24/10/36 attn2 layout.
SDXL_SMALL_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, num_heads=-1,
    num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False,
    num_classes="sequential", adm_in_channels=2816, use_checkpoint=False, use_temporal_resblock=False,
    use_temporal_attention=False,
)
SDXL_SMALL_WIDTHS = (320,) * 70
"""The SDXL-small UNet's width per cross-attention layer, in IP-Adapter checkpoint order (N = 1, 3, ...): the
`widths` of the SDXL adapters generated for it (into models/ipadapter/<names.SDXL_SMALL_SUBDIR>)."""

VAE_CONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                  num_res_blocks=2, attn_resolutions=[], dropout=0.0)

OPENCLIP_LOGIT_SCALE = math.log(100.0)  # OpenCLIP's trained logit_scale saturates at ln(100)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a file: its key, shape, storage dtype name and how to fill it."""

    key: str
    shape: tuple[int, ...]
    init: str  # "zeros" | "ones" | "embedding" | "fan_in" | "arange" | "const"
    dtype: str = "F16"  # safetensors dtype code
    value: float = 0.0  # for "const"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelFile:
    name: str
    relpath: str
    seed: int
    build: Callable[[], list[TensorSpec]]
    description: str


# utilities

_DTYPES = {"F16": ("float16", 2), "F32": ("float32", 4), "I64": ("int64", 8), "BF16": ("bfloat16", 2),
           "F8_E4M3": ("float8_e4m3fn", 1)}
_DRAWN_IN_F32 = ("BF16", "F8_E4M3")  # drawn in float32 and rounded: numpy has neither, and fp8 has no normal_
_F8_E4M3_MAX = 448.0  # the largest finite float8_e4m3fn; beyond it a cast gives NaN


def _seed_for(seed: int, key: str) -> int:
    return (seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (2**63 - 1)


def materialize(spec: TensorSpec, seed: int):
    """Draw the tensor of `spec` (deterministic in (seed, key))."""
    import torch

    dtype = getattr(torch, _DTYPES[spec.dtype][0])
    if spec.dtype in _DRAWN_IN_F32:
        values = materialize(dataclasses.replace(spec, dtype="F32"), seed)
        if spec.dtype == "F8_E4M3":
            values = values.clamp_(-_F8_E4M3_MAX, _F8_E4M3_MAX)
        return values.to(dtype)
    if spec.init == "zeros":
        return torch.zeros(spec.shape, dtype=dtype)
    if spec.init == "ones":
        return torch.ones(spec.shape, dtype=dtype)
    if spec.init == "const":
        return torch.full(spec.shape, spec.value, dtype=dtype)
    if spec.init == "arange":
        return torch.arange(spec.shape[-1], dtype=dtype).expand(spec.shape).contiguous()
    if spec.init in ("embedding", "fan_in"):
        fan_in = math.prod(spec.shape[1:]) if len(spec.shape) > 1 else spec.shape[0]
        std = 0.02 if spec.init == "embedding" else 1.0 / math.sqrt(fan_in)
        generator = torch.Generator().manual_seed(_seed_for(seed, spec.key))
        return torch.empty(spec.shape, dtype=dtype).normal_(0.0, std, generator=generator)
    raise ValueError(f"{spec.key}: unknown init {spec.init!r}")


def _tensor_bytes(tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor (bfloat16 and float8 through a uint8 view: numpy has neither)."""
    import torch

    if tensor.dtype in (torch.float16, torch.float32, torch.int64):
        return tensor.numpy().data
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data


def write_safetensors(path: Path, specs: list[TensorSpec], seed: int, metadata: dict[str, str]) -> int:
    """Stream `specs` into `path` in the safetensors format, one tensor in memory at a time; atomic."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        if spec.key in header:
            raise ValueError(f"duplicate key {spec.key}")
        nbytes = spec.numel * _DTYPES[spec.dtype][1]
        header[spec.key] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for spec in specs:
                f.write(_tensor_bytes(materialize(spec, seed)))
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return 8 + len(blob) + offset


def _torch_meta():
    import torch

    return torch.device("meta")


def module_specs(module, prefix: str = "", *, drop: Iterable[str] = ()) -> list[TensorSpec]:
    """TensorSpecs for every state_dict entry of a (meta) module, classified by the layer owning it."""
    import torch

    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    owner = {}
    for name, mod in module.named_modules():
        for pname, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            owner[f"{name}.{pname}" if name else pname] = mod
    drop = set(drop)
    specs = []
    for key, tensor in module.state_dict().items():
        if key in drop:
            continue
        mod = owner.get(key)
        leaf = key.rsplit(".", 1)[-1]
        if not tensor.is_floating_point():
            if leaf != "position_ids":
                raise ValueError(f"{key}: non-float tensor with no known values")
            specs.append(TensorSpec(prefix + key, tuple(tensor.shape), "arange", "I64"))
            continue
        if isinstance(mod, norms):
            init = "ones" if leaf == "weight" else "zeros"
        elif isinstance(mod, torch.nn.Embedding) or any("embedding" in part for part in key.split(".")[-2:]):
            init = "embedding"
        elif leaf == "bias":
            init = "zeros"
        elif tensor.dim() >= 2:
            init = "fan_in"
        else:
            raise ValueError(f"{key}: no init rule for a {tuple(tensor.shape)} tensor of {type(mod).__name__}")
        specs.append(TensorSpec(prefix + key, tuple(tensor.shape), init))
    return specs


def _meta_state_dict(specs: list[TensorSpec], prefix: str = "") -> dict:
    import torch

    return {s.key[len(prefix):]: torch.empty(s.shape, device="meta") for s in specs if s.key.startswith(prefix)}


# builders (ComfyUI classes on the meta device)


def _unet(config: dict):
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.no_grad(), _torch_meta():
        return UNetModel(**config, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)


def _vae():
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.no_grad(), _torch_meta():
        return AutoencoderKL(ddconfig=dict(VAE_CONFIG), embed_dim=4)


def _clip_l_specs(prefix: str) -> list[TensorSpec]:
    """CLIP-L text encoder in HF layout; real files keep position_ids and drop projection and logit_scale."""
    import comfy.sd1_clip
    import torch

    with torch.no_grad(), _torch_meta():
        clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32)
    specs = module_specs(clip, prefix, drop=("transformer.text_projection.weight", "logit_scale"))
    specs.append(TensorSpec(prefix + "transformer.text_model.embeddings.position_ids", (1, 77), "arange", "I64"))
    return specs


_OPENCLIP_RENAMES = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                     ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def _clip_g_openclip_specs(prefix: str) -> list[TensorSpec]:
    """CLIP-G (OpenCLIP ViT-bigG text tower) in the OpenCLIP key layout real SDXL checkpoints use."""
    import comfy.sdxl_clip
    import torch

    with torch.no_grad(), _torch_meta():
        clip_g = comfy.sdxl_clip.SDXLClipG(device="meta", dtype=torch.float32)
    hf = {s.key: s for s in module_specs(clip_g, drop=("logit_scale",))}
    width = hf["transformer.text_model.final_layer_norm.weight"].shape[0]
    layers = clip_g.transformer.num_layers
    embeddings = "transformer.text_model.embeddings."
    out = [
        TensorSpec(prefix + "positional_embedding", hf[embeddings + "position_embedding.weight"].shape, "embedding"),
        TensorSpec(prefix + "token_embedding.weight", hf[embeddings + "token_embedding.weight"].shape, "embedding"),
    ]
    for i in range(layers):
        src = f"transformer.text_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        out.append(TensorSpec(dst + "attn.in_proj_weight", (3 * width, width), "fan_in"))  # q, k, v stacked
        out.append(TensorSpec(dst + "attn.in_proj_bias", (3 * width,), "zeros"))
        for key in sorted(k for k in hf if k.startswith(src) and ".self_attn.q_proj" not in k
                          and ".self_attn.k_proj" not in k and ".self_attn.v_proj" not in k):
            rest = key[len(src):]
            for old, new in _OPENCLIP_RENAMES:
                rest = rest.replace(old, new)
            out.append(TensorSpec(dst + rest, hf[key].shape, hf[key].init))
    out.append(TensorSpec(prefix + "ln_final.weight", (width,), "ones"))
    out.append(TensorSpec(prefix + "ln_final.bias", (width,), "zeros"))
    out.append(TensorSpec(prefix + "text_projection", (width, width), "fan_in"))  # stored [in, out]
    out.append(TensorSpec(prefix + "logit_scale", (), "const", value=OPENCLIP_LOGIT_SCALE))
    expected = len(hf) - 1 - 4 * layers  # HF keys minus the projection, q/k/v weights and biases merged
    if len(out) - 2 != expected:
        raise AssertionError(f"CLIP-G OpenCLIP mapping lost keys: {len(out) - 2} != {expected}")
    return out


def _check_detected(specs: list[TensorSpec], prefix: str, expected: str) -> None:
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(_meta_state_dict(specs, prefix), "")
    got = type(config).__name__ if config is not None else None
    if got != expected:
        raise AssertionError(f"ComfyUI detects this UNet as {got}, not {expected}")


def build_sd15() -> list[TensorSpec]:
    specs = module_specs(_unet(SD15_UNET), "model.diffusion_model.")
    _check_detected(specs, "model.diffusion_model.", "SD15")
    specs += _clip_l_specs("cond_stage_model.")
    specs += module_specs(_vae(), "first_stage_model.")
    return specs


def build_sdxl_small() -> list[TensorSpec]:
    specs = module_specs(_unet(SDXL_SMALL_UNET), "model.diffusion_model.")
    _check_detected(specs, "model.diffusion_model.", "SDXL")
    specs += _clip_l_specs("conditioner.embedders.0.")
    specs += _clip_g_openclip_specs("conditioner.embedders.1.model.")
    specs += module_specs(_vae(), "first_stage_model.")
    return specs


def build_vit_h() -> list[TensorSpec]:
    import comfy.clip_model
    import comfy.ops
    import torch

    config_path = Path(comfy.clip_model.__file__).with_name("clip_vision_config_h.json")
    config = json.loads(config_path.read_text())
    with torch.no_grad(), _torch_meta():
        model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "meta", comfy.ops.manual_cast)
    return module_specs(model)


def build_controlnet_sd15() -> list[TensorSpec]:
    """The ControlNet v1.1 layout (no prefix), as ComfyUI's loader builds it for an SD1.5 UNet config."""
    import comfy.cldm.cldm
    import comfy.ops
    import torch

    config = {k: v for k, v in SD15_UNET.items() if k != "out_channels"}
    with torch.no_grad(), _torch_meta():
        model = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, dtype=torch.float32, device="meta",
                                           operations=comfy.ops.disable_weight_init)
    specs = module_specs(model)
    _check_detected(specs, "", "SD15")
    return specs


MODELS: dict[str, ModelFile] = {m.name: m for m in (
    ModelFile("sd15", names.RELPATHS["sd15"], 1501, build_sd15, "full SD1.5 checkpoint (UNet, CLIP-L, VAE)"),
    ModelFile("sdxl-small", names.RELPATHS["sdxl-small"], 1502, build_sdxl_small,
              "SDXL checkpoint with a width-320 UNet (70 attn2 layers), CLIP-L, CLIP-G, VAE"),
    ModelFile("vit-h", names.RELPATHS["vit-h"], 1503, build_vit_h, "CLIP ViT-H/14 image encoder"),
    ModelFile("controlnet-sd15", names.RELPATHS["controlnet-sd15"], 1504, build_controlnet_sd15,
              "SD1.5 ControlNet (v1.1 layout)"),
)}


# entry points


def model_path(models: dict[str, ModelFile], name: str, models_dir: str | os.PathLike) -> tuple[ModelFile, Path]:
    """The model `name` of a generator's table and where it is written; a clear error for an unknown name."""
    if name not in models:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(models)}")
    return models[name], Path(models_dir) / models[name].relpath


def ensure_model(name: str, models_dir: str | os.PathLike, *, force: bool = False, report=None) -> Path:
    """Write model `name` under `models_dir` unless it is already there; returns its path."""
    model, path = model_path(MODELS, name, models_dir)
    if path.exists() and not force:
        return path
    comfy_host.prepare_imports()
    started = time.monotonic()
    specs = model.build()
    built = time.monotonic() - started
    metadata = {"format": "pt", "generator": "IPAdapter Kit dev/standins/comfy_models.py",
                "generator_version": str(GENERATOR_VERSION), "model": name, "seed": str(model.seed),
                "weights": "random (not a trained model)"}
    size = write_safetensors(path, specs, model.seed, metadata)
    params = sum(s.numel for s in specs if s.dtype != "I64")
    if report is not None:
        report(f"{model.relpath}: {len(specs)} tensors, {params / 1e6:.1f}M params, {size / 2**20:.0f} MiB "
               f"in {time.monotonic() - started:.1f} s (layout {built:.1f} s)")
    return path


def ensure_models_in_child(models_dir: str | os.PathLike, only: Iterable[str] | None = None) -> dict[str, Path]:
    """Write the missing models (all, or those in `only`) with this module's command line in a child Python, so
    the generator's memory never stays with the caller (a test session or a benchmark that measures its own
    memory); returns {name: path}. Raises with the child's output on failure."""
    wanted = list(only) if only else list(MODELS)
    missing = [n for n in wanted if not (Path(models_dir) / MODELS[n].relpath).exists()]
    if missing:
        generate_in_child("dev.standins.comfy_models", models_dir, missing)
    return {n: Path(models_dir) / MODELS[n].relpath for n in wanted}


def generate_in_child(module: str, models_dir: str | os.PathLike, names_: list[str],
                      python: str | os.PathLike | None = None) -> None:
    """Run a generator module's command line (`python -m MODULE --out DIR --only NAMES`) in a child Python (`python`,
    by default this one). Raises with the child's output on failure."""
    started = time.monotonic()
    cmd = [str(python or sys.executable), "-m", module, "--out", str(models_dir), "--only", *names_]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"generating {names_} failed:\n{proc.stdout[-4000:]}")
    log.info("generated %s in %.1f s:\n%s", names_, time.monotonic() - started, proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="models folder (checkpoints/, clip_vision/, ... are made inside)")
    parser.add_argument("--only", nargs="+", choices=list(MODELS), help="models to write (default: all)")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    write_missing(MODELS, args.only or list(MODELS), args.out, ensure_model, force=args.force)
    return 0


def write_missing(models: dict[str, ModelFile], wanted: list[str], out: str | os.PathLike, ensure, *,
                  force: bool = False) -> None:
    """The command lines' loop: `ensure(name, out, force=, report=print)` for each wanted model not yet written."""
    for name in wanted:
        if (Path(out) / models[name].relpath).exists() and not force:
            print(f"{models[name].relpath}: exists, kept")
        else:
            ensure(name, out, force=force, report=print)


if __name__ == "__main__":
    sys.exit(main())
