"""Shared helpers of the test suite: the model cache, API workflows and small checks.

Named `_host` so it cannot collide with ComfyUI's top-level modules (`nodes`, `server`, `execution`,
`folder_paths`, `comfy`, ...), which the in-process host puts on sys.path.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / ".cache" / "models"

log = logging.getLogger(__name__)

# the file names the generators write (kept here as strings so this module imports without torch)
SD15_CHECKPOINT = "ipakit-random-sd15.safetensors"
SDXL_SMALL_CHECKPOINT = "ipakit-random-sdxl-small.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
CONTROLNET_SD15 = "ipakit-random-controlnet-sd15.safetensors"
COMFY_MODELS = {
    "sd15": f"checkpoints/{SD15_CHECKPOINT}",
    "sdxl-small": f"checkpoints/{SDXL_SMALL_CHECKPOINT}",
    "vit-h": f"clip_vision/{VIT_H}",
    "controlnet-sd15": f"controlnet/{CONTROLNET_SD15}",
}
# IP-Adapter files every session gets (published names, full size, for the SD1.5 checkpoint)
DEFAULT_IPADAPTERS = ("sd15", "plus_sd15")


# models


def ensure_comfy_models(models_dir: Path = MODELS_DIR, names=None) -> dict[str, Path]:
    """Generate the missing random ComfyUI models (tools/gen_comfy_models.py) in a child process."""
    names = list(names or COMFY_MODELS)
    missing = [n for n in names if not (models_dir / COMFY_MODELS[n]).exists()]
    if missing:
        started = time.monotonic()
        cmd = [sys.executable, "-m", "tools.gen_comfy_models", "--out", str(models_dir), "--only", *missing]
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"generating {missing} failed:\n{proc.stdout[-4000:]}")
        log.info("generated %s in %.1f s:\n%s", missing, time.monotonic() - started, proc.stdout)
    return {n: models_dir / COMFY_MODELS[n] for n in names}


def have_ipadapter_generator() -> bool:
    return importlib.util.find_spec("tools.gen_ipadapter") is not None


def ensure_ipadapter(variant: str, models_dir: Path = MODELS_DIR, *, subdir: str | None = None, **kw) -> Path:
    """An IP-Adapter checkpoint under `models_dir/ipadapter[/subdir]` via tools.gen_ipadapter."""
    from tools import gen_ipadapter

    folder = models_dir / "ipadapter" / subdir if subdir else models_dir / "ipadapter"
    return Path(gen_ipadapter.ensure_checkpoint(variant, folder, **kw))


# API-format workflows


def txt2img_workflow(ckpt_name: str = SD15_CHECKPOINT, *, seed: int = 1, size: int = 64, steps: int = 1,
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
    from tools.torch_probes import trim_heap

    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.soft_empty_cache()
    trim_heap()  # hand the freed heap back, or RSS keeps every model ever loaded
