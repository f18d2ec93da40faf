"""Workflows in the older IPAdapter Plus pack's formats, written from its node table, for the converter's tests.

The older pack's nodes are described to `dev.authoring.graph` as `/object_info` would describe them if that pack
were installed (`legacy_info`, from `ipadapter_core.migration.legacy`), so the same renderer that writes our
example workflows writes these in the UI format (positional `widgets_values` in the older widget order, widgets
converted to inputs where a link drives them, KSampler's control_after_generate) and in the API format.

Together the fixtures hold every one of the 37 old ids:
- `sd15` runs on the stand-in SD1.5 models: loaders (chained, community, file), 16 apply nodes on one model,
  embeds (encode, load a legacy .ipadpt, combine, save), noise, prep, weights, regional params;
- `faceid` runs with the FaceID Plus v2 and InsightFace stand-ins (the Kolors FaceID node included, on SD1.5);
- `kolors` needs a Kolors UNet, which ComfyUI has none of: converted and checked against /object_info only;
  with `faceid` every one of the 37 ids is queued on the test server;
- `tiled_batch` runs the Tiled Batch node (Apply Tiled with unfold_batch) on a batch of two latents;
- `api_route`, small and runnable, is queued with the old ids (the compatibility nodes) and converted, bit for bit.
"""

from __future__ import annotations

from dev.authoring import graph as g
from dev.authoring.pictures import REF_FACE, REF_LAYOUT, REF_STYLE, REF_SUBJECT
from dev.standins import names
from ipadapter_core.migration.legacy import NODES as LEGACY

LEGACY_EMBEDS = "ipakit_legacy_embeds.ipadpt"  # a raw penultimate tensor [1, 257, 1280], written by the test
SD15_ADAPTER = "ip-adapter_sd15.safetensors"
STAND_INS = {  # the stand-in adapters each fixture needs (dev.standins.ipadapter variants), besides the defaults
    "sd15": ("composition_sd15",),
    "faceid": ("faceid-plusv2_sd15",),
    "kolors": (),
    "tiled_batch": (),
    "api_route": (),
}
RUNNABLE = ("sd15", "faceid", "tiled_batch", "api_route")  # queued converted; api_route also with the old ids, bit for bit


def legacy_info() -> dict:
    """`/object_info` entries for the older pack's 37 ids."""
    info = {}
    for node in LEGACY.values():
        groups = {"required": {}, "optional": {}}
        for i in node.inputs:
            if i.kind == "COMBO":
                spec = [list(i.choices), {"default": i.default}] if i.choices else [[]]
            elif i.widget:
                opts = {k: v for k, v in (("default", i.default), ("min", i.min), ("max", i.max), ("step", i.step),
                                          ("multiline", i.multiline or None)) if v is not None}
                spec = [i.kind, opts]
            else:
                spec = [i.kind]
            groups["optional" if i.optional else "required"][i.name] = spec
        info[node.id] = {"input": groups, "output": [t for t, _ in node.outputs], "output_name": [n for _, n in node.outputs],
                         "output_node": node.output_node, "name": node.id, "display_name": node.display,
                         "category": node.category, "description": ""}
    return info


def class_info(cls) -> dict:
    """`/object_info`'s entry for a node class (what the server would answer), for tests without a server."""
    names_ = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES), "output_name": list(names_),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}


_SE = dict(start_at=0.0, end_at=1.0)


def _sample(gr: g.Graph, model, clip, vae, *, col: int, prefix: str, positive=None, negative=None, text: str = "a cat",
            batch: int = 1):
    if positive is None:
        positive = gr.add("CLIPTextEncode", col, text=text, clip=clip)[0]
    if negative is None:
        negative = gr.add("CLIPTextEncode", col, text="blurry", clip=clip)[0]
    latent = gr.add("EmptyLatentImage", col, width=64, height=64, batch_size=batch)
    sampler = gr.add("KSampler", col + 1, model=model, seed=7, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal",
                     denoise=1.0, positive=positive, negative=negative, latent_image=latent[0])
    image = gr.add("VAEDecode", col + 2, samples=sampler[0], vae=vae)
    gr.add("SaveImage", col + 2, images=image[0], filename_prefix=prefix)


def sd15() -> g.Graph:
    gr = g.Graph()
    ckpt = gr.add("CheckpointLoaderSimple", 0, ckpt_name=names.SD15_CHECKPOINT)
    ref = gr.add("LoadImage", 0, image=REF_SUBJECT)
    style = gr.add("LoadImage", 0, image=REF_STYLE)
    layout = gr.add("LoadImage", 0, image=REF_LAYOUT)
    mask = gr.add("SolidMask", 0, value=1.0, width=64, height=64)
    clip_vision = gr.add("CLIPVisionLoader", 0, clip_name=names.VIT_H)
    prep = gr.add("PrepImageForClipVision", 1, image=ref[0], interpolation="BICUBIC", crop_position="pad", sharpening=0.1)
    noise = gr.add("IPAdapterNoise", 1, type="shuffle", strength=0.6, blur=2, image_optional=ref[0])
    first = gr.add("IPAdapterUnifiedLoader", 1, title="Old loader (chained)", model=ckpt[0], preset="STANDARD (medium strength)")
    loader = gr.add("IPAdapterUnifiedLoader", 1, model=first[0], preset="PLUS (high strength)", ipadapter=first[1])
    community = gr.add("IPAdapterUnifiedLoaderCommunity", 1, model=ckpt[0], preset="Composition")
    by_file = gr.add("IPAdapterModelLoader", 1, ipadapter_file=SD15_ADAPTER)
    weights = gr.add("IPAdapterWeights", 1, weights="1.0, 0.4", timing="ease_in", frames=4, start_frame=0, end_frame=9999,
                     add_starting_frames=0, add_ending_frames=1, method="full batch", image=ref[0])
    again = gr.add("IPAdapterWeightsFromStrategy", 2, weights_strategy=weights[5], image=style[0])
    joined = gr.add("IPAdapterCombineWeights", 2, weights_1=weights[0], weights_2=again[1])
    schedule = gr.add("IPAdapterPromptScheduleFromWeightsStrategy", 2, weights_strategy=weights[5], prompt="a cat\na dog")
    positive = gr.add("CLIPTextEncode", 2, text=schedule[0], clip=ckpt[1])
    negative = gr.add("CLIPTextEncode", 2, text="blurry", clip=ckpt[1])
    adapter = loader[1]

    m = gr.add("IPAdapter", 3, model=loader[0], ipadapter=adapter, image=prep[0], weight=0.5, **_SE,
               weight_type="prompt is more important", attn_mask=mask[0])[0]
    m = gr.add("IPAdapterAdvanced", 3, title="Old advanced", model=m, ipadapter=adapter, image=ref[0], weight=0.7,
               weight_type="ease in-out", combine_embeds="concat", **_SE, embeds_scaling="K+V", image_negative=noise[0])[0]
    m = gr.add("IPAdapterBatch", 3, model=m, ipadapter=adapter, image=ref[0], weight=joined[0], weight_type="linear", **_SE,
               embeds_scaling="V only", encode_batch_size=2)[0]
    m = gr.add("IPAdapterTiled", 3, model=m, ipadapter=adapter, image=style[0], weight=0.6, weight_type="linear",
               combine_embeds="concat", **_SE, sharpening=0.0, embeds_scaling="V only")[0]
    m = gr.add("IPAdapterStyleComposition", 4, model=m, ipadapter=adapter, image_style=style[0], image_composition=layout[0],
               weight_style=0.9, weight_composition=0.8, expand_style=False, combine_embeds="average", **_SE,
               embeds_scaling="V only")[0]
    m = gr.add("IPAdapterStyleCompositionBatch", 4, model=m, ipadapter=adapter, image_style=style[0], image_composition=layout[0],
               weight_style=0.5, weight_composition=0.5, expand_style=True, **_SE, embeds_scaling="V only")[0]
    m = gr.add("IPAdapterMS", 4, model=m, ipadapter=adapter, image=ref[0], weight=0.5, weight_faceidv2=1.0,
               weight_type="ease out", combine_embeds="norm average", **_SE, embeds_scaling="K+V w/ C penalty",
               layer_weights="3:1.0, 6:0.5")[0]
    m = gr.add("IPAdapterClipVisionEnhancer", 4, model=m, ipadapter=adapter, image=ref[0], weight=0.5, weight_type="linear",
               combine_embeds="concat", **_SE, embeds_scaling="V only", enhance_tiles=1, enhance_ratio=1.0)[0]
    m = gr.add("IPAdapterClipVisionEnhancerBatch", 5, model=m, ipadapter=adapter, image=ref[0], weight=0.5, weight_type="linear",
               **_SE, embeds_scaling="V only", enhance_tiles=1, enhance_ratio=0.5, encode_batch_size=0)[0]
    m = gr.add("IPAdapterPreciseStyleTransfer", 5, model=m, ipadapter=adapter, image=style[0], weight=0.8, style_boost=1.5,
               combine_embeds="concat", **_SE, embeds_scaling="V only")[0]
    m = gr.add("IPAdapterPreciseStyleTransferBatch", 5, model=m, ipadapter=adapter, image=style[0], weight=0.5, style_boost=1.0,
               combine_embeds="concat", **_SE, embeds_scaling="V only")[0]
    m = gr.add("IPAdapterPreciseComposition", 5, model=m, ipadapter=community[1], image=layout[0], weight=0.8,
               composition_boost=0.5, combine_embeds="concat", **_SE, embeds_scaling="V only")[0]
    m = gr.add("IPAdapterPreciseCompositionBatch", 6, model=m, ipadapter=by_file[0], image=layout[0], weight=0.4,
               composition_boost=0.0, combine_embeds="concat", **_SE, embeds_scaling="V only", clip_vision=clip_vision[0])[0]
    region_1 = gr.add("IPAdapterRegionalConditioning", 6, image=style[0], image_weight=0.8, prompt_weight=1.0,
                      weight_type="linear", **_SE, mask=mask[0], positive=positive[0], negative=negative[0])
    region_2 = gr.add("IPAdapterRegionalConditioning", 6, image=layout[0], image_weight=0.5, prompt_weight=1.0,
                      weight_type="composition", **_SE)
    params = gr.add("IPAdapterCombineParams", 6, params_1=region_1[0], params_2=region_2[0])
    m = gr.add("IPAdapterFromParams", 7, model=m, ipadapter=adapter, ipadapter_params=params[0], combine_embeds="concat",
               embeds_scaling="K+V", image_negative=noise[0])[0]
    encoded = gr.add("IPAdapterEncoder", 7, ipadapter=adapter, image=ref[0], weight=1.0, mask=mask[0])
    legacy = gr.add("IPAdapterLoadEmbeds", 7, embeds=LEGACY_EMBEDS)
    combined = gr.add("IPAdapterCombineEmbeds", 7, embed1=encoded[0], method="average", embed2=legacy[0])
    gr.add("IPAdapterSaveEmbeds", 8, embeds=combined[0], filename_prefix="IP_embeds_migrated")
    m = gr.add("IPAdapterEmbeds", 8, model=m, ipadapter=adapter, pos_embed=encoded[0], weight=0.6, weight_type="linear", **_SE,
               embeds_scaling="V only", neg_embed=encoded[1])[0]
    m = gr.add("IPAdapterEmbedsBatch", 8, model=m, ipadapter=adapter, pos_embed=combined[0], weight=0.4, weight_type="linear",
               **_SE, embeds_scaling="V only", clip_vision=clip_vision[0])[0]
    _sample(gr, m, ckpt[1], ckpt[2], col=9, prefix="ipakit_migrated_sd15", positive=region_1[1], negative=region_1[2])
    return gr


def faceid() -> g.Graph:
    gr = g.Graph()
    ckpt = gr.add("CheckpointLoaderSimple", 0, ckpt_name=names.SD15_CHECKPOINT)
    face = gr.add("LoadImage", 0, image=REF_FACE)
    loader = gr.add("IPAdapterUnifiedLoaderFaceID", 1, model=ckpt[0], preset="FACEID PLUS V2", lora_strength=0.6, provider="CPU")
    insightface = gr.add("IPAdapterInsightFaceLoader", 1, provider="CPU", model_name="buffalo_l")
    apply = gr.add("IPAdapterFaceID", 2, model=loader[0], ipadapter=loader[1], image=face[0], weight=0.8, weight_faceidv2=1.0,
                   weight_type="linear", combine_embeds="concat", **_SE, embeds_scaling="V only", insightface=insightface[0])
    m = gr.add("IPAAdapterFaceIDBatch", 2, model=apply[0], ipadapter=loader[1], image=face[0], weight=0.5, weight_faceidv2=1.5,
               weight_type="linear", combine_embeds="concat", **_SE, embeds_scaling="V only")[0]
    m = gr.add("IPAdapterAdvanced", 3, title="Advanced on a FaceID adapter", model=m, ipadapter=loader[1], image=face[0],
               weight=0.4, weight_type="linear", combine_embeds="concat", **_SE, embeds_scaling="V only")[0]
    m = gr.add("IPAdapterMS", 3, model=m, ipadapter=loader[1], image=face[0], weight=0.3, weight_faceidv2=1.0, weight_type="linear",
               combine_embeds="concat", **_SE, embeds_scaling="V only", layer_weights="", insightface=insightface[0])[0]
    # the Kolors node on an SD1.5 FaceID adapter (as the older node allowed): weight_kolors acts on Kolors only, so
    # this fixture queues the id that the kolors fixture (no Kolors UNet in ComfyUI) can only convert
    m = gr.add("IPAdapterFaceIDKolors", 3, model=m, ipadapter=loader[1], image=face[0], weight=0.3, weight_faceidv2=1.0,
               weight_type="linear", combine_embeds="concat", **_SE, embeds_scaling="V only", weight_kolors=1.2,
               insightface=insightface[0])[0]
    gr.add("PreviewImage", 3, images=apply[1])
    _sample(gr, m, ckpt[1], ckpt[2], col=4, prefix="ipakit_migrated_faceid", text="a portrait")
    return gr


def kolors() -> g.Graph:
    gr = g.Graph()
    ckpt = gr.add("CheckpointLoaderSimple", 0, ckpt_name=names.SDXL_SMALL_CHECKPOINT)
    face = gr.add("LoadImage", 0, image=REF_FACE)
    loader = gr.add("IPAdapterUnifiedLoaderCommunity", 1, model=ckpt[0], preset="Kolors")
    by_file = gr.add("IPAdapterModelLoader", 1, ipadapter_file="ipa-faceid-plus.safetensors")
    clip_vision = gr.add("CLIPVisionLoader", 1, clip_name=names.VIT_H)
    insightface = gr.add("IPAdapterInsightFaceLoader", 1, provider="CUDA", model_name="antelopev2")
    m = gr.add("IPAdapterFaceIDKolors", 2, model=loader[0], ipadapter=by_file[0], image=face[0], weight=0.8, weight_faceidv2=1.0,
               weight_type="linear", combine_embeds="concat", **_SE, embeds_scaling="V only", weight_kolors=1.2,
               clip_vision=clip_vision[0], insightface=insightface[0])[0]
    _sample(gr, m, ckpt[1], ckpt[2], col=3, prefix="ipakit_migrated_kolors")
    return gr


def api_route() -> g.Graph:
    """A small prompt for the old-id API route: compatibility nodes against converted ones, bit for bit."""
    gr = g.Graph()
    ckpt = gr.add("CheckpointLoaderSimple", 0, ckpt_name=names.SD15_CHECKPOINT)
    ref = gr.add("LoadImage", 0, image=REF_SUBJECT)
    loader = gr.add("IPAdapterUnifiedLoader", 1, model=ckpt[0], preset="PLUS (high strength)")
    noise = gr.add("IPAdapterNoise", 1, type="fade", strength=0.5, blur=0, image_optional=ref[0])
    weights = gr.add("IPAdapterWeights", 1, weights="0.8, 0.3", timing="ease_out", frames=2, start_frame=0, end_frame=9999,
                     add_starting_frames=0, add_ending_frames=0, method="full batch")
    m = gr.add("IPAdapterAdvanced", 2, model=loader[0], ipadapter=loader[1], image=ref[0], weight=0.6, weight_type="ease in",
               combine_embeds="concat", **_SE, embeds_scaling="K+V", image_negative=noise[0])[0]
    m = gr.add("IPAdapterBatch", 2, model=m, ipadapter=loader[1], image=ref[0], weight=weights[0], weight_type="linear", **_SE,
               embeds_scaling="V only", encode_batch_size=0)[0]
    encoded = gr.add("IPAdapterEncoder", 2, ipadapter=loader[1], image=ref[0], weight=0.9)
    m = gr.add("IPAdapterEmbeds", 3, model=m, ipadapter=loader[1], pos_embed=encoded[0], weight=0.5, weight_type="linear", **_SE,
               embeds_scaling="V only", neg_embed=encoded[1])[0]
    _sample(gr, m, ckpt[1], ckpt[2], col=4, prefix="ipakit_migrated_api_route")
    return gr


def tiled_batch() -> g.Graph:
    gr = g.Graph()
    ckpt = gr.add("CheckpointLoaderSimple", 0, ckpt_name=names.SD15_CHECKPOINT)
    style, subject = gr.add("LoadImage", 0, image=REF_STYLE), gr.add("LoadImage", 0, image=REF_SUBJECT)
    refs = gr.add("ImageBatch", 1, image1=style[0], image2=subject[0])  # latent frame i tiles reference i
    loader = gr.add("IPAdapterUnifiedLoader", 1, model=ckpt[0], preset="PLUS (high strength)")
    m = gr.add("IPAdapterTiledBatch", 2, model=loader[0], ipadapter=loader[1], image=refs[0], weight=0.7, weight_type="linear",
               **_SE, sharpening=0.2, embeds_scaling="V only", encode_batch_size=0)[0]
    _sample(gr, m, ckpt[1], ckpt[2], col=3, prefix="ipakit_migrated_tiled_batch", batch=2)
    return gr


FIXTURES = {"sd15": sd15, "faceid": faceid, "kolors": kolors, "tiled_batch": tiled_batch, "api_route": api_route}


def render(name: str, core_info: dict) -> tuple[dict, dict]:
    """(UI-format workflow, API-format prompt) of a fixture in the older pack's formats; `core_info` describes the
    ComfyUI core nodes it uses (the server's /object_info, or `class_info` of in-process classes)."""
    info = {**core_info, **legacy_info()}
    ui = g.render_ui(FIXTURES[name](), info, name=f"old_{name}")
    first = next(n for n in ui["nodes"] if n["type"] in LEGACY)
    first.update(color="#322", bgcolor="#533")  # colours, a group and a title the conversion must keep
    ui["groups"] = [{"title": "IPAdapter Plus", "bounding": [first["pos"][0] - 10, first["pos"][1] - 40, 400, 300],
                     "color": "#3f789e", "font_size": 24}]
    return ui, g.to_api(ui, info)


def old_ids(workflow: dict) -> set[str]:
    return g.node_types(workflow) & set(LEGACY)
