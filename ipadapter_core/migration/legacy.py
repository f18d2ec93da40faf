"""The older IPAdapter Plus pack's 37 node ids as saved workflows and API clients know them.

Restated from the node inventory in the project's notes on that pack (shared/docs/incumbent.md §1): each id's
inputs in `INPUT_TYPES` order (which is the order of a UI workflow's `widgets_values`), its option values and
its outputs. Nothing here is read from that pack; a workflow that does not fit (an older save with fewer
widgets, a renamed option) is still converted, with what did not fit in the report.
"""

from __future__ import annotations

from dataclasses import dataclass

# the older pack's socket types (ours carry an IPAKIT_ prefix)
IPADAPTER, INSIGHTFACE, EMBEDS, PARAMS, STRATEGY = "IPADAPTER", "INSIGHTFACE", "EMBEDS", "IPADAPTER_PARAMS", "WEIGHTS_STRATEGY"
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass(frozen=True)
class Input:
    """One input: a socket (`kind` is its type) or a widget (`kind` in WIDGET_KINDS)."""

    name: str
    kind: str
    optional: bool = False
    default: object = None
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    multiline: bool = False

    @property
    def widget(self) -> bool:
        return self.kind in WIDGET_KINDS

    def fits(self, value) -> bool:
        """Whether a saved widget value can be this widget's (kind and, for fixed option lists, membership)."""
        if self.kind == "COMBO":
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if self.kind == "FLOAT":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "INT":
            return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
        if self.kind == "BOOLEAN":
            return isinstance(value, bool)
        if self.kind == "STRING":
            return isinstance(value, str)
        return False


@dataclass(frozen=True)
class LegacyNode:
    id: str
    display: str
    category: str
    inputs: tuple[Input, ...]
    outputs: tuple[tuple[str, str], ...]  # (type, name)
    output_node: bool = False
    alternate_orders: tuple[tuple[str, ...], ...] = ()
    """Other widget orders saved workflows of this id may have (tried when the documented one does not fit)."""

    @property
    def widgets(self) -> tuple[Input, ...]:
        return tuple(i for i in self.inputs if i.widget)

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)


# option sets

WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
                "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
                "style transfer precise", "composition precise")
COMBINE = ("concat", "add", "subtract", "average", "norm average")
SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
SIMPLE_WEIGHT_TYPES = ("standard", "prompt is more important", "style transfer")
UNIFIED_PRESETS = ("LIGHT - SD1.5 only (low strength)", "STANDARD (medium strength)", "VIT-G (medium strength)",
                   "PLUS (high strength)", "PLUS FACE (portraits)", "FULL FACE - SD1.5 only (portraits stronger)")
FACEID_PRESETS = ("FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2", "FACEID PORTRAIT (style transfer)",
                  "FACEID PORTRAIT UNNORM - SDXL only (strong)")
COMMUNITY_PRESETS = ("Composition", "Kolors")
FACEID_PROVIDERS = ("CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML")
LOADER_PROVIDERS = ("CPU", "CUDA", "ROCM")
FACE_PACKS = ("buffalo_l", "antelopev2")
EMBEDS_METHODS = ("concat", "add", "subtract", "average", "norm average", "max", "min")
NOISE_TYPES = ("fade", "dissolve", "gaussian", "shuffle")
INTERPOLATIONS = ("LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST")
CROP_POSITIONS = ("top", "bottom", "left", "right", "center", "pad")
TIMINGS = ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "random")
METHODS = ("full batch", "shift batches", "alternate batches")


# input shorthands


def _sock(name: str, kind: str, optional: bool = False) -> Input:
    return Input(name, kind, optional)


def _float(name: str, default: float, lo: float, hi: float, step: float = 0.05) -> Input:
    return Input(name, "FLOAT", default=default, min=lo, max=hi, step=step)


def _int(name: str, default: int, lo: int, hi: int) -> Input:
    return Input(name, "INT", default=default, min=lo, max=hi, step=1)


def _combo(name: str, choices: tuple, default=None) -> Input:
    return Input(name, "COMBO", default=choices[0] if default is None and choices else default, choices=choices)


def _files(name: str) -> Input:
    return Input(name, "COMBO")  # a folder listing: any name


MODEL, ADAPTER, IMAGE = _sock("model", "MODEL"), _sock("ipadapter", IPADAPTER), _sock("image", "IMAGE")
START, END = _float("start_at", 0.0, 0.0, 1.0, 0.001), _float("end_at", 1.0, 0.0, 1.0, 0.001)
WT, CE, ES = _combo("weight_type", WEIGHT_TYPES), _combo("combine_embeds", COMBINE), _combo("embeds_scaling", SCALING)
OPT = (_sock("image_negative", "IMAGE", True), _sock("attn_mask", "MASK", True), _sock("clip_vision", "CLIP_VISION", True))
INSIGHTFACE_OPT = _sock("insightface", INSIGHTFACE, True)
ENCODE_BATCH = _int("encode_batch_size", 0, 0, 4096)
FACEIDV2 = _float("weight_faceidv2", 1.0, -1.0, 5.0)
MODEL_OUT = (("MODEL", "MODEL"),)
WEIGHTS_OUT = (("FLOAT", "weights"), ("FLOAT", "weights_invert"), ("INT", "total_frames"), ("IMAGE", "image_1"),
               ("IMAGE", "image_2"), (STRATEGY, "weights_strategy"))


def _w(hi: float) -> Input:
    return _float("weight", 1.0, -1.0, hi)


def _node(id: str, display: str, category: str, inputs, outputs=MODEL_OUT, **kw) -> LegacyNode:
    return LegacyNode(id, display, category, tuple(inputs), tuple(outputs), **kw)


def _faceid(id: str, display: str, extra=(), **kw) -> LegacyNode:
    return _node(id, display, "ipadapter/faceid", (MODEL, ADAPTER, IMAGE, _w(3), FACEIDV2, WT, CE, START, END, ES, *extra,
                                                   *OPT, INSIGHTFACE_OPT), (("MODEL", "MODEL"), ("IMAGE", "face_image")), **kw)


def _batch_of(node: LegacyNode, id: str, display: str, drop=("combine_embeds",), add=(), replace=()) -> LegacyNode:
    """A Batch variant: the same inputs less `drop`, with `replace`d widgets and `add` after the last widget."""
    swaps = dict((i.name, i) for i in replace)
    inputs = [swaps.get(i.name, i) for i in node.inputs if i.name not in drop]
    last = max(n for n, i in enumerate(inputs) if i.widget)
    return LegacyNode(id, display, node.category, tuple(inputs[: last + 1] + list(add) + inputs[last + 1:]), node.outputs)


# the inventory

_ADVANCED = _node("IPAdapterAdvanced", "IPAdapter Advanced", "ipadapter", (MODEL, ADAPTER, IMAGE, _w(5), WT, CE, START, END, ES, *OPT))
_TILED = _node("IPAdapterTiled", "IPAdapter Tiled", "ipadapter/tiled",
               (MODEL, ADAPTER, IMAGE, _w(3), WT, CE, START, END, _float("sharpening", 0.0, 0.0, 1.0), ES, *OPT),
               (("MODEL", "MODEL"), ("IMAGE", "tiles"), ("MASK", "masks")))
_EMBEDS = _node("IPAdapterEmbeds", "IPAdapter Embeds", "ipadapter/embeds",
                (MODEL, ADAPTER, _sock("pos_embed", EMBEDS), _w(3), WT, START, END, ES, _sock("neg_embed", EMBEDS, True),
                 _sock("attn_mask", "MASK", True), _sock("clip_vision", "CLIP_VISION", True)))
_STYLE_COMPOSITION = _node(
    "IPAdapterStyleComposition", "IPAdapter Style & Composition SDXL", "ipadapter/style_composition",
    (MODEL, ADAPTER, _sock("image_style", "IMAGE"), _sock("image_composition", "IMAGE"), _float("weight_style", 1.0, -1.0, 5.0),
     _float("weight_composition", 1.0, -1.0, 5.0), Input("expand_style", "BOOLEAN", default=False),
     _combo("combine_embeds", COMBINE, "average"), START, END, ES, *OPT))
_ENHANCER = _node("IPAdapterClipVisionEnhancer", "IPAdapter ClipVision Enhancer", "ipadapter/dev",
                  (MODEL, ADAPTER, IMAGE, _w(5), WT, CE, START, END, ES, _int("enhance_tiles", 2, 1, 16),
                   _float("enhance_ratio", 1.0, 0.0, 1.0), *OPT))
_PRECISE_STYLE = _node("IPAdapterPreciseStyleTransfer", "IPAdapter Precise Style Transfer", "ipadapter",
                       (MODEL, ADAPTER, IMAGE, _w(5), _float("style_boost", 1.0, -5.0, 5.0), CE, START, END, ES, *OPT))
_PRECISE_COMPOSITION = _node("IPAdapterPreciseComposition", "IPAdapter Precise Composition", "ipadapter",
                             (MODEL, ADAPTER, IMAGE, _w(5), _float("composition_boost", 0.0, -5.0, 5.0), CE, START, END, ES, *OPT))
_FACEID = _faceid("IPAdapterFaceID", "IPAdapter FaceID")
_KOLORS_WIDGETS = ("weight", "weight_faceidv2", "weight_type", "combine_embeds", "start_at", "end_at", "embeds_scaling")

NODES: dict[str, LegacyNode] = {n.id: n for n in (
    # apply nodes
    _node("IPAdapter", "IPAdapter", "ipadapter",
          (MODEL, ADAPTER, IMAGE, _w(3), START, END, _combo("weight_type", SIMPLE_WEIGHT_TYPES), _sock("attn_mask", "MASK", True))),
    _ADVANCED,
    _batch_of(_ADVANCED, "IPAdapterBatch", "IPAdapter Batch (Adv.)", add=(ENCODE_BATCH,)),
    _FACEID,
    _faceid("IPAAdapterFaceIDBatch", "IPAdapter FaceID Batch"),
    _faceid("IPAdapterFaceIDKolors", "IPAdapter FaceID Kolors", (_float("weight_kolors", 1.0, -1.0, 5.0),),
            alternate_orders=((*_KOLORS_WIDGETS[:2], "weight_kolors", *_KOLORS_WIDGETS[2:]),)),
    _TILED,
    _batch_of(_TILED, "IPAdapterTiledBatch", "IPAdapter Tiled Batch", add=(ENCODE_BATCH,)),
    _EMBEDS,
    _batch_of(_EMBEDS, "IPAdapterEmbedsBatch", "IPAdapter Embeds Batch", drop=()),
    _STYLE_COMPOSITION,
    _batch_of(_STYLE_COMPOSITION, "IPAdapterStyleCompositionBatch", "IPAdapter Style & Composition Batch SDXL"),
    _node("IPAdapterMS", "IPAdapter Mad Scientist", "ipadapter/dev",
          (MODEL, ADAPTER, IMAGE, _w(5), FACEIDV2, WT, CE, START, END, ES, Input("layer_weights", "STRING", default="", multiline=True),
           *OPT, INSIGHTFACE_OPT)),
    _ENHANCER,
    _batch_of(_ENHANCER, "IPAdapterClipVisionEnhancerBatch", "IPAdapter ClipVision Enhancer Batch", add=(ENCODE_BATCH,),
              replace=(_float("enhance_ratio", 0.5, 0.0, 1.0),)),
    _node("IPAdapterFromParams", "IPAdapter from Params", "ipadapter/params",
          (MODEL, ADAPTER, _sock("ipadapter_params", PARAMS), CE, ES, _sock("image_negative", "IMAGE", True),
           _sock("clip_vision", "CLIP_VISION", True))),
    _PRECISE_STYLE,
    _batch_of(_PRECISE_STYLE, "IPAdapterPreciseStyleTransferBatch", "IPAdapter Precise Style Transfer Batch", drop=()),
    _PRECISE_COMPOSITION,
    _batch_of(_PRECISE_COMPOSITION, "IPAdapterPreciseCompositionBatch", "IPAdapter Precise Composition Batch", drop=()),
    # loaders
    _node("IPAdapterUnifiedLoader", "IPAdapter Unified Loader", "ipadapter",
          (MODEL, _combo("preset", UNIFIED_PRESETS), _sock("ipadapter", IPADAPTER, True)),
          (("MODEL", "model"), (IPADAPTER, "ipadapter"))),
    _node("IPAdapterUnifiedLoaderFaceID", "IPAdapter Unified Loader FaceID", "ipadapter/faceid",
          (MODEL, _combo("preset", FACEID_PRESETS), _float("lora_strength", 0.6, 0.0, 1.0, 0.01),
           _combo("provider", FACEID_PROVIDERS), _sock("ipadapter", IPADAPTER, True)),
          (("MODEL", "MODEL"), (IPADAPTER, "ipadapter"))),
    _node("IPAdapterUnifiedLoaderCommunity", "IPAdapter Unified Loader Community", "ipadapter/loaders",
          (MODEL, _combo("preset", COMMUNITY_PRESETS), _sock("ipadapter", IPADAPTER, True)),
          (("MODEL", "model"), (IPADAPTER, "ipadapter"))),
    _node("IPAdapterModelLoader", "IPAdapter Model Loader", "ipadapter/loaders", (_files("ipadapter_file"),), ((IPADAPTER, "IPADAPTER"),)),
    _node("IPAdapterInsightFaceLoader", "IPAdapter InsightFace Loader", "ipadapter/loaders",
          (_combo("provider", LOADER_PROVIDERS), _combo("model_name", FACE_PACKS)), ((INSIGHTFACE, "INSIGHTFACE"),)),
    # utilities
    _node("IPAdapterEncoder", "IPAdapter Encoder", "ipadapter/embeds",
          (ADAPTER, IMAGE, _float("weight", 1.0, -1.0, 3.0, 0.01), _sock("mask", "MASK", True), _sock("clip_vision", "CLIP_VISION", True)),
          ((EMBEDS, "pos_embed"), (EMBEDS, "neg_embed"))),
    _node("IPAdapterCombineEmbeds", "IPAdapter Combine Embeds", "ipadapter/embeds",
          (_sock("embed1", EMBEDS), _combo("method", EMBEDS_METHODS), *(_sock(f"embed{i}", EMBEDS, True) for i in range(2, 6))),
          ((EMBEDS, "EMBEDS"),)),
    _node("IPAdapterNoise", "IPAdapter Noise", "ipadapter/utils",
          (_combo("type", NOISE_TYPES), _float("strength", 1.0, 0.0, 1.0), _int("blur", 0, 0, 32), _sock("image_optional", "IMAGE", True)),
          (("IMAGE", "IMAGE"),)),
    _node("PrepImageForClipVision", "Prep Image For ClipVision", "ipadapter/utils",
          (IMAGE, _combo("interpolation", INTERPOLATIONS), _combo("crop_position", CROP_POSITIONS, "center"),
           _float("sharpening", 0.0, 0.0, 1.0)), (("IMAGE", "IMAGE"),)),
    _node("IPAdapterSaveEmbeds", "IPAdapter Save Embeds", "ipadapter/embeds",
          (_sock("embeds", EMBEDS), Input("filename_prefix", "STRING", default="IP_embeds")), (), output_node=True),
    _node("IPAdapterLoadEmbeds", "IPAdapter Load Embeds", "ipadapter/embeds", (_files("embeds"),), ((EMBEDS, "EMBEDS"),)),
    _node("IPAdapterWeights", "IPAdapter Weights", "ipadapter/weights",
          (Input("weights", "STRING", default="1.0, 0.0", multiline=True), _combo("timing", TIMINGS, "linear"),
           _int("frames", 0, 0, 9999), _int("start_frame", 0, 0, 9999), _int("end_frame", 9999, 0, 9999),
           _int("add_starting_frames", 0, 0, 9999), _int("add_ending_frames", 0, 0, 9999), _combo("method", METHODS),
           _sock("image", "IMAGE", True)), WEIGHTS_OUT),
    _node("IPAdapterWeightsFromStrategy", "IPAdapter Weights From Strategy", "ipadapter/weights",
          (_sock("weights_strategy", STRATEGY), _sock("image", "IMAGE", True)), WEIGHTS_OUT),
    _node("IPAdapterPromptScheduleFromWeightsStrategy", "Prompt Schedule From Weights Strategy", "ipadapter/weights",
          (_sock("weights_strategy", STRATEGY), Input("prompt", "STRING", default="", multiline=True)),
          (("STRING", "prompt_schedule"),)),
    _node("IPAdapterCombineWeights", "IPAdapter Combine Weights", "ipadapter/utils",
          (_float("weights_1", 0.0, 0.0, 1.0), _float("weights_2", 0.0, 0.0, 1.0)), (("FLOAT", "weights"), ("INT", "count"))),
    _node("IPAdapterRegionalConditioning", "IPAdapter Regional Conditioning", "ipadapter/params",
          (IMAGE, _float("image_weight", 1.0, -1.0, 3.0), _float("prompt_weight", 1.0, 0.0, 10.0), WT, START, END,
           _sock("mask", "MASK", True), _sock("positive", "CONDITIONING", True), _sock("negative", "CONDITIONING", True)),
          ((PARAMS, "IPADAPTER_PARAMS"), ("CONDITIONING", "POSITIVE"), ("CONDITIONING", "NEGATIVE"))),
    _node("IPAdapterCombineParams", "IPAdapter Combine Params", "ipadapter/params",
          (_sock("params_1", PARAMS), _sock("params_2", PARAMS), *(_sock(f"params_{i}", PARAMS, True) for i in range(3, 6))),
          ((PARAMS, "IPADAPTER_PARAMS"),)),
)}

LEGACY_TYPES = (IPADAPTER, INSIGHTFACE, EMBEDS, PARAMS, STRATEGY)
"""Socket types only the older pack's nodes make or take."""
