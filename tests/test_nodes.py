"""The node layer on the real (2024) ComfyUI, in process, with the full-architecture random SD1.5 checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch

import _host
from _pipe import APPLY
from dev.host.torch_probes import attn2_patches
from dev.standins import names
from dev.standins.comfy_models import SDXL_SMALL_WIDTHS

# registration and documentation


CORE_TYPES = ("MODEL", "IMAGE", "MASK", "CLIP_VISION", "CONDITIONING", "FLOAT", "INT", "STRING", "BOOLEAN")  # ComfyUI's own sockets


def test_every_node_is_prefixed_and_documented(comfy):
    pack = comfy.pack
    assert pack.NODE_CLASS_MAPPINGS and set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("IPAKit") or node_id in pack.LEGACY_NODES, node_id  # the older pack's ids: compat only
        assert comfy.NODE_CLASS_MAPPINGS[node_id] is cls
        assert cls.CATEGORY.startswith("ipadapter_kit"), node_id
        assert len(cls.DESCRIPTION) > 40, node_id
        assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES), node_id
        for rtype in cls.RETURN_TYPES:
            assert rtype in CORE_TYPES or rtype.startswith("IPAKIT_"), (node_id, rtype)
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, (kind, *opts) in spec.get(group, {}).items():
                assert opts and opts[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
                if isinstance(kind, str) and kind not in CORE_TYPES:
                    assert kind.startswith("IPAKIT_"), (node_id, name, kind)


def test_block_weights_are_validated_at_queue_time(comfy):
    cls = comfy.NODE_CLASS_MAPPINGS["IPAKitApply"]
    assert cls.VALIDATE_INPUTS(block_weights="") is True
    assert cls.VALIDATE_INPUTS(block_weights='{"up": {"block_0": [0.0, 1.0, 0.0]}}') is True
    assert cls.VALIDATE_INPUTS(block_weights="15:1") is True  # an SD1.5 layer
    message = cls.VALIDATE_INPUTS(block_weights="3:x")
    assert isinstance(message, str) and "cannot read '3:x'" in message


# patching


def test_patches_all_16_layers_with_the_middle_block_and_leave_the_input_model_alone(pipe):
    before = copy.deepcopy(pipe.model.model_options)
    patched = pipe.apply()
    keys = attn2_patches(patched)
    assert len(keys) == 16 and ("middle", 0, 0) in keys
    assert pipe.model.model_options == before and attn2_patches(pipe.model) == {}


def test_weight_zero_returns_the_model_itself(pipe):
    assert pipe.apply(weight=0.0) is pipe.model
    assert pipe.apply(weight_type="style transfer", block_weights="7:1, 8:1") is pipe.model  # no layer left with a weight


def test_chained_adapters_stack_copy_on_write(pipe):
    one = pipe.apply()
    two = pipe.apply(model=one, adapter=pipe.base, image=torch.rand(1, 224, 224, 3))
    key = ("middle", 0, 0)
    assert attn2_patches(one)[key].plan.num_tokens == 16  # the first model did not change
    assert attn2_patches(two)[key].plan.num_tokens == 16 + 4
    e0, e1, e2 = pipe.eps(pipe.model), pipe.eps(one), pipe.eps(two)
    assert (e1 - e0).abs().max() > 1e-2 and (e2 - e1).abs().max() > 1e-2


def test_two_regions_from_two_apply_nodes(pipe):
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1
    one = pipe.apply(attn_mask=left)
    two = pipe.apply(model=one, image=torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(9)), attn_mask=1 - left)
    key = ("input", 1, 0)
    patch_one, patch_two = attn2_patches(one)[key], attn2_patches(two)[key]
    assert len(patch_two.plan.segments) == 2 and all(s.mask is not None for s in patch_two.plan.segments)
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 64, 320, generator=g), torch.randn(2, 77, 320, generator=g), torch.randn(2, 77, 320, generator=g)
    extra = {"n_heads": 8, "dim_head": 40, "cond_or_uncond": [1, 0], "original_shape": [2, 4, 8, 8], "sigmas": torch.ones(1)}
    with torch.inference_mode():
        delta = (patch_two(q, k, v, extra) - patch_one(q, k, v, extra)).view(2, 8, 8, 320)
    assert delta[:, :, :4].abs().max() < 1e-5  # the second image acts only where its mask is white
    assert delta[:, :, 4:].abs().amin(dim=(0, 1, 3)).min() > 0


def test_clone_shares_patches_and_to_returns_patch_objects(pipe):
    patched = pipe.apply()
    clone = patched.clone()
    a, b = attn2_patches(patched), attn2_patches(clone)
    assert all(a[k] is not b[k] and a[k].plan is b[k].plan and a[k].base is b[k].base for k in a)  # no adapter data copied
    patch = a[("input", 1, 0)]
    assert patch.to(torch.device("cpu")) is patch
    half = patch.to(torch.float16)
    assert half is not patch and half.plan.k.dtype == torch.float16 and patch.plan.k.dtype == torch.float32
    assert patch.to(torch.float8_e4m3fn) is patch


def test_foreign_attn2_patches_are_wrapped_and_still_run(pipe):
    calls = {"two": 0, "three": 0}

    def foreign(name, shift):
        def fn(q, k, v, extra_options):
            from comfy.ldm.modules.attention import optimized_attention

            calls[name] += 1
            return optimized_attention(q, k, v, extra_options["n_heads"]) + shift

        return fn

    host = pipe.model.clone()
    host.set_model_attn2_replace(foreign("two", 0.5), "input", 1)  # a 2-tuple key, as SD1.5 packs register
    host.set_model_attn2_replace(foreign("three", -0.25), "output", 3, 0)
    base = pipe.eps(host)
    assert calls == {"two": 1, "three": 1}
    patched = pipe.apply(model=host)
    out = pipe.eps(patched)
    assert calls == {"two": 2, "three": 2}  # both foreign patches ran inside ours
    assert attn2_patches(patched)[("input", 1, 0)].base is not None
    assert (out - base).abs().max() > 1e-2
    # ours added the image term on top of the foreign output: without the shifts the result differs
    plain_ours = pipe.eps(pipe.apply())
    assert (out - plain_ours).abs().max() > 1e-3


@pytest.mark.parametrize("rows", [(0,), (1, 0), (0, 1), (0, 0, 1)])
def test_any_cond_or_uncond_order(pipe, rows):
    patched = pipe.apply()
    out = pipe.eps(patched, rows=rows, batch=2)
    assert out.shape == (2 * len(rows), 4, 8, 8) and torch.isfinite(out).all()
    # the positive chunks agree whatever their position: same input noise where the rows say cond
    if rows == (1, 0):
        ref = pipe.eps(patched, rows=(0, 1), batch=2)
        assert not torch.equal(out, ref)


def test_start_end_gate_on_sigmas(pipe):
    import comfy.model_management  # noqa: F401

    sampling = pipe.model.model.model_sampling
    patched = pipe.apply(start_at=0.5, end_at=1.0)
    s_start = float(sampling.percent_to_sigma(0.5))
    early = pipe.eps(patched, sigma=s_start * 2)  # before start_at: the image prompt is off
    late = pipe.eps(patched, sigma=s_start / 2)
    plain_early = pipe.eps(pipe.model, sigma=s_start * 2)
    assert torch.equal(early, plain_early)
    assert (late - pipe.eps(pipe.model, sigma=s_start / 2)).abs().max() > 1e-2


def test_non_square_latents_and_masks(pipe):
    mask = torch.zeros(1, 72, 104)
    mask[:, :, :52] = 1
    patched = pipe.apply(attn_mask=mask)
    out = pipe.eps(patched, hw=(9, 13))
    assert out.shape == (2, 4, 9, 13) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="3 masks for 1 reference"):
        pipe.apply(attn_mask=torch.ones(3, 64, 64))


# whole sampling runs


def test_ksampler_with_apply_writes_an_image_and_weight_zero_is_bit_identical(pipe, comfy):
    plain = pipe.sample(pipe.model)
    patched = pipe.sample(pipe.apply())
    assert (patched - plain).abs().max() > 1e-3
    assert torch.equal(pipe.sample(pipe.apply(weight=0.0)), plain)
    assert torch.equal(pipe.sample(pipe.model), plain)  # using the adapter left the base model untouched
    image = comfy.outputs("VAEDecode", samples={"samples": patched}, vae=pipe.vae)[0]
    saved = comfy.run("SaveImage", images=image, filename_prefix="ipakit_nodes")
    files = list((comfy.output_dir / "output").glob("ipakit_nodes_*.png"))
    assert saved["ui"]["images"] and files and _host.png_size(files[0]) == (64, 64)


def test_cfg_one_batches_and_non_square(pipe):
    patched = pipe.apply()
    assert pipe.sample(patched, cfg=1.0).shape == (1, 4, 8, 8)
    assert pipe.sample(patched, latent=pipe.latent(batch=2)).shape == (2, 4, 8, 8)
    assert pipe.sample(patched, latent=pipe.latent(w=64, h=96)).shape == (1, 4, 12, 8)


def test_img2img_inpainting_and_controlnet(pipe, comfy):
    patched = pipe.apply()
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    encoded = comfy.outputs("VAEEncode", pixels=pixels, vae=pipe.vae)[0]
    assert pipe.sample(patched, latent=encoded, denoise=0.5).shape == (1, 4, 8, 8)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    inpaint = comfy.outputs("VAEEncodeForInpaint", pixels=pixels, vae=pipe.vae, mask=mask, grow_mask_by=0)[0]
    assert pipe.sample(patched, latent=inpaint).shape == (1, 4, 8, 8)
    controlnet = comfy.outputs("ControlNetLoader", control_net_name=names.CONTROLNET_SD15)[0]
    positive = comfy.outputs("ControlNetApply", conditioning=pipe.pos, control_net=controlnet, image=pixels, strength=0.8)[0]
    with_cn = pipe.sample(patched, positive=positive)
    assert with_cn.shape == (1, 4, 8, 8) and not torch.equal(with_cn, pipe.sample(patched))


# loaders and errors


def test_one_resident_copy_per_file(pipe, comfy):
    again = comfy.outputs("IPAKitModelLoader", ipadapter_file="ip-adapter-plus_sd15.safetensors")[0]
    assert again.adapter is pipe.plus.adapter


def test_wrong_model_family_and_wrong_encoder_errors(pipe, comfy, models_dir):
    sdxl = _host.ensure_ipadapter("sdxl_vit-h", models_dir, subdir=names.SDXL_SMALL_SUBDIR, widths=SDXL_SMALL_WIDTHS)
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=f"{names.SDXL_SMALL_SUBDIR}/{sdxl.name}")[0]
    with pytest.raises(ValueError, match=r"adapter for SDXL \(70 cross-attention layers.*but the model is SD1.5"):
        pipe.apply(adapter=adapter)
    vitg = _host.ensure_ipadapter("sd15_vit-G", models_dir)
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=vitg.name)[0]
    with pytest.raises(ValueError, match=r"reads CLIP image_embeds 1280 wide \(ViT-bigG-14\).*gives 1024.*CLIP-ViT-bigG-14"):
        pipe.apply(adapter=adapter)
    with pytest.raises(FileNotFoundError, match="'nope.safetensors' was not found in the ipadapter folders"):
        comfy.outputs("IPAKitModelLoader", ipadapter_file="nope.safetensors")
    no_clip = dict(APPLY)
    with pytest.raises(ValueError, match="needs a CLIP vision model"):
        comfy.outputs("IPAKitApply", model=pipe.model, ipadapter=pipe.plus, image=pipe.image, **no_clip)


def test_unified_loader_finds_renamed_files_and_explains_misses(pipe, comfy, models_dir, tmp_path):
    model, adapter, clip_vision = comfy.outputs("IPAKitUnifiedLoader", model=pipe.model, preset="plus (high strength)")
    assert model is pipe.model and adapter.name == "ip-adapter-plus_sd15.safetensors" and adapter.clip_vision is clip_vision
    applied = comfy.outputs("IPAKitApply", model=pipe.model, ipadapter=adapter, image=pipe.image, **APPLY)[0]  # no clip_vision input
    assert len(attn2_patches(applied)) == 16
    import folder_paths

    extra = tmp_path / "ipadapter-extra"
    (extra / "SD1.5").mkdir(parents=True)
    source = _host.ensure_ipadapter("sd15_light", models_dir, subdir="ipakit-light")
    (extra / "SD1.5" / "IP_Adapter-SD15.Light.V11.safetensors").symlink_to(source)
    saved = folder_paths.folder_names_and_paths["ipadapter"]
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(extra)], saved[1])  # only this folder, for a sure miss
    folder_paths.filename_list_cache.clear()
    try:
        _, light, _ = comfy.outputs("IPAKitUnifiedLoader", model=pipe.model, preset="light - SD1.5 only (low strength)")
        assert light.name == "IP_Adapter-SD15.Light.V11.safetensors"
        with pytest.raises(FileNotFoundError) as info:
            comfy.outputs("IPAKitUnifiedLoader", model=pipe.model, preset="composition")
        message = str(info.value)
        assert "ip_plus_composition_sd15" in message and str(extra) in message and "Accepted names" in message
    finally:
        folder_paths.folder_names_and_paths["ipadapter"] = saved
        folder_paths.filename_list_cache.clear()


# embeds and images


def test_encode_save_load_apply_embeds_equals_apply(pipe, comfy):
    embeds = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=pipe.image, clip_vision=pipe.clip_vision)[0]
    ui = comfy.run("IPAKitSaveEmbeds", embeds=embeds, filename_prefix="ipakit_test/embeds")
    saved = ui["ui"]["embeds"][0]
    name = f"{saved['subfolder']}/{saved['filename']} [output]"
    listed = comfy.NODE_CLASS_MAPPINGS["IPAKitLoadEmbeds"].INPUT_TYPES()["required"]["embeds"][0]
    assert name in listed
    loaded = comfy.outputs("IPAKitLoadEmbeds", embeds=name)[0]
    from_embeds = comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.plus, embeds=loaded, **APPLY)[0]
    direct = pipe.apply()
    assert torch.equal(pipe.eps(from_embeds), pipe.eps(direct))
    with pytest.raises(ValueError, match="do not fit the adapter"):
        comfy.outputs("IPAKitApplyEmbeds", model=pipe.model, ipadapter=pipe.base, embeds=loaded, **APPLY)


def test_combine_embeds_node(pipe, comfy):
    a = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=pipe.image, clip_vision=pipe.clip_vision)[0]
    b = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=torch.rand(2, 224, 224, 3), clip_vision=pipe.clip_vision)[0]
    both = comfy.outputs("IPAKitCombineEmbeds", embeds1=a, method="concat", embeds2=b)[0]
    avg = comfy.outputs("IPAKitCombineEmbeds", embeds1=a, method="average", embeds2=b)[0]
    assert both.count == 3 and avg.count == 1
    assert torch.allclose(avg.cond["clip"][0], both.cond["clip"].mean(0), atol=1e-5)


def test_prep_image_node(comfy):
    out = comfy.outputs("IPAKitPrepImage", image=torch.rand(2, 300, 500, 4), interpolation="LANCZOS", crop_position="pad", sharpening=0.3, size=336)[0]
    assert out.shape == (2, 336, 336, 3)
