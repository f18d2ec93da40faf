"""Where the random-weight stand-ins are written, and under which file names: the one home of these names
(the generators, the tests, the benchmarks, the example workflows and the main job import them). Imports only
the standard library and the pack's preset table (`ipadapter_core.presets`, for the published CLIP vision name).

Paths are relative to a models folder laid out like ComfyUI's `models/`.
"""

from __future__ import annotations

from pathlib import Path

from ipadapter_core.presets import CLIP_NAMES

MODELS_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "models"
"""The models folder the tests, the benchmarks and the main job generate the stand-ins into (never committed)."""

SD15_CHECKPOINT = "ipakit-random-sd15.safetensors"
SDXL_SMALL_CHECKPOINT = "ipakit-random-sdxl-small.safetensors"
VIT_H = f"{CLIP_NAMES['ViT-H-14'][0]}.safetensors"  # the published name: the workflows load the stand-in unchanged
CONTROLNET_SD15 = "ipakit-random-controlnet-sd15.safetensors"

RELPATHS = {  # dev/standins/comfy_models.py's models by name -> path under the models folder
    "sd15": f"checkpoints/{SD15_CHECKPOINT}",
    "sdxl-small": f"checkpoints/{SDXL_SMALL_CHECKPOINT}",
    "vit-h": f"clip_vision/{VIT_H}",
    "controlnet-sd15": f"controlnet/{CONTROLNET_SD15}",
}

SDXL_SMALL_SUBDIR = "ipakit-sdxl-small"
"""models/ipadapter/<this>: SDXL adapters generated at the SDXL-small UNet's widths (full-size SDXL adapters do
not fit that UNet), so they never mix with real ones."""
