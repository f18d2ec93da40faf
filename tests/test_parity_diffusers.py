"""Parity with diffusers: same random weights, same tokens, same UNet output (max |diff| <= 1e-4, fp32 CPU).

The UNets are tiny but have the real attention topology (SD1.5: 16 cross-attention layers; SDXL: 70,
middle block included). The core side loads the adapter file through the real loading code and drives
the UNet through `CoreAttnProcessor`; the diffusers side loads the same tensors with its own converter.
"""

import json

import pytest
import torch

import ipadapter_core as core
from _reference import diffusers_with_adapter, drive_with_core, set_scale, tiny_unet, topology_of, unet_inputs
from dev.standins.ipadapter import make_state_dict, write_checkpoint

TOL = 1e-4
ROWS = (1, 0)  # batch element 0 is the negative (CFG uncond), element 1 the positive, as diffusers orders them


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def unet(request):
    return tiny_unet(request.param, seed=3)


VARIANTS = {
    "sd15": ("sd15", "plus_sd15", "full-face_sd15", "faceid_sd15", "faceid-plusv2_sd15"),
    "sdxl": ("sdxl_vit-h", "plus_sdxl_vit-h", "full-face_sd15", "faceid_sdxl", "faceid-plusv2_sdxl"),
}


def adapter_for(variant, unet, tmp_path, seed=7):
    topo = topology_of(unet)
    nested = make_state_dict(
        variant, scale="tiny", widths=topo.widths_checkpoint_order, cross_dim=unet.config.cross_attention_dim, seed=seed, dtype=torch.float32
    )
    path = write_checkpoint(nested, tmp_path / f"{variant.replace('_sd15', '').replace('_sdxl', '')}_{seed}.safetensors")
    if "plusv2" in variant:
        path = path.rename(path.with_name("ip-adapter-faceid-plusv2_test.safetensors"))
    return topo, nested, core.load_adapter(path)


def features(spec, n_img=1, seed=0):
    """Random encoder features for n_img references: positive and a different negative."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    if spec.kind.uses_clip:
        shape = (n_img, spec.clip_dim) if spec.clip_output is core.ClipOutput.IMAGE_EMBEDS else (n_img, 257, spec.clip_dim)
        out["clip"] = (torch.randn(*shape, generator=g), torch.randn(*shape, generator=g))
    if spec.kind.uses_face:
        face = torch.nn.functional.normalize(torch.randn(n_img, 512, generator=g), dim=-1)
        out["face"] = (face, torch.zeros_like(face))
    return out


def diffusers_call(ref, spec, feats, inputs, shortcut_scale=1.0, masks=None):
    """Run diffusers with [negative, positive] embeds, as its pipelines batch them for CFG."""

    def both(name):
        pos, neg = feats[name]
        return torch.stack([neg, pos])  # [2, n_img, ...]

    if spec.kind.uses_face:
        emb = both("face")
        layer = ref.encoder_hid_proj.image_projection_layers[0]
        if "clip" in feats:
            layer.clip_embeds = both("clip")
            layer.shortcut = spec.shortcut
            layer.shortcut_scale = shortcut_scale
    else:
        emb = both("clip")
    kwargs = dict(inputs)
    kwargs["added_cond_kwargs"] = dict(inputs.get("added_cond_kwargs", {}), image_embeds=[emb])
    if masks is not None:
        kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": [masks[None]]}
    return ref(**kwargs).sample


def core_tokens(adapter, feats, shortcut_scale=1.0):
    pos = {k: v[0] for k, v in feats.items()}
    neg = {k: v[1] for k, v in feats.items()}
    run = lambda f: core.project(adapter.model, clip=f.get("clip"), face=f.get("face"), shortcut_scale=shortcut_scale)  # noqa: E731
    return run(pos), run(neg)


def core_terms(adapter, topo, feats, **settings):
    """The engine's entry point on these features (positive, negative) with `ApplySettings(**settings)`."""
    spec = adapter.spec
    embeds = core.ImageEmbeds(
        cond={k: v[0] for k, v in feats.items()},
        uncond={k: v[1] for k, v in feats.items()},
        clip_encoder=spec.clip_encoder,
        clip_output=spec.clip_output,
        face_normed=spec.face_normed if spec.kind.uses_face else None,
    )
    return core.image_terms(adapter, topo, embeds, core.ApplySettings(**settings))


def latent_hw(inputs):
    return tuple(inputs["sample"].shape[-2:])


@pytest.mark.parametrize("index", range(5))
def test_tokens_and_unet_output_match_diffusers(unet, index, tmp_path):
    family = "sdxl" if unet.config.cross_attention_dim == 128 else "sd15"
    variant = VARIANTS[family][index]
    topo, nested, adapter = adapter_for(variant, unet, tmp_path)
    spec = adapter.spec
    assert spec.num_layers == len(topo.layers)
    shortcut = 1.5
    feats = features(spec, seed=index)
    inputs = unet_inputs(unet)
    with torch.no_grad():
        ref = diffusers_with_adapter(unet, nested, scale=0.8)
        expected = diffusers_call(ref, spec, feats, inputs, shortcut_scale=shortcut)
        cond, uncond = core_tokens(adapter, feats, shortcut)
        # the projection itself matches diffusers' converted projection
        layer = ref.encoder_hid_proj.image_projection_layers[0]
        if spec.kind.uses_face:
            ref_tokens = layer(torch.stack([feats["face"][1], feats["face"][0]]).flatten(0, 1))
        else:
            ref_tokens = layer(torch.stack([feats["clip"][1], feats["clip"][0]]).flatten(0, 1))
        assert (torch.cat([uncond, cond]) - ref_tokens).abs().max() <= TOL
        terms = core_terms(adapter, topo, feats, weight=0.8, weight_faceidv2=shortcut)
        assert len(terms) == len(topo.layers)  # every layer patched, the middle block included
        got = drive_with_core(unet, topo, terms, ROWS, latent_hw(inputs))(**inputs).sample
        plain = unet(**inputs).sample
    assert (got - expected).abs().max() <= TOL
    assert (got - plain).abs().max() > 1e-3  # the adapter really changes the output


def test_weight_zero_reproduces_the_unpatched_unet_exactly(unet, tmp_path):
    variant = "plus_sd15" if unet.config.cross_attention_dim == 64 else "plus_sdxl_vit-h"
    topo, nested, adapter = adapter_for(variant, unet, tmp_path)
    feats = features(adapter.spec)
    inputs = unet_inputs(unet)
    with torch.no_grad():
        terms = core_terms(adapter, topo, feats, weight=0.0)
        assert terms == {}
        plain = unet(**inputs).sample
        driven = drive_with_core(unet, topo, terms, ROWS, latent_hw(inputs))(**inputs).sample
        ref = diffusers_call(diffusers_with_adapter(unet, nested, scale=0.0), adapter.spec, feats, inputs)
    assert torch.equal(driven, plain)
    assert torch.equal(ref, plain)


def test_masks_with_two_images_match_diffusers(unet, tmp_path):
    variant = "plus_sd15" if unet.config.cross_attention_dim == 64 else "plus_sdxl_vit-h"
    topo, nested, adapter = adapter_for(variant, unet, tmp_path)
    feats = features(adapter.spec, n_img=2, seed=5)
    inputs = unet_inputs(unet)
    masks = torch.zeros(2, 64, 64)  # drawn at image resolution (8x the 8x8 latent)
    masks[0, :, :32] = 1
    masks[1, :, 32:] = 1
    with torch.no_grad():
        ref = diffusers_with_adapter(unet, nested, scale=0.9)
        expected = diffusers_call(ref, adapter.spec, feats, inputs, masks=masks)
        terms = core_terms(adapter, topo, feats, weight=0.9, attn_mask=masks)
        got = drive_with_core(unet, topo, terms, ROWS, latent_hw(inputs))(**inputs).sample
        unmasked = core_terms(adapter, topo, feats, weight=0.9)
        concat = drive_with_core(unet, topo, unmasked, ROWS, latent_hw(inputs))(**inputs).sample
    assert (got - expected).abs().max() <= TOL
    assert (got - concat).abs().max() > 1e-3


BLOCK_SCALES = {
    "sd15": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_1": [1.0, 0.0, 0.5]}, "mid": 0.7},
    "sdxl": {"up": {"block_0": [0.0, 1.0, 0.0]}, "down": {"block_2": [0.0, 0.6]}},
}


def test_per_block_scale_matches_set_ip_adapter_scale(unet, tmp_path):
    family = "sdxl" if unet.config.cross_attention_dim == 128 else "sd15"
    topo, nested, adapter = adapter_for("sd15" if family == "sd15" else "sdxl_vit-h", unet, tmp_path)
    feats = features(adapter.spec, seed=9)
    inputs = unet_inputs(unet)
    scale = BLOCK_SCALES[family]
    with torch.no_grad():
        ref = diffusers_with_adapter(unet, nested)
        set_scale(ref, scale)
        expected = diffusers_call(ref, adapter.spec, feats, inputs)
        terms = core_terms(adapter, topo, feats, weight=1.0, block_weights=json.dumps(scale))
        got = drive_with_core(unet, topo, terms, ROWS, latent_hw(inputs))(**inputs).sample
    assert 0 < len(terms) < len(topo.layers)
    assert (got - expected).abs().max() <= TOL
