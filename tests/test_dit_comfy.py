"""Flux image prompts on ComfyUI's own Flux model, against diffusers.

A tiny diffusers `FluxTransformer2DModel` (2 heads of 128, the real RoPE axes) is converted to ComfyUI's layout
with ComfyUI's own converter and loaded into ComfyUI's Flux class; the XLabs adapter file is applied through the
pack's Model Loader and Apply nodes (with a tiny ComfyUI CLIP vision model), and the patched ComfyUI model's
output is compared with the diffusers transformer carrying the same adapter through diffusers' own loader.

The 2024 test host has no Flux hooks (`patches_replace["dit"]`, `optimized_attention_override`), so these tests
run only against a current ComfyUI (IPAKIT_COMFYUI=<folder>).
"""

from __future__ import annotations

import json

import pytest
import torch
from einops import rearrange
from test_dit_xlabs import _Host

from dev.standins.dit_xlabs import write_xlabs

TOL = 1e-4
HIDDEN, HEADS, CONTEXT, VEC, EMBED = 256, 2, 32, 16, 24
SUBDIR = "ipakit-dit-tiny"


def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module


def diffusers_flux(seed=0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=1, attention_head_dim=HIDDEN // HEADS,
        num_attention_heads=HEADS, joint_attention_dim=CONTEXT, pooled_projection_dim=VEC, guidance_embeds=False,
        axes_dims_rope=(16, 56, 56),
    )
    return perturb(model, seed).eval()


def comfy_flux(reference):
    """ComfyUI's Flux class at the reference's widths, loaded with its weights through ComfyUI's converter."""
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.FluxSchnell({
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": VEC,
        "context_in_dim": CONTEXT, "hidden_size": HIDDEN, "mlp_ratio": 4.0, "num_heads": HEADS, "depth": 2,
        "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": False,
    })
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    sd = {k: v.clone() for k, v in reference.state_dict().items()}  # the converter rewrites some tensors in place
    sd = comfy.model_detection.convert_diffusers_mmdit(sd, "")
    missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def tiny_clip_l(folder):
    """A tiny ComfyUI CLIP vision model with projected image_embeds of the XLabs stand-in's width."""
    import comfy.clip_vision

    config = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 224,
              "intermediate_size": 64, "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
              "num_channels": 3, "num_hidden_layers": 2, "patch_size": 32, "projection_dim": EMBED}
    path = folder / "tiny_clip_l.json"
    path.write_text(json.dumps(config))
    cv = comfy.clip_vision.ClipVisionModel(str(path))
    perturb(cv.model, 11)
    return cv


@pytest.fixture(scope="module")
def clip_vision(dit_host, tmp_path_factory):
    return tiny_clip_l(tmp_path_factory.mktemp("clipv"))


def write_xlabs_tiny(models_dir):
    return write_xlabs(models_dir / "ipadapter" / SUBDIR / "xlabs-tiny.safetensors", seed=4, tokens=4,
                       embed_dim=EMBED, width=CONTEXT, inner=HIDDEN, blocks=2)


@pytest.fixture(scope="module")
def xlabs_file(dit_host, models_dir):
    return write_xlabs_tiny(models_dir)


def inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(batch, 16, 8, 8, generator=g), "t": torch.tensor([0.7] * batch),
            "context": torch.randn(batch, 5, CONTEXT, generator=g), "y": torch.randn(batch, VEC, generator=g)}


def run_comfy(patcher, x, cond_or_uncond=(0, 1)):
    to = dict(patcher.model_options["transformer_options"])
    to.update(cond_or_uncond=list(cond_or_uncond), sigmas=x["t"])
    with torch.no_grad():
        return patcher.model.diffusion_model(x["x"], x["t"], x["context"], y=x["y"], transformer_options=to)


def run_diffusers(model, x, ip_embeds=None):
    """The diffusers transformer on the same inputs; ip_embeds (rows, width) for one reference per row, or (rows,
    images, width) for several."""
    b, _, h, w = x["x"].shape
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    if ip_embeds is not None and ip_embeds.ndim == 2:
        ip_embeds = ip_embeds[:, None]
    kwargs = {} if ip_embeds is None else {"joint_attention_kwargs": {"ip_adapter_image_embeds": [ip_embeds]}}
    with torch.no_grad():
        out = model(
            hidden_states=rearrange(x["x"], "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2),
            encoder_hidden_states=x["context"], pooled_projections=x["y"], timestep=x["t"],
            img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(x["context"].shape[1], 3), **kwargs,
        ).sample
    return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, ph=2, pw=2)


def reference_with(xlabs_file, scales):
    ref = diffusers_flux()
    _Host(ref).load_ip_adapter(str(xlabs_file.parent), weight_name=xlabs_file.name,
                               image_encoder_pretrained_model_name_or_path=None)
    procs = [p for name, p in ref.attn_processors.items() if name.startswith("transformer_blocks.")]
    for proc, scale in zip(procs, scales):
        proc.scale = [scale]
    return ref


def apply(dit_host, patcher, image, clip_vision, **options):
    bundle = dit_host.run("IPAKitModelLoader", ipadapter_file=f"{SUBDIR}/xlabs-tiny.safetensors")[0]
    settings = {"weight": 0.8, "start_at": 0.0, "end_at": 1.0, "weight_type": "linear", "combine_embeds": "concat",
                "embeds_scaling": "V only", **options}
    return dit_host.run("IPAKitApply", model=patcher, ipadapter=bundle, image=image, clip_vision=clip_vision, **settings)[0]


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))


def test_loader_detects_the_xlabs_file(dit_host, xlabs_file):
    bundle = dit_host.run("IPAKitModelLoader", ipadapter_file=f"{SUBDIR}/xlabs-tiny.safetensors")[0]
    assert bundle.adapter.format.value == "XLabs Flux"
    assert "Flux" in bundle.adapter.describe()


def test_patched_comfy_flux_matches_diffusers(dit_host, xlabs_file, clip_vision, image):
    reference = diffusers_flux()
    patcher = comfy_flux(reference)
    x = inputs()
    plain = run_comfy(patcher, x)
    torch.testing.assert_close(plain, run_diffusers(reference, x), atol=TOL, rtol=0)  # the same model on both sides

    patched = apply(dit_host, patcher, image, clip_vision)
    assert "dit" in patched.model_options["transformer_options"]["patches_replace"]
    assert "patches_replace" not in patcher.model_options["transformer_options"]  # the input model is untouched
    embeds = clip_vision.encode_image(image)["image_embeds"].float()
    ip = torch.cat([embeds, torch.zeros_like(embeds)])  # row 0 positive (cond 0), row 1 negative (uncond 1)
    expected = run_diffusers(reference_with(xlabs_file, [0.8, 0.8]), x, ip)
    got = run_comfy(patched, x)
    assert (got - plain).abs().max() > 1e-2
    assert (got - expected).abs().max() <= TOL
    assert torch.equal(run_comfy(patcher, x), plain)  # nothing leaked into the unpatched model


def test_block_weights_and_chaining(dit_host, xlabs_file, clip_vision, image):
    reference = diffusers_flux()
    patcher = comfy_flux(reference)
    x = inputs()
    embeds = clip_vision.encode_image(image)["image_embeds"].float()
    ip = torch.cat([embeds, torch.zeros_like(embeds)])
    got = run_comfy(apply(dit_host, patcher, image, clip_vision, block_weights="1:0.5"), x)
    expected = run_diffusers(reference_with(xlabs_file, [0.0, 0.4]), x, ip)
    assert (got - expected).abs().max() <= TOL
    twice = apply(dit_host, apply(dit_host, patcher, image, clip_vision, weight=0.5), image, clip_vision, weight=0.3)
    once = run_comfy(apply(dit_host, patcher, image, clip_vision, weight=0.8), x)
    assert (run_comfy(twice, x) - once).abs().max() <= 1e-5


def test_weight_zero_and_outside_start_end_change_nothing(dit_host, xlabs_file, clip_vision, image):
    patcher = comfy_flux(diffusers_flux())
    x = inputs()
    plain = run_comfy(patcher, x)
    assert apply(dit_host, patcher, image, clip_vision, weight=0.0) is patcher
    late = apply(dit_host, patcher, image, clip_vision, start_at=0.5, end_at=1.0)  # sigma 0.7 is before 50 % on Flux
    assert torch.equal(run_comfy(late, x), plain)
    early = apply(dit_host, patcher, image, clip_vision, start_at=0.0, end_at=0.5)
    assert not torch.equal(run_comfy(early, x), plain)


def test_a_foreign_block_patch_keeps_running_inside_ours(dit_host, xlabs_file, clip_vision, image):
    patcher = comfy_flux(diffusers_flux()).clone()
    calls = []

    def foreign(args, extra):
        calls.append(1)
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.0, "txt": out["txt"]}

    patcher.set_model_patch_replace(foreign, "dit", "double_block", 0)
    x = inputs()
    alone = run_comfy(patcher, x)
    run_comfy(apply(dit_host, patcher, image, clip_vision), x)
    assert len(calls) == 2  # once alone, once inside our patch
    assert torch.equal(run_comfy(patcher, x), alone)


def test_wrong_model_and_options_are_clear_errors(dit_host, xlabs_file, clip_vision, image, sd15_checkpoint):
    sd15 = sd15_checkpoint[0]
    with pytest.raises(Exception, match="for Flux models; this model is"):
        apply(dit_host, sd15, image, clip_vision)
    patcher = comfy_flux(diffusers_flux())
    with pytest.raises(Exception, match="weight_type 'style transfer'"):
        apply(dit_host, patcher, image, clip_vision, weight_type="style transfer")
    with pytest.raises(Exception, match="block 7 does not exist"):
        apply(dit_host, patcher, image, clip_vision, block_weights="7:1")


def run_apply_model(patcher, x, cond_or_uncond=(0, 1)):
    """Through BaseModel.apply_model, with the patcher's wrappers, as a sampler calls the model."""
    to = dict(patcher.model_options["transformer_options"])
    to.update(cond_or_uncond=list(cond_or_uncond), sigmas=x["t"], wrappers=dict(patcher.wrappers))
    with torch.no_grad():
        return patcher.model.apply_model(x["x"], x["t"], c_crossattn=x["context"], y=x["y"], transformer_options=to)


def check_masks(apply_masked, patcher, x, run=run_apply_model):
    """A mask of ones acts as no mask, a mask of zeros as no image prompt, a half mask as neither."""
    plain = run(patcher, x)
    full = run(apply_masked(None), x)
    h, w = x["x"].shape[-2:]
    ones, zeros, half = torch.ones(1, 8 * h, 8 * w), torch.zeros(1, 8 * h, 8 * w), torch.zeros(1, 8 * h, 8 * w)
    half[:, :, : 4 * w] = 1.0
    assert torch.equal(run(apply_masked(ones), x), full)
    assert torch.equal(run(apply_masked(zeros), x), plain)
    masked = run(apply_masked(half), x)
    assert (masked - plain).abs().max() > 1e-3 and (masked - full).abs().max() > 1e-3
    with pytest.raises(Exception, match="a batch of attn_masks"):
        apply_masked(torch.ones(2, 8 * h, 8 * w))


def test_xlabs_mask(dit_host, xlabs_file, clip_vision, image):
    patcher = comfy_flux(diffusers_flux())
    check_masks(lambda m: apply(dit_host, patcher, image, clip_vision, **({} if m is None else {"attn_mask": m})),
                patcher, inputs())


def test_mask_rows_of_a_flux_single_block(dit_host):
    """Single blocks attend over text and image rows: a mask keeps the text rows out and lays the mask over the
    latent's own tokens (reference latents appended after them get 0)."""
    import importlib

    dit = importlib.import_module(f"{dit_host.pack.__name__}.nodes._dit")
    patch = dit.DitBlockPatch(dit.FLUX, "single_block", ())
    call = dit._Call(patch, {}, {dit.LATENT_INFO: {"hw": (8, 6), "txt": 5}})
    mask = torch.zeros(16, 12)
    mask[:8] = 1.0  # the top half
    rows = 5 + 4 * 3 + 7  # text, the latent's 4 x 3 tokens, 7 tokens of a reference latent
    weights = call.mask_weights(mask, torch.zeros(2, rows, 4))[0, :, 0]
    assert weights.shape == (rows,)
    assert torch.equal(weights[:5], torch.zeros(5)) and torch.equal(weights[17:], torch.zeros(7))
    assert torch.equal(weights[5:17], torch.tensor([1.0] * 6 + [0.0] * 6))


def test_sd_nodes_and_dit_models_refuse_each_other_clearly(dit_host, xlabs_file, clip_vision, image, ipadapter_file):
    sd15_adapter = ipadapter_file("sd15")
    bundle = dit_host.run("IPAKitModelLoader", ipadapter_file=sd15_adapter.name)[0]
    flux = comfy_flux(diffusers_flux())
    with pytest.raises(Exception, match="not an SD1.5/SDXL UNet"):
        dit_host.run("IPAKitApply", model=flux, ipadapter=bundle, image=image, clip_vision=clip_vision, weight=0.8,
                     start_at=0.0, end_at=1.0, weight_type="linear", combine_embeds="concat", embeds_scaling="V only")
    dit = dit_host.run("IPAKitModelLoader", ipadapter_file=f"{SUBDIR}/xlabs-tiny.safetensors")[0]
    with pytest.raises(Exception, match="Encode takes no mask for it"):
        dit_host.run("IPAKitEncode", ipadapter=dit, image=image, clip_vision=clip_vision, mask=torch.ones(1, 64, 64))
    with pytest.raises(Exception, match="UNet-only nodes cannot patch it"):
        dit_host.run("IPAKitApplyTiled", model=flux, ipadapter=dit, image=image, clip_vision=clip_vision, weight=0.8,
                     weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0, sharpening=0.0,
                     embeds_scaling="V only")


def test_a_block_that_hides_its_attention_stops_with_a_clear_error(dit_host, xlabs_file, clip_vision, image):
    """A host block that no longer passes transformer_options to its attention (here: another pack's entry that
    drops them) cannot take the image prompt: the run stops and says so, instead of computing something else."""
    patcher = comfy_flux(diffusers_flux()).clone()

    def drops_options(args, extra):
        return extra["original_block"]({**args, "transformer_options": {}})

    patcher.set_model_patch_replace(drops_options, "dit", "double_block", 1)
    patched = apply(dit_host, patcher, image, clip_vision)
    with pytest.raises(RuntimeError, match="did not call attention with its transformer_options.*update ComfyUI"):
        run_comfy(patched, inputs())


def test_two_references_match_diffusers_with_two_images(dit_host, xlabs_file, clip_vision):
    """Several references: their tokens side by side in one attention, as diffusers does with several images."""
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(9))
    reference = diffusers_flux()
    patcher = comfy_flux(reference)
    x = inputs()
    got = run_comfy(apply(dit_host, patcher, images, clip_vision), x)
    embeds = clip_vision.encode_image(images)["image_embeds"].float()  # (2, EMBED)
    ip = torch.stack([embeds, torch.zeros_like(embeds)])  # (rows, images, EMBED): positive row, negative row
    expected = run_diffusers(reference_with(xlabs_file, [0.8, 0.8]), x, ip)
    assert (got - expected).abs().max() <= TOL
    single = run_comfy(apply(dit_host, patcher, images[:1], clip_vision), x)
    assert (got - single).abs().max() > 1e-5  # the tiny random CLIP encodes different images alike: small, not 0

