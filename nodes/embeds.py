"""Embeds nodes: encode references once, combine them, save and load them with metadata."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from ..ipadapter_core import COMBINE_METHODS, combine, concat, embeds_io, scaled
from ..ipadapter_core.embeds_io import FORMAT
from . import _docs, _pipeline

EMBEDS_SUFFIXES = (".safetensors", ".ipadpt")


class Encode:
    DESCRIPTION = (
        "Encodes reference images for an adapter into embeds: the encoder features of each image plus the negative the "
        "reference implementation uses (or your image_negative). Embeds can be combined, saved, loaded and applied with "
        "Apply Embeds, so an expensive encode runs once."
    )
    CATEGORY = f"{_docs.CATEGORY}/embeds"
    RETURN_TYPES = (_docs.EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("Positive and negative features of the references, with what encoder made them.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ipadapter": (_docs.ADAPTER, {"tooltip": "The adapter the embeds are for; it decides which encoder output is kept."}),
                "image": ("IMAGE", {"tooltip": "Reference image(s); each image of the batch becomes one reference."}),
            },
            "optional": {
                "clip_vision": _docs.CLIP_VISION,
                "mask": ("MASK", {"tooltip": "Optional mask over the reference image: black areas are hidden from the encoder."}),
                "image_negative": _docs.IMAGE_NEGATIVE,
                "insightface": (
                    _docs.INSIGHTFACE,
                    {"tooltip": "FaceID adapters only: the face analyzer (the largest face of each image is used; images without a face are an error)."},
                ),
                "weight": (
                    "FLOAT",
                    {"default": 1.0, "min": -1.0, "max": 3.0, "step": 0.01,
                     "tooltip": "Scales the positive features before they are saved or applied (the negative is kept): above 1 a "
                     "stronger reference, below 1 a weaker one, negative an opposite one. Useful to balance references "
                     "merged with Combine Embeds."},
                ),
            },
        }

    def encode(self, ipadapter, image, clip_vision=None, mask=None, image_negative=None, insightface=None, weight=1.0):
        if ipadapter.spec.kind.uses_face:
            embeds = _pipeline.encode_faces(ipadapter, image, insightface, clip_vision=clip_vision, image_negative=image_negative)[0]
        else:
            embeds = _pipeline.encode(ipadapter, image, clip_vision=clip_vision, image_negative=image_negative, mask=mask)
        return (scaled(embeds, weight),)


class CombineEmbeds:
    DESCRIPTION = (
        "Merges up to five embeds. All references are gathered in order, then combined: concat keeps them all (Apply can "
        "still combine them later), the other methods merge them into one reference."
    )
    CATEGORY = f"{_docs.CATEGORY}/embeds"
    RETURN_TYPES = (_docs.EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("The combined embeds.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        optional = {f"embeds{i}": (_docs.EMBEDS, {"tooltip": f"Embeds #{i} (optional)."}) for i in range(2, 6)}
        return {
            "required": {
                "embeds1": (_docs.EMBEDS, {"tooltip": "First embeds; for subtract, the one the others are taken from."}),
                "method": (list(COMBINE_METHODS), {"default": "concat", "tooltip": _docs.COMBINE[1]["tooltip"]}),
            },
            "optional": optional,
        }

    def combine(self, embeds1, method, embeds2=None, embeds3=None, embeds4=None, embeds5=None):
        items = [e for e in (embeds1, embeds2, embeds3, embeds4, embeds5) if e is not None]
        return (combine(concat(items), method),)


class SaveEmbeds:
    DESCRIPTION = "Saves embeds to the output folder as .safetensors with metadata (encoder, output kind, shapes); Load Embeds lists them."
    CATEGORY = f"{_docs.CATEGORY}/embeds"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embeds": (_docs.EMBEDS, {"tooltip": "The embeds to save."}),
                "filename_prefix": ("STRING", {"default": "IPAKit_embeds", "tooltip": "File name prefix; a counter is added. Subfolders with '/'."}),
            }
        }

    def save(self, embeds, filename_prefix):
        import folder_paths

        out_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        path = Path(folder) / f"{name}_{counter:05}_.safetensors"
        while path.exists():
            counter += 1
            path = Path(folder) / f"{name}_{counter:05}_.safetensors"
        embeds_io.save_embeds(embeds, path)
        return {"ui": {"embeds": [{"filename": path.name, "subfolder": subfolder, "type": "output"}]}}


class LoadEmbeds:
    DESCRIPTION = (
        "Loads embeds saved by Save Embeds (from the output folder, marked [output]) or placed in the input folder, and "
        "legacy .ipadpt files (read without running code)."
    )
    CATEGORY = f"{_docs.CATEGORY}/embeds"
    RETURN_TYPES = (_docs.EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("The loaded embeds.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"embeds": (list_embeds(), {"tooltip": "An embeds file from the input folder, or from the output folder ([output])."})}}

    @classmethod
    def IS_CHANGED(cls, embeds):
        path = _annotated(embeds)
        return f"{path}:{os.path.getmtime(path)}" if os.path.exists(path) else embeds

    @classmethod
    def VALIDATE_INPUTS(cls, embeds):
        path = _annotated(embeds)
        return True if os.path.isfile(path) else f"embeds file not found: {embeds} (looked at {path})"

    def load(self, embeds):
        return (embeds_io.load_embeds(_annotated(embeds)),)


def _annotated(name: str) -> str:
    import folder_paths

    return folder_paths.get_annotated_filepath(name)


def list_embeds() -> list[str]:
    """Embeds files under input/ (plain names) and output/ (names ending in ' [output]')."""
    import folder_paths

    names = []
    for base, tag in ((folder_paths.get_input_directory(), ""), (folder_paths.get_output_directory(), " [output]")):
        root = Path(base)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in EMBEDS_SUFFIXES and (path.suffix.lower() == ".ipadpt" or _is_embeds(path)):
                names.append(path.relative_to(root).as_posix() + tag)
    return names


def _is_embeds(path: Path) -> bool:
    """Read only the safetensors header to tell our embeds from other .safetensors files."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 1_000_000:
                return False
            header = json.loads(f.read(size))
        return header.get("__metadata__", {}).get("format") == FORMAT
    except (OSError, ValueError, struct.error):
        return False
