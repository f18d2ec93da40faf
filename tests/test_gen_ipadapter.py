"""The random-checkpoint generator against the published files' layouts (written out below) and diffusers' loaders."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dev.standins import ipadapter as gen

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "gen_ipadapter"

# expectations: the published files' layouts, written out (not computed by the module under test)

STEMS = {
    "sd15": "ip-adapter_sd15", "sd15_light": "ip-adapter_sd15_light_v11", "sd15_vit-G": "ip-adapter_sd15_vit-G",
    "plus_sd15": "ip-adapter-plus_sd15", "plus-face_sd15": "ip-adapter-plus-face_sd15",
    "full-face_sd15": "ip-adapter-full-face_sd15", "composition_sd15": "ip_plus_composition_sd15",
    "sdxl": "ip-adapter_sdxl", "sdxl_vit-h": "ip-adapter_sdxl_vit-h", "plus_sdxl_vit-h": "ip-adapter-plus_sdxl_vit-h",
    "plus-face_sdxl_vit-h": "ip-adapter-plus-face_sdxl_vit-h", "composition_sdxl": "ip_plus_composition_sdxl",
    "faceid_sd15": "ip-adapter-faceid_sd15", "faceid-plus_sd15": "ip-adapter-faceid-plus_sd15",
    "faceid-plusv2_sd15": "ip-adapter-faceid-plusv2_sd15", "faceid-portrait_sd15": "ip-adapter-faceid-portrait_sd15",
    "faceid-portrait-v11_sd15": "ip-adapter-faceid-portrait-v11_sd15", "faceid_sdxl": "ip-adapter-faceid_sdxl",
    "faceid-plusv2_sdxl": "ip-adapter-faceid-plusv2_sdxl", "faceid-portrait_sdxl": "ip-adapter-faceid-portrait_sdxl",
    "faceid-portrait_sdxl_unnorm": "ip-adapter-faceid-portrait_sdxl_unnorm", "kolors_plus": "ip_adapter_plus_general",
    "kolors_faceid_plus": "ipa-faceid-plus",
}
# widths over all 2L processors (h_N is the entry at N)
PER_INDEX = {
    "sd15": [320] * 4 + [640] * 4 + [1280] * 4 + [1280] * 6 + [640] * 6 + [320] * 6 + [1280] * 2,
    "sdxl": [640] * 8 + [1280] * 40 + [1280] * 60 + [640] * 12 + [1280] * 20,
}
CROSS = {"sd15": 768, "sdxl": 2048, "kolors": 2048}
LORA = {"faceid_sd15", "faceid-plus_sd15", "faceid-plusv2_sd15", "faceid_sdxl", "faceid-plusv2_sdxl"}  # with FaceID LoRA keys


def image_proj(rows, p, c):
    return {"proj.weight": (rows, p), "proj.bias": (rows,), "norm.weight": (c,), "norm.bias": (c,)}


def face_mlp(rows, c):
    return {"proj.0.weight": (1024, 512), "proj.0.bias": (1024,), "proj.2.weight": (rows, 1024),
            "proj.2.bias": (rows,), "norm.weight": (c,), "norm.bias": (c,)}


def perceiver_layers(d, inner):
    out = {}
    for i in range(4):
        out |= {f"layers.{i}.0.norm1.weight": (d,), f"layers.{i}.0.norm1.bias": (d,),
                f"layers.{i}.0.norm2.weight": (d,), f"layers.{i}.0.norm2.bias": (d,),
                f"layers.{i}.0.to_q.weight": (inner, d), f"layers.{i}.0.to_kv.weight": (2 * inner, d),
                f"layers.{i}.0.to_out.weight": (d, inner), f"layers.{i}.1.0.weight": (d,),
                f"layers.{i}.1.0.bias": (d,), f"layers.{i}.1.1.weight": (4 * d, d),
                f"layers.{i}.1.3.weight": (d, 4 * d)}
    return out


def resampler(q, d, e, o, inner):
    return {"latents": (1, q, d), "proj_in.weight": (d, e), "proj_in.bias": (d,), "proj_out.weight": (o, d),
            "proj_out.bias": (o,), "norm_out.weight": (o,), "norm_out.bias": (o,), **perceiver_layers(d, inner)}


def faceid_plus(rows, c, ecl):
    per = {"proj_in.weight": (c, ecl), "proj_in.bias": (c,), "proj_out.weight": (c, c), "proj_out.bias": (c,),
           "norm_out.weight": (c,), "norm_out.bias": (c,), **perceiver_layers(c, c)}
    return {**face_mlp(rows, c), **{f"perceiver_resampler.{k}": s for k, s in per.items()}}


FULL_FACE = {"proj.0.weight": (1280, 1280), "proj.0.bias": (1280,), "proj.2.weight": (768, 1280),
             "proj.2.bias": (768,), "proj.3.weight": (768,), "proj.3.bias": (768,)}
PLUS_SD15, PLUS_SDXL = resampler(16, 768, 1280, 768, 768), resampler(16, 1280, 1280, 2048, 1280)
IMAGE_PROJ = {
    "sd15": image_proj(3072, 1024, 768), "sd15_light": image_proj(3072, 1024, 768),
    "sd15_vit-G": image_proj(3072, 1280, 768), "plus_sd15": PLUS_SD15, "plus-face_sd15": PLUS_SD15,
    "full-face_sd15": FULL_FACE, "composition_sd15": PLUS_SD15, "sdxl": image_proj(8192, 1280, 2048),
    "sdxl_vit-h": image_proj(8192, 1024, 2048), "plus_sdxl_vit-h": PLUS_SDXL, "plus-face_sdxl_vit-h": PLUS_SDXL,
    "composition_sdxl": PLUS_SDXL, "faceid_sd15": face_mlp(3072, 768), "faceid-plus_sd15": faceid_plus(3072, 768, 1280),
    "faceid-plusv2_sd15": faceid_plus(3072, 768, 1280), "faceid-portrait_sd15": face_mlp(12288, 768),
    "faceid-portrait-v11_sd15": face_mlp(12288, 768), "faceid_sdxl": face_mlp(8192, 2048),
    "faceid-plusv2_sdxl": faceid_plus(8192, 2048, 1280), "faceid-portrait_sdxl": face_mlp(32768, 2048),
    "faceid-portrait_sdxl_unnorm": resampler(16, 1280, 512, 2048, 1280),
    "kolors_plus": resampler(16, 2048, 1024, 2048, 768), "kolors_faceid_plus": faceid_plus(24576, 4096, 1024),
}
# totals in M params of the full-size files (image_proj + ip_adapter, LoRA included)
PARAMS_M = {
    "sd15": 22.32, "sd15_light": 22.32, "sd15_vit-G": 23.11, "plus_sd15": 49.09, "plus-face_sd15": 49.09,
    "full-face_sd15": 21.79, "composition_sd15": 49.09, "sdxl": 351.29, "sdxl_vit-h": 349.19,
    "plus_sdxl_vit-h": 423.75, "plus-face_sdxl_vit-h": 423.75, "composition_sdxl": 423.75, "faceid_sd15": 48.35,
    "faceid-plus_sd15": 78.26, "faceid-plusv2_sd15": 78.26, "faceid-portrait_sd15": 32.29,
    "faceid-portrait-v11_sd15": 32.29, "faceid_sdxl": 535.51, "faceid-plusv2_sdxl": 743.71,
    "faceid-portrait_sdxl": 374.90, "kolors_plus": 506.55,
}


def expected_ip_adapter(family, rank=128):
    widths, c, out = PER_INDEX["sdxl" if family == "kolors" else family], CROSS[family], {}
    for n, h in enumerate(widths):
        if rank:
            c_n = c if n % 2 else h
            for p, inp in (("to_q", h), ("to_k", c_n), ("to_v", c_n), ("to_out", h)):
                out |= {f"{n}.{p}_lora.down.weight": (rank, inp), f"{n}.{p}_lora.up.weight": (h, rank)}
        if n % 2:
            out |= {f"{n}.to_k_ip.weight": (h, c), f"{n}.to_v_ip.weight": (h, c)}
    return out


def shapes(group):
    return {k: tuple(t.shape) for k, t in group.items()}


def numel(group):
    return sum(t.numel() for t in group.values())


# table and full-size layouts


def test_variant_table():
    assert {v: gen.VARIANTS[v].stem for v in gen.VARIANTS} == STEMS
    assert gen.published_filename("faceid_sd15", "bin") == "ip-adapter-faceid_sd15.bin"
    assert gen.published_filename("kolors_plus") == "ip_adapter_plus_general.safetensors"
    assert {v for v, s in gen.VARIANTS.items() if s.lora} == LORA
    assert [v for v, s in gen.VARIANTS.items() if s.key_style != "published"] == ["kolors_faceid_plus"]


@pytest.mark.parametrize("variant", list(STEMS))
def test_full_layout_matches_the_published_one(variant):
    sd = gen.make_state_dict(variant, device="meta")
    assert set(sd) == {"image_proj", "ip_adapter"}
    assert shapes(sd["image_proj"]) == IMAGE_PROJ[variant]
    family = gen.VARIANTS[variant].family
    assert shapes(sd["ip_adapter"]) == expected_ip_adapter(family, 128 if variant in LORA else 0)
    if variant in PARAMS_M:
        assert round((numel(sd["image_proj"]) + numel(sd["ip_adapter"])) / 1e6, 2) == PARAMS_M[variant]
    assert all(t.dtype == torch.float16 for g in sd.values() for t in g.values())


def test_layout_spot_checks():
    """Literal rows of the SD1.5 and SDXL widths, the FaceID LoRA and the perceiver layers (mid block numbered last)."""
    sd15, sdxl = gen.make_state_dict("faceid_sd15", device="meta"), gen.make_state_dict("faceid_sdxl", device="meta")
    assert [sd15["ip_adapter"][f"{n}.to_k_ip.weight"].shape[0] for n in (1, 5, 9, 13, 19, 25, 31)] == [
        320, 640, 1280, 1280, 640, 320, 1280]
    assert [sdxl["ip_adapter"][f"{n}.to_k_ip.weight"].shape[0] for n in (1, 7, 9, 47, 49, 107, 109, 119, 121, 139)] == [
        640, 640, 1280, 1280, 1280, 1280, 640, 640, 1280, 1280]
    for sd, count, params in ((sd15, 288, 44.68), (sdxl, 1260, 526.58)):
        assert len(sd["ip_adapter"]) == count and round(numel(sd["ip_adapter"]) / 1e6, 2) == params
        ad = shapes(sd["ip_adapter"])
        assert ad["0.to_k_lora.down.weight"] == (128, ad["1.to_k_ip.weight"][0])  # c_N = h_N at even N
        assert ad["1.to_k_lora.down.weight"] == (128, ad["1.to_k_ip.weight"][1])  # c_N = C at odd N
    for variant, tensors, params in (("sd15", 32, 19.17), ("sdxl", 140, 340.79)):
        ad = gen.make_state_dict(variant, device="meta")["ip_adapter"]
        assert len(ad) == tensors and round(numel(ad) / 1e6, 2) == params
    plus = gen.make_state_dict("plus_sdxl_vit-h", device="meta")["image_proj"]
    assert len(plus) == 51 and tuple(plus["layers.3.0.to_kv.weight"].shape) == (2560, 1280)
    assert tuple(plus["proj_out.weight"].shape) == (2048, 1280)
    assert tuple(plus["layers.0.1.1.weight"].shape) == (5120, 1280)
    kolors = gen.make_state_dict("kolors_plus", device="meta")["image_proj"]
    assert tuple(kolors["layers.0.0.to_q.weight"].shape) == (768, 2048)
    assert tuple(kolors["layers.0.0.to_out.weight"].shape) == (2048, 768)
    assert len(gen.make_state_dict("faceid-plusv2_sdxl", device="meta")["image_proj"]) == 56


def test_layout_matches_diffusers_unet_topology():
    """Every processor N of diffusers' real SD1.5 / SDXL UNets (built on meta) gets matching ip and LoRA shapes."""
    for unet, variant in ((sd15_unet(real=True), "faceid_sd15"), (sdxl_unet(real=True), "faceid_sdxl")):
        check_against_unet(unet, gen.make_state_dict(variant, device="meta")["ip_adapter"])


# tiny scale and overrides


@pytest.mark.parametrize("variant", list(STEMS))
def test_tiny_keeps_keys_and_relations(variant):
    v, full = gen.VARIANTS[variant], gen.make_state_dict(variant, device="meta")
    tiny = gen.make_state_dict(variant, scale="tiny", dtype=torch.float32)
    for g in full:
        assert set(tiny[g]) == set(full[g])
    ip = shapes(tiny["image_proj"])
    assert numel(tiny["image_proj"]) + numel(tiny["ip_adapter"]) < 8e6
    assert len(tiny["ip_adapter"]) == len(full["ip_adapter"])
    if v.projection == "image_proj":
        assert ip["proj.weight"][0] // ip["norm.weight"][0] == 4
    if v.projection == "faceid_mlp":
        assert ip["proj.2.weight"][0] // ip["norm.weight"][0] == v.tokens and ip["proj.0.weight"] == (1024, 512)
    if v.projection == "resampler":
        assert ip["latents"][1] == 16 and ip["layers.0.0.to_q.weight"][0] % 64 == 0
        assert gen.resolve_dims(variant, scale="tiny").heads == ip["layers.0.0.to_q.weight"][0] // 64
    if v.projection == "faceid_plus":
        c = ip["perceiver_resampler.proj_out.weight"][0]
        assert ip["perceiver_resampler.layers.0.0.to_q.weight"] == (c, c) and c % 64 == 0
        assert ip["proj.2.weight"][0] // ip["norm.weight"][0] == v.tokens
    if variant == "faceid-portrait_sdxl_unnorm":
        assert ip["proj_in.weight"][1] == 512
    if variant == "kolors_faceid_plus":
        assert ip["norm.weight"][0] == 2 * tiny["ip_adapter"]["1.to_k_ip.weight"].shape[1]
    if v.lora:
        assert tiny["ip_adapter"]["0.to_q_lora.down.weight"].shape[0] == 4


@pytest.mark.parametrize("scale", ["full", "tiny"])
def test_explicit_widths_and_dims(scale):
    widths = [32, 64] * 35
    sd = gen.make_state_dict("faceid-plusv2_sdxl", widths=widths, cross_dim=128, clip_dim=48, scale=scale,
                             lora_rank=2, device="meta")
    ad, ip = sd["ip_adapter"], sd["image_proj"]
    assert len(ad) == 140 * 8 + 70 * 2 and tuple(ad["139.to_k_ip.weight"].shape) == (64, 128)
    assert tuple(ad["0.to_k_lora.down.weight"].shape) == (2, 32)
    assert tuple(ad["3.to_k_lora.down.weight"].shape) == (2, 128)
    assert tuple(ip["perceiver_resampler.proj_in.weight"].shape) == (128, 48)
    plus = gen.make_state_dict("plus_sdxl_vit-h", widths=widths, cross_dim=128, scale=scale, device="meta")
    assert tuple(plus["image_proj"]["proj_out.weight"].shape) == (128, 1280 if scale == "full" else 64)
    with pytest.raises(ValueError, match="multiple of 64"):
        gen.make_state_dict("plus_sd15", cross_dim=96, scale=scale, device="meta")
    with pytest.raises(ValueError, match="no CLIP input"):
        gen.make_state_dict("faceid_sd15", clip_dim=32, scale=scale, device="meta")


def test_weight_statistics():
    sd = gen.make_state_dict("plus_sdxl_vit-h", scale="tiny", dtype=torch.float32)
    ip = sd["image_proj"]
    assert abs(ip["norm_out.weight"].mean() - 1) < 0.01 and ip["proj_in.bias"].abs().max() < 0.15
    assert abs(ip["latents"].std() * math.sqrt(64) - 1) < 0.1
    assert abs(ip["layers.0.1.3.weight"].std() * math.sqrt(256) - 1) < 0.05
    assert abs(sd["ip_adapter"]["1.to_k_ip.weight"].std() * math.sqrt(128) - 1) < 0.1


# diffusers as an independent reference


def sd15_unet(real=False, block_out=(32, 32, 64, 64), cross=64):
    from diffusers import UNet2DConditionModel

    kw = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768) if real else dict(
        block_out_channels=block_out, cross_attention_dim=cross, norm_num_groups=8)
    with torch.device("meta" if real else "cpu"):
        return UNet2DConditionModel(layers_per_block=2, attention_head_dim=8, **kw)


def sdxl_unet(real=False, block_out=(16, 32, 32), cross=128):
    from diffusers import UNet2DConditionModel

    kw = dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
              addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816) if real else dict(
        block_out_channels=block_out, cross_attention_dim=cross, attention_head_dim=(2, 4, 4), norm_num_groups=8,
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    with torch.device("meta" if real else "cpu"):
        return UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time", **kw)


def check_against_unet(unet, ad):
    """ip_adapter shapes from diffusers' attention modules, processor by processor (N = registration order)."""
    unet.encoder_hid_proj = None  # a loaded Plus projection would add its own processors
    want = {}
    lora = any("lora" in k for k in ad)
    for n, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        assert name.endswith("attn1.processor" if n % 2 == 0 else "attn2.processor")
        if lora:
            r = ad["0.to_q_lora.down.weight"].shape[0]
            for p, lin in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
                want |= {f"{n}.{p}_lora.down.weight": (r, lin.in_features),
                         f"{n}.{p}_lora.up.weight": (lin.out_features, r)}
        if n % 2:
            assert attn.to_k.in_features == unet.config.cross_attention_dim
            want |= {f"{n}.{p}_ip.weight": (attn.to_k.out_features, attn.to_k.in_features) for p in ("to_k", "to_v")}
    assert shapes(ad) == want


@pytest.fixture(scope="module")
def tiny_unets():
    return {"sd15": sd15_unet(), "sdxl": sdxl_unet()}


def project(v, proj, dims, batch=2):
    """Run a diffusers image projection on random inputs of the right shape."""
    g = torch.Generator().manual_seed(0)
    if v.projection == "faceid_plus":
        proj.clip_embeds, proj.shortcut = torch.randn(batch, 1, 257, dims.clip_dim, generator=g), v.shortcut
    if v.projection in ("faceid_mlp", "faceid_plus"):
        return proj(torch.randn(batch, 512, generator=g))
    if v.projection == "image_proj":
        return proj(torch.randn(batch, dims.clip_dim, generator=g))
    e = dims.clip_dim or 512
    return proj(torch.randn(batch, 257 if dims.clip_dim else 1, e, generator=g))


@pytest.mark.parametrize("variant", [v for v in STEMS if v != "kolors_faceid_plus"])
def test_tiny_loads_into_diffusers(variant, tiny_unets):
    """diffusers' converter loads image_proj strictly and gives O(1) tokens; ip_adapter fits the UNet's modules.

    kolors_faceid_plus is left out: diffusers hard-codes 4 FaceID-Plus tokens (Kolors uses 6).
    """
    v = gen.VARIANTS[variant]
    unet = tiny_unets["sd15" if v.family == "sd15" else "sdxl"]
    sd = gen.make_state_dict(variant, scale="tiny", dtype=torch.float32)
    check_against_unet(unet, sd["ip_adapter"])
    proj = unet._convert_ip_adapter_image_proj_to_diffusers(sd["image_proj"], low_cpu_mem_usage=False)
    dims = gen.resolve_dims(variant, scale="tiny")
    with torch.no_grad():
        out = project(v, proj, dims)
    assert out.shape == (2, 257 if variant == "full-face_sd15" else v.tokens, dims.cross_dim)
    assert torch.isfinite(out).all() and 0.5 < out.std() < 2


@pytest.mark.parametrize("variant", ["plus_sd15", "faceid-plusv2_sd15", "sdxl", "faceid_sdxl"])
def test_tiny_loads_through_diffusers_unet_loader(variant, tiny_unets):
    """The whole adapter through `_load_ip_adapter_weights` (to_k_ip/to_v_ip read at key_id = 1, 3, ...)."""
    unet = tiny_unets["sd15" if gen.VARIANTS[variant].family == "sd15" else "sdxl"]
    unet._load_ip_adapter_weights([gen.make_state_dict(variant, scale="tiny", dtype=torch.float32)],
                                  low_cpu_mem_usage=False)
    assert len(unet.encoder_hid_proj.image_projection_layers) == 1


@pytest.mark.parametrize("variant", ["sd15_vit-G", "plus_sd15", "full-face_sd15", "faceid-plusv2_sd15",
                                     "faceid-portrait_sd15"])
def test_full_image_proj_loads_into_diffusers(variant, tiny_unets):
    sd = gen.make_state_dict(variant, dtype=torch.float32)
    proj = tiny_unets["sd15"]._convert_ip_adapter_image_proj_to_diffusers(sd["image_proj"], low_cpu_mem_usage=False)
    with torch.no_grad():
        out = project(gen.VARIANTS[variant], proj, gen.resolve_dims(variant), batch=1)
    assert out.shape[-1] == 768 and torch.isfinite(out).all()


def test_explicit_widths_load_into_diffusers():
    """A reduced-channel SDXL topology with 32/64 widths (block_out (16, 32, 64)) and cross 128."""
    unet = sdxl_unet(block_out=(16, 32, 64))
    widths = [32] * 4 + [64] * 50 + [32] * 6 + [64] * 10
    sd = gen.make_state_dict("faceid-plusv2_sdxl", widths=widths, cross_dim=128, scale="tiny", dtype=torch.float32)
    check_against_unet(unet, sd["ip_adapter"])
    unet._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)


# files


def test_bytes_are_deterministic(tmp_path):
    for fmt in ("safetensors", "bin"):
        a = gen.write_checkpoint(gen.make_state_dict("faceid-plus_sd15", scale="tiny"), tmp_path / f"a.{fmt}")
        b = gen.write_checkpoint(gen.make_state_dict("faceid-plus_sd15", scale="tiny"), tmp_path / f"b.{fmt}")
        c = gen.write_checkpoint(gen.make_state_dict("faceid-plus_sd15", scale="tiny", seed=1), tmp_path / f"c.{fmt}")
        assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_key_styles(tmp_path):
    sd = gen.make_state_dict("faceid_sd15", scale="tiny")
    st = gen.write_checkpoint(sd, tmp_path / "x.safetensors", key_style="adapter_modules")
    with safe_open(st, "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"image_proj", "adapter_modules"}
    loaded = torch.load(gen.write_checkpoint(sd, tmp_path / "x.bin"), weights_only=True)
    assert set(loaded) == {"image_proj", "ip_adapter"}
    assert all(torch.equal(loaded["ip_adapter"][k], t) for k, t in sd["ip_adapter"].items())
    kolors = gen.ensure_checkpoint("kolors_faceid_plus", tmp_path, fmt="bin", scale="tiny")
    assert kolors.name == "ipa-faceid-plus.bin"
    assert set(torch.load(kolors, weights_only=True)) == {"image_proj", "adapter_modules"}
    with pytest.raises(ValueError, match="suffix"):
        gen.write_checkpoint(sd, tmp_path / "x.ckpt")


def test_ensure_checkpoint_caches(tmp_path):
    path = gen.ensure_checkpoint("plus_sd15", tmp_path, scale="tiny")
    mtime = path.stat().st_mtime_ns
    assert gen.ensure_checkpoint("plus_sd15", tmp_path, scale="tiny") == path and path.stat().st_mtime_ns == mtime
    gen.ensure_checkpoint("plus_sd15", tmp_path, scale="tiny", seed=0, dtype=torch.float16)  # same, spelt out
    assert path.stat().st_mtime_ns == mtime
    gen.ensure_checkpoint("plus_sd15", tmp_path, scale="tiny", seed=3)  # other arguments: regenerated
    assert not torch.equal(load_file(path)["image_proj.latents"], gen.make_state_dict(
        "plus_sd15", scale="tiny")["image_proj"]["latents"])
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["ip-adapter-plus_sd15.safetensors"] and not list(tmp_path.glob(".*.tmp"))
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli(tmp_path):
    gen.main(["--out", str(tmp_path), "--variants", "sd15", "faceid_sdxl", "--scale", "tiny", "--fmt", "bin"])
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == ["ip-adapter-faceid_sdxl.bin", "ip-adapter_sd15.bin"]


@pytest.mark.slow
@pytest.mark.parametrize("variant,fmt,size_mb", [("plus_sd15", "safetensors", 98.2),
                                                 ("plus_sdxl_vit-h", "safetensors", 847.5),
                                                 ("faceid_sd15", "bin", 96.7)])
def test_full_size_round_trip(variant, fmt, size_mb):
    """A real-size file per family, cached under .cache/; its bytes reload to a freshly generated state dict."""
    path = gen.ensure_checkpoint(variant, CACHE, fmt=fmt)
    assert abs(path.stat().st_size / 1e6 - size_mb) < 0.1
    fresh = gen.make_state_dict(variant)
    if fmt == "bin":
        loaded = torch.load(path, weights_only=True)
    else:
        flat = load_file(path)
        loaded = {g: {k.split(".", 1)[1]: t for k, t in flat.items() if k.startswith(g + ".")} for g in fresh}
    assert set(loaded) == set(fresh)
    for g in fresh:
        assert set(loaded[g]) == set(fresh[g])
        assert all(loaded[g][k].dtype == torch.float16 and torch.equal(loaded[g][k], t) for k, t in fresh[g].items())
