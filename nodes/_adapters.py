"""One resident copy of each adapter file, under ComfyUI's model management."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..ipadapter_core import CheckpointError, LoadedAdapter, load_adapter
from ..ipadapter_core.dit import formats as dit_formats

log = logging.getLogger(__name__)

_lock = threading.Lock()


@dataclass(frozen=True)
class AdapterBundle:
    """What flows on an IPAKIT_ADAPTER socket: the shared adapter and, from the unified loader, its encoders."""

    adapter: LoadedAdapter
    clip_vision: object | None = None
    insightface: object | None = None

    @property
    def spec(self):
        return self.adapter.spec

    @property
    def name(self) -> str:
        return self.adapter.name


_adapters: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_patchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def load_adapter_cached(path: Path, override: str | None = None) -> LoadedAdapter | dit_formats.DitAdapter:
    """The loaded adapter for a file, shared by every node that uses it while any of them holds it: an SD1.5/SDXL
    adapter, or a Flux/SD3.5 one (`DitAdapter`) when the file is not the former."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, override)
    with _lock:
        adapter = _adapters.get(key)
        if adapter is None:
            try:
                adapter = load_adapter(path, override=override)
                what = adapter.spec.describe()
            except CheckpointError:
                adapter = dit_formats.load(path)  # the DiT layouts are not SD1.5/SDXL ones: try them only then
                if adapter is None:
                    raise
                what = adapter.describe()
            _adapters[key] = adapter
            log.info("IPAdapter Kit: loaded %s (%s)", path.name, what)
        return adapter


def ready_adapter(adapter: LoadedAdapter | dit_formats.DitAdapter, device: torch.device, dtype: torch.dtype) -> None:
    """Put the adapter's weights on `device` in `dtype` under ComfyUI's model management."""
    import comfy.model_management as mm
    import comfy.model_patcher

    with _lock:
        patcher = _patchers.get(adapter)
        if patcher is None:
            patcher = comfy.model_patcher.ModelPatcher(
                adapter.model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
            )
            _patchers[adapter] = patcher
    if device.type != "cpu":
        mm.load_models_gpu([patcher])
    first = next(adapter.model.parameters())
    if first.device != device or first.dtype != dtype:
        adapter.model.to(device=device, dtype=dtype)


def patcher_of(adapter) -> object | None:
    """The ModelPatcher that `ready_adapter` made for this adapter (None before), for patches that need the
    adapter's weights while sampling: their `models()` hand it to ComfyUI, which loads it with the model."""
    with _lock:
        return _patchers.get(adapter)


def clear_cache() -> None:
    """Forget the loaded adapters, so the next load reads the file again (nodes still holding one keep it)."""
    with _lock:
        _adapters.clear()
