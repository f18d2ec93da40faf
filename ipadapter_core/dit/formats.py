"""Which DiT adapter a file holds, from its tensor names and shapes, and the loaded adapter the nodes pass on."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .common import DitFormat, block_indices, read_flat

# format -> (module in this package, the base model family it patches, the encoder output it reads)
FORMATS: dict[DitFormat, tuple[str, str, str]] = {
    DitFormat.XLABS_FLUX: ("xlabs", "Flux", "CLIP ViT-L/14 image_embeds (clip_vision_l.safetensors)"),
    DitFormat.INSTANTX_FLUX: ("instantx_flux", "Flux", "SigLIP so400m-patch14-384 pooled output"),
    DitFormat.INSTANTX_SD35: ("sd3", "SD3.5", "SigLIP so400m-patch14-384 penultimate hidden states"),
}


@dataclass(eq=False)  # identity semantics: one object per loaded file
class DitAdapter:
    """One DiT adapter file in memory: its format and the module holding its tensors (keys as in the file)."""

    path: Path
    format: DitFormat
    model: nn.Module

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def base(self) -> str:
        return FORMATS[self.format][1]

    @property
    def encoder(self) -> str:
        return FORMATS[self.format][2]

    def describe(self) -> str:
        return f"{self.format.value} IP-Adapter for {self.base}, reads {self.encoder}"

    @property
    def spec(self):
        """DiT adapters have no SD1.5/SDXL spec: the nodes that need one meet this clear error instead."""
        raise ValueError(
            f"{self.name} is a {self.format.value} IP-Adapter (for {self.base} models): use it with Apply IPAdapter "
            "(IPAKitApply); this node works with SD1.5/SDXL adapters only"
        )


def _module(fmt: DitFormat):
    return importlib.import_module(f".{FORMATS[fmt][0]}", __package__)


def detect(flat: dict[str, torch.Tensor]) -> DitFormat | None:
    """The DiT format of a file's tensors; None when it is none of them (e.g. an SD1.5/SDXL adapter)."""
    for fmt in FORMATS:
        try:
            module = _module(fmt)
        except ImportError:  # a format whose module is not part of this build
            continue
        if module.matches(flat):
            return fmt
    return None


def load(path: str | Path, flat: dict[str, torch.Tensor] | None = None) -> DitAdapter | None:
    """The DiT adapter in `path` (its tensors assigned, not copied), or None when the file is not a DiT adapter."""
    path = Path(path)
    flat = read_flat(path) if flat is None else flat
    fmt = detect(flat)
    if fmt is None:
        return None
    module = _module(fmt)
    if fmt is DitFormat.INSTANTX_FLUX:
        # Which blocks are double and which single is the host's to say; Apply maps them with its counts. Files of
        # FLUX.1's 57 blocks are checked as 19 + 38, any other count (scaled-down models) in Flux's 1:2 ratio.
        n = len(block_indices(flat, "ip_adapter."))
        doubles = module.DOUBLE_BLOCKS if n == module.DOUBLE_BLOCKS + module.SINGLE_BLOCKS else n // 3
        return DitAdapter(path, fmt, module.load(flat, path, double_blocks=doubles, single_blocks=n - doubles))
    if fmt is DitFormat.INSTANTX_SD35:  # any block count loads; Apply checks it against the model's joint blocks
        return DitAdapter(path, fmt, module.load(flat, path, blocks=len(block_indices(flat, "ip_adapter."))))
    return DitAdapter(path, fmt, module.load(flat, path))
