"""The example workflows of workflows/, one small definition per feature, and what they run on in the tests
and the main job.

Each definition builds a `dev.authoring.graph.Graph`; `python -m dev.authoring.workflows write` renders them
to workflows/<name>.json (UI format), workflows/api/<name>.json (API format) and workflows/<name>.jpg.
Model names are the published ones users have; the checkpoint names are placeholders to change. The
reference images they load are drawn by dev/authoring/pictures.py.

`STAND_INS` maps the published names onto the random-weight stand-ins (dev/standins/) that the tests and the
main job generate, `FAST` samples in seconds on a CPU; `dev.authoring.graph.localize` applies such tables to
an API workflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dev.authoring.graph import Graph
from dev.authoring.pictures import DEPTH_MAP, INIT_IMAGE, INPAINT_IMAGE, REF_FACE, REF_LAYOUT, REF_STYLE, REF_SUBJECT
from dev.standins import names
from dev.standins.comfy_models import SDXL_SMALL_WIDTHS
from dev.standins.names import VIT_H  # the published name, which the ViT-H stand-in is written under too

# model files the workflows name (published names; checkpoints are placeholders)
CKPT_SD15 = "v1-5-pruned-emaonly.safetensors"
CKPT_SDXL = "sd_xl_base_1.0.safetensors"
CONTROLNET_DEPTH = "control_v11f1p_sd15_depth.pth"
PLUS = "plus (high strength)"
# Flux and SD3.5 (the Comfy-Org / Black Forest Labs / Stability file names users have)
FLUX_UNET = "flux1-dev.safetensors"
FLUX_VAE = "ae.safetensors"
SD35_UNET = "sd3.5_large.safetensors"
SD3_VAE = "sd3.5_vae.safetensors"
CLIP_L_TEXT = "clip_l.safetensors"
CLIP_G_TEXT = "clip_g.safetensors"
T5XXL = "t5xxl_fp8_e4m3fn.safetensors"
CLIP_VISION_L = "clip_vision_l.safetensors"
SIGLIP = "siglip-so400m-patch14-384.safetensors"
INSTANTX_FLUX = "FLUX.1-dev-IP-Adapter.bin"
DIT_FAMILIES = ("flux", "sd35")  # workflows for these need a current ComfyUI (the 2024 test host has no Flux/SD3)

NEGATIVE = "blurry, lowres, low quality, jpeg artifacts, text, watermark"
# The schedule widgets (ipadapter_core.engine.SCHEDULE_INPUTS) every example, test and benchmark applies unless it
# says otherwise: the nodes' defaults with weight 0.8 (tests/test_engine.py checks them against ApplySettings).
APPLY_DEFAULTS = dict(weight=0.8, weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0,
                      embeds_scaling="V only")

SAVED_EMBEDS = "IPAKit_embeds_00001_.safetensors [output]"  # what embeds_1_save writes first

# Placeholder -> stand-in, per model family: (class_type, input) -> new value, or a function of the old one.
# Everything not listed keeps its published name (the generators write IP-Adapter and CLIP vision files
# under those names). SDXL adapters come from a subfolder because models/ipadapter may also hold
# full-size SDXL adapters, which do not fit the small UNet.
STAND_INS: dict[str, dict[tuple[str, str], object]] = {
    "sd15": {
        ("CheckpointLoaderSimple", "ckpt_name"): names.SD15_CHECKPOINT,
        ("ControlNetLoader", "control_net_name"): names.CONTROLNET_SD15,
    },
    "sdxl": {
        ("CheckpointLoaderSimple", "ckpt_name"): names.SDXL_SMALL_CHECKPOINT,
        ("IPAKitModelLoader", "ipadapter_file"): lambda name: f"{names.SDXL_SMALL_SUBDIR}/{name}",
    },
    # Flux / SD3.5 models at their real widths but one or two blocks (dev/standins/dit_models.py), adapters made for
    # them in their own subfolder (dev/standins/dit_adapters: the Unified Loader finds them there by name)
    "flux": {
        ("UNETLoader", "unet_name"): names.DIT_FLUX_UNET,
        ("DualCLIPLoader", "clip_name1"): names.DIT_CLIP_L_TEXT,
        ("DualCLIPLoader", "clip_name2"): names.DIT_T5XXL,
        ("VAELoader", "vae_name"): names.DIT_FLUX_VAE,
        ("IPAKitModelLoader", "ipadapter_file"): lambda name: f"{names.DIT_SUBDIR}/{name}",
    },
    "sd35": {
        ("UNETLoader", "unet_name"): names.DIT_SD35_UNET,
        ("TripleCLIPLoader", "clip_name1"): names.DIT_CLIP_G_TEXT,
        ("TripleCLIPLoader", "clip_name2"): names.DIT_CLIP_L_TEXT,
        ("TripleCLIPLoader", "clip_name3"): names.DIT_T5XXL,
        ("VAELoader", "vae_name"): names.DIT_SD3_VAE,
        ("IPAKitModelLoader", "ipadapter_file"): lambda name: f"{names.DIT_SUBDIR}/{name}",
    },
}
# Sampling at a size and step count that runs in seconds on a CPU (random weights give noise anyway).
FAST = {
    ("KSampler", "steps"): 1,
    ("EmptyLatentImage", "width"): 64,
    ("EmptyLatentImage", "height"): 64,
    ("ImageScale", "width"): 64,
    ("ImageScale", "height"): 64,
    ("EmptySD3LatentImage", "width"): 64,
    ("EmptySD3LatentImage", "height"): 64,
}


@dataclass(frozen=True)
class Workflow:
    name: str  # file name without .json
    title: str
    family: str  # "sd15" | "sdxl" | "flux" | "sd35": which model family it is for
    build: Callable[[Graph], None]
    adapters: tuple[str, ...] = ()  # dev.standins.ipadapter variants its random stand-ins need
    adapter_format: str = "safetensors"
    faces: bool = False  # needs the InsightFace buffalo_l pack
    after: str | None = None  # a workflow that must run first (it makes a file this one loads)

    def graph(self) -> Graph:
        g = Graph()
        self.build(g)
        return g

    def meta(self) -> dict:
        return {"title": self.title, "family": self.family}

    @property
    def current_only(self) -> bool:
        """Flux and SD3.5 workflows need a ComfyUI with those models (not the 2024 test host)."""
        return self.family in DIT_FAMILIES

    def stand_ins(self) -> tuple[list[str], list[tuple[str, str | None, dict]]]:
        """The random-weight models it runs on (with `STAND_INS`): dev.standins.comfy_models names, and
        dev.standins.ipadapter rows (variant, subfolder of models/ipadapter, ensure_checkpoint arguments)."""
        comfy = ["sd15" if self.family == "sd15" else "sdxl-small", "vit-h"]
        if any(n.type == "ControlNetLoader" for n in self.graph().nodes):
            comfy.append("controlnet-sd15")
        if self.family == "sdxl":
            return comfy, [(v, names.SDXL_SMALL_SUBDIR, {"widths": SDXL_SMALL_WIDTHS}) for v in self.adapters]
        return comfy, [(v, None, {"fmt": self.adapter_format}) for v in self.adapters]


# building blocks


def _checkpoint(g: Graph, name: str = CKPT_SD15):
    return g.add("CheckpointLoaderSimple", 0, ckpt_name=name)


def _sample(g: Graph, model, ckpt, positive: str, *, prefix: str, col: int, latent=None, conditioning=None,
            denoise=1.0, size: int = 512, steps: int = 25, cfg: float = 6.5):
    """Text prompts (unless `conditioning` = (positive, negative) outputs is given), an empty latent (unless
    `latent` is given), KSampler, decode and save, in columns col..col+2."""
    if conditioning is None:
        pos = g.add("CLIPTextEncode", col, title="Positive prompt", text=positive, clip=ckpt[1])
        neg = g.add("CLIPTextEncode", col, title="Negative prompt", text=NEGATIVE, clip=ckpt[1])
        conditioning = (pos[0], neg[0])
    if latent is None:
        latent = g.add("EmptyLatentImage", col, width=size, height=size, batch_size=1)[0]
    sampler = g.add("KSampler", col + 1, model=model, positive=conditioning[0], negative=conditioning[1],
                    latent_image=latent, seed=42, steps=steps, cfg=cfg, sampler_name="dpmpp_2m",
                    scheduler="karras", denoise=denoise)
    decoded = g.add("VAEDecode", col + 2, samples=sampler[0], vae=ckpt[2])
    g.add("SaveImage", col + 2, images=decoded[0], filename_prefix=f"IPAKit/{prefix}")
    return sampler


def _apply(g: Graph, col: int, model, ipadapter, image, *, title: str | None = None, **kw):
    return g.add("IPAKitApply", col, title=title, model=model, ipadapter=ipadapter, image=image, **{**APPLY_DEFAULTS, **kw})


# the workflows


def basic_image_prompt(g: Graph) -> None:
    g.note(0, f"""
        Basic image prompt: the reference image steers the picture, the text adds little.

        - Unified Loader: picks the adapter for the preset and the model family, and its CLIP vision
          model. 'plus (high strength)' needs models/ipadapter/ip-adapter-plus_sd15.safetensors and
          models/clip_vision/{VIT_H}.
        - weight: 0 = no image prompt, 1 = trained strength; 0.6-0.9 leaves room for the text.
        - start_at / end_at: the part of the sampling the image acts in (0-1).
        - weight_type, combine_embeds, embeds_scaling: see the other examples; linear / concat / V only
          are the reference behaviour.
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_SUBJECT)
    loader = g.add("IPAKitUnifiedLoader", 1, model=ckpt[0], preset=PLUS)
    apply = _apply(g, 2, loader[0], loader[1], ref[0])
    _sample(g, apply[0], ckpt, "best quality, high quality", prefix="basic", col=3)


def animation_crossfade(g: Graph) -> None:
    g.note(0, """
        Animation: an 8-frame latent batch cross-fades from one reference to another, with core nodes and
        this pack's only (an AnimateDiff or video model turns the frames into motion; here each frame is
        sampled on its own).

        - IPAdapter Weights: 'shift batches' over the two images makes two image streams of 8 frames each:
          image_1 shows the first reference with weights 1 -> 0 (ease in-out), image_2 the second with the
          complement 0 -> 1.
        - Two Apply nodes with unfold_batch: latent frame i gets frame i of its stream and frame i of its
          weights (the weight input is converted to an input and linked to the weights list).
        - Frames whose weight is 0 cost nothing; the sampler's context windows are followed.
        """, title="How this works")
    ckpt = _checkpoint(g)
    first = g.add("LoadImage", 1, title="First reference", image=REF_SUBJECT)
    second = g.add("LoadImage", 1, title="Second reference", image=REF_STYLE)
    both = g.add("ImageBatch", 1, image1=first[0], image2=second[0])
    weights = g.add("IPAKitWeights", 2, weights="1.0, 0.0", timing="ease in-out", frames=8, method="shift batches",
                    image=both[0])
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    fade_out = _apply(g, 3, loader[0], loader[1], weights[3], title="First reference, fading out", weight=weights[0],
                      unfold_batch=True)
    fade_in = _apply(g, 3, fade_out[0], loader[1], weights[4], title="Second reference, fading in", weight=weights[1],
                     unfold_batch=True)
    latent = g.add("EmptyLatentImage", 3, width=512, height=512, batch_size=8)
    _sample(g, fade_in[0], ckpt, "best quality, high quality", prefix="crossfade", col=4, latent=latent[0])


def noise_negative(g: Graph) -> None:
    g.note(0, """
        Noise negative: IPAdapter Noise makes the image the negative (CFG) pass sees, so the sampler steers
        away from a scrambled copy of the reference instead of from an empty image. This often sharpens the
        image prompt; too much can overcook it.

        - type 'shuffle': the reference distorted elastically, maybe flipped, with a little noise (same
          colours, no layout). 'fade' blends toward random noise, 'dissolve' replaces that fraction of the
          pixels with noise, 'gaussian' adds gaussian noise.
        - strength: how scrambled the negative is, 0-1; near 0 it is the reference itself, which works
          against the image prompt. 0.4-0.8 is a good range for shuffle.
        - blur: softens the noise (radius in pixels of the 224 px result).
        - pattern_seed: which random pattern; it stays fixed between runs.
        - Without an image the noise starts from mid grey.
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_SUBJECT)
    noise = g.add("IPAKitNoise", 1, type="shuffle", strength=0.6, blur=2, image=ref[0], pattern_seed=0)
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    apply = _apply(g, 2, loader[0], loader[1], ref[0], image_negative=noise[0])
    _sample(g, apply[0], ckpt, "best quality, high quality", prefix="noise_negative", col=3)


def image_and_text(g: Graph) -> None:
    g.note(0, """
        Image + text (multimodal prompt): the reference gives the look, the text says what to draw.

        - A lower weight (about 0.5) lets the text lead; raise it for more of the reference.
        - weight_type 'ease out' ramps the image prompt up over the layers: weak in the first ones,
          which settle the layout, full in the last ones, so the text decides more of the picture
          (IPAdapter's 'prompt is more important').
        - Prep Image chooses which square part of the reference the encoder sees ('pad' keeps it all).
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_SUBJECT)
    prep = g.add("IPAKitPrepImage", 1, image=ref[0], interpolation="LANCZOS", crop_position="pad", sharpening=0.0, size=224)
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    apply = _apply(g, 2, loader[0], loader[1], prep[0], weight=0.5, weight_type="ease out")
    _sample(g, apply[0], ckpt, "a knight in ornate armour standing in a snowy forest, detailed, dramatic light",
            prefix="image_and_text", col=3)


def style_transfer(g: Graph) -> None:
    g.note(0, """
        Style transfer (InstantStyle on SD1.5): only the layers that carry style get the image prompt,
        so the colours and brush work of the reference come through but not its content.

        - weight_type 'style transfer': style layers only. 'strong style transfer' adds every layer but
          the layout ones; 'style transfer precise' also pushes the reference's layout away.
        - weight: SD1.5 needs 1.0-1.3 for a clear style; the text says what to draw.
        - For SDXL see sdxl_instantstyle, which sets the blocks explicitly with block_weights.
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Style reference", image=REF_STYLE)
    loader = g.add("IPAKitUnifiedLoader", 1, model=ckpt[0], preset=PLUS)
    apply = _apply(g, 2, loader[0], loader[1], ref[0], weight=1.1, weight_type="style transfer")
    _sample(g, apply[0], ckpt, "a cat sitting on a wooden chair", prefix="style_transfer", col=3)


def composition(g: Graph) -> None:
    g.note(0, """
        Composition: the layout of the reference (where the big shapes are) without its style or content.

        - Unified Loader preset 'composition' loads ip_plus_composition_sd15.safetensors (from ostris),
          a Plus-type adapter trained on layout; put it in models/ipadapter.
        - weight 0.8-1.2; lower it if the reference's content leaks in.
        - With a regular adapter, weight_type 'composition' gives a similar effect.
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Layout reference", image=REF_LAYOUT)
    loader = g.add("IPAKitUnifiedLoader", 1, model=ckpt[0], preset="composition")
    apply = _apply(g, 2, loader[0], loader[1], ref[0], weight=1.0)
    _sample(g, apply[0], ckpt, "a cosy wooden cabin by a lake, autumn", prefix="composition", col=3)


def style_and_composition(g: Graph) -> None:
    g.note(0, """
        Style & Composition: the style of one reference and the layout of another, in one node (SD1.5 and
        SDXL).

        - image_style goes to the style layers, image_composition to the composition layers (InstantStyle's
          choice); each has its own weight.
        - expand_style: the style also on every other layer but the composition ones (stronger style).
        - The same as two chained Apply nodes with the 'style transfer' and 'composition' weight types,
          one clone and one encode per image.
        """, title="How this works")
    ckpt = _checkpoint(g)
    style = g.add("LoadImage", 1, title="Style reference", image=REF_STYLE)
    layout = g.add("LoadImage", 1, title="Composition reference", image=REF_LAYOUT)
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    apply = g.add("IPAKitApplyStyleComposition", 2, model=loader[0], ipadapter=loader[1], image_style=style[0],
                  image_composition=layout[0], weight_style=1.0, weight_composition=0.8, expand_style=False,
                  combine_embeds="average", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    _sample(g, apply[0], ckpt, "a castle on a hill", prefix="style_and_composition", col=3)


def clip_vision_enhancer(g: Graph) -> None:
    g.note(0, """
        ClipVision Enhancer: the reference is also encoded as enhance_tiles x enhance_tiles tiles, whose tokens
        are pooled back to one image's worth, so small details reach the adapter.

        - Without unfold_batch: the whole image (times enhance_ratio) and the tiled view are two references,
          merged by combine_embeds (concat keeps both).
        - With unfold_batch: each frame gets whole x ratio + tiles x (1 - ratio).
        - For adapters that read CLIP's token features: plus, plus face, full face, composition, FaceID Plus.
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_SUBJECT)
    loader = g.add("IPAKitUnifiedLoader", 1, model=ckpt[0], preset=PLUS)
    apply = g.add("IPAKitApplyClipVisionEnhancer", 2, model=loader[0], ipadapter=loader[1], image=ref[0], **APPLY_DEFAULTS,
                  enhance_tiles=2, enhance_ratio=0.6)
    _sample(g, apply[0], ckpt, "best quality, high quality", prefix="clip_vision_enhancer", col=3)


def precise_composition(g: Graph) -> None:
    g.note(0, """
        Precise composition: the reference's layout, with its style pushed away.

        - The composition layers get the reference at weight; the other layers give it to the negative
          (CFG) pass at composition_boost (a tenth of it outside the style layers), so the sampler steers
          away from the reference's colours and textures.
        - composition_boost 0 is plain composition; 0.3-1.0 keeps the text's style; too much overcooks.
        - On Apply the same is weight_type 'composition precise' (not connecting composition_boost uses
          the weight as the boost).
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Layout reference", image=REF_LAYOUT)
    loader = g.add("IPAKitUnifiedLoader", 1, model=ckpt[0], preset=PLUS)
    apply = g.add("IPAKitApplyPreciseComposition", 2, model=loader[0], ipadapter=loader[1], image=ref[0], weight=1.0,
                  composition_boost=0.5, combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    _sample(g, apply[0], ckpt, "a watercolour painting of a harbour", prefix="precise_composition", col=3)


def tiled_reference(g: Graph) -> None:
    g.note(0, """
        Tiled reference: the reference is cut into 256 px tiles instead of being squeezed into one 224 px
        encode, so details and wide or tall references survive.

        - Near-square references: the centre square at 512 px in 2x2 tiles. Wider or taller ones: short
          side 256 px and 2-4 evenly overlapping tiles along the long side.
        - Each tile is its own image prompt, acting where the tile lies in the reference (stretched over
          the picture); attn_mask restricts all of them.
        - sharpening: contrast-adaptive sharpening before cutting, 0 = off.
        - The preview shows the tiles CLIP vision sees.
        """, title="How this works")
    ckpt = _checkpoint(g)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_STYLE)
    loader = g.add("IPAKitUnifiedLoader", 1, model=ckpt[0], preset=PLUS)
    apply = g.add("IPAKitApplyTiled", 2, model=loader[0], ipadapter=loader[1], image=ref[0], **APPLY_DEFAULTS, sharpening=0.2)
    g.add("PreviewImage", 2, title="Tiles", images=apply[1])
    _sample(g, apply[0], ckpt, "a mountain landscape", prefix="tiled_reference", col=3)


def masked_two_references(g: Graph) -> None:
    g.note(0, """
        Two references in two regions: each Apply gets an attn_mask, white where its image acts.

        - The masks are drawn with core mask nodes: a black canvas with a white left half, and its
          inverse. Any MASK works (a painted mask from Load Image, a segmentation).
        - Masks are resized to the latent, so any resolution works; keep the aspect of the picture.
        - The text should describe both parts; the two adapters are chained (each adds its own attention).
        """, title="How this works")
    ckpt = _checkpoint(g)
    left_ref = g.add("LoadImage", 1, title="Left reference", image=REF_SUBJECT)
    right_ref = g.add("LoadImage", 1, title="Right reference", image=REF_STYLE)
    canvas = g.add("SolidMask", 0, title="Canvas (black)", value=0.0, width=512, height=512)
    half = g.add("SolidMask", 0, title="Left half (white)", value=1.0, width=256, height=512)
    left = g.add("MaskComposite", 2, title="Left mask", destination=canvas[0], source=half[0], x=0, y=0, operation="add")
    right = g.add("InvertMask", 2, title="Right mask", mask=left[0])
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    first = _apply(g, 3, loader[0], loader[1], left_ref[0], title="Apply IPAdapter (left)", attn_mask=left[0])
    second = _apply(g, 3, first[0], loader[1], right_ref[0], title="Apply IPAdapter (right)", attn_mask=right[0])
    _sample(g, second[0], ckpt, "two paintings hanging side by side on a white wall", prefix="masked", col=4)


def regional_prompts(g: Graph) -> None:
    g.note(0, """
        Regional prompts: each region gets its own reference image and its own text, in one Apply.

        - IPAdapter Regional Conditioning bundles one region: its image, mask, image_weight, weight_type
          and start/end, and masks that region's text prompt with prompt_weight (as Conditioning Set Mask).
        - Combine Params joins the regions; Apply IPAdapter from Params installs all of them on one model.
        - Conditioning (Combine) joins the regional text prompts with a prompt for the whole picture.
        - The same as chained Apply nodes with attn_mask, in one node and one clone.
        """, title="How this works")
    ckpt = _checkpoint(g)
    left_ref = g.add("LoadImage", 1, title="Left reference", image=REF_SUBJECT)
    right_ref = g.add("LoadImage", 1, title="Right reference", image=REF_STYLE)
    canvas = g.add("SolidMask", 0, title="Canvas (black)", value=0.0, width=512, height=512)
    half = g.add("SolidMask", 0, title="Left half (white)", value=1.0, width=256, height=512)
    left = g.add("MaskComposite", 1, title="Left mask", destination=canvas[0], source=half[0], x=0, y=0, operation="add")
    right = g.add("InvertMask", 1, title="Right mask", mask=left[0])
    whole = g.add("CLIPTextEncode", 2, title="Whole picture", text="two still lifes side by side, best quality", clip=ckpt[1])
    negative = g.add("CLIPTextEncode", 2, title="Negative prompt", text=NEGATIVE, clip=ckpt[1])
    left_text = g.add("CLIPTextEncode", 2, title="Left text", text="a red apple on a table", clip=ckpt[1])
    right_text = g.add("CLIPTextEncode", 2, title="Right text", text="swirling blue paint", clip=ckpt[1])
    region = dict(image_weight=0.8, prompt_weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0)
    first = g.add("IPAKitRegionalConditioning", 3, title="Left region", image=left_ref[0], mask=left[0], positive=left_text[0],
                  **region)
    second = g.add("IPAKitRegionalConditioning", 3, title="Right region", image=right_ref[0], mask=right[0],
                   positive=right_text[0], **region)
    params = g.add("IPAKitCombineParams", 4, params_1=first[0], params_2=second[0])
    loader = g.add("IPAKitUnifiedLoader", 4, model=ckpt[0], preset=PLUS)
    apply = g.add("IPAKitApplyFromParams", 4, model=loader[0], ipadapter=loader[1], ipadapter_params=params[0],
                  combine_embeds="concat", embeds_scaling="V only")
    positives = g.add("ConditioningCombine", 4, conditioning_1=first[1], conditioning_2=second[1])
    positive = g.add("ConditioningCombine", 4, conditioning_1=whole[0], conditioning_2=positives[0])
    _sample(g, apply[0], ckpt, "", prefix="regional", col=5, conditioning=(positive[0], negative[0]))


def chained_style_and_face(g: Graph) -> None:
    g.note(0, """
        Chained adapters: a style reference and a face reference, each with its own adapter.

        - Chain Apply nodes (model -> model); each adds its own image attention, so the two adapters
          and their weights stay independent. A second Unified Loader passes the model through.
        - 'plus face (portraits)' needs models/ipadapter/ip-adapter-plus-face_sd15.safetensors; it keeps
          the face, not the identity (for identity use FaceID, see faceid).
        - Style at 'style transfer' so it does not fight the face for the layout.
        """, title="How this works")
    ckpt = _checkpoint(g)
    style_ref = g.add("LoadImage", 1, title="Style reference", image=REF_STYLE)
    face_ref = g.add("LoadImage", 1, title="Face reference", image=REF_FACE)
    style_loader = g.add("IPAKitUnifiedLoader", 2, title="Unified Loader (style)", model=ckpt[0], preset=PLUS)
    style = _apply(g, 2, style_loader[0], style_loader[1], style_ref[0], title="Apply IPAdapter (style)",
                   weight=1.0, weight_type="style transfer")
    face_loader = g.add("IPAKitUnifiedLoader", 3, title="Unified Loader (face)", model=style[0], preset="plus face (portraits)")
    face = _apply(g, 3, face_loader[0], face_loader[1], face_ref[0], title="Apply IPAdapter (face)", weight=0.7)
    _sample(g, face[0], ckpt, "portrait of a woman, upper body, looking at the viewer", prefix="style_and_face", col=4)


def image_to_image(g: Graph) -> None:
    g.note(0, """
        Image to image with an image prompt: the init image gives the structure, the reference the look.

        - denoise: how much of the init image is redrawn (0.4 close to it, 0.8 loosely based on it).
        - The init image is scaled to the generation size first (Upscale Image, crop center).
        - The image prompt weight works as in the basic example.
        """, title="How this works")
    ckpt = _checkpoint(g)
    init = g.add("LoadImage", 1, title="Init image", image=INIT_IMAGE)
    scaled = g.add("ImageScale", 1, image=init[0], upscale_method="lanczos", width=512, height=512, crop="center")
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_STYLE)
    encoded = g.add("VAEEncode", 2, pixels=scaled[0], vae=ckpt[2])
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    apply = _apply(g, 2, loader[0], loader[1], ref[0], weight=0.7)
    _sample(g, apply[0], ckpt, "a landscape painting, best quality", prefix="image_to_image", col=3,
            latent=encoded[0], denoise=0.6)


def inpainting(g: Graph) -> None:
    g.note(0, """
        Inpainting with an image prompt: the transparent part of the image is redrawn, guided by the
        reference.

        - Load Image gives the alpha channel as MASK (transparent = 1 = redraw); paint one with
          ComfyUI's mask editor (right click > Open in MaskEditor).
        - The same mask goes to Apply's attn_mask, so the reference acts only inside the hole.
        - grow_mask_by widens the mask a little for seamless edges. An inpainting checkpoint
          (e.g. sd-v1-5-inpainting) blends best.
        """, title="How this works")
    ckpt = _checkpoint(g)
    image = g.add("LoadImage", 1, title="Image with a transparent hole", image=INPAINT_IMAGE)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_SUBJECT)
    encoded = g.add("VAEEncodeForInpaint", 2, pixels=image[0], vae=ckpt[2], mask=image[1], grow_mask_by=6)
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    apply = _apply(g, 2, loader[0], loader[1], ref[0], weight=0.8, attn_mask=image[1])
    _sample(g, apply[0], ckpt, "best quality, high quality", prefix="inpainting", col=3, latent=encoded[0])


def controlnet_depth(g: Graph) -> None:
    g.note(0, f"""
        ControlNet + IP-Adapter: the depth map fixes the structure, the reference the look (the use
        case of IP-Adapter's depth ControlNet demo).

        - {CONTROLNET_DEPTH} goes in models/controlnet. Make the depth map with a depth
          preprocessor (e.g. a custom node pack) or load one; white is near.
        - ControlNet strength about 0.6-1.0; end_percent below 1 frees the last steps for details.
        - The image prompt adds colours and materials; weight 0.6-0.9.
        """, title="How this works")
    ckpt = _checkpoint(g)
    control = g.add("ControlNetLoader", 0, control_net_name=CONTROLNET_DEPTH)
    depth = g.add("LoadImage", 1, title="Depth map", image=DEPTH_MAP)
    scaled = g.add("ImageScale", 1, image=depth[0], upscale_method="bilinear", width=512, height=512, crop="center")
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_STYLE)
    pos = g.add("CLIPTextEncode", 2, title="Positive prompt", text="a sculpture in a museum hall, soft light", clip=ckpt[1])
    neg = g.add("CLIPTextEncode", 2, title="Negative prompt", text=NEGATIVE, clip=ckpt[1])
    cond = g.add("ControlNetApplyAdvanced", 3, positive=pos[0], negative=neg[0], control_net=control[0], image=scaled[0],
                 strength=0.8, start_percent=0.0, end_percent=0.8)
    loader = g.add("IPAKitUnifiedLoader", 3, model=ckpt[0], preset=PLUS)
    apply = _apply(g, 3, loader[0], loader[1], ref[0], weight=0.7)
    _sample(g, apply[0], ckpt, "", prefix="controlnet_depth", col=4, conditioning=(cond[0], cond[1]))


def embeds_1_save(g: Graph) -> None:
    g.note(0, """
        Embeds, part 1: encode references once, merge them and save the result.

        - Encode runs CLIP vision on each reference (the expensive part) and keeps the features the
          adapter needs, with the negative.
        - Combine Embeds 'average' merges the two references into one; 'concat' keeps both.
        - Save Embeds writes output/IPAKit_embeds_00001_.safetensors (the counter grows on every run);
          embeds_2_load applies it without images or CLIP vision.
        """, title="How this works")
    ckpt = _checkpoint(g)
    first = g.add("LoadImage", 1, title="Reference 1", image=REF_SUBJECT)
    second = g.add("LoadImage", 1, title="Reference 2", image=REF_STYLE)
    loader = g.add("IPAKitUnifiedLoader", 2, model=ckpt[0], preset=PLUS)
    enc1 = g.add("IPAKitEncode", 2, title="Encode reference 1", ipadapter=loader[1], image=first[0])
    enc2 = g.add("IPAKitEncode", 2, title="Encode reference 2", ipadapter=loader[1], image=second[0])
    merged = g.add("IPAKitCombineEmbeds", 3, embeds1=enc1[0], embeds2=enc2[0], method="average")
    g.add("IPAKitSaveEmbeds", 3, embeds=merged[0], filename_prefix="IPAKit_embeds")
    apply = g.add("IPAKitApplyEmbeds", 3, model=loader[0], ipadapter=loader[1], embeds=merged[0], **APPLY_DEFAULTS)
    _sample(g, apply[0], ckpt, "best quality, high quality", prefix="embeds_save", col=4)


def embeds_2_load(g: Graph) -> None:
    g.note(0, f"""
        Embeds, part 2: apply saved embeds; no reference image and no CLIP vision run.

        - Run embeds_1_save first, then pick its file in Load Embeds ('[output]' marks files from the
          output folder; press R to refresh the list). Embeds files can be shared like LoRAs.
        - Embeds are checked against the adapter: they must come from the same kind of adapter
          (here {PLUS}).
        """, title="How this works")
    ckpt = _checkpoint(g)
    embeds = g.add("IPAKitLoadEmbeds", 1, embeds=SAVED_EMBEDS)
    loader = g.add("IPAKitUnifiedLoader", 1, model=ckpt[0], preset=PLUS)
    apply = g.add("IPAKitApplyEmbeds", 2, model=loader[0], ipadapter=loader[1], embeds=embeds[0], **APPLY_DEFAULTS)
    _sample(g, apply[0], ckpt, "best quality, high quality", prefix="embeds_load", col=3)


def faceid(g: Graph) -> None:
    g.note(0, f"""
        FaceID: the identity of a face (InsightFace's face embedding), not its pixels.

        - Needs `pip install insightface onnxruntime` and the buffalo_l pack in
          models/insightface/models/buffalo_l/ (never downloaded by the node).
        - ip-adapter-faceid-plusv2_sd15.bin goes in models/ipadapter; Plus v2 also reads the face crop
          with {VIT_H}.
        - FaceID LoRA applies the LoRA embedded in the adapter file (strength 0.5-0.8); Apply FaceID
          then does not apply it again. weight_faceidv2 sets how much face structure v2 adds.
        - face_image shows the aligned face InsightFace found.
        """, title="How this works")
    ckpt = _checkpoint(g)
    face = g.add("IPAKitInsightFaceLoader", 0, provider="CPU", model_name="buffalo_l")
    ref = g.add("LoadImage", 1, title="Face reference", image=REF_FACE)
    adapter = g.add("IPAKitModelLoader", 1, ipadapter_file="ip-adapter-faceid-plusv2_sd15.bin", variant_override="auto")
    clip_vision = g.add("CLIPVisionLoader", 1, clip_name=VIT_H)
    lora = g.add("IPAKitFaceIDLoRA", 2, model=ckpt[0], ipadapter=adapter[0], lora="embedded (inside the adapter file)", strength=0.6)
    apply = g.add("IPAKitApplyFaceID", 2, model=lora[0], ipadapter=adapter[0], image=ref[0], insightface=face[0],
                  clip_vision=clip_vision[0], **APPLY_DEFAULTS, weight_faceidv2=1.0, face_selection="largest", face_index=0,
                  on_missing_face="error", lora_strength=0.6)
    g.add("PreviewImage", 3, title="Aligned face", images=apply[1])
    _sample(g, apply[0], ckpt, "photo of a person in a garden, natural light", prefix="faceid", col=3)


def sdxl_instantstyle(g: Graph) -> None:
    g.note(0, f"""
        SDXL + InstantStyle: the style of the reference on SDXL, set per block with block_weights.

        - ip-adapter-plus_sdxl_vit-h.safetensors (models/ipadapter) reads {VIT_H}
          (models/clip_vision); the Model Loader + Load CLIP Vision pair is the explicit way.
        - block_weights {{"up": {{"block_0": [0.0, 1.0, 0.0]}}}} is InstantStyle's style-only setting
          (diffusers' set_ip_adapter_scale format; blocks not named get 0). Add
          "down": {{"block_2": [0.0, 1.0]}} for layout too.
        - weight scales everything; weight_type linear keeps the block weights as given.
        """, title="How this works")
    ckpt = _checkpoint(g, CKPT_SDXL)
    adapter = g.add("IPAKitModelLoader", 0, ipadapter_file="ip-adapter-plus_sdxl_vit-h.safetensors", variant_override="auto")
    clip_vision = g.add("CLIPVisionLoader", 1, clip_name=VIT_H)
    ref = g.add("LoadImage", 1, title="Style reference", image=REF_STYLE)
    apply = _apply(g, 2, ckpt[0], adapter[0], ref[0], weight=1.0, clip_vision=clip_vision[0],
                   block_weights='{"up": {"block_0": [0.0, 1.0, 0.0]}}')
    _sample(g, apply[0], ckpt, "a lighthouse on a cliff at sunset", prefix="sdxl_instantstyle", col=3, size=1024,
            steps=30, cfg=6.0)


def _flux_models(g: Graph):
    unet = g.add("UNETLoader", 0, unet_name=FLUX_UNET, weight_dtype="default")
    clip = g.add("DualCLIPLoader", 0, clip_name1=CLIP_L_TEXT, clip_name2=T5XXL, type="flux")
    vae = g.add("VAELoader", 0, vae_name=FLUX_VAE)
    return unet, clip, vae


def _flux_sample(g: Graph, model, clip, vae, text: str, *, prefix: str, col: int):
    """Flux dev's usual sampling: guidance 3.5 in the conditioning, CFG 1 (the negative is not evaluated)."""
    pos = g.add("CLIPTextEncode", col, title="Prompt", text=text, clip=clip[0])
    guided = g.add("FluxGuidance", col, conditioning=pos[0], guidance=3.5)
    neg = g.add("ConditioningZeroOut", col, conditioning=pos[0])
    latent = g.add("EmptySD3LatentImage", col, width=1024, height=1024, batch_size=1)
    sampler = g.add("KSampler", col + 1, model=model, positive=guided[0], negative=neg[0], latent_image=latent[0],
                    seed=42, steps=20, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    decoded = g.add("VAEDecode", col + 2, samples=sampler[0], vae=vae[0])
    g.add("SaveImage", col + 2, images=decoded[0], filename_prefix=f"IPAKit/{prefix}")


def flux_xlabs(g: Graph) -> None:
    g.note(0, f"""
        Flux + XLabs IP-Adapter v2: the reference steers FLUX.1 dev.

        - Unified Loader 'flux xlabs v2 (CLIP ViT-L)': models/ipadapter/flux-ip-adapter-v2.safetensors
          (XLabs-AI/flux-ip-adapter-v2's ip_adapter.safetensors, renamed, or kept in a folder of that name)
          and models/clip_vision/{CLIP_VISION_L}.
        - The adapter enters Flux's 19 double blocks; weight 0.6-1.0, start/end and block_weights
          ('0:1.0, 5:0.5', blocks 0-18) work as on SD; weight types other than linear do not apply.
        - Flux dev samples with guidance 3.5 and CFG 1: the negative is not evaluated.
        - Needs a ComfyUI with Flux (this example uses {FLUX_UNET}, {CLIP_L_TEXT} + {T5XXL}, {FLUX_VAE}).
        """, title="How this works")
    unet, clip, vae = _flux_models(g)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_SUBJECT)
    loader = g.add("IPAKitUnifiedLoader", 1, model=unet[0], preset="flux xlabs v2 (CLIP ViT-L)")
    apply = _apply(g, 2, loader[0], loader[1], ref[0], weight=0.9)
    _flux_sample(g, apply[0], clip, vae, "a cozy reading corner, warm light", prefix="flux_xlabs", col=3)


def flux_instantx(g: Graph) -> None:
    g.note(0, f"""
        Flux + InstantX IP-Adapter, loaded explicitly: the style and subject of the reference on FLUX.1 dev.

        - IPAdapter Model Loader: models/ipadapter/{INSTANTX_FLUX} (InstantX/FLUX.1-dev-IP-Adapter's
          ip-adapter.bin, renamed). Load CLIP Vision: {SIGLIP}, the full
          google/siglip-so400m-patch14-384 model.safetensors: the adapter reads SigLIP's pooled output, whose
          attention-pooling head this pack reads from that file.
        - It enters all 19 double and 38 single blocks; InstantX suggest weight 0.6-0.8 and ending early
          (end_at 0.6-0.8) to keep the prompt's control of details.
        - image_negative is optional: without it the negative gets zero image features (as diffusers).
        """, title="How this works")
    unet, clip, vae = _flux_models(g)
    adapter = g.add("IPAKitModelLoader", 1, ipadapter_file=INSTANTX_FLUX, variant_override="auto")
    clip_vision = g.add("CLIPVisionLoader", 1, clip_name=SIGLIP)
    ref = g.add("LoadImage", 1, title="Style reference", image=REF_STYLE)
    apply = _apply(g, 2, unet[0], adapter[0], ref[0], clip_vision=clip_vision[0], weight=0.7, end_at=0.8)
    _flux_sample(g, apply[0], clip, vae, "a lighthouse on a cliff at sunset", prefix="flux_instantx", col=3)


def sd35_instantx(g: Graph) -> None:
    g.note(0, f"""
        SD3.5 Large + InstantX IP-Adapter: the reference steers SD3.5 Large through its 38 joint blocks.

        - Unified Loader 'sd3.5 large instantx (SigLIP)': models/ipadapter/SD3.5-Large-IP-Adapter.bin
          (InstantX/SD3.5-Large-IP-Adapter's ip-adapter.bin, renamed, or in a folder of that name) and
          models/clip_vision/{SIGLIP}.
        - Its image tokens depend on the timestep: they are recomputed once per model call and shared by all
          blocks. weight 0.5-0.8 is InstantX's range.
        - Needs a ComfyUI with SD3.5 ({SD35_UNET}, {CLIP_G_TEXT} + {CLIP_L_TEXT} + {T5XXL}, {SD3_VAE}).
        """, title="How this works")
    unet = g.add("UNETLoader", 0, unet_name=SD35_UNET, weight_dtype="default")
    clip = g.add("TripleCLIPLoader", 0, clip_name1=CLIP_G_TEXT, clip_name2=CLIP_L_TEXT, clip_name3=T5XXL)
    vae = g.add("VAELoader", 0, vae_name=SD3_VAE)
    ref = g.add("LoadImage", 1, title="Reference image", image=REF_SUBJECT)
    loader = g.add("IPAKitUnifiedLoader", 1, model=unet[0], preset="sd3.5 large instantx (SigLIP)")
    apply = _apply(g, 2, loader[0], loader[1], ref[0], weight=0.7)
    pos = g.add("CLIPTextEncode", 3, title="Positive prompt", text="a cozy reading corner, warm light", clip=clip[0])
    neg = g.add("CLIPTextEncode", 3, title="Negative prompt", text=NEGATIVE, clip=clip[0])
    latent = g.add("EmptySD3LatentImage", 3, width=1024, height=1024, batch_size=1)
    sampler = g.add("KSampler", 4, model=apply[0], positive=pos[0], negative=neg[0], latent_image=latent[0], seed=42,
                    steps=28, cfg=4.5, sampler_name="euler", scheduler="sgm_uniform", denoise=1.0)
    decoded = g.add("VAEDecode", 5, samples=sampler[0], vae=vae[0])
    g.add("SaveImage", 5, images=decoded[0], filename_prefix="IPAKit/sd35_instantx")


WORKFLOWS: tuple[Workflow, ...] = (
    Workflow("basic_image_prompt", "Basic image prompt", "sd15", basic_image_prompt, ("plus_sd15",)),
    Workflow("noise_negative", "Noise as the image negative", "sd15", noise_negative, ("plus_sd15",)),
    Workflow("animation_crossfade", "Animation: cross-fade two references over 8 frames", "sd15", animation_crossfade,
             ("plus_sd15",)),
    Workflow("image_and_text", "Image + text (multimodal)", "sd15", image_and_text, ("plus_sd15",)),
    Workflow("style_transfer", "Style transfer (InstantStyle, SD1.5)", "sd15", style_transfer, ("plus_sd15",)),
    Workflow("composition", "Composition adapter", "sd15", composition, ("composition_sd15",)),
    Workflow("style_and_composition", "Style & Composition: two references, one node", "sd15", style_and_composition,
             ("plus_sd15",)),
    Workflow("clip_vision_enhancer", "ClipVision Enhancer (tiled encoding)", "sd15", clip_vision_enhancer, ("plus_sd15",)),
    Workflow("tiled_reference", "Tiled reference", "sd15", tiled_reference, ("plus_sd15",)),
    Workflow("precise_composition", "Precise composition with a boost", "sd15", precise_composition, ("plus_sd15",)),
    Workflow("masked_two_references", "Two references in two mask regions", "sd15", masked_two_references, ("plus_sd15",)),
    Workflow("regional_prompts", "Regional image and text prompts", "sd15", regional_prompts, ("plus_sd15",)),
    Workflow("chained_style_and_face", "Chained adapters: style + face", "sd15", chained_style_and_face,
             ("plus_sd15", "plus-face_sd15")),
    Workflow("image_to_image", "Image to image", "sd15", image_to_image, ("plus_sd15",)),
    Workflow("inpainting", "Inpainting", "sd15", inpainting, ("plus_sd15",)),
    Workflow("controlnet_depth", "ControlNet depth + IP-Adapter", "sd15", controlnet_depth, ("plus_sd15",)),
    Workflow("embeds_1_save", "Embeds: encode, combine, save", "sd15", embeds_1_save, ("plus_sd15",)),
    Workflow("embeds_2_load", "Embeds: load and apply", "sd15", embeds_2_load, ("plus_sd15",), after="embeds_1_save"),
    Workflow("faceid", "FaceID Plus v2 with its LoRA", "sd15", faceid, ("faceid-plusv2_sd15",), adapter_format="bin",
             faces=True),
    Workflow("sdxl_instantstyle", "SDXL style transfer (InstantStyle block weights)", "sdxl", sdxl_instantstyle,
             ("plus_sdxl_vit-h",)),
    Workflow("flux_xlabs", "Flux: XLabs IP-Adapter v2", "flux", flux_xlabs, ("xlabs-v2",)),
    Workflow("flux_instantx", "Flux: InstantX IP-Adapter with SigLIP", "flux", flux_instantx, ("instantx-flux",)),
    Workflow("sd35_instantx", "SD3.5 Large: InstantX IP-Adapter", "sd35", sd35_instantx, ("instantx-sd35",)),
)
BY_NAME = {wf.name: wf for wf in WORKFLOWS}
MAIN = "basic_image_prompt"  # the workflow the README's first command runs
