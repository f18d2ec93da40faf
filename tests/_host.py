"""Shared helpers of the test suite: IP-Adapter stand-ins in the model cache, API workflows and small checks.

Named `_host` so it cannot collide with ComfyUI's top-level modules (`nodes`, `server`, `execution`,
`folder_paths`, `comfy`, ...), which the in-process host puts on sys.path.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from dev.standins import names

REPO = Path(__file__).resolve().parent.parent
# IP-Adapter files every session gets (published names, full size, for the SD1.5 checkpoint)
DEFAULT_IPADAPTERS = ("sd15", "plus_sd15")


# models


def ensure_ipadapter(variant: str, models_dir: Path, *, subdir: str | None = None, **kw) -> Path:
    """An IP-Adapter checkpoint under `models_dir/ipadapter[/subdir]` via dev.standins.ipadapter (imports torch)."""
    from dev.standins import ipadapter

    folder = models_dir / "ipadapter" / subdir if subdir else models_dir / "ipadapter"
    return Path(ipadapter.ensure_checkpoint(variant, folder, **kw))


# API-format workflows


def txt2img_workflow(ckpt_name: str = names.SD15_CHECKPOINT, *, seed: int = 1, size: int = 64, steps: int = 1,
                     prefix: str = "ipakit_test") -> dict:
    """CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode -> SaveImage."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


# checks


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; raises ValueError if `path` is not a PNG."""
    data = Path(path).read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", data[16:24])


def free_memory() -> None:
    """Unload every model ComfyUI keeps loaded in this process (between heavy in-process tests)."""
    from dev.host.torch_probes import trim_heap

    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.soft_empty_cache()
    trim_heap()  # hand the freed heap back, or RSS keeps every model ever loaded


def face_image(seed: int = 0, size: int = 320):
    """A bright image: the generated InsightFace detector finds one face at the centre of a non-dark canvas."""
    import torch

    return 0.3 + 0.6 * torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))
