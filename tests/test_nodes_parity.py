"""Parity of the ComfyUI nodes with diffusers: ComfyUI's real UNet patched by our nodes vs diffusers' UNet with
diffusers' own IP-Adapter, loaded from the same file, with the same (converted) UNet weights.

SD1.5 uses the full-architecture random checkpoint; SDXL a reduced-channel checkpoint with the real
70-layer cross-attention layout. Noise predictions must agree to 1e-4 (float32, CPU).
"""

from __future__ import annotations

import json

import pytest
import torch

import _host
from _reference import REAL_SD15_CONFIG, SDXL_SMALL_CONFIG, set_scale
from dev.authoring.examples import APPLY_DEFAULTS
from dev.standins import names
from dev.standins.comfy_models import SDXL_SMALL_WIDTHS

TOL = 1e-4

ADAPTERS = {
    "sd15": {
        "base": ("sd15", {}),
        "plus": ("plus_sd15", {}),
        "full-face": ("full-face_sd15", {}),
        "faceid": ("faceid_sd15", {}),
        "faceid plus v2": ("faceid-plusv2_sd15", {}),
    },
    "sdxl": {
        "base": ("sdxl_vit-h", {"widths": SDXL_SMALL_WIDTHS}),
        "plus": ("plus_sdxl_vit-h", {"widths": SDXL_SMALL_WIDTHS}),
        "full-face": ("full-face_sd15", {"widths": SDXL_SMALL_WIDTHS, "cross_dim": 2048}),
        "faceid": ("faceid_sdxl", {"widths": SDXL_SMALL_WIDTHS}),
        "faceid plus v2": ("faceid-plusv2_sdxl", {"widths": SDXL_SMALL_WIDTHS}),
    },
}


class Family:
    """One loaded ComfyUI model with its diffusers twin."""

    def __init__(self, comfy, name, checkpoint):
        import comfy.utils as cu
        from diffusers import UNet2DConditionModel

        self.comfy, self.name = comfy, name
        self.model = checkpoint[0]
        unet = self.model.model.diffusion_model
        mapping = cu.unet_to_diffusers(self.model.model.model_config.unet_config)
        state = unet.state_dict()
        with torch.device("meta"):
            self.diffusers = UNet2DConditionModel(**(REAL_SD15_CONFIG if name == "sd15" else SDXL_SMALL_CONFIG))
        self.diffusers.requires_grad_(False)  # the ComfyUI tensors are inference tensors; share them, do not copy
        # ComfyUI names SDXL's added-condition MLP like a class embedding; diffusers calls it add_embedding
        converted = {d.replace("class_embedding.", "add_embedding.") if name == "sdxl" else d: state[c] for d, c in mapping.items() if c in state}
        self.diffusers.load_state_dict(converted, strict=True, assign=True)
        self.diffusers.eval()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(2, 4, 8, 8, generator=g)
        self.t = torch.tensor([500.0, 500.0])
        self.context = torch.randn(2, 7, unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features if name == "sd15" else 2048, generator=g)
        self.extra = {}
        if name == "sdxl":
            text, time_ids = torch.randn(2, 1280, generator=g), torch.tensor([[512.0, 512, 0, 0, 512, 512]] * 2)
            self.extra = dict(text_embeds=text, time_ids=time_ids)
            with torch.no_grad():
                t_emb = self.diffusers.add_time_proj(time_ids.flatten()).reshape(2, -1)
            self.y = torch.cat([text, t_emb], dim=-1)

    def adapter_path(self, kind):
        variant, kw = ADAPTERS[self.name][kind]
        return _host.ensure_ipadapter(variant, names.MODELS_CACHE, subdir=None if self.name == "sd15" else names.SDXL_SMALL_SUBDIR, **kw)

    def comfy_eps(self, patched, rows=(1, 0)):
        options = dict(patched.model_options["transformer_options"])
        options["cond_or_uncond"] = list(rows)
        options["sigmas"] = torch.tensor([1.0])
        kwargs = {"y": self.y} if self.name == "sdxl" else {}
        with torch.inference_mode():
            return patched.model.diffusion_model(self.x, timesteps=self.t, context=self.context, transformer_options=options, **kwargs).float()

    def diffusers_eps(self, path, embeds, scale=0.8, masks=None, block_scale=None, shortcut_scale=1.0):
        import ipadapter_core as core

        raw = core.read_checkpoint(path)
        spec = core.detect(raw)
        sd = {
            "image_proj": {k: v.float() for k, v in raw.image_proj.items()},
            "ip_adapter": {k: v.float() for k, v in raw.ip_adapter.items() if "_lora." not in k},
        }
        with torch.inference_mode():
            self.diffusers._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
            set_scale(self.diffusers, block_scale if block_scale is not None else scale)
            both = {k: torch.stack([embeds.uncond[k], embeds.cond[k]]).float() for k in embeds.cond}  # [negative, positive]
            emb = both["face"] if "face" in both else both["clip"]
            if "face" in both and "clip" in both:  # FaceID Plus: diffusers reads the CLIP part from attributes
                layer = self.diffusers.encoder_hid_proj.image_projection_layers[0]
                layer.clip_embeds, layer.shortcut, layer.shortcut_scale = both["clip"], spec.shortcut, shortcut_scale
            kwargs = {"added_cond_kwargs": dict(self.extra, image_embeds=[emb])}
            if masks is not None:
                kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": [masks[None]]}
            return self.diffusers(self.x, self.t, encoder_hidden_states=self.context, **kwargs).sample


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def family(request, comfy, models_dir):
    fixture = "sd15_checkpoint" if request.param == "sd15" else "sdxl_small_checkpoint"
    fam = Family(comfy, request.param, request.getfixturevalue(fixture))
    yield fam
    del fam
    _host.free_memory()


def image(seed=0, size=224):
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def apply_embeds(comfy, model, adapter, embeds, **kw):
    args = dict(APPLY_DEFAULTS, **kw)
    return comfy.outputs("IPAKitApplyEmbeds", model=model, ipadapter=adapter, embeds=embeds, **args)[0]


@pytest.fixture(scope="module")
def insightface(comfy, models_dir):
    pytest.importorskip("insightface")
    from dev.standins.insightface_pack import ensure_pack

    ensure_pack(models_dir / "insightface", "buffalo_l")
    return comfy.outputs("IPAKitInsightFaceLoader", provider="CPU", model_name="buffalo_l")[0]


@pytest.mark.parametrize("kind", ["base", "plus", "full-face", "faceid", "faceid plus v2"])
def test_noise_prediction_matches_diffusers(comfy, family, vit_h, kind, request):
    path = family.adapter_path(kind)
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=str(path.relative_to(names.MODELS_CACHE / "ipadapter")))[0]
    faces = {}
    if kind.startswith("faceid"):  # the real insightface on the generated pack; LoRA excluded, as diffusers' UNet path does
        faces = {"insightface": request.getfixturevalue("insightface")}
    embeds = comfy.outputs("IPAKitEncode", ipadapter=adapter, image=0.3 + 0.6 * image(1), clip_vision=vit_h, **faces)[0]
    patched = apply_embeds(comfy, family.model, adapter, embeds, lora_strength=0.0, weight_faceidv2=1.5)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replace) == (16 if family.name == "sd15" else 70)  # every cross-attention layer, middle block included
    assert not patched.patches  # no LoRA on this path
    got = family.comfy_eps(patched)
    expected = family.diffusers_eps(path, embeds, shortcut_scale=1.5)
    plain = family.comfy_eps(family.model)
    assert (got - expected).abs().max() <= TOL
    assert (got - plain).abs().max() > 1e-2


def test_mask_with_two_images_in_two_regions(comfy, family, vit_h):
    path = family.adapter_path("plus")
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=str(path.relative_to(names.MODELS_CACHE / "ipadapter")))[0]
    embeds = comfy.outputs("IPAKitEncode", ipadapter=adapter, image=torch.cat([image(2), image(3)]), clip_vision=vit_h)[0]
    masks = torch.zeros(2, 64, 64)
    masks[0, :, :32] = 1
    masks[1, :, 32:] = 1
    patched = apply_embeds(comfy, family.model, adapter, embeds, attn_mask=masks)
    got = family.comfy_eps(patched)
    expected = family.diffusers_eps(path, embeds, masks=masks)
    assert (got - expected).abs().max() <= TOL


BLOCKS = {"sd15": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_1": [0.0, 1.0, 0.0]}}, "sdxl": {"up": {"block_0": [0.0, 1.0, 0.0]}}}


def test_instantstyle_block_weights(comfy, family, vit_h):
    path = family.adapter_path("plus")
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=str(path.relative_to(names.MODELS_CACHE / "ipadapter")))[0]
    embeds = comfy.outputs("IPAKitEncode", ipadapter=adapter, image=image(4), clip_vision=vit_h)[0]
    blocks = BLOCKS[family.name]
    patched = apply_embeds(comfy, family.model, adapter, embeds, weight=1.0, block_weights=json.dumps(blocks))
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replace) == (2 if family.name == "sd15" else 10)
    got = family.comfy_eps(patched)
    expected = family.diffusers_eps(path, embeds, block_scale=blocks)
    assert (got - expected).abs().max() <= TOL
