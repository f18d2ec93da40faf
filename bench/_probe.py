"""Observing wrappers for the installed attn2 patches: timing, input capture and host-sync counting.

A `Probe` wraps one installed patch object and only observes: it calls the real patch with the real
inputs and returns its output unchanged. Text attention time inside our patch is measured by wrapping
ComfyUI's `optimized_attention` (looked up at call time by both ComfyUI and our patch; outside a probe the
wrapper only passes the call on).
"""

from __future__ import annotations

import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dev.host.torch_probes import SyncRecorder, attn2_patches


class Stats:
    """What the probes saw during one or more forwards."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.inside = False
        self.patch_s = 0.0
        self.text_s = 0.0
        self.calls = 0
        self.keys: set = set()
        self.syncs: list[str] = []

    @property
    def own_s(self) -> float:
        return self.patch_s - self.text_s


STATS = Stats()
CAPTURED: dict = {}  # layer key -> (q, k, v, extra_options) of the first call seen
MODE = {"capture": False, "syncs": False}


class Probe:
    """Wraps one installed patch; times it, and on request records its inputs and host syncs."""

    __slots__ = ("patch", "key")

    def __init__(self, patch, key):
        self.patch, self.key = patch, key

    def __call__(self, q, k, v, extra_options):
        stats = STATS
        if MODE["capture"] and self.key not in CAPTURED:
            CAPTURED[self.key] = (q, k, v, dict(extra_options))
        recorder = SyncRecorder() if MODE["syncs"] else None
        stats.inside = True
        start = time.perf_counter()
        try:
            if recorder is None:
                return self.patch(q, k, v, extra_options)
            with recorder:
                return self.patch(q, k, v, extra_options)
        finally:
            stats.patch_s += time.perf_counter() - start
            stats.inside = False
            stats.calls += 1
            stats.keys.add(self.key)
            if recorder is not None:
                stats.syncs += recorder.calls

    def to(self, *args, **kwargs):
        moved = self.patch.to(*args, **kwargs)
        return self if moved is self.patch else Probe(moved, self.key)

    def __deepcopy__(self, memo):
        return self


def probed(model):
    """A clone of `model` whose attn2 patches are wrapped in probes."""
    clone = model.clone()
    for key, patch in attn2_patches(model).items():
        clone.set_model_attn2_replace(Probe(patch, key), *key)
    return clone


def install_text_timer():
    """Wrap ComfyUI's optimized_attention so time spent in it inside our patches is counted (idempotent)."""
    from comfy.ldm.modules import attention

    original = attention.optimized_attention
    if getattr(original, "_ipakit_timer", False):
        return

    def timed_attention(*args, **kwargs):
        if not STATS.inside:
            return original(*args, **kwargs)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            STATS.text_s += time.perf_counter() - start

    timed_attention._ipakit_timer = True
    attention.optimized_attention = timed_attention


class AllocTracker(TorchDispatchMode):
    """Peak bytes of the new tensors that the ops in its scope allocate and keep alive (transient memory)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs and t._base is None:
                size = t.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def image_attention_peak(observe, patch, q, extra_options) -> int:
    """Transient bytes our image attention allocates for one call (the plan alone, adding into a given output);
    `observe` is the pack's `nodes.observe` module as the host loaded it."""
    out = torch.zeros_like(q)
    tracker = AllocTracker()
    with tracker:
        observe.image_attention(patch, q, extra_options, out)
    return tracker.peak
