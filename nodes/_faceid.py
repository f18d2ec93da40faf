"""FaceID glue: InsightFace packs from ComfyUI's model folders, and the FaceID LoRA as ComfyUI weight patches."""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path

import torch

from ..ipadapter_core import safe_load
from ..ipadapter_core.lora import to_diffusers_lora
from . import _folders, _progress, _unet

log = logging.getLogger(__name__)

LORA_MARK = "ipakit_faceid_lora"  # model_options key: adapters whose LoRA the model already carries
_lock = threading.Lock()
_analyzers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def faces_module():
    """The core's face module (importing it never imports insightface)."""
    from ..ipadapter_core import faces

    return faces


def insightface_roots() -> list[Path]:
    """Folders holding `models/<pack>/`: models/insightface and any `insightface:` entry of extra_model_paths.yaml."""
    import folder_paths

    roots = [Path(p) for p in _folders.folders("insightface")]
    default = Path(folder_paths.models_dir) / "insightface"
    if default not in roots:
        roots.append(default)
    return roots


def load_insightface(pack: str, provider: str):
    """A FaceAnalyzer for a pack (detection + recognition only), cached per folder, pack and provider."""
    faces = faces_module()
    problems = []
    for root in insightface_roots():
        try:
            folder = faces.check_pack_folder(root, pack)
        except FileNotFoundError as e:
            problems.append(str(e))
            continue
        key = (str(folder), pack, provider)
        with _lock:
            analyzer = _analyzers.get(key)
            if analyzer is None:
                analyzer = faces.load_face_analysis(root, pack, provider)
                _analyzers[key] = analyzer
        return analyzer
    raise FileNotFoundError(" | ".join(problems))


def analyze(analyzer, images, *, crop_size: int, choice, on_missing: str):
    """Faces of an image batch, with a progress bar over the images."""
    bar = _progress.progress(images.shape[0])
    return faces_module().analyze_images(
        analyzer, images, crop_size=crop_size, choice=choice, on_missing=on_missing, on_image=lambda i: bar.update(1)
    )


# the FaceID LoRA


def has_lora(model, adapter) -> bool:
    """Whether `model` already carries the adapter's FaceID LoRA: applied by this pack, or by any LoRA loader (ComfyUI's
    core LoRA loaders on the separate `*_lora.safetensors` file) as weight patches holding the same tensors."""
    if str(adapter.path) in model.model_options.get(LORA_MARK, ()):
        return True
    if not adapter.lora:
        return False
    probe = adapter.lora[min(adapter.lora)]  # one tensor of the LoRA identifies it
    return any(_holds(patch, probe) for patches in getattr(model, "patches", {}).values() for patch in patches)


def _holds(value, probe, depth: int = 0) -> bool:
    """Whether a weight patch entry (tuples and, on current ComfyUI, adapter objects with `.weights`) contains `probe`."""
    if isinstance(value, torch.Tensor):
        return value.shape == probe.shape and torch.equal(value.to(probe), probe)
    if depth > 4:
        return False
    if isinstance(value, (tuple, list)):
        return any(_holds(v, probe, depth + 1) for v in value)
    weights = getattr(value, "weights", None)
    return weights is not None and _holds(weights, probe, depth + 1)


def apply_lora(model, adapter, strength: float, lora_file: Path | None = None):
    """A clone of `model` with the adapter's FaceID LoRA (or a separate LoRA file) as reversible weight patches.

    Uses ComfyUI's own LoRA loader on the diffusers-format keys, so the embedded tensors patch the UNet
    exactly as the published `*_lora.safetensors` file would.
    """
    import comfy.sd

    if strength == 0 or (lora_file is None and not adapter.lora):
        return model
    if lora_file is not None:
        lora = safe_load.state_dict(lora_file, what="FaceID LoRA")  # plain tensors only, on every host
    else:
        lora = to_diffusers_lora(adapter.lora, _unet.topology(model))
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    marks = set(patched.model_options.get(LORA_MARK, ()))
    marks.add(str(adapter.path))
    patched.model_options[LORA_MARK] = tuple(sorted(marks))
    log.info("IPAdapter Kit: FaceID LoRA of %s applied at strength %s%s", adapter.name, strength, f" from {lora_file.name}" if lora_file else "")
    return patched
