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

# Flux / SD3.5 stand-ins (dev/standins/dit_models.py), only for a current ComfyUI: real widths, one or two blocks.
# `unet/` and `clip/` are the folder names both ComfyUIs know (current ComfyUI maps them to diffusion_models/ and
# text_encoders/). The CLIP vision stand-ins are written under the published names the workflows load.
DIT_FLUX_UNET = "ipakit-random-flux-dev.safetensors"
DIT_SD35_UNET = "ipakit-random-sd35-large.safetensors"
DIT_FLUX_VAE = "ipakit-random-flux-ae.safetensors"
DIT_SD3_VAE = "ipakit-random-sd3-vae.safetensors"
DIT_CLIP_L_TEXT = "ipakit-random-clip-l.safetensors"
DIT_CLIP_G_TEXT = "ipakit-random-clip-g.safetensors"
DIT_T5XXL = "ipakit-random-t5xxl-fp8.safetensors"
DIT_CLIP_VISION_L = "clip_vision_l.safetensors"
DIT_SIGLIP = "siglip-so400m-patch14-384.safetensors"
DIT_RELPATHS = {
    "flux-unet": f"unet/{DIT_FLUX_UNET}",
    "sd35-unet": f"unet/{DIT_SD35_UNET}",
    "flux-vae": f"vae/{DIT_FLUX_VAE}",
    "sd3-vae": f"vae/{DIT_SD3_VAE}",
    "clip-l-text": f"clip/{DIT_CLIP_L_TEXT}",
    "clip-g-text": f"clip/{DIT_CLIP_G_TEXT}",
    "t5xxl-fp8": f"clip/{DIT_T5XXL}",
    "clip-vision-l": f"clip_vision/{DIT_CLIP_VISION_L}",
    "siglip": f"clip_vision/{DIT_SIGLIP}",
}
DIT_SUBDIR = "ipakit-dit-standins"
"""models/ipadapter/<this>: the Flux/SD3.5 adapters generated for those stand-ins (their widths, their block counts)."""

SDXL_SMALL_SUBDIR = "ipakit-sdxl-small"
"""models/ipadapter/<this>: SDXL adapters generated at the SDXL-small UNet's widths (full-size SDXL adapters do
not fit that UNet), so they never mix with real ones."""
