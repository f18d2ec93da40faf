"""Observation helpers shared by the performance tests and the benchmarks (never imported by the pack).

- `SyncRecorder`: a TorchFunctionMode that records every torch call in its scope that reads a tensor
  value back to the host (a device sync on a GPU).
- `attn2_patches(model)`: the attn2 replace patches installed on a ComfyUI ModelPatcher.
- `held_tensors(patches)`: the tensor storages our patch objects keep alive (plans and their caches).
- `trim_heap()`, `rss_mib()`, `resident_mib()`: resident memory, raw or after handing freed heap back.
- `UNetCall`: fixed random inputs for one ComfyUI UNet forward the way the sampler calls it.
"""

from __future__ import annotations

import ctypes
import gc

import torch
from torch.overrides import TorchFunctionMode

SYNC_NAMES = frozenset({
    "item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "__complex__",
    "nonzero", "argwhere", "equal", "is_nonzero", "allclose", "unique", "masked_select", "bincount",
})


class SyncRecorder(TorchFunctionMode):
    """Records the torch calls in its scope that read a tensor value on the host, by name."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in SYNC_NAMES:
            self.calls.append(name)
        elif name == "__getitem__" and len(args) > 1 and _has_bool_index(args[1]):
            self.calls.append("boolean-mask indexing")
        elif name == "to" and args[0].device.type != "cpu" and any(_is_cpu(a) for a in (*args[1:], *kwargs.values())):
            self.calls.append("to(cpu)")
        return func(*args, **kwargs)


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _is_cpu(x) -> bool:
    return (isinstance(x, str) and x.startswith("cpu")) or (isinstance(x, torch.device) and x.type == "cpu")


def attn2_patches(model) -> dict:
    """`{(block, id, depth): patch}` of the attn2 replace patches on a ComfyUI ModelPatcher; a patch at a 2-tuple key
    (a block with one transformer layer) is listed at depth 0."""
    found = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    return {(*key, 0) if len(key) == 2 else key: patch for key, patch in found.items()}


def held_tensors(patches) -> dict[int, int]:
    """Storage pointer -> bytes of every tensor our patch objects keep (`LayerPlan.tensors()`); meta tensors skipped."""
    held: dict[int, int] = {}
    for patch in patches:
        for x in patch.plan.tensors():
            if x.device.type != "meta":
                held[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    return held


def trim_heap() -> None:
    """Collect garbage, then hand the freed heap back to the OS (glibc), so RSS shows only what is still held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def rss_mib() -> float:
    """This process's resident memory now (MiB), as the kernel counts it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def resident_mib() -> float:
    """Resident memory (MiB) after `trim_heap()`: what is still alive."""
    trim_heap()
    return rss_mib()


class UNetCall:
    """Fixed random inputs for one `diffusion_model(x, timesteps, context, transformer_options)` call the way
    ComfyUI's sampler makes it: `batch` latents per cond/uncond entry of `rows` (0 = cond, 1 = uncond), `sigma`
    for the start/end gates, and the `y` vector when the UNet takes one (SDXL). Calling it runs the forward
    on a model (ModelPatcher) with that model's transformer options; the inputs stay the same across calls."""

    def __init__(self, model, hw=(8, 8), rows=(1, 0), batch: int = 1, sigma: float = 1.0, seed: int = 0):
        unet = model.model.diffusion_model
        context_dim = next(m.attn2.to_k.in_features for m in unet.modules() if getattr(m, "attn2", None) is not None)
        g = torch.Generator().manual_seed(seed)
        n = len(rows) * batch
        self.rows, self.batch, self.sigma = list(rows), batch, sigma
        self.x = torch.randn(n, 4, *hw, generator=g)
        self.t = torch.full((n,), 500.0)
        self.context = torch.randn(n, 77, context_dim, generator=g)
        self.y = torch.randn(n, unet.label_emb[0][0].in_features, generator=g) if hasattr(unet, "label_emb") else None

    def options(self, model) -> dict:
        options = dict(model.model_options.get("transformer_options", {}))
        options.update(cond_or_uncond=list(self.rows), sigmas=torch.full((self.batch,), float(self.sigma)),
                       original_shape=list(self.x.shape))
        return options

    def __call__(self, model) -> torch.Tensor:
        kw = {} if self.y is None else {"y": self.y}
        with torch.inference_mode():
            return model.model.diffusion_model(self.x, timesteps=self.t, context=self.context,
                                               transformer_options=self.options(model), **kw)
