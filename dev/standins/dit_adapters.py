"""The Flux / SD3.5 adapters the example workflows run on: random weights in the published layouts, at the widths
of the model stand-ins (dev/standins/dit_models.py: real widths, one or two blocks), under the names the workflows
and the Unified Loader presets look for, in models/ipadapter/<names.DIT_SUBDIR>/.

- `xlabs-v2`: XLabs flux-ip-adapter-v2 (16 tokens) for 1 double block.
- `instantx-flux`: InstantX FLUX.1-dev-IP-Adapter for 1 double + 1 single block, with 4 instead of 128 image tokens
  (the 128-token projection alone is 1.2 B parameters; the token count is read from the file).
- `instantx-sd35`: InstantX SD3.5-Large-IP-Adapter with the full resampler, for the SD3.5 stand-in's 2 joint blocks
  of width 128 (ComfyUI builds an MMDiT of width/64 blocks, so a 2-block stand-in cannot keep the 2432 width).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dev.standins import dit_instantx, dit_sd3, dit_xlabs, names

FILES = {
    "xlabs-v2": "flux-ip-adapter-v2.safetensors",
    "instantx-flux": "FLUX.1-dev-IP-Adapter.bin",
    "instantx-sd35": "SD3.5-Large-IP-Adapter.bin",
}


def ensure(variant: str, models_dir: str | Path) -> Path:
    """Write the adapter `variant` under models_dir/ipadapter/<DIT_SUBDIR>/ unless it is there; its path."""
    path = Path(models_dir) / "ipadapter" / names.DIT_SUBDIR / FILES[variant]
    if path.exists():
        return path
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    if variant == "xlabs-v2":
        dit_xlabs.write_xlabs(partial, seed=31, dtype=torch.float16, tokens=16, embed_dim=768, width=4096, inner=3072,
                              blocks=1)
    elif variant == "instantx-flux":
        dit_instantx.write_instantx_flux(partial, "full", 32, dtype=torch.float16, tokens=4, double_blocks=1,
                                         single_blocks=1)
    else:
        dit_sd3.write_sd35(partial, "full", 33, dtype=torch.float16, hidden=128, blocks=2)
    partial.replace(path)
    return path
