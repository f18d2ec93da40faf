"""Embeds nodes: encode references once, combine them, save and load them with metadata."""

from __future__ import annotations

import os
from pathlib import Path

from ..ipadapter_core import COMBINE_METHODS, combine, concat, embeds_io, safe_load, scaled
from ..ipadapter_core.embeds_io import FORMAT
from . import _dit_apply, _docs, _folders, _pipeline
from ._base import CheckedNode

EMBEDS_SUFFIXES = (".safetensors", ".ipadpt")


class Encode(CheckedNode):
    DESCRIPTION = (
        "Encodes reference images for an adapter into embeds: the encoder features of each image plus the negative the "
        "reference implementation uses (or your image_negative). Embeds can be combined, saved, loaded and applied with "
        "Apply Embeds, so an expensive encode runs once. Flux and SD3.5 adapters' embeds hold the CLIP ViT-L or SigLIP "
        "features they read (mask does not apply to them)."
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
        if _dit_apply.is_dit(ipadapter.adapter):
            if mask is not None:
                raise ValueError(f"{ipadapter.name} is a {ipadapter.adapter.format.value} adapter: Encode takes no mask "
                                 "for it (give attn_mask to Apply IPAdapter instead)")
            embeds = _dit_apply.encode_embeds(ipadapter.adapter, image, image_negative=image_negative,
                                              clip_vision=clip_vision if clip_vision is not None else ipadapter.clip_vision)
            return (scaled(embeds, weight),)
        if ipadapter.spec.kind.uses_face:
            embeds = _pipeline.encode_faces(ipadapter, image, insightface, clip_vision=clip_vision, image_negative=image_negative)[0]
        else:
            embeds = _pipeline.encode(ipadapter, image, clip_vision=clip_vision, image_negative=image_negative, mask=mask)
        return (scaled(embeds, weight),)


class CombineEmbeds(CheckedNode):
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


class SaveEmbeds(CheckedNode):
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


class LoadEmbeds(CheckedNode):
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
        path = embeds_file(embeds)
        return f"{path}:{os.path.getmtime(path)}" if path is not None else embeds

    @classmethod
    def VALIDATE_INPUTS(cls, embeds):
        return True if embeds_file(embeds) is not None else _not_found(embeds)

    def load(self, embeds):
        path = embeds_file(embeds)
        if path is None:
            raise FileNotFoundError(_not_found(embeds))
        return (embeds_io.load_embeds(path),)


_FOLDERS = {"": "get_input_directory", " [input]": "get_input_directory", " [output]": "get_output_directory"}


def embeds_file(name) -> Path | None:
    """The file a Load Embeds name means: inside the input folder, or the output folder for ' [output]'; else None.

    Absolute paths, `..`, NUL bytes, drive letters, other annotations and other suffixes are None, like a missing
    file, so the answer says nothing about files outside these folders.
    """
    import folder_paths

    if not isinstance(name, str):
        return None
    tag = next((t for t in (" [output]", " [input]") if name.endswith(t)), "")
    plain = name[: len(name) - len(tag)]
    if Path(plain).suffix.lower() not in EMBEDS_SUFFIXES:
        return None
    return _folders.file_in(getattr(folder_paths, _FOLDERS[tag])(), plain)


def _not_found(name) -> str:
    return (
        f"embeds file not found: {name}. Load Embeds reads .safetensors and .ipadpt files from the input folder, or "
        "from the output folder when the name ends in ' [output]'. Save embeds with Save Embeds (or put the file into "
        "ComfyUI's input folder) and refresh the page."
    )


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
    """Read only the safetensors header (length checked first) to tell our embeds from other .safetensors files."""
    try:
        header = safe_load.read_safetensors_header(path, what="embeds", limit=1_000_000)
        meta = header.get("__metadata__")
        return isinstance(meta, dict) and meta.get("format") == FORMAT
    except (OSError, ValueError):
        return False
