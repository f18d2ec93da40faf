"""Random-weight Flux / SD3.5 model files in the published key layouts, for a current ComfyUI's own loaders.

Usage: IPAKIT_COMFYUI=<current ComfyUI> python -m dev.standins.dit_models --out DIR
       [--only NAME ... | --family flux|sd35] [--force]

The Flux and SD3.5 example workflows load a diffusion model (UNETLoader), a VAE (VAELoader), text encoders
(DualCLIPLoader / TripleCLIPLoader) and a CLIP vision encoder (CLIPVisionLoader); these files let a ComfyUI server
run them without the real multi-GB downloads. Every model is built from ComfyUI's own classes on the `meta` device
and streamed tensor by tensor into a `.safetensors` file with dev/standins/comfy_models.py's writer (seeded,
byte-identical run to run; biases 0, norm scales 1, embeddings N(0, 0.02), other weights N(0, 1/sqrt(fan_in))).
The diffusion models are checked against ComfyUI's detection: the layout ComfyUI would build from the file's keys
must be exactly the file's. Needs a ComfyUI with Flux and SD3 (not the bundled 2024 one): set IPAKIT_COMFYUI.

Models (paths from dev/standins/names.py's DIT_RELPATHS; parameters, storage, file size, time on 2 CPU cores):
  flux-unet      FLUX.1-dev layout at the real widths (hidden 3072, 24 heads, guidance_in) with 1 double and
                 1 single block (ComfyUI counts Flux blocks from the keys): 545.5M, BF16, 1041 MiB, 11 s
  sd35-unet      SD3.5-Large layout (RMS qk norms, pos_embed 192 x 192, context 4096, pooled 2048, 16 channels)
                 at MMDiT depth SD35_DEPTH = 2: 2 joint blocks (the last one's context block pre_only) of width
                 128 = 2 heads of 64. ComfyUI does not count SD3 blocks: it builds depth = width / 64 of them, so
                 2 blocks at SD3.5 Large's width 2432 cannot load (it would build all 38); an InstantX SD3.5
                 adapter for it has hidden 128 and 2 blocks. 6.6M, BF16, 13 MiB, 0.4 s
  flux-vae       the 16-channel VAE of Flux's ae.safetensors (no quant convs): 83.8M, F16, 160 MiB, 1 s
  sd3-vae        the same file: SD3's VAE has the same layout and keys (the latent scale and shift live in the
                 model), so it is a hard link to flux-vae's file (written first if missing)
  clip-l-text    CLIP-L text encoder as the standalone clip_l.safetensors (`text_model.*`,
                 `text_projection.weight`): 123.7M, F16, 236 MiB, 1 s
  clip-g-text    CLIP-G text encoder as the standalone clip_g.safetensors: 694.7M, F16, 1325 MiB, 7 s
  t5xxl-fp8      T5-XXL encoder as t5xxl_fp8_e4m3fn.safetensors, every tensor float8_e4m3fn (the norms too: ComfyUI
                 takes the T5 weight dtype from `encoder.final_layer_norm.weight`, so the model stays fp8 in
                 memory): 4762.3M, 4542 MiB, 64 s. ComfyUI needs every block at full size, and one Flux prompt
                 encode (256 T5 tokens) takes about 100 s on 2 cores, peak RSS near 10 GiB.
  clip-vision-l  OpenAI CLIP ViT-L/14 vision tower with projection, under its published name: 304.0M, F16, 580 MiB
  siglip         SigLIP so400m-patch14-384 vision tower plus its attention-pooling head (`vision_model.head.*`),
                 as google/siglip-so400m-patch14-384's model.safetensors has them, under the published name;
                 ComfyUI's loader ignores the head, the pack reads it: 428.2M, F16, 817 MiB, 4 s
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from dev.host import comfy_host
from dev.standins import comfy_models, names
from dev.standins.comfy_models import ModelFile, TensorSpec

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # recorded in each file's metadata; bump when the tensors written for a model change

# names (the one home of the file names is dev/standins/names.py)

FLUX_UNET = names.DIT_FLUX_UNET
SD35_UNET = names.DIT_SD35_UNET
FLUX_VAE = names.DIT_FLUX_VAE
SD3_VAE = names.DIT_SD3_VAE
CLIP_L_TEXT = names.DIT_CLIP_L_TEXT
CLIP_G_TEXT = names.DIT_CLIP_G_TEXT
T5XXL_FP8 = names.DIT_T5XXL
CLIP_VISION_L = names.DIT_CLIP_VISION_L
SIGLIP = names.DIT_SIGLIP

RELPATHS: dict[str, str] = dict(names.DIT_RELPATHS)  # model name -> path under the models folder
FAMILIES: dict[str, list[str]] = {  # what each family's example workflows load
    "flux": ["flux-unet", "flux-vae", "clip-l-text", "t5xxl-fp8", "clip-vision-l", "siglip"],
    "sd35": ["sd35-unet", "sd3-vae", "clip-l-text", "clip-g-text", "t5xxl-fp8", "siglip"],
}
ALIASES = {"sd3-vae": "flux-vae"}  # name -> the model whose file it shares (same layout, builder and seed)

# configuration

FLUX_DEV = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
    mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
    qkv_bias=True, guidance_embed=True,
)
"""FLUX.1-dev's transformer config (ComfyUI hard-codes the widths and counts the blocks) with 1 + 1 blocks."""

SD35_DEPTH = 2
"""MMDiT depth of the SD3.5 stand-in: width 64 x depth, depth heads of 64 and depth joint blocks (SD3.5 Large: 38)."""

SD35_LARGE = dict(
    in_channels=16, out_channels=16, patch_size=2, depth=SD35_DEPTH, input_size=None, adm_in_channels=2048,
    context_embedder_config={"target": "torch.nn.Linear",
                             "params": {"in_features": 4096, "out_features": 64 * SD35_DEPTH}},
    num_patches=192 * 192, pos_embed_max_size=192, qk_norm="rms", pos_embed_scaling_factor=None,
    x_block_self_attn_layers=[],
)
"""SD3.5 Large's MMDiT config, as ComfyUI's detection reads it from the keys, at depth SD35_DEPTH."""

VAE_16CH = dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                num_res_blocks=2, attn_resolutions=[], dropout=0.0)
"""ComfyUI's VAE config for a `decoder.conv_in.weight` with 16 input channels (Flux ae, SD3 VAE)."""

_EMBEDDINGS = ("class_embedding", "pos_embed", "probe")  # parameters that are embeddings whatever owns them


# tensor specs


def _owners(module) -> dict:
    owner = {}
    for name, mod in module.named_modules():
        for pname, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            owner[f"{name}.{pname}" if name else pname] = mod
    return owner


def dit_specs(module, dtype: str, *, strip: str = "", drop: Iterable[str] = ()) -> list[TensorSpec]:
    """TensorSpecs of every state_dict entry of a (meta) module in storage dtype `dtype`, keys without `strip`.

    Norm weights/scales (any module whose class name says Norm: LayerNorm, GroupNorm, RMSNorm, T5LayerNorm) 1,
    biases 0, embeddings (Embedding modules, class/position embeddings, SigLIP's probe) N(0, 0.02), the rest
    N(0, 1/sqrt(fan_in))."""
    import torch

    owner = _owners(module)
    drop = set(drop)
    specs = []
    for key, tensor in module.state_dict().items():
        if key in drop:
            continue
        if not key.startswith(strip):
            raise ValueError(f"{key}: does not start with {strip!r}")
        if not tensor.is_floating_point():
            raise ValueError(f"{key}: non-float tensor with no known values")
        mod, leaf = owner.get(key), key.rsplit(".", 1)[-1]
        if mod is not None and "norm" in type(mod).__name__.lower():
            init = "zeros" if leaf == "bias" else "ones"
        elif isinstance(mod, torch.nn.Embedding) or leaf in _EMBEDDINGS:
            init = "embedding"
        elif leaf.endswith("bias"):
            init = "zeros"
        elif tensor.dim() >= 2:
            init = "fan_in"
        else:
            raise ValueError(f"{key}: no init rule for a {tuple(tensor.shape)} tensor of {type(mod).__name__}")
        specs.append(TensorSpec(key[len(strip):], tuple(tensor.shape), init, dtype))
    return specs


def _shapes(specs: list[TensorSpec]) -> dict[str, tuple[int, ...]]:
    return {s.key: s.shape for s in specs}


def _meta(module_factory):
    import torch

    with torch.no_grad(), torch.device("meta"):
        return module_factory()


# checks against ComfyUI's own detection


def _check_diffusion_model(specs: list[TensorSpec], expected_class: str, rebuild) -> None:
    """ComfyUI detects `expected_class` from the keys, and the model it would build from that detection (`rebuild`
    of the detected unet_config) has exactly the file's keys and shapes."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(comfy_models._meta_state_dict(specs), "")
    got = type(config).__name__ if config is not None else None
    if got != expected_class:
        raise AssertionError(f"ComfyUI detects this diffusion model as {got}, not {expected_class}")
    built = _shapes(dit_specs(_meta(lambda: rebuild(config.unet_config)), "F32"))
    mine = _shapes(specs)
    if built != mine:
        differ = sorted(k for k in set(built) | set(mine) if built.get(k) != mine.get(k))
        raise AssertionError(f"ComfyUI would build another {expected_class} from this file ({len(differ)} keys "
                             f"differ, e.g. {differ[:4]})")


def _check_text_encoder(specs: list[TensorSpec], expected: str) -> None:
    import comfy.sd

    got = comfy.sd.detect_te_model(comfy_models._meta_state_dict(specs))
    if got is None or got.name != expected:
        raise AssertionError(f"ComfyUI detects this text encoder as {got}, not {expected}")


# builders (ComfyUI classes on the meta device)


def _flux(config: dict):
    import comfy.ops
    import torch
    from comfy.ldm.flux.model import Flux

    return Flux(**config, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)


def _mmdit(config: dict):
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return MMDiT(**config, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)


def build_flux_unet() -> list[TensorSpec]:
    specs = dit_specs(_meta(lambda: _flux(FLUX_DEV)), "BF16")
    _check_diffusion_model(specs, "Flux", _flux)
    return specs


def build_sd35_unet() -> list[TensorSpec]:
    specs = dit_specs(_meta(lambda: _mmdit(SD35_LARGE)), "BF16")
    _check_diffusion_model(specs, "SD3", _mmdit)
    return specs


def build_vae_16ch() -> list[TensorSpec]:
    """The AutoencodingEngine ComfyUI's VAE class builds for 16 latent channels and no `post_quant_conv`."""

    def vae():
        from comfy.ldm.models.autoencoder import AutoencodingEngine

        params = {"params": dict(VAE_16CH)}
        return AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", **params},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", **params})

    specs = dit_specs(_meta(vae), "F16")
    if _shapes(specs)["decoder.conv_in.weight"][1] != 16 or any("quant_conv" in s.key for s in specs):
        raise AssertionError("not the 16-channel VAE layout ComfyUI expects")
    return specs


def build_clip_l_text() -> list[TensorSpec]:
    import comfy.sd1_clip
    import torch

    clip = _meta(lambda: comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32))
    specs = dit_specs(clip, "F16", strip="transformer.", drop=("logit_scale",))
    _check_text_encoder(specs, "CLIP_L")
    return specs


def build_clip_g_text() -> list[TensorSpec]:
    import comfy.sdxl_clip
    import torch

    clip = _meta(lambda: comfy.sdxl_clip.SDXLClipG(device="meta", dtype=torch.float32))
    specs = dit_specs(clip, "F16", strip="transformer.", drop=("logit_scale",))
    _check_text_encoder(specs, "CLIP_G")
    return specs


def build_t5xxl_fp8() -> list[TensorSpec]:
    import comfy.text_encoders.sd3_clip
    import torch

    t5 = _meta(lambda: comfy.text_encoders.sd3_clip.T5XXLModel(device="meta", dtype=torch.float32))
    specs = dit_specs(t5, "F8_E4M3", strip="transformer.", drop=("logit_scale",))
    _check_text_encoder(specs, "T5_XXL")
    return specs


def _clip_vision(config_name: str):
    import json

    import comfy.clip_model
    import comfy.ops
    import torch

    config = json.loads(Path(comfy.clip_model.__file__).with_name(config_name).read_text())
    return _meta(lambda: comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "meta",
                                                                     comfy.ops.manual_cast))


def build_clip_vision_l() -> list[TensorSpec]:
    specs = dit_specs(_clip_vision("clip_vision_config_vitl.json"), "F16")
    shapes = _shapes(specs)
    if shapes["vision_model.embeddings.position_embedding.weight"][0] != 257 or \
            shapes["visual_projection.weight"] != (768, 1024):
        raise AssertionError("not the CLIP ViT-L/14 layout")
    return specs


def build_siglip() -> list[TensorSpec]:
    from dev.standins.dit_instantx import SO400M, siglip_head_specs

    specs = dit_specs(_clip_vision("clip_vision_siglip_384.json"), "F16")
    for key, shape in siglip_head_specs(SO400M["width"], SO400M["intermediate"]):
        leaf = key.rsplit(".", 1)[-1]
        init = ("embedding" if leaf == "probe" else "ones" if key.endswith("layernorm.weight")
                else "zeros" if leaf.endswith("bias") else "fan_in")
        specs.append(TensorSpec(key, shape, init, "F16"))
    shapes = _shapes(specs)
    if shapes["vision_model.embeddings.position_embedding.weight"] != (729, 1152) or \
            "vision_model.encoder.layers.26.layer_norm1.weight" not in shapes:
        raise AssertionError("not the SigLIP so400m-patch14-384 layout")
    return specs


MODELS: dict[str, ModelFile] = {m.name: m for m in (
    ModelFile("flux-unet", RELPATHS["flux-unet"], 2501, build_flux_unet,
              "FLUX.1-dev diffusion model, real widths, 1 double + 1 single block"),
    ModelFile("sd35-unet", RELPATHS["sd35-unet"], 2502, build_sd35_unet,
              f"SD3.5-Large-layout MMDiT at depth {SD35_DEPTH} (width {64 * SD35_DEPTH})"),
    ModelFile("flux-vae", RELPATHS["flux-vae"], 2503, build_vae_16ch, "16-channel VAE (Flux ae / SD3 VAE layout)"),
    ModelFile("sd3-vae", RELPATHS["sd3-vae"], 2503, build_vae_16ch, "16-channel VAE (the flux-vae file)"),
    ModelFile("clip-l-text", RELPATHS["clip-l-text"], 2504, build_clip_l_text, "CLIP-L text encoder"),
    ModelFile("clip-g-text", RELPATHS["clip-g-text"], 2505, build_clip_g_text, "CLIP-G text encoder"),
    ModelFile("t5xxl-fp8", RELPATHS["t5xxl-fp8"], 2506, build_t5xxl_fp8, "T5-XXL encoder, float8_e4m3fn"),
    ModelFile("clip-vision-l", RELPATHS["clip-vision-l"], 2507, build_clip_vision_l, "CLIP ViT-L/14 vision"),
    ModelFile("siglip", RELPATHS["siglip"], 2508, build_siglip, "SigLIP so400m-patch14-384 vision + head"),
)}
if set(MODELS) != set(RELPATHS) or not {n for f in FAMILIES.values() for n in f} <= set(MODELS):
    raise AssertionError("dit_models: MODELS, RELPATHS and FAMILIES disagree")


# entry points


def ensure_model(name: str, models_dir: str | os.PathLike, *, force: bool = False, report=None) -> Path:
    """Write model `name` under `models_dir` unless it is already there; returns its path. An alias (sd3-vae) is a
    hard link to its model's file (written first if missing), or a copy of the same bytes where links fail."""
    model, path = comfy_models.model_path(MODELS, name, models_dir)
    if path.exists() and not force:
        return path
    if name in ALIASES:
        source = ensure_model(ALIASES[name], models_dir, report=report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        try:
            os.link(source, path)
            if report is not None:
                report(f"{model.relpath}: hard link to {MODELS[ALIASES[name]].relpath}")
            return path
        except OSError:
            pass  # another file system: write the same bytes
    comfy_dir = comfy_host.prepare_imports()
    if importlib.util.find_spec("comfy.ldm.flux") is None:
        raise RuntimeError(f"the ComfyUI at {comfy_dir} has no Flux/SD3 support; set IPAKIT_COMFYUI to a current one")
    started = time.monotonic()
    specs = model.build()
    built = time.monotonic() - started
    metadata = {"format": "pt", "generator": "IPAdapter Kit dev/standins/dit_models.py",
                "generator_version": str(GENERATOR_VERSION), "model": ALIASES.get(name, name),
                "seed": str(model.seed), "weights": "random (not a trained model)"}
    size = comfy_models.write_safetensors(path, specs, model.seed, metadata)
    params = sum(s.numel for s in specs)
    if report is not None:
        report(f"{model.relpath}: {len(specs)} tensors, {params / 1e6:.1f}M params, {size / 2**20:.0f} MiB "
               f"in {time.monotonic() - started:.1f} s (layout {built:.1f} s)")
    return path


def ensure_models_in_child(models_dir: str | os.PathLike, only: Iterable[str] | None = None, *,
                           python: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write the missing models (all, or those in `only`) with this module's command line in a child Python (`python`,
    by default this one; it needs a current ComfyUI through $IPAKIT_COMFYUI), so the generator's memory never stays
    with the caller; returns {name: path}. Raises with the child's output on failure."""
    wanted = list(only) if only else list(MODELS)
    unknown = [n for n in wanted if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    missing = [n for n in wanted if not (Path(models_dir) / MODELS[n].relpath).exists()]
    if missing:
        comfy_models.generate_in_child("dev.standins.dit_models", models_dir, missing, python)
    return {n: Path(models_dir) / MODELS[n].relpath for n in wanted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="models folder (unet/, vae/, clip/, clip_vision/ are made inside)")
    parser.add_argument("--only", nargs="+", choices=list(MODELS), help="models to write (default: all)")
    parser.add_argument("--family", choices=list(FAMILIES), help="the models of one family's workflows")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    wanted = args.only or (FAMILIES[args.family] if args.family else list(MODELS))
    comfy_models.write_missing(MODELS, wanted, args.out, ensure_model, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
