"""Widget definitions shared by several nodes, each with its tooltip (one place, so they never drift)."""

from __future__ import annotations

from ..ipadapter_core import COMBINE_METHODS, EMBEDS_SCALING, WEIGHT_TYPES, ApplySettings, Topology, parse_block_weights
from ..ipadapter_core.engine import SCHEDULE_INPUTS
from ..ipadapter_core.faces import FACE_PROVIDERS

ADAPTER = "IPAKIT_ADAPTER"
EMBEDS = "IPAKIT_EMBEDS"
INSIGHTFACE = "IPAKIT_INSIGHTFACE"
CATEGORY = "ipadapter_kit"
_DEFAULTS = ApplySettings()  # the engine's defaults are the widgets' defaults

MODEL = ("MODEL", {"tooltip": "The diffusion model to add the image prompt to. It is cloned; the input model is not changed."})
IPADAPTER = (ADAPTER, {"tooltip": "The IP-Adapter, from the Model Loader or the Unified Loader."})
IMAGE = ("IMAGE", {"tooltip": "Reference image(s). Several images (a batch) are merged as combine_embeds says."})
WEIGHT = (
    "FLOAT",
    {
        "default": _DEFAULTS.weight,
        "min": -1.0,
        "max": 5.0,
        "step": 0.05,
        "tooltip": "Strength of the image prompt. 0 leaves the model exactly as it was, 1 is the strength the adapter "
        "was trained at, higher values override the text more, negative values push away from the image. Convert it to "
        "an input to link a weights list from IPAdapter Weights: one weight per latent frame (the last repeats for later "
        "frames; frames of weight 0 cost nothing).",
    },
)
WEIGHT_TYPE = (
    list(WEIGHT_TYPES),
    {
        "default": _DEFAULTS.weight_type,
        "tooltip": "How the weight is spread over the UNet layers. linear: the same everywhere. ease in / ease out / "
        "ease in-out / reverse in-out: ramps over the layers. weak input/output/middle, strong middle: 0.2x on those "
        "blocks. style transfer / composition: only the layers that carry style or layout (InstantStyle). strong style "
        "transfer: every layer but layout. style and composition: both at once. The precise types also push the other "
        "feature away through the negative prompt.",
    },
)
COMBINE = (
    list(COMBINE_METHODS),
    {
        "default": _DEFAULTS.combine_embeds,
        "tooltip": "How several reference images are merged. concat: all their tokens in one attention (the model blends "
        "them); add; subtract (first minus the mean of the rest); average; norm average (average of directions, keeps "
        "the average strength); max; min.",
    },
)
START_AT = (
    "FLOAT",
    {"default": _DEFAULTS.start_at, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "Fraction of sampling after which the image prompt starts (0 = from the first step)."},
)
END_AT = (
    "FLOAT",
    {"default": _DEFAULTS.end_at, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "Fraction of sampling after which the image prompt stops (1 = until the last step)."},
)
EMBEDS_SCALING_INPUT = (
    list(EMBEDS_SCALING),
    {
        "default": _DEFAULTS.embeds_scaling,
        "tooltip": "Where the weight acts inside attention. V only: scales the image attention output (the reference "
        "method). K+V: also sharpens where the image is attended. K+V w/ C penalty: the same, weaker on wide layers. "
        "K+mean(V) w/ C penalty: scales the shared part of the image and keeps its details.",
    },
)
CLIP_VISION = ("CLIP_VISION", {"tooltip": "CLIP vision encoder matching the adapter (ViT-H for most). Not needed when the adapter came from the Unified Loader."})
IMAGE_NEGATIVE = ("IMAGE", {"tooltip": "Optional image to steer away from: it replaces the empty image the negative (CFG) pass otherwise sees."})
ATTN_MASK = (
    "MASK",
    {
        "tooltip": "Optional mask of where the image prompt acts (white) and where not (black). Without unfold_batch: one "
        "mask for all images, or one per reference image (with concat) to put each image in its own region. With "
        "unfold_batch: one mask per latent frame (the last repeats for later frames)."
    },
)
UNFOLD_BATCH = (
    "BOOLEAN",
    {
        "default": False,
        "tooltip": "For animation (a batch of latent frames): latent frame i gets the i-th reference image alone (the last "
        "one repeats when there are fewer images than frames; extra images are unused) and the i-th mask. "
        "combine_embeds is then not used. Works with the sampler's context windows (ComfyUI core and AnimateDiff).",
    },
)
ENCODE_BATCH_SIZE = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 4096,
        "tooltip": "Encode the reference images through CLIP vision this many at a time (with a progress bar), so hundreds "
        "of frames never hold more than one chunk's activations. 0: 32 at a time.",
    },
)
BLOCK_WEIGHTS = (
    "STRING",
    {
        "default": _DEFAULTS.block_weights,
        "multiline": True,
        "tooltip": "Optional per-block weights, multiplied with weight and weight_type. Either the diffusers/InstantStyle "
        'dict, e.g. {"up": {"block_0": [0.0, 1.0, 0.0]}} (SDXL style only; blocks not named get 0), or layer:weight '
        "pairs on transformer indices (SD1.5 0-15, SDXL 0-10), e.g. 3:1.0, 6:0.5. Empty: no block weights.",
    },
)
WEIGHT_FACEIDV2 = (
    "FLOAT",
    {
        "default": _DEFAULTS.weight_faceidv2,
        "min": -1.0,
        "max": 5.0,
        "step": 0.05,
        "tooltip": "FaceID Plus v2 only: how much of the face structure (from the CLIP view of the face) is added to the "
        "identity. 1 is the reference default; other adapters ignore it.",
    },
)

LORA_STRENGTH = (
    "FLOAT",
    {
        "default": 0.6,
        "min": 0.0,
        "max": 2.0,
        "step": 0.01,
        "tooltip": "Strength of the FaceID LoRA that ships inside FaceID adapter files (0 disables it). Applied once per "
        "model: a model that already has it (from the Unified Loader or FaceID LoRA node) is not patched again. "
        "Adapters without a LoRA (portrait, Kolors) ignore it.",
    },
)

STYLE_BOOST = (
    "FLOAT",
    {"default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
     "tooltip": "Style transfer precise: the weight of the reference on the composition layers, given to the negative "
     "prompt so the reference's layout is pushed away while its style is kept. Higher: less of the reference's layout."},
)
COMPOSITION_BOOST = (
    "FLOAT",
    {"default": 0.0, "min": -5.0, "max": 5.0, "step": 0.05,
     "tooltip": "Composition precise: the weight of the reference on the style layers (a tenth of it on the others), "
     "given to the negative prompt so the reference's style is pushed away while its layout is kept. 0: plain composition."},
)
WEIGHT_COMPOSITION = (
    "FLOAT",
    {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
     "tooltip": "The weight of the composition (layout) layers; the style layers use weight."},
)
WEIGHT_KOLORS = (
    "FLOAT",
    {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
     "tooltip": "Kolors FaceID only: scales the Kolors UNet's encoder_hid_proj output that carries the face tokens into "
     "every layer (1: as trained). Other adapters ignore it."},
)


def optional_number(widget: tuple, tooltip_suffix: str) -> tuple:
    """An optional number as an input socket only (no widget), so "not connected" stays distinguishable from a value."""
    kind, options = widget
    return (kind, {**options, "forceInput": True, "tooltip": f"{options['tooltip']} {tooltip_suffix}"})

PROVIDER = (
    list(FACE_PROVIDERS),
    {"default": "CPU", "tooltip": "onnxruntime execution provider; falls back to CPU with a warning when it is not installed."},
)

_SCHEDULE = {"weight": WEIGHT, "weight_type": WEIGHT_TYPE, "combine_embeds": COMBINE, "start_at": START_AT, "end_at": END_AT,
             "embeds_scaling": EMBEDS_SCALING_INPUT}


def schedule_inputs() -> dict:
    """The widgets every apply node has, in the order saved workflows expect (the engine's SCHEDULE_INPUTS)."""
    return {name: _SCHEDULE[name] for name in SCHEDULE_INPUTS}


def apply_optional() -> dict:
    return {"clip_vision": CLIP_VISION, "image_negative": IMAGE_NEGATIVE, "attn_mask": ATTN_MASK, "block_weights": BLOCK_WEIGHTS,
            "unfold_batch": UNFOLD_BATCH, "encode_batch_size": ENCODE_BATCH_SIZE, **boost_inputs()}


def boost_inputs() -> dict:
    """The precise and style-and-composition weight types' extra numbers, as optional input sockets."""
    return {
        "style_boost": optional_number(STYLE_BOOST, "Not connected: the weight."),
        "composition_boost": optional_number(COMPOSITION_BOOST, "Not connected: the weight."),
        "weight_composition": optional_number(WEIGHT_COMPOSITION, "For 'style and composition'. Not connected: 1.0."),
    }


def validate_block_weights(block_weights) -> bool | str:
    """Queue-time check of block_weights (the layer count is known only at run time: accept what fits SD1.5 or SDXL)."""
    if block_weights is None or not str(block_weights).strip():
        return True
    errors = []
    for topo in (Topology.sd15(), Topology.sdxl()):
        try:
            parse_block_weights(str(block_weights), topo)
            return True
        except ValueError as e:
            errors.append(str(e))
    return "; ".join(dict.fromkeys(errors))
