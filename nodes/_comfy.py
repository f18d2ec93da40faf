"""ComfyUI glue for the nodes: model folders, file lookup, shared model caches, devices and dtypes."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..ipadapter_core import ClipOutput, LoadedAdapter, Topology, load_adapter

log = logging.getLogger(__name__)

IPADAPTER = "ipadapter"
_lock = threading.Lock()


# folders


def register_folders() -> None:
    """Register `models/ipadapter` once, keeping any paths extra_model_paths.yaml already gave it."""
    import folder_paths

    exts = set(folder_paths.supported_pt_extensions) | {".bin", ".safetensors"}
    if IPADAPTER in folder_paths.folder_names_and_paths:
        paths, _ = folder_paths.folder_names_and_paths[IPADAPTER]
        folder_paths.folder_names_and_paths[IPADAPTER] = (paths, exts)
    else:
        folder_paths.folder_names_and_paths[IPADAPTER] = ([str(Path(folder_paths.models_dir) / IPADAPTER)], exts)


def folders(kind: str) -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths(kind))
    except KeyError:
        return []


def file_list(kind: str) -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_filename_list(kind))
    except KeyError:
        return []


def resolve(kind: str, name: str) -> Path:
    """Full path of a file chosen in a combo; a missing file names the folders searched and the fix."""
    import folder_paths

    path = folder_paths.get_full_path(kind, name) if name else None
    if path is None or not Path(path).is_file():
        listed = file_list(kind)
        hint = f"files there: {', '.join(listed[:12])}" if listed else "the folders hold no model files"
        raise FileNotFoundError(
            f"'{name}' was not found in the {kind} folders ({'; '.join(folders(kind)) or 'none registered'}); {hint}. "
            f"Put the file into models/{kind} (or an `{kind}:` entry of extra_model_paths.yaml) and refresh the page."
        )
    return Path(path)


# one resident copy of each adapter file


_adapters: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_patchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def load_adapter_cached(path: Path, override: str | None = None) -> LoadedAdapter:
    """The loaded adapter for a file, shared by every node that uses it while any of them holds it."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, override)
    with _lock:
        adapter = _adapters.get(key)
        if adapter is None:
            adapter = load_adapter(path, override=override)
            _adapters[key] = adapter
            log.info("IPAdapter Kit: loaded %s (%s)", path.name, adapter.spec.describe())
        return adapter


def ready_adapter(adapter: LoadedAdapter, device: torch.device, dtype: torch.dtype) -> None:
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


# the model being patched


def compute_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype the UNet computes (fp32 on CPU; fp8 storage computes in fp16)."""
    import comfy.model_management as mm

    device = mm.get_torch_device()
    if device.type == "cpu":
        return device, torch.float32
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    if not dtype.is_floating_point or dtype.itemsize < 2:
        dtype = torch.float16
    return device, dtype


_topologies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def topology(model) -> Topology:
    """The cross-attention layers of a ComfyUI UNet, read from its modules (cached per UNet)."""
    unet = model.model.diffusion_model
    cached = _topologies.get(unet)
    if cached is not None:
        return cached
    transformers = []
    groups = [("input", list(unet.input_blocks)), ("middle", [unet.middle_block]), ("output", list(unet.output_blocks))]
    for block, modules in groups:
        for block_id, seq in enumerate(modules):
            for module in seq if isinstance(seq, torch.nn.Sequential) else [seq]:
                blocks = getattr(module, "transformer_blocks", None)
                if blocks and getattr(blocks[0], "attn2", None) is not None:
                    attn2 = blocks[0].attn2
                    transformers.append((block, block_id, len(blocks), attn2.to_q.out_features, attn2.heads))
    if not transformers:
        raise ValueError("this model has no cross-attention layers an IP-Adapter can patch (is it a UNet model?)")
    nrb = getattr(unet, "num_res_blocks", [2])
    nrb = nrb[0] if isinstance(nrb, (list, tuple)) else nrb
    topo = Topology.from_transformers(transformers, context_dim=_context_dim(unet), num_res_blocks=nrb)
    _topologies[unet] = topo
    return topo


def _context_dim(unet) -> int:
    for module in unet.modules():
        attn2 = getattr(module, "attn2", None)
        if attn2 is not None:
            return attn2.to_k.in_features
    return 0


def model_name(topo: Topology) -> str:
    n = len(topo.layers)
    return {16: "SD1.5", 70: "SDXL"}.get(n, f"a UNet with {n} cross-attention layers") + f" (context {topo.context_dim})"


def sigma_range(model, start_at: float, end_at: float) -> tuple[float, float] | None:
    """(sigma_start, sigma_end) for start/end percentages of sampling; None when always active."""
    if start_at <= 0.0 and end_at >= 1.0:
        return None
    if hasattr(model, "get_model_object"):
        sampling = model.get_model_object("model_sampling")
    else:
        sampling = model.object_patches.get("model_sampling", model.model.model_sampling)
    return float(sampling.percent_to_sigma(start_at)), float(sampling.percent_to_sigma(end_at))


# CLIP vision


@dataclass(frozen=True)
class ClipInfo:
    hidden: int  # penultimate width
    projection: int | None  # image_embeds width
    size: int


def clip_info(clip_vision) -> ClipInfo:
    model = clip_vision.model
    hidden = model.vision_model.post_layernorm.weight.shape[0]
    proj = getattr(model, "visual_projection", None)
    projection = proj.weight.shape[0] if hasattr(proj, "weight") else None
    return ClipInfo(hidden=hidden, projection=projection, size=int(getattr(clip_vision, "image_size", 224)))


_encodings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # CLIP vision model -> {pixels digest: outputs}
ENCODE_CACHE_ROWS = 32


def clip_encoder(clip_vision):
    """`pixels [B, 3, S, S] (normalised) -> {"penultimate", "image_embeds"}` running ComfyUI's CLIP vision model.

    Each image's outputs are remembered per model (the last ENCODE_CACHE_ROWS images), so the
    reference negative (the same empty image every time) and a reference used by several nodes are
    encoded once; the images not seen before go through the encoder in one batch.
    """
    import comfy.model_management as mm

    def run(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        mm.load_model_gpu(clip_vision.patcher)
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device).float(), intermediate_output=-2)
        device = mm.intermediate_device()
        return {"penultimate": out[1].float().to(device), "image_embeds": out[2].float().to(device)}

    def encode(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        with _lock:
            cache = _encodings.setdefault(clip_vision.model, {})
        keys = [_digest(row) for row in pixels]
        found = {k: cache[k] for k in keys if k in cache}
        fresh = [k for k in dict.fromkeys(keys) if k not in found]
        if fresh:
            out = run(pixels[[keys.index(k) for k in fresh]])
            for j, key in enumerate(fresh):
                found[key] = cache[key] = {name: value[j] for name, value in out.items()}
            while len(cache) > ENCODE_CACHE_ROWS:
                cache.pop(next(iter(cache)))
        return {name: torch.stack([found[k][name] for k in keys]) for name in ("penultimate", "image_embeds")}

    return encode


def _digest(row: torch.Tensor) -> str:
    import hashlib

    data = row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return f"{tuple(row.shape)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def check_clip(spec, clip_vision, source: str) -> None:
    """Refuse a CLIP vision model whose outputs cannot feed the adapter, before encoding anything."""
    info = clip_info(clip_vision)
    have = info.hidden if spec.clip_output is ClipOutput.PENULTIMATE else info.projection
    if have != spec.clip_dim:
        want = spec.clip_encoder or f"a CLIP vision model with {spec.clip_dim}-wide {spec.clip_output.value}"
        raise ValueError(
            f"{source} reads CLIP {spec.clip_output.value} {spec.clip_dim} wide ({want}), but the connected CLIP vision "
            f"model gives {have} (hidden {info.hidden}, projection {info.projection}). Load {clip_file_hint(spec)} with "
            "Load CLIP Vision, or use the Unified Loader, which picks the right one."
        )


def clip_file_hint(spec) -> str:
    return {
        "ViT-H-14": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
        "ViT-bigG-14": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
        "ViT-L-14-336": "clip-vit-large-patch14-336.safetensors",
    }.get(spec.clip_encoder or "", "the matching CLIP vision model")


_clip_models: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def load_clip_vision_cached(path: Path):
    import comfy.clip_vision

    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _lock:
        model = _clip_models.get(key)
        if model is None:
            model = comfy.clip_vision.load(str(path))
            if model is None:
                raise ValueError(f"{path.name}: ComfyUI does not recognise this file as a CLIP vision model (ViT-H, ViT-bigG or ViT-L)")
            _clip_models[key] = model
        return model


def progress(total: int):
    """A ComfyUI progress bar (each update is also an interrupt point); a no-op outside a server."""
    import comfy.utils

    return comfy.utils.ProgressBar(max(1, total))
