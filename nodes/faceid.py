"""FaceID nodes: InsightFace loading, identity image prompts, and the FaceID LoRA."""

from __future__ import annotations

import logging

from ..ipadapter_core.faces import PACK_FILES
from . import _docs, _faceid, _folders, _pipeline
from ._base import ApplyNode, CheckedNode

log = logging.getLogger(__name__)

PACKS = list(PACK_FILES)
EMBEDDED = "embedded (inside the adapter file)"

FACE_SELECTION = (["largest", "by index"], {"default": "largest", "tooltip": "Which face of each image to use: the largest one, or the one at face_index."})
FACE_INDEX = ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "With 'by index': faces are numbered from 0, left to right."})
ON_MISSING = (
    ["error", "skip image"],
    {"default": "error", "tooltip": "When an image has no face: stop with an error naming the image, or skip it (it gets zero weight) with a warning."},
)


def face_choice(face_selection: str, face_index: int):
    return "largest" if face_selection == "largest" else int(face_index)


class InsightFaceLoader(CheckedNode):
    DESCRIPTION = (
        "Loads an InsightFace model pack (detection and recognition only) from models/insightface/models/<pack>/ or an "
        "`insightface:` folder of extra_model_paths.yaml. Never downloads: a missing or misplaced pack gives an error "
        "naming the folder and the files it needs. Needs `pip install insightface onnxruntime`."
    )
    CATEGORY = f"{_docs.CATEGORY}/loaders"
    RETURN_TYPES = (_docs.INSIGHTFACE,)
    RETURN_NAMES = ("insightface",)
    OUTPUT_TOOLTIPS = ("The face analyzer for Apply FaceID and Encode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "provider": _docs.PROVIDER,
                "model_name": (PACKS, {"default": "buffalo_l", "tooltip": "buffalo_l for SD1.5/SDXL FaceID; antelopev2 for Kolors FaceID."}),
            }
        }

    def load(self, provider, model_name):
        return (_faceid.load_insightface(model_name, provider),)


class ApplyFaceID(ApplyNode):
    DESCRIPTION = (
        "Adds an identity image prompt: InsightFace finds a face in each image (largest, or by index), its ArcFace "
        "embedding (and, for FaceID Plus, the CLIP view of the aligned face) becomes the image tokens. Several images "
        "are combined; portrait adapters read all faces together. The FaceID LoRA inside the adapter file is applied "
        "too (lora_strength). Also returns the aligned face crops. With unfold_batch, latent frame i gets the face of "
        "image i (a frame whose image has no face gets weight 0 when skipping)."
    )
    RETURN_TYPES = ("MODEL", "IMAGE")
    RETURN_NAMES = ("model", "face_image")
    OUTPUT_TOOLTIPS = ("The model with the identity prompt (and the FaceID LoRA).", "The aligned face crops InsightFace found (black where none).")

    @classmethod
    def INPUT_TYPES(cls):
        schedule = _docs.schedule_inputs()
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": (_docs.ADAPTER, {"tooltip": "A FaceID adapter (FaceID, Plus, Plus v2, portrait), from the Model Loader or a FaceID preset of the Unified Loader."}),
                "image": ("IMAGE", {"tooltip": "Image(s) with the face; each image gives one face."}),
                "weight": schedule.pop("weight"),
                "weight_faceidv2": _docs.WEIGHT_FACEIDV2,
                **schedule,
                "face_selection": FACE_SELECTION,
                "face_index": FACE_INDEX,
                "on_missing_face": ON_MISSING,
                "lora_strength": _docs.LORA_STRENGTH,
            },
            "optional": {
                "insightface": (_docs.INSIGHTFACE, {"tooltip": "Face analyzer from the InsightFace Loader; not needed when the adapter came from a FaceID preset."}),
                "clip_vision": _docs.CLIP_VISION,
                "image_negative": _docs.IMAGE_NEGATIVE,
                "attn_mask": _docs.ATTN_MASK,
                "block_weights": _docs.BLOCK_WEIGHTS,
                "unfold_batch": _docs.UNFOLD_BATCH,
                "encode_batch_size": _docs.ENCODE_BATCH_SIZE,
                "weight_kolors": _docs.WEIGHT_KOLORS,
                **_docs.boost_inputs(),
            },
        }

    def apply(self, model, ipadapter, image, face_selection, face_index, on_missing_face, insightface=None,
              clip_vision=None, image_negative=None, encode_batch_size=0, weight_kolors=1.0, **options):
        unfold = bool(options.get("unfold_batch"))
        embeds, crops, found = _pipeline.encode_face_frames(
            ipadapter, image, insightface, clip_vision=clip_vision, image_negative=image_negative,
            choice=face_choice(face_selection, face_index), on_missing="skip" if on_missing_face == "skip image" else "error",
            batch_size=encode_batch_size or 0, keep_frames=unfold,
        )
        if embeds is None:
            log.warning("IPAdapter Kit: no face in any image; the model is returned without the identity prompt")
            return (model, crops)
        if unfold and not all(found):  # frames whose image has no face get weight 0
            options["weight"] = _pipeline.face_frame_weights(options["weight"], found)
        lora_strength = options.pop("lora_strength")
        settings = self.settings(options)
        return (_pipeline.apply(model, ipadapter, embeds, settings, clip_vision=clip_vision, lora_strength=lora_strength,
                                kolors_scale=weight_kolors), crops)


class FaceIDLoRA(CheckedNode):
    DESCRIPTION = (
        "Applies the FaceID LoRA to a model: the one embedded in the adapter file, or a separate *_lora.safetensors "
        "file from models/loras. Reversible like any ComfyUI LoRA; Apply FaceID then does not apply it again."
    )
    CATEGORY = f"{_docs.CATEGORY}/loaders"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the FaceID LoRA.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _docs.MODEL,
                "ipadapter": (_docs.ADAPTER, {"tooltip": "The FaceID adapter the LoRA belongs to."}),
                "lora": ([EMBEDDED, *_folders.file_list("loras")], {"default": EMBEDDED, "tooltip": "The LoRA inside the adapter file, or a separate FaceID LoRA file."}),
                "strength": (_docs.LORA_STRENGTH[0], {**_docs.LORA_STRENGTH[1], "tooltip": "LoRA strength; 0 disables it."}),
            }
        }

    def apply(self, model, ipadapter, lora, strength):
        lora_file = None if lora == EMBEDDED else _folders.resolve("loras", lora)
        if lora_file is None and not ipadapter.adapter.lora:
            raise ValueError(f"{ipadapter.name} carries no FaceID LoRA (portrait and Kolors adapters have none); choose a LoRA file or skip this node")
        return (_faceid.apply_lora(model, ipadapter.adapter, strength, lora_file),)

