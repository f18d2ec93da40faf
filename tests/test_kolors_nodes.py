"""Kolors FaceID through the nodes: its 4096-wide tokens reach the attention through the UNet's encoder_hid_proj.

No ComfyUI has a built-in Kolors UNet; Kolors loaders (e.g. ComfyUI-Kolors-MZ) build ComfyUI's SDXL UNetModel
with one more module, `encoder_hid_proj = Linear(4096, 2048)`, that maps ChatGLM's 4096-wide text tokens to
the 2048-wide context. The SDXL-small checkpoint with that module attached is such a UNet (real 70-layer
layout, context 2048). The adapter is the Kolors FaceID-Plus layout at full size (its detector keys on the
4096-wide perceiver), with per-layer widths matching the small UNet.

The reference is written out here: for every layer, keys and values are to_k_ip / to_v_ip of
encoder_hid_proj(tokens), added as a second attention to the text attention, positive tokens on the
conditional rows and negative tokens on the unconditional ones.
"""

from __future__ import annotations

import sys

import pytest
import torch

import _host
import _pipe
from dev.host.torch_probes import UNetCall, attn2_patches
from dev.standins.comfy_models import SDXL_SMALL_WIDTHS

APPLY = dict(_pipe.APPLY, weight=1.0)


def attention(q, k, v, heads):
    b, _, c = q.shape
    split = lambda t: t.reshape(t.shape[0], -1, heads, c // heads).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, -1, c)


def reference_patch(keys, values, heads):
    """attn2 replace: text attention plus the image attention over this layer's keys/values ([cond, uncond])."""

    def patch(q, k, v, extra_options):
        rows = extra_options["cond_or_uncond"]
        per_row = q.shape[0] // len(rows)
        ki = torch.cat([keys[r].expand(per_row, -1, -1) for r in rows])
        vi = torch.cat([values[r].expand(per_row, -1, -1) for r in rows])
        return attention(q, k, v, heads) + attention(q, ki, vi, heads)

    return patch


@pytest.fixture(scope="module")
def kolors(comfy, models_dir, sdxl_small_checkpoint):
    path = _host.ensure_ipadapter("kolors_faceid_plus", models_dir, subdir="ipakit-kolors-small", widths=SDXL_SMALL_WIDTHS)
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=f"ipakit-kolors-small/{path.name}")[0]
    yield sdxl_small_checkpoint[0], adapter
    del adapter
    _host.free_memory()


def test_kolors_faceid_tokens_go_through_the_unets_encoder_hid_proj(comfy, kolors):
    model, adapter = kolors
    core = sys.modules[f"{comfy.pack.__name__}.ipadapter_core"]
    spec = adapter.adapter.spec
    assert spec.family is core.Family.KOLORS and spec.token_dim == 4096 and spec.cross_attention_dim == 2048
    g = torch.Generator().manual_seed(7)
    embeds = core.ImageEmbeds(
        cond={"face": torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1),
              "clip": torch.randn(1, 577, 1024, generator=g)},
        uncond={"face": torch.zeros(1, 512), "clip": torch.randn(1, 577, 1024, generator=g)},
        clip_encoder="ViT-L-14-336", clip_output=core.ClipOutput.PENULTIMATE, face_normed=True,
    )
    apply = lambda m: comfy.outputs("IPAKitApplyEmbeds", model=m, ipadapter=adapter, embeds=embeds, **APPLY)[0]  # noqa: E731

    with pytest.raises(ValueError, match="only a Kolors UNet can read.*load a Kolors checkpoint"):
        apply(model)  # a plain SDXL UNet has no encoder_hid_proj

    unet = model.model.diffusion_model
    unet.encoder_hid_proj = torch.nn.Linear(4096, 2048)
    torch.nn.init.normal_(unet.encoder_hid_proj.weight, std=4096 ** -0.5, generator=g)
    try:
        patched = apply(model)
        assert len(attn2_patches(patched)) == 70

        cond, uncond = core.project_embeds(adapter.adapter.model, embeds)
        tokens = torch.cat([cond, uncond]).float()  # [2, 6, 4096]: row 0 positive, row 1 negative
        topology = comfy.observe.topology(model)

        def reference(weight_kolors: float):
            """The model with every layer's image attention over to_k_ip / to_v_ip of weight_kolors * encoder_hid_proj(tokens)."""
            out = model.clone()
            with torch.inference_mode():
                context = unet.encoder_hid_proj(tokens) * weight_kolors
                for layer in topology.layers:
                    kv = adapter.adapter.model.layer(layer.checkpoint_index)
                    keys, values = kv.to_k_ip(context.to(kv.to_k_ip.weight)).float(), kv.to_v_ip(context.to(kv.to_v_ip.weight)).float()
                    out.set_model_attn2_replace(reference_patch(keys, values, layer.heads), layer.block, layer.block_id, layer.depth)
            return out

        call = UNetCall(model, hw=(8, 8), rows=(1, 0), seed=3)
        plain, ours, expected = call(model), call(patched), call(reference(1.0))
        assert (expected - plain).abs().max() > 1e-2  # the image prompt changes the output
        torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)
        # weight_kolors scales encoder_hid_proj's output for the image tokens
        scaled = call(comfy.outputs("IPAKitApplyEmbeds", model=model, ipadapter=adapter, embeds=embeds, weight_kolors=0.4, **APPLY)[0])
        torch.testing.assert_close(scaled, call(reference(0.4)), atol=2e-4, rtol=1e-4)
        assert (scaled - ours).abs().max() > 1e-3
    finally:
        del unet.encoder_hid_proj
