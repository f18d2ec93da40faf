"""The SigLIP adapters on ComfyUI's own models: InstantX Flux on ComfyUI's Flux class, InstantX SD3.5 on its MMDiT.

Both read a tiny ComfyUI SigLIP CLIP vision model whose file (in models/clip_vision, with SigLIP's pooling head)
the pack finds by its weights. The references: for InstantX Flux, the published formula written out as diffusers
attention processors (tests/test_dit_instantx.py) on a diffusers FluxTransformer2DModel with the same weights as
the ComfyUI model; for SD3.5, diffusers' own SD3 IP-Adapter loader and processors on an SD3Transformer2DModel
converted to ComfyUI by ComfyUI's loader. Current ComfyUI only (IPAKIT_COMFYUI), like tests/test_dit_comfy.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_dit_comfy import (
    CONTEXT,
    HIDDEN,
    SUBDIR,
    TOL,
    check_masks,
    comfy_flux,
    diffusers_flux,
    inputs,
    perturb,
    run_apply_model,
    run_comfy,
    run_diffusers,
    tiny_clip_l,
    write_xlabs_tiny,
)
from test_dit_instantx import PublishedProcessor, PublishedProjection
from torch import nn

from dev.standins import dit_instantx, dit_sd3

SIGLIP = 32  # the tiny SigLIP's width: the pooled embedding and the patch features both adapters read


@pytest.fixture(scope="module")
def siglip(dit_host, models_dir, tmp_path_factory):
    """A tiny ComfyUI SigLIP vision model, and its file with a pooling head in models/clip_vision."""
    import comfy.clip_vision

    config = {"num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": SIGLIP, "image_size": 28,
              "intermediate_size": 64, "model_type": "siglip_vision_model", "num_attention_heads": 2,
              "num_hidden_layers": 3, "patch_size": 14, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    path = tmp_path_factory.mktemp("siglip") / "tiny_siglip.json"
    path.write_text(json.dumps(config))
    cv = comfy.clip_vision.ClipVisionModel(str(path))
    perturb(cv.model, 21)
    g = torch.Generator().manual_seed(22)
    head = {k: 0.2 * torch.randn(s, generator=g) for k, s in dit_instantx.siglip_head_specs(SIGLIP, 64)}
    state = {k: v.contiguous() for k, v in cv.get_sd().items()}
    target = models_dir / "clip_vision" / SUBDIR / "siglip-tiny-with-head.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({**state, **head}, str(target))
    return cv


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 56, 56, 3, generator=torch.Generator().manual_seed(5))


def bundle(dit_host, name):
    return dit_host.run("IPAKitModelLoader", ipadapter_file=f"{SUBDIR}/{name}")[0]


def apply(dit_host, model, name, image, clip_vision, **options):
    settings = {"weight": 0.8, "start_at": 0.0, "end_at": 1.0, "weight_type": "linear", "combine_embeds": "concat",
                "embeds_scaling": "V only", **options}
    return dit_host.run("IPAKitApply", model=model, ipadapter=bundle(dit_host, name), image=image, clip_vision=clip_vision,
                    **settings)[0]


# InstantX Flux


@pytest.fixture(scope="module")
def instantx_file(models_dir):
    widths = {"embed_dim": SIGLIP, "hidden": 2 * SIGLIP, "tokens": 8, "width": CONTEXT, "inner": HIDDEN,
              "double_blocks": 2, "single_blocks": 1}
    path = models_dir / "ipadapter" / SUBDIR / "instantx-flux-tiny.bin"
    return dit_instantx.write_instantx_flux(path, "tiny", 6, **widths), widths


def test_instantx_flux_matches_the_published_formula(dit_host, siglip, instantx_file, image):
    from ipadapter_core.dit import siglip_head

    path, widths = instantx_file
    assert bundle(dit_host, path.name).adapter.format.value == "InstantX Flux"
    reference = diffusers_flux()
    patcher = comfy_flux(reference)
    x = inputs()
    plain = run_comfy(patcher, x)
    patched = apply(dit_host, patcher, path.name, image, siglip)

    head = siglip_head.load_head(next((p for p in (path.parents[2] / "clip_vision" / SUBDIR).glob("siglip-tiny*"))))
    with torch.no_grad():
        pooled = head(siglip.encode_image(image)["last_hidden_state"].float())
    state = torch.load(path, map_location="cpu", weights_only=True)
    projection = PublishedProjection(SIGLIP, CONTEXT, widths["tokens"]).eval()
    projection.load_state_dict(state["image_proj"], strict=True)
    names = list(reference.attn_processors)
    published = {n: PublishedProcessor(HIDDEN, CONTEXT, 0.8) for n in names}
    nn.ModuleList(published.values()).load_state_dict(state["ip_adapter"], strict=True)
    with torch.no_grad():
        tokens = projection(torch.cat([pooled, torch.zeros_like(pooled)]))  # row 0 positive, row 1 negative
    for p in published.values():
        p.image_emb = tokens
    reference.set_attn_processor(published)
    expected = run_diffusers(reference, x)
    got = run_comfy(patched, x)
    assert (got - plain).abs().max() > 1e-2
    assert (got - expected).abs().max() <= TOL
    assert torch.equal(run_comfy(patcher, x), plain)


def test_instantx_needs_the_siglip_file_with_its_head(dit_host, siglip, instantx_file, image, tmp_path):
    import comfy.clip_vision

    path, _ = instantx_file
    other = comfy.clip_vision.ClipVisionModel(str(next(iter(tmp_path.parent.glob("siglip*/tiny_siglip.json")))))
    perturb(other.model, 99)  # weights no file in models/clip_vision holds
    with pytest.raises(Exception, match="pooling head"):
        apply(dit_host, comfy_flux(diffusers_flux()), path.name, image, other)


# InstantX SD3.5


def diffusers_sd3(seed=0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=128, pooled_projection_dim=16, out_channels=16,
        pos_embed_max_size=8, qk_norm="rms_norm",
    )
    perturb(model, seed)
    with torch.no_grad():  # QK-norm weights away from 0 and 1: the patch divides by them
        for name, p in model.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


def comfy_sd3(reference):
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in reference.state_dict().items()})
    assert type(patcher.model.diffusion_model).__name__ == "OpenAISignatureMMDITWrapper"
    return patcher


def sd3_inputs(batch=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(batch, 16, 8, 8, generator=g), "t": torch.tensor([700.0] * batch),
            "context": torch.randn(batch, 5, 16, generator=g), "y": torch.randn(batch, 16, generator=g)}


def run_comfy_sd3(patcher, x, cond_or_uncond=(0, 1)):
    to = dict(patcher.model_options["transformer_options"])
    to.update(cond_or_uncond=list(cond_or_uncond), sigmas=x["t"] / 1000.0)
    with torch.no_grad():
        return patcher.model.diffusion_model(x["x"], x["t"], context=x["context"], y=x["y"], transformer_options=to)


def run_diffusers_sd3(model, x, features=None):
    kwargs = None if features is None else {"ip_adapter_image_embeds": features}
    with torch.no_grad():
        return model(hidden_states=x["x"], encoder_hidden_states=x["context"], pooled_projections=x["y"],
                     timestep=x["t"], joint_attention_kwargs=kwargs, return_dict=False)[0]


@pytest.fixture(scope="module")
def sd3_file(models_dir):
    path = models_dir / "ipadapter" / SUBDIR / "instantx-sd35-tiny.bin"
    return dit_sd3.write_sd35(path, "tiny", 7, embed_dim=SIGLIP, hidden=128, head_dim=64, blocks=2)


def test_instantx_sd35_matches_diffusers(dit_host, siglip, sd3_file, image):
    assert bundle(dit_host, sd3_file.name).adapter.format.value == "InstantX SD3.5"
    reference = diffusers_sd3()
    patcher = comfy_sd3(reference)
    x = sd3_inputs()
    plain = run_comfy_sd3(patcher, x)
    assert (plain - run_diffusers_sd3(reference, x)).abs().max() <= TOL  # the same model on both sides

    patched = apply(dit_host, patcher, sd3_file.name, image, siglip)
    got = run_comfy_sd3(patched, x)
    features = siglip.encode_image(image)["penultimate_hidden_states"].float()
    reference._load_ip_adapter_weights(torch.load(sd3_file, map_location="cpu", weights_only=True), low_cpu_mem_usage=False)
    for proc in reference.attn_processors.values():
        if hasattr(proc, "scale"):
            proc.scale = 0.8
    expected = run_diffusers_sd3(reference, x, torch.cat([features, torch.zeros_like(features)]))
    assert (got - plain).abs().max() > 1e-2
    assert (got - expected).abs().max() <= TOL
    assert torch.equal(run_comfy_sd3(patcher, x), plain)


def test_sd35_start_end_and_wrong_model(dit_host, siglip, sd3_file, image):
    patcher = comfy_sd3(diffusers_sd3())
    x = sd3_inputs()
    plain = run_comfy_sd3(patcher, x)
    late = apply(dit_host, patcher, sd3_file.name, image, siglip, start_at=0.9, end_at=1.0)
    assert torch.equal(run_comfy_sd3(late, x), plain)
    with pytest.raises(Exception, match="for SD3.5 models; this model is Flux"):
        apply(dit_host, comfy_flux(diffusers_flux()), sd3_file.name, image, siglip)


def test_instantx_flux_mask(dit_host, siglip, instantx_file, image):
    path, _ = instantx_file
    patcher = comfy_flux(diffusers_flux())
    check_masks(lambda m: apply(dit_host, patcher, path.name, image, siglip, **({} if m is None else {"attn_mask": m})),
                patcher, inputs())


def run_apply_model_sd3(patcher, x, cond_or_uncond=(0, 1)):
    to = dict(patcher.model_options["transformer_options"])
    to.update(cond_or_uncond=list(cond_or_uncond), sigmas=x["t"] / 1000.0, wrappers=dict(patcher.wrappers))
    with torch.no_grad():
        return patcher.model.apply_model(x["x"], x["t"] / 1000.0, c_crossattn=x["context"], y=x["y"],
                                         transformer_options=to)


def test_sd35_mask(dit_host, siglip, sd3_file, image):
    patcher = comfy_sd3(diffusers_sd3())
    check_masks(lambda m: apply(dit_host, patcher, sd3_file.name, image, siglip, **({} if m is None else {"attn_mask": m})),
                patcher, sd3_inputs(), run=run_apply_model_sd3)


def test_unified_loader_presets(dit_host, siglip, sd3_file, instantx_file, models_dir):
    """The flux/sd3.5 presets find the adapter by its repository name (a generic ip-adapter.bin in a folder named
    like the repository) and the SigLIP file by its name, and refuse the wrong model. (ComfyUI's CLIP vision loader
    recognises SigLIP by the full so400m layout, so the tiny stand-in is found but not loaded by it.)"""
    import shutil

    from ipadapter_core import presets

    folder = models_dir / "ipadapter" / SUBDIR / "SD3.5-Large-IP-Adapter"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sd3_file, folder / "ip-adapter.bin")
    named = models_dir / "clip_vision" / SUBDIR / "siglip-so400m-patch14-384.safetensors"
    shutil.copyfile(models_dir / "clip_vision" / SUBDIR / "siglip-tiny-with-head.safetensors", named)  # sorts first
    files = [f"{SUBDIR}/SD3.5-Large-IP-Adapter/ip-adapter.bin", f"{SUBDIR}/{sd3_file.name}", "ip-adapter_sd15.safetensors"]
    assert presets.pick_dit_adapter(files, "sd3.5 large instantx (SigLIP)").file == files[0]
    assert presets.pick_dit_adapter(files, "flux instantx (SigLIP)").file is None
    patcher = comfy_sd3(diffusers_sd3())
    with pytest.raises(Exception, match="siglip-so400m-patch14-384.safetensors: ComfyUI does not recognise"):
        dit_host.run("IPAKitUnifiedLoader", model=patcher, preset="sd3.5 large instantx (SigLIP)")
    with pytest.raises(Exception, match="is for SD3.5 Large models; this model is Flux"):
        dit_host.run("IPAKitUnifiedLoader", model=comfy_flux(diffusers_flux()), preset="sd3.5 large instantx (SigLIP)")
    assert presets.pick_dit_adapter(files + ["flux-ip-adapter.safetensors"], "flux xlabs v2 (CLIP ViT-L)").file is None
    named.unlink()
    shutil.rmtree(folder)  # the presets would find it next to the example workflows' stand-ins


def test_xlabs_and_instantx_chain_on_one_flux(dit_host, siglip, instantx_file, image, models_dir, tmp_path):
    """Two Flux adapters on one model: each block's patch holds both terms; the result differs from either alone,
    and each alone is unchanged by the other having been applied to a sibling clone."""
    path, _ = instantx_file
    xlabs_file, clip_vision = write_xlabs_tiny(models_dir), tiny_clip_l(tmp_path)
    patcher = comfy_flux(diffusers_flux())
    x = inputs()
    xl = apply(dit_host, patcher, xlabs_file.name, image, clip_vision)
    ix = apply(dit_host, patcher, path.name, image, siglip)
    both = apply(dit_host, xl, path.name, image, siglip)
    alone_x, alone_i, together = run_comfy(xl, x), run_comfy(ix, x), run_comfy(both, x)
    assert (together - alone_x).abs().max() > 1e-3 and (together - alone_i).abs().max() > 1e-3
    assert torch.equal(run_comfy(xl, x), alone_x)
    patches = both.model_options["transformer_options"]["patches_replace"]["dit"]
    assert len(patches[("double_block", 0)].terms) == 2 and len(patches[("single_block", 0)].terms) == 1


def test_sd35_resampler_runs_once_per_model_call(dit_host, siglip, sd3_file, image):
    """The 2 joint blocks of a call share one resampler result, also after ComfyUI moves the patches to the
    device (model_patches_to), which gives every block a moved copy of its patch."""
    patcher = comfy_sd3(diffusers_sd3())
    patched = apply(dit_host, patcher, sd3_file.name, image, siglip)
    patched.model_patches_to(torch.device("cpu"))  # what ComfyUI's loader does before sampling: device, then dtype
    patched.model_patches_to(patched.model_dtype())
    patched.model_patches_to(torch.float8_e4m3fn)  # an fp8 storage dtype is no compute dtype: ignored
    patches = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    prompts = {id(p.terms[0].prompt) for p in patches.values()}
    assert len(prompts) == 1
    resampler = patches[("double_block", 0)].terms[0].prompt.adapter.model.image_proj
    calls = []
    handle = resampler.register_forward_hook(lambda *_: calls.append(1))
    try:
        run_comfy_sd3(patched, sd3_inputs())
    finally:
        handle.remove()
    assert len(calls) == 1


def test_the_patches_add_no_host_syncs(dit_host, siglip, sd3_file, instantx_file, image, models_dir, tmp_path):
    """With a mask, a start/end gate and cond + uncond in one batch, the patched forward reads no more values back
    to the host than the plain one does (the host model's own reads, if any, are the baseline)."""
    from dev.host.torch_probes import SyncRecorder

    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1
    gated = {"attn_mask": mask, "start_at": 0.0, "end_at": 0.9}
    flux = comfy_flux(diffusers_flux())
    xlabs_file, clip_l = write_xlabs_tiny(models_dir), tiny_clip_l(tmp_path)
    both = apply(dit_host, apply(dit_host, flux, xlabs_file.name, image, clip_l, **gated), instantx_file[0].name, image,
                 siglip, **gated)
    sd3 = comfy_sd3(diffusers_sd3())
    sd3_patched = apply(dit_host, sd3, sd3_file.name, image, siglip, **gated)
    cases = ((flux, both, run_apply_model, inputs()), (sd3, sd3_patched, run_apply_model_sd3, sd3_inputs()))
    for plain, patched, run, x in cases:
        run(patched, x)  # first call: per-call selections are prepared
        with SyncRecorder() as base:
            run(plain, x)
        with SyncRecorder() as ours:
            run(patched, x)
        assert sorted(ours.calls) == sorted(base.calls), sorted(set(ours.calls) - set(base.calls))


def test_embeds_encode_save_load_apply(dit_host, siglip, sd3_file, instantx_file, image, tmp_path):
    """Encode -> save -> load -> Apply Embeds gives what Apply gives from the image; neg_embeds replaces the
    negative; embeds of another format are refused."""
    from ipadapter_core.embeds_io import load_embeds, save_embeds

    sd3 = comfy_sd3(diffusers_sd3())
    x = sd3_inputs()
    adapter = bundle(dit_host, sd3_file.name)
    direct = run_comfy_sd3(apply(dit_host, sd3, sd3_file.name, image, siglip), x)
    embeds = dit_host.run("IPAKitEncode", ipadapter=adapter, image=image, clip_vision=siglip)[0]
    loaded = load_embeds(save_embeds(embeds, tmp_path / "sd35.safetensors"))
    settings = {"weight": 0.8, "start_at": 0.0, "end_at": 1.0, "weight_type": "linear", "combine_embeds": "concat",
                "embeds_scaling": "V only"}
    via_embeds = dit_host.run("IPAKitApplyEmbeds", model=sd3, ipadapter=adapter, embeds=loaded, **settings)[0]
    assert torch.equal(run_comfy_sd3(via_embeds, x), direct)
    other = dit_host.run("IPAKitEncode", ipadapter=adapter, image=torch.flip(image, dims=[2]), clip_vision=siglip)[0]
    swapped = dit_host.run("IPAKitApplyEmbeds", model=sd3, ipadapter=adapter, embeds=loaded, neg_embeds=other,
                           **settings)[0]
    assert (run_comfy_sd3(swapped, x) - direct).abs().max() > 1e-4
    flux_embeds = dit_host.run("IPAKitEncode", ipadapter=bundle(dit_host, instantx_file[0].name), image=image,
                               clip_vision=siglip)[0]
    with pytest.raises(Exception, match="reads SigLIP so400m penultimate features; these embeds hold SigLIP so400m pooled"):
        dit_host.run("IPAKitApplyEmbeds", model=sd3, ipadapter=adapter, embeds=flux_embeds, **settings)
