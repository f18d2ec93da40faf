"""What each of the older pack's node ids becomes here: the node, the renamed inputs, the translated option
values, the values the conversion sets, and every behaviour that differs from the older pack on that node.

One `Plan` per old id (`PLANS`); `variant` picks another plan from the node's links (an Advanced node fed by the
FaceID loader becomes Apply FaceID). The conversion engines (`convert.py`) and the compatibility nodes
(`nodes/compat.py`) both read these plans, so a workflow converted here and an old-id API prompt run the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

# option values


def _key(value) -> str:
    return re.sub(r"[^a-z0-9]", "", str(value).lower())


@dataclass(frozen=True)
class Choices:
    """An old option value -> ours, compared without case, spaces or punctuation; a saved value with an extra
    "(...)" suffix, or one that is the start of exactly one known value, matches that one. Values that are already
    ours pass unchanged."""

    table: dict[str, str]

    def __call__(self, value):
        if not isinstance(value, str):
            return None
        if value in self.table.values():
            return value
        exact = {_key(old): new for old, new in self.table.items()}
        for key in (_key(value), _key(re.sub(r"\s*\([^)]*\)\s*$", "", value))):  # as saved; without a "(...)" suffix
            if key in exact:
                return exact[key]
        key = _key(value)
        near = {new for old, new in exact.items() if key and old.startswith(key)}  # an abbreviated saved value
        return near.pop() if len(near) == 1 else None

    @property
    def olds(self) -> tuple[str, ...]:
        return tuple(self.table)


PRESETS = Choices({
    "LIGHT - SD1.5 only (low strength)": "light - SD1.5 only (low strength)",
    "STANDARD (medium strength)": "standard (medium strength)",
    "VIT-G (medium strength)": "vit-g (medium strength)",
    "PLUS (high strength)": "plus (high strength)",
    "PLUS FACE (portraits)": "plus face (portraits)",
    "FULL FACE - SD1.5 only (portraits stronger)": "full face - SD1.5 only (portraits stronger)",
    "FACEID": "faceid",
    "FACEID PLUS - SD1.5 only": "faceid plus - SD1.5 only",
    "FACEID PLUS V2": "faceid plus v2",
    "FACEID PORTRAIT (style transfer)": "faceid portrait",
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": "faceid portrait unnorm - SDXL only",
    "Composition": "composition",
    "Kolors": "kolors plus - Kolors only",
})
SIMPLE_WEIGHT_TYPES = Choices({"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"})
TIMINGS = Choices({"custom": "custom", "linear": "linear", "ease_in_out": "ease in-out", "ease_in": "ease out",
                   "ease_out": "ease in", "random": "random"})


# behaviour differences


@dataclass(frozen=True)
class View:
    """What a plan may look at in an old node: its widget values and which inputs are linked, from what node type."""

    values: dict
    linked: dict  # old input name -> the old node type it comes from ("" when unknown)

    def has(self, name: str) -> bool:
        return name in self.linked


@dataclass(frozen=True)
class Note:
    text: str
    when: Callable[[View], bool] | None = None

    def applies(self, view: View) -> bool:
        return self.when is None or bool(self.when(view))


MIDDLE = Note(
    "The middle block's cross-attention gets the image prompt too. The older pack registered it under a key ComfyUI "
    "never calls (its issues #806, #810), so it was always skipped: expect a slightly stronger or different effect, "
    "most with weight types that weight the middle block."
)
GREY_NEGATIVE = Note(
    "No image_negative: plus-type adapters (plus, plus face, full face, composition, FaceID Plus) get the reference "
    "implementation's negative, CLIP's view of a mean-grey image (zeros after normalisation), where the older pack "
    "encoded a black image; base adapters get zeros, as before.",
    lambda v: not v.has("image_negative"),
)
MASK_BATCH = Note(
    "attn_mask: a batch of masks means one mask per reference image (with concat); the older pack spread a mask "
    "batch over the latent frames. A single mask acts as before; for one mask per latent frame turn unfold_batch on.",
    lambda v: v.has("attn_mask"),
)
NORM_AVERAGE = Note(
    "combine 'norm average' averages each reference's direction (its own length) and keeps the average length; the "
    "older pack normalised element by element across the references, so the merged reference differs.",
    lambda v: "norm average" in (v.values.get("combine_embeds"), v.values.get("method")),
)
FIRST_FACE = Note("Each image's largest face is used (face_selection 'largest'); the older pack took the first face "
                  "InsightFace listed. An image without a face is an error, as before (or set on_missing_face).")
EMBEDS_NEGATIVE = Note(
    "Embeds carry their own negative (from Encode: the reference negative, CLIP's view of mean grey for plus-type "
    "adapters, or image_negative's); neg_embeds, when linked, replaces it with the linked embeds' features."
)
PRECISE_BLOCKS = Note(
    "block_weights multiply the precise weight type's own per-layer weights; the older node replaced them with the "
    "listed layers, so a precise type with layer_weights differs.",
    lambda v: bool(str(v.values.get("layer_weights") or "").strip()) and "precise" in str(v.values.get("weight_type")),
)
APPLY_NOTES = (MIDDLE, GREY_NEGATIVE, MASK_BATCH, NORM_AVERAGE)
UNFOLD_NOTES = (MIDDLE, GREY_NEGATIVE)  # with unfold_batch a mask batch is per frame, as in the older Batch nodes
CHAIN = "not needed: every adapter file, CLIP vision model and InsightFace model is loaded once and shared by all loaders, so the chain saved nothing; its link is removed"
FACEIDV2_UNUSED = "only FaceID Plus v2 reads it, and this node became Apply IPAdapter (no FaceID adapter feeds it)"
NEG_EMBED = ("neg_embed has no output of its own here: the embeds carry their negative, and Apply IPAdapter Embeds "
             "uses it. Links from it are removed; where one went elsewhere than that Apply, reconnect by hand.")


# plans


@dataclass(frozen=True)
class Plan:
    """How one old node id becomes one of ours (`new`), or stays as it is (`new` None, `missing` says why).

    `rename`: old input -> ours (others keep their name); `translate`: our input -> old value to ours; `fixed`: our
    inputs the conversion sets, with the reason; `drop`: old inputs without a counterpart, with the reason (their
    links are removed); `outputs`: old output index -> ours (None: no counterpart; its links are removed);
    `adjust`: a last look at our values (returns report lines); `variants`: (predicate, plan) tried first.
    """

    new: str | None
    rename: dict[str, str] = field(default_factory=dict)
    translate: dict[str, Callable] = field(default_factory=dict)
    fixed: dict[str, tuple[object, str]] = field(default_factory=dict)
    drop: dict[str, str] = field(default_factory=dict)
    outputs: tuple[int | None, ...] | None = None
    output_notes: dict[int, str] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()
    adjust: Callable[[dict, View], list[str]] | None = None
    variants: tuple[tuple[Callable[[View], bool], Plan], ...] = ()
    missing: str = ""

    def pick(self, view: View) -> Plan:
        return next((plan.pick(view) for when, plan in self.variants if when(view)), self)

    def our_name(self, old: str) -> str | None:
        return None if old in self.drop else self.rename.get(old, old)

    def our_output(self, index: int) -> int | None:
        if self.outputs is None:
            return index
        return self.outputs[index] if index < len(self.outputs) else None


UNFOLD = {"unfold_batch": (True, "the Batch node gave latent frame i the i-th reference (the last repeats)")}
NO_LORA = {"lora_strength": (0.0, "the older Apply FaceID never applied the FaceID LoRA itself (its FaceID loader did, as "
                                  "ours does); raise it to apply the LoRA inside the adapter file here")}


def _fed_by_faceid(view: View) -> bool:
    return view.has("insightface") or view.linked.get("ipadapter") == "IPAdapterUnifiedLoaderFaceID"


def _faceid(**kw) -> Plan:
    notes = kw.pop("notes", APPLY_NOTES)
    return Plan("IPAKitApplyFaceID", fixed={**NO_LORA, **kw.pop("fixed", {})}, notes=(*notes, FIRST_FACE), **kw)


def _linear_with_layers(values: dict, view: View) -> list[str]:
    """The Mad Scientist node used layer_weights instead of the weight type's schedule, as linear (precise types kept)."""
    if str(values.get("block_weights") or "").strip() and "precise" not in str(values.get("weight_type")):
        if values.get("weight_type") != "linear":
            old = values.get("weight_type")
            values["weight_type"] = "linear"
            return [f"weight_type: {old!r} -> 'linear' (with layer_weights the older node ignored the weight type)"]
    return []


def _faceidv2_from_weight(values: dict, view: View) -> list[str]:
    """The older Advanced-family nodes gave FaceID Plus v2 a shortcut scale of 2 x weight (its FaceID node: 1.0)."""
    weight = values.get("weight", 1.0)
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        values["weight_faceidv2"] = 2.0 * weight
        return [f"weight_faceidv2 = {2.0 * weight!r} (the older node gave FaceID Plus v2 twice the weight)"]
    return ["weight_faceidv2 stays 1.0: weight is linked, and the older node gave FaceID Plus v2 twice the weight"]


_ADVANCED = Plan("IPAKitApply", notes=APPLY_NOTES)
_BATCH = Plan("IPAKitApply", fixed=UNFOLD, notes=UNFOLD_NOTES)
_FACEID_PLAN = _faceid()
_MS_FACEID = _faceid(rename={"layer_weights": "block_weights"}, adjust=_linear_with_layers,
                     notes=(*APPLY_NOTES, PRECISE_BLOCKS))

PLANS: dict[str, Plan] = {
    "IPAdapter": Plan("IPAKitApply", translate={"weight_type": SIMPLE_WEIGHT_TYPES}, notes=APPLY_NOTES,
                      variants=((_fed_by_faceid, _faceid(translate={"weight_type": SIMPLE_WEIGHT_TYPES},
                                                         adjust=_faceidv2_from_weight)),)),
    "IPAdapterAdvanced": replace(_ADVANCED, variants=((_fed_by_faceid, _faceid(adjust=_faceidv2_from_weight)),)),
    "IPAdapterBatch": replace(_BATCH, variants=((_fed_by_faceid, _faceid(fixed=UNFOLD, notes=UNFOLD_NOTES,
                                                                         adjust=_faceidv2_from_weight)),)),
    "IPAdapterFaceID": _FACEID_PLAN,
    "IPAAdapterFaceIDBatch": _faceid(fixed=UNFOLD, notes=UNFOLD_NOTES),
    "IPAdapterFaceIDKolors": _faceid(),
    "IPAdapterTiled": Plan("IPAKitApplyTiled", notes=APPLY_NOTES),
    "IPAdapterTiledBatch": Plan("IPAKitApplyTiled", fixed=UNFOLD, notes=UNFOLD_NOTES),
    "IPAdapterEmbeds": Plan("IPAKitApplyEmbeds", rename={"pos_embed": "embeds", "neg_embed": "neg_embeds"},
                            notes=(MIDDLE, MASK_BATCH, EMBEDS_NEGATIVE)),
    "IPAdapterEmbedsBatch": Plan("IPAKitApplyEmbeds", rename={"pos_embed": "embeds", "neg_embed": "neg_embeds"}, fixed=UNFOLD,
                                 notes=(MIDDLE, EMBEDS_NEGATIVE)),
    "IPAdapterStyleComposition": Plan(
        "IPAKitApplyStyleComposition",
        notes=(*APPLY_NOTES, Note("Works on SD1.5 models too (the older node refused them), with InstantStyle's SD1.5 layers."))),
    "IPAdapterStyleCompositionBatch": Plan("IPAKitApplyStyleComposition", fixed=UNFOLD, notes=UNFOLD_NOTES),
    "IPAdapterMS": Plan("IPAKitApply", rename={"layer_weights": "block_weights"}, drop={"weight_faceidv2": FACEIDV2_UNUSED,
                                                                                         "insightface": FACEIDV2_UNUSED},
                        adjust=_linear_with_layers, notes=(*APPLY_NOTES, PRECISE_BLOCKS), variants=((_fed_by_faceid, _MS_FACEID),)),
    "IPAdapterClipVisionEnhancer": Plan(
        "IPAKitApplyClipVisionEnhancer",
        notes=(*APPLY_NOTES, Note("Adapters that read one pooled CLIP vector (standard, light, vit-G) are refused with an "
                                  "error; the older node ran them through an untested path."))),
    "IPAdapterClipVisionEnhancerBatch": Plan("IPAKitApplyClipVisionEnhancer", fixed=UNFOLD, notes=UNFOLD_NOTES),
    "IPAdapterFromParams": Plan("IPAKitApplyFromParams", notes=(MIDDLE, GREY_NEGATIVE, NORM_AVERAGE)),
    "IPAdapterPreciseStyleTransfer": Plan("IPAKitApplyPreciseStyle", notes=APPLY_NOTES),
    "IPAdapterPreciseStyleTransferBatch": Plan("IPAKitApplyPreciseStyle", fixed=UNFOLD, notes=UNFOLD_NOTES),
    "IPAdapterPreciseComposition": Plan("IPAKitApplyPreciseComposition", notes=APPLY_NOTES),
    "IPAdapterPreciseCompositionBatch": Plan("IPAKitApplyPreciseComposition", fixed=UNFOLD, notes=UNFOLD_NOTES),
    # loaders
    "IPAdapterUnifiedLoader": Plan("IPAKitUnifiedLoader", translate={"preset": PRESETS}, drop={"ipadapter": CHAIN},
                                   notes=(Note("A third output, clip_vision, carries the CLIP vision model the adapter needs."),)),
    "IPAdapterUnifiedLoaderFaceID": Plan(
        "IPAKitUnifiedLoader", translate={"preset": PRESETS}, drop={"ipadapter": CHAIN},
        notes=(Note("The FaceID LoRA inside the adapter file is applied to the returned model at lora_strength, as "
                    "before; InsightFace (buffalo_l) falls back to CPU with a warning when the provider is not installed."),)),
    "IPAdapterUnifiedLoaderCommunity": Plan("IPAKitUnifiedLoader", translate={"preset": PRESETS}, drop={"ipadapter": CHAIN}),
    "IPAdapterModelLoader": Plan("IPAKitModelLoader"),
    "IPAdapterInsightFaceLoader": Plan(
        "IPAKitInsightFaceLoader",
        notes=(Note("Only the detection and recognition models are loaded; a provider that is not installed falls back to "
                    "CPU with a warning."),)),
    # utilities
    "IPAdapterEncoder": Plan("IPAKitEncode", outputs=(0, None), output_notes={1: NEG_EMBED}, notes=(EMBEDS_NEGATIVE,)),
    "IPAdapterCombineEmbeds": Plan("IPAKitCombineEmbeds", rename={f"embed{i}": f"embeds{i}" for i in range(1, 6)},
                                   notes=(NORM_AVERAGE,)),
    "IPAdapterNoise": Plan(
        "IPAKitNoise", rename={"image_optional": "image"},
        notes=(Note("The same inputs always give the same image (pattern_seed 0); the older node drew new noise on every "
                    "run. The noise patterns are this pack's own, so the negative image and the picture differ."),)),
    "PrepImageForClipVision": Plan(
        "IPAKitPrepImage", fixed={"size": (224, "the older node always made 224 px; choose 336 for Kolors adapters")}),
    "IPAdapterSaveEmbeds": Plan(
        "IPAKitSaveEmbeds",
        notes=(Note("Embeds are saved as .safetensors with metadata (encoder, output kind) instead of pickled .ipadpt "
                    "files; Load Embeds lists them from output/ (marked [output]) as well as input/."),)),
    "IPAdapterLoadEmbeds": Plan(
        "IPAKitLoadEmbeds",
        notes=(Note(".ipadpt files are read without running code; they carry no negative, so Apply builds the reference "
                    "negative (needs clip_vision for plus-type adapters)."),)),
    "IPAdapterWeights": Plan(
        "IPAKitWeights", translate={"timing": TIMINGS},
        notes=(Note("weights_invert mirrors each weight inside the typed values' range (min + max - w, frame order kept); "
                    "the older node reversed the list. The two agree for a linear ramp between two values."),
               Note("timing: the older ease_in / ease_out had their names swapped; the converted node keeps the same curve "
                    "under its usual name.", lambda v: v.values.get("timing") in ("ease_in", "ease_out")))),
    "IPAdapterWeightsFromStrategy": Plan(
        "IPAKitWeightsFromStrategy",
        notes=(Note("weights_invert mirrors each weight inside the typed values' range; the older node reversed the list."),)),
    "IPAdapterPromptScheduleFromWeightsStrategy": Plan("IPAKitPromptScheduleFromWeightsStrategy"),
    "IPAdapterCombineWeights": Plan("IPAKitCombineWeights"),
    "IPAdapterRegionalConditioning": Plan("IPAKitRegionalConditioning"),
    "IPAdapterCombineParams": Plan("IPAKitCombineParams"),
}
