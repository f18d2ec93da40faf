"""Flux and SD3.5 image prompts: what the pack's DiT block patches add to one forward, what they hold, what Apply costs.

Needs a current ComfyUI (the 2024 test host has no Flux): in process, CPU, fp32, pytorch attention. Models: ComfyUI's
own Flux class at FLUX.1's widths (hidden 3072 = 24 heads x 128, context 4096, vec 768) with 2 double + 2 single
blocks, and its MMDiT at SD3.5 Large's (depth 38: hidden 2432 = 38 heads x 64, context 4096, RMS QK-norm) with 2
joint blocks; random weights. Adapters at the published widths with one block per block of these slices: XLabs v2
(16 tokens of 4096 -> 3072), InstantX Flux (128 tokens, SigLIP 1152 -> 2304 -> 128 x 4096: its 1.2 B-parameter
projection is written in chunks and read memory-mapped, a 4.9 GiB fp32 file), InstantX SD3.5 (resampler of width
1280, 64 queries over 729 SigLIP patch tokens). Encoders: 2-layer random ComfyUI CLIP vision models with the real
feature widths (CLIP image_embeds 768; SigLIP 1152 at 384 px, patch 14 = 729 tokens, its pooling head in a clip_vision
file), so the encode is not the real encoders' cost. Files go to a temporary models folder, removed at the end.

For each format, on one latent batch (cond + uncond, cond_or_uncond [0, 1]; text 256 tokens for Flux, 154 for SD3):
  pairs  - unpatched and patched forwards interleaved (order flipped each pair): median of the differences.
  inside - the patches' own time inside those patched forwards: each block's patch call minus the original block,
           plus its attention override minus the host attention it wraps (SD3.5: the resampler, once per model call,
           timed on its own too).
  alone  - one captured block per kind (min of reps): the host's joint attention; our override on the same inputs
           with the host attention's output precomputed, split into the image term's arithmetic (of which un-RoPE,
           or SD3.5's per-block image K/V) and the rest (weight, gate, clone, add).
Then the tensors the patches hold, whether the adapter's weights stay needed while sampling (the patches' models()),
resident memory against the model alone (anonymous and file-backed: safetensors files are memory-mapped), and the Apply
node's time (encode + image tokens + K/V) next to a bare encode and its parts. The slices hold 4 (Flux) and 2 (SD3.5)
blocks; the "extrapolated" rows scale the per-block figures to FLUX.1's 19 + 38 and SD3.5 Large's 38 blocks.

    IPAKIT_COMFYUI=/tmp/cur/ComfyUI /tmp/cur/venv/bin/python bench/dit.py --pairs 3             # ~5 min on 2 cores
    IPAKIT_COMFYUI=/tmp/cur/ComfyUI /tmp/cur/venv/bin/python bench/dit.py --pairs 3 --threads 1 # ~6 min
    IPAKIT_COMFYUI=... python bench/dit.py --formats sd35 --size 512 --pairs 6

Memory: peak RSS ~10 GB, of which ~5 GB are the InstantX file's memory-mapped pages (page cache, reclaimable); the
anonymous peak is ~5 GB (the Flux slice is 3.9 GB in fp32). --instantx-tokens 64 halves the file.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import _common as C

from dev.host.torch_probes import trim_heap

SUB = "ipakit-dit-bench"
FLUX_CONFIG = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
               "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 2,
               "depth_single_blocks": 2, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
               "guidance_embed": False}
SD35_CONFIG = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 38, "num_blocks": 2, "input_size": None,
               "adm_in_channels": 2048, "num_patches": 192 * 192, "pos_embed_max_size": 192, "qk_norm": "rms",
               "context_embedder_config": {"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 2432}},
               "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []}
FORMATS = {  # name -> (label, host, encoder, real block counts by patch kind)
    "xlabs": ("XLabs Flux v2", "flux", "clip", {"double_block": 19}),
    "instantx": ("InstantX Flux", "flux", "siglip", {"double_block": 19, "single_block": 38}),
    "sd35": ("InstantX SD3.5", "mmdit", "siglip", {"double_block": 38}),
}
KIND_NAMES = {("flux", "double_block"): "double", ("flux", "single_block"): "single",
              ("mmdit", "double_block"): "joint"}
SIGLIP = {"num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "image_size": 384,
          "intermediate_size": 4304, "model_type": "siglip_vision_model", "num_attention_heads": 16,
          "num_hidden_layers": 2, "patch_size": 14, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
CLIP_L = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64, "image_size": 224,
          "intermediate_size": 128, "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
          "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 768}
APPLY = {"weight": 0.8, "start_at": 0.0, "end_at": 1.0, "weight_type": "linear", "combine_embeds": "concat",
         "embeds_scaling": "V only"}


def main(argv=None) -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="interleaved unpatched/patched forward pairs per format")
    p.add_argument("--reps", type=int, default=8, help="reps of the per-block microbenchmark (min taken)")
    p.add_argument("--size", type=int, default=256, help="image size in px (latent size/8, 4 image tokens per 16 px "
                   "squared: 256 -> 256 tokens, 512 -> 1024; default 256: a 512 px Flux forward takes ~40 s here)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated of {', '.join(FORMATS)}")
    p.add_argument("--instantx-tokens", type=int, default=128, help="InstantX Flux image tokens (published: 128)")
    args = p.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if unknown := set(formats) - set(FORMATS):
        p.error(f"unknown formats {sorted(unknown)}")

    load_start = load_average()
    started = time.perf_counter()
    host = C.boot(args.threads)
    if importlib.util.find_spec("comfy.ldm.flux") is None:
        sys.exit(f"{host.comfy_dir} has no Flux; run with IPAKIT_COMFYUI=<a current ComfyUI> (e.g. /tmp/cur/ComfyUI)")
    from dev.host import comfy_host

    work = Path(tempfile.mkdtemp(prefix="ipakit-dit-bench-"))
    results: dict[str, dict] = {}
    try:
        models_dir = work / "models"
        encoders = {"clip": random_clip_vision(work, CLIP_L, seed=11),
                    "siglip": random_clip_vision(work, SIGLIP, seed=21, head_into=models_dir / "clip_vision" / SUB)}
        comfy_host.boot(models_dir)  # registers the temporary model folders next to the cache's
        start = memory()
        if any(FORMATS[f][1] == "flux" for f in formats):
            flux = flux_model()
            for fmt in (f for f in formats if FORMATS[f][1] == "flux"):
                results[fmt] = run_format(host, fmt, flux, encoders, models_dir, start, args)
            del flux
            trim_heap()
        if "sd35" in formats:
            results["sd35"] = run_format(host, "sd35", sd35_model(), encoders, models_dir, start, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = load_average()
    text = render(results, args, load_start, load_end, time.perf_counter() - started)
    C.report("dit", args, text, {"size_px": args.size, "pairs": args.pairs, "load_start": load_start,
                                 "load_end": load_end, "results": results, "comfyui": str(host.comfy_dir)})


# models and files


def init_random(module, seed: int) -> None:
    """ComfyUI builds its layers without initialising them: weights ~ N(0, 1/fan_in), biases 0, norm scales 1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=gen)


def _model(kind: str, unet_config: dict, seed: int):
    """ComfyUI's model for a supported-models class and a UNet config, random weights, fp32 on the CPU."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config = getattr(comfy.supported_models, kind)(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    init_random(base.diffusion_model, seed)
    base.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))


def flux_model():
    """ComfyUI's Flux (FLUX.1 widths, 2 double + 2 single blocks)."""
    return _model("FluxSchnell", FLUX_CONFIG, 0)


def sd35_model():
    """ComfyUI's MMDiT at SD3.5 Large's widths with 2 joint blocks: the config ComfyUI's detection reads from an
    SD3.5 Large file (depth 38, RMS QK-norm, 192 x 192 positions) with num_blocks 2. (ComfyUI's loader would build
    all `depth` blocks from a 2-block state dict, so the class is constructed here.)"""
    return _model("SD3", SD35_CONFIG, 1)


def random_clip_vision(work: Path, config: dict, seed: int, head_into: Path | None = None):
    """A random ComfyUI CLIP vision model from a JSON config; with `head_into`, its weights and a random SigLIP
    attention-pooling head are saved there as a .safetensors file (where the pack finds the head by the weights)."""
    import comfy.clip_vision
    import torch
    from safetensors.torch import save_file

    from dev.standins import dit_instantx

    path = work / f"{config['model_type']}.json"
    path.write_text(json.dumps(config))
    cv = comfy.clip_vision.ClipVisionModel(str(path))
    init_random(cv.model, seed)
    if head_into is not None:
        gen = torch.Generator().manual_seed(seed + 1)
        head = {k: torch.randn(s, generator=gen) * (s[-1] ** -0.5) for k, s in
                dit_instantx.siglip_head_specs(config["hidden_size"], config["intermediate_size"])}
        head_into.mkdir(parents=True, exist_ok=True)
        save_file({**{k: v.contiguous() for k, v in cv.get_sd().items()}, **head},
                  str(head_into / "siglip-1152-with-head.safetensors"))
    return cv


def write_adapter(fmt: str, folder: Path, args) -> Path:
    from dev.standins import dit_instantx, dit_sd3, dit_xlabs

    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "xlabs":
        return dit_xlabs.write_xlabs(folder / "xlabs-v2-2blocks.safetensors", seed=4, tokens=16, blocks=2)
    if fmt == "sd35":
        return dit_sd3.write_sd35(folder / "instantx-sd35-2blocks.safetensors", "full", 7, blocks=2)
    specs = dit_instantx.instantx_flux_specs("full", tokens=args.instantx_tokens, double_blocks=2, single_blocks=2)
    return write_streamed(folder / "instantx-flux-4blocks.safetensors", specs, seed=6)


def write_streamed(path: Path, specs: list[tuple[str, tuple[int, ...]]], seed: int, chunk: int = 1 << 24) -> Path:
    """A float32 safetensors file written tensor by tensor in chunks (the InstantX projection alone is 4.5 GiB, so it
    is never whole in memory). Values as dev/standins/dit_instantx.py draws them: norm weights near 1, small biases,
    weights ~ N(0, 1/fan_in)."""
    import torch

    header, offset = {}, 0
    for name, shape in specs:
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in specs:
            scale, shift = ((0.1, 1.0) if name.endswith("norm.weight") else (0.1, 0.0) if name.endswith("bias")
                            else (shape[-1] ** -0.5, 0.0))
            numel = math.prod(shape)
            for begin in range(0, numel, chunk):
                x = torch.randn(min(chunk, numel - begin), generator=gen).mul_(scale).add_(shift)
                f.write(x.numpy().tobytes())
    return path


# forwards and probes


class DitCall:
    """Fixed random inputs of one diffusion-model call the way ComfyUI's sampler makes it: cond + uncond rows, and a
    fresh `sigmas` tensor per call (a new sampling step; the SD3.5 resampler caches its tokens per sigmas object)."""

    def __init__(self, host: str, size: int, seed: int = 5):
        import torch

        g = torch.Generator().manual_seed(seed)
        flux = host == "flux"
        self.text = 256 if flux else 154
        self.x = torch.randn(2, 16, size // 8, size // 8, generator=g)
        self.context = torch.randn(2, self.text, 4096, generator=g)
        self.y = torch.randn(2, 768 if flux else 2048, generator=g)
        self.t = torch.full((2,), 0.7 if flux else 700.0)
        self.sigmas = self.t if flux else self.t / 1000.0
        self.image_tokens = (size // 16) ** 2

    def options(self, model, probes: dict | None = None) -> dict:
        options = dict(model.model_options.get("transformer_options", {}))
        options.update(cond_or_uncond=[0, 1], sigmas=self.sigmas.clone())
        if probes:
            replace = dict(options.get("patches_replace", {}))
            replace["dit"] = {**replace.get("dit", {}), **probes}
            options["patches_replace"] = replace
        return options

    def __call__(self, model, probes: dict | None = None):
        import torch

        with torch.inference_mode():
            return model.model.diffusion_model(self.x, self.t, context=self.context, y=self.y,
                                               transformer_options=self.options(model, probes))


class Stats:
    """Per model call: each patched block's own time, the resampler's time; and one captured block per kind."""

    def __init__(self):
        self.own: dict[tuple, float] = {}
        self.resampler = 0.0
        self.captured: dict[str, tuple] = {}
        self.capture = False

    def reset(self) -> None:
        self.own, self.resampler = {}, 0.0


class Probe:
    """Wraps one installed DitBlockPatch: its call minus the original block, plus its attention override minus the
    host attention (timed by an override the patch chains as the previous one); captures one block per kind."""

    def __init__(self, patch, key: tuple, stats: Stats):
        self.patch, self.key, self.stats = patch, key, stats

    def __call__(self, args: dict, extra: dict) -> dict:
        t = {"orig": 0.0, "override": 0.0, "attn": 0.0}
        stats, block = self.stats, extra["original_block"]
        capture = stats.capture and self.key[0] not in stats.captured

        def host_attention(func, *a, **kw):
            if capture and self.key[0] not in stats.captured:
                stats.captured[self.key[0]] = (self.patch, args, func, a, kw)
            begin = time.perf_counter()
            try:
                return func(*a, **kw)
            finally:
                t["attn"] += time.perf_counter() - begin

        def timed_block(block_args: dict) -> dict:
            options = block_args.get("transformer_options") or {}
            override = options.get("optimized_attention_override")
            if override is not None and override is not host_attention:
                def timed_override(func, *a, **kw):
                    begin = time.perf_counter()
                    try:
                        return override(func, *a, **kw)
                    finally:
                        t["override"] += time.perf_counter() - begin

                block_args = {**block_args, "transformer_options": {**options,
                                                                    "optimized_attention_override": timed_override}}
            begin = time.perf_counter()
            try:
                return block(block_args)
            finally:
                t["orig"] += time.perf_counter() - begin

        options = {**(args.get("transformer_options") or {}), "optimized_attention_override": host_attention}
        begin = time.perf_counter()
        out = self.patch({**args, "transformer_options": options}, {**extra, "original_block": timed_block})
        total = time.perf_counter() - begin
        stats.own[self.key] = stats.own.get(self.key, 0.0) + total - t["orig"] + t["override"] - t["attn"]
        return out


def probes_for(patches: dict, stats: Stats) -> dict:
    """Probes around the patches; the SD3.5 prompts' `tokens` (the resampler, cached per model call) timed too."""
    for patch in patches.values():
        for term in patch.terms:
            prompt = getattr(term, "prompt", None)
            if prompt is not None and "tokens" not in vars(prompt):
                prompt.tokens = timed_tokens(prompt, type(prompt).tokens, stats)
    return {key: Probe(patch, key, stats) for key, patch in patches.items()}


def timed_tokens(prompt, method, stats: Stats):
    def tokens(call):
        begin = time.perf_counter()
        try:
            return method(prompt, call)
        finally:
            stats.resampler += time.perf_counter() - begin
    return tokens


def min_time(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        best = min(best, C.timed(fn))
    return best


def block_parts(dit, captured: tuple, reps: int) -> dict:
    """One captured block, alone (min of reps each): the host's joint attention; our override on the same inputs with
    the host attention's output precomputed (so nothing is subtracted: read the call, the terms, weight and gate, clone
    and add; XLabs: the add after the block); the terms alone (term.compute: un-RoPE of the queries for Flux, the
    image K/V for SD3.5, the image attention); un-RoPE alone; SD3.5: the block's image K/V alone, and the resampler
    (a new sigmas tensor each rep, as each sampling step brings)."""
    import torch

    patch, args, func, a, kw = captured
    options = {k: v for k, v in (args.get("transformer_options") or {}).items() if k != "optimized_attention_override"}
    img = args["img"]
    out: dict = {}
    with torch.inference_mode():
        out["host_attention_s"] = min_time(lambda: func(*a, **kw), reps)
        host_out = func(*a, **kw)

        def ours():
            call = dit._Call(patch, args, options)
            call.override(lambda *_, **__: host_out, *a, **kw)  # the override clones host_out before adding
            if call.after is not None:
                _ = img + call.after.to(img.dtype)

        def terms():
            call = dit._Call(patch, args, options)
            call._read(a, kw)
            for term in patch.terms:
                term.compute(call)

        terms()  # SD3.5: fills the prompt's token cache for this sigmas: ours() and terms() then exclude the resampler
        out["own_s"] = min_time(ours, reps)
        out["terms_s"] = min_time(terms, reps)
        call = dit._Call(patch, args, options)
        call._read(a, kw)
        if patch.host == "flux":
            q, pe = call.q[:, :, call.image], call.pe[:, :, call.image]
            out["unrope_s"] = min_time(lambda: dit.unrope(q, pe), reps)
        prompt = next((t.prompt for t in patch.terms if hasattr(t, "prompt")), None)
        if prompt is not None:
            sd3 = sys.modules[type(prompt.adapter.model).__module__]
            tokens, temb = prompt._cache[2]
            block = prompt.adapter.model.block(patch.terms[0].block)
            out["image_kv_s"] = min_time(lambda: sd3.block_kv(block, tokens, temb, call.q.shape[1]), reps)

            def resample():
                call.options = {**options, "sigmas": options["sigmas"].clone()}
                type(prompt).tokens(prompt, call)

            out["resampler_s"] = min_time(resample, max(2, reps // 2))
    return out


def apply_parts(adapter, fmt: str, n_heads: int, reps: int = 2) -> dict:
    """Flux formats: what Apply computes besides the encode, alone (min of reps): the image-token projection for one
    row and for two rows in one call (Apply projects the positive and the negative row in two calls), and the K/V of
    every block. SD3.5 computes neither at Apply (its resampler runs per model call)."""
    import torch

    if fmt == "sd35":
        return {}
    m = adapter.model
    mod = sys.modules[type(m).__module__]
    width = m.embed_dim if fmt == "xlabs" else m.image_proj.proj[0].in_features
    one, two = torch.randn(1, width), torch.randn(2, width)
    out = {}
    with torch.inference_mode():
        out["tokens_1_s"] = min_time(lambda: mod.image_tokens(m, one), reps)
        out["tokens_2_s"] = min_time(lambda: mod.image_tokens(m, two), reps)
        tokens = mod.image_tokens(m, two)
        if fmt == "xlabs":
            out["kv_s"] = min_time(lambda: [mod.block_kv(m, i, tokens, n_heads) for i in range(m.blocks)], reps)
        else:
            out["kv_s"] = min_time(lambda: [mod.block_kv(m.layer(i), tokens, n_heads) for i in range(m.n_blocks)], reps)
    return out


# memory


def memory() -> dict[str, float]:
    """Resident MiB after gc + malloc_trim: all, anonymous, file-backed (memory-mapped safetensors files)."""
    trim_heap()
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split(":", 1)[0]
            if name in ("VmRSS", "RssAnon", "RssFile"):
                found[name] = int(line.split()[1]) / 1024
    return {"rss": found.get("VmRSS", 0.0), "anon": found.get("RssAnon", 0.0), "file": found.get("RssFile", 0.0)}


def delta(now: dict, start: dict) -> dict:
    return {k: now[k] - start[k] for k in now}


def held_mib(patches: dict) -> float:
    """Storages the patch objects keep: K/V (Flux), the references' features and the cached resampler tokens (SD3.5),
    the row indices; each storage once."""
    import torch

    held: dict[int, int] = {}

    def add(x) -> None:
        if isinstance(x, torch.Tensor) and x.device.type != "meta":
            held[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()

    for patch in patches.values():
        for index in patch._rows.values():
            add(index)
        for term in patch.terms:
            add(getattr(term, "k", None))
            add(getattr(term, "v", None))
            prompt = getattr(term, "prompt", None)
            if prompt is not None:
                add(prompt.features)
                for x in prompt._cache[2] or ():
                    add(x)
    return sum(held.values()) / 2**20


def weights_needed(patches: dict) -> tuple[bool, float]:
    """Whether a patch hands ComfyUI a model to keep loaded while sampling (`models()`), and those models' MiB."""
    models = []
    for patch in patches.values():
        models += [m for m in patch.models() if m not in models]
    mib = sum(p.numel() * p.element_size() for m in models for p in m.model.parameters()) / 2**20
    return bool(models), mib


# one format


def run_format(host, fmt: str, model, encoders: dict, models_dir: Path, start: dict, args) -> dict:
    import torch

    label, kind, encoder, real = FORMATS[fmt]
    dit = C.pack_module(host, "nodes._dit")
    cv = encoders[encoder]
    print(f"[{fmt}] writing the adapter file ...", flush=True)
    path = write_adapter(fmt, models_dir / "ipadapter" / SUB, args)
    host.folder_paths.filename_list_cache.clear()
    r: dict = {"format": label, "file_mib": path.stat().st_size / 2**20}
    call = DitCall(kind, args.size)
    r["image_tokens"], r["text_tokens"] = call.image_tokens, call.text
    if not getattr(model, "_bench_warm", False):  # one warm forward per model; random weights must stay finite
        if not bool(call(model).isfinite().all()):
            raise RuntimeError(f"{fmt}: the random model's output is not finite")
        model._bench_warm = True
    before = memory()
    r["model"] = delta(before, start)

    r["load_s"], loaded = timed_out(lambda: host.outputs("IPAKitModelLoader", ipadapter_file=f"{SUB}/{path.name}"))
    bundle = loaded[0]
    del loaded
    image = torch.rand(1, 512, 512, 3, generator=torch.Generator().manual_seed(2))
    r["apply_s"] = []
    for _ in range(2):
        seconds, applied = timed_out(lambda: host.outputs("IPAKitApply", model=model, ipadapter=bundle, image=image,
                                                          clip_vision=cv, **APPLY))
        r["apply_s"].append(seconds)
        patched = applied[0]
        del applied
    with torch.inference_mode():
        r["encode_s"] = min_time(lambda: cv.encode_image(image), 3)
    r["after_apply"] = delta(memory(), before)
    r["apply_parts"] = apply_parts(bundle.adapter, fmt, getattr(model.model.diffusion_model, "num_heads", 0))
    patches = dict(patched.model_options["transformer_options"]["patches_replace"]["dit"])
    r["patched"] = {KIND_NAMES[(kind, k)]: sum(1 for key in patches if key[0] == k) for k in real}
    r["blocks"] = len(patches)

    stats = Stats()
    probes = probes_for(patches, stats)
    stats.capture = True
    call(patched, probes)  # warm; captures one block per kind
    stats.capture = False
    own_runs: list[dict] = []
    resampler_runs: list[float] = []

    def run_patched():
        stats.reset()
        call(patched, probes)
        own_runs.append(dict(stats.own))
        resampler_runs.append(stats.resampler)

    print(f"[{fmt}] {args.pairs} forward pairs ...", flush=True)
    r["load"] = [load_average()]
    times = C.interleave({"plain": lambda: call(model), "patched": run_patched}, args.pairs)
    r["load"].append(load_average())
    r["plain_s"], r["patched_s"] = times["plain"], times["patched"]
    r["inside_s"] = [sum(run.values()) for run in own_runs]
    r["resampler_in_forward_s"] = resampler_runs
    r["own_by_block_s"] = {f"{k[0]}:{k[1]}": [run[k] for run in own_runs] for k in patches}
    r["parts"] = {KIND_NAMES[(kind, k)]: block_parts(dit, captured, args.reps)
                  for k, captured in stats.captured.items()}
    stats.captured.clear()
    r["after_sampling"] = delta(memory(), before)
    r["held_mib"] = held_mib(patches)
    r["weights_needed"], r["weights_needed_mib"] = weights_needed(patches)
    adapter = bundle.adapter.model
    r["adapter_mib"] = mib(adapter)
    if fmt == "sd35":  # what SD3.5 Large's 38-block file keeps loaded: the resampler and every block's weights
        r["weights_full_mib"] = mib(adapter.image_proj) + mib(adapter.block(0)) * real["double_block"]
    adapter = None
    bundle = None  # noqa: F841 (the loader's output dropped: only the patched model refers to the adapter now)
    gc.collect()
    r["after_drop_loader"] = delta(memory(), before)  # the patched model alone: what sampling keeps
    patched = patches = probes = None  # noqa: F841
    gc.collect()
    path.unlink()
    r["after_drop_all"] = delta(memory(), before)
    summarise(r, real, kind)
    print(f"[{fmt}] done: inside {r['inside_ms_median']:.1f} ms per forward", flush=True)
    return r


def mib(module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


def timed_out(fn):
    begin = time.perf_counter()
    out = fn()
    return time.perf_counter() - begin, out


def summarise(r: dict, real: dict, kind: str) -> None:
    """Medians, per-block figures by kind, and the extrapolation to the full model's block counts."""
    plain = statistics.median(r["plain_s"])
    added = [b - a for a, b in zip(r["plain_s"], r["patched_s"])]
    r["plain_ms"] = 1e3 * plain
    r["patched_ms"] = 1e3 * statistics.median(r["patched_s"])
    r["added_pairs_ms"] = 1e3 * statistics.median(added)
    r["inside_ms_median"] = 1e3 * statistics.median(r["inside_s"])
    r["inside_ms_min"] = 1e3 * min(r["inside_s"])
    resampler = statistics.median(r["resampler_in_forward_s"]) if r["resampler_in_forward_s"] else 0.0
    r["resampler_ms"] = 1e3 * resampler
    per_kind = {}
    for k in real:
        name = KIND_NAMES[(kind, k)]
        per_block = [statistics.median(v) for key, v in r["own_by_block_s"].items() if key.split(":")[0] == k]
        if per_block:  # the resampler runs inside the first block's term: counted once per call, not per block
            per_kind[name] = 1e3 * (sum(per_block) - resampler) / len(per_block)
    r["inside_per_block_ms"] = per_kind
    slice_blocks = r["blocks"]
    full_blocks = sum(real.values())
    full_forward = plain * full_blocks / slice_blocks  # every block costs about the same (see the docstring)
    full_added = 1e3 * resampler + sum(per_kind[KIND_NAMES[(kind, k)]] * n for k, n in real.items()
                                       if KIND_NAMES[(kind, k)] in per_kind)
    ratio = full_blocks / slice_blocks
    r["extrapolated"] = {"blocks": full_blocks, "forward_ms": 1e3 * full_forward, "added_inside_ms": full_added,
                         "held_mib": r["held_mib"] * (ratio if kind == "flux" else 1.0),
                         "apply_kv_s": r["apply_parts"]["kv_s"] * ratio if r["apply_parts"] else None,
                         "added_inside_pct": full_added / (1e3 * full_forward),
                         "added_pairs_ms": 1e3 * resampler + (r["added_pairs_ms"] - 1e3 * resampler) * ratio}


# report


def render(results: dict, args, load_start: str, load_end: str, seconds: float) -> str:
    out = []
    for fmt, r in results.items():
        _, kind, _, real = FORMATS[fmt]
        plain = r["plain_ms"]
        ext = r["extrapolated"]
        patched = ", ".join(f"{n} {name}" for name, n in r["patched"].items())
        rows = [
            ["load average (1/5/15 min) before / after the pairs", f"{r['load'][0]} / {r['load'][1]}"],
            ["latent", f"{args.size} px: {r['image_tokens']} image + {r['text_tokens']} text tokens, "
                       "batch 2 (cond+uncond)"],
            ["blocks patched (of the slice)", f"{patched} (all)"],
            ["forward unpatched / patched, median",
             f"{plain:.0f} / {r['patched_ms']:.0f} ms ({len(r['plain_s'])} pairs)"],
            ["added per forward, pairs (median of differences)",
             f"{r['added_pairs_ms']:+.1f} ms ({C.pct(r['added_pairs_ms'] / plain)})"],
            ["added per forward, inside (median / min)",
             f"{r['inside_ms_median']:.1f} / {r['inside_ms_min']:.1f} ms ({C.pct(r['inside_ms_median'] / plain)})"],
        ]
        if kind == "mmdit":
            rows.append(["  of which the resampler (once per model call)", f"{r['resampler_ms']:.1f} ms"])
        for name, ms in r["inside_per_block_ms"].items():
            rows.append([f"added per adapted {name} block, inside", f"{ms:.2f} ms"])
        for name, part in r["parts"].items():
            extra = f", of which un-RoPE {1e3 * part['unrope_s']:.2f}" if "unrope_s" in part else ""
            extra += f", of which image K/V {1e3 * part['image_kv_s']:.2f}" if "image_kv_s" in part else ""
            extra += f"; resampler alone {1e3 * part['resampler_s']:.0f} ms" if "resampler_s" in part else ""
            rows.append([f"{name} block alone (min of {args.reps}): host attention / ours",
                         f"{1e3 * part['host_attention_s']:.2f} / {1e3 * part['own_s']:.2f} ms (terms "
                         f"{1e3 * part['terms_s']:.2f}{extra}; the rest "
                         f"{1e3 * (part['own_s'] - part['terms_s']):.2f})"])
        real_text = " + ".join(f"{n} {KIND_NAMES[(kind, k)]}" for k, n in real.items())
        rows += [
            [f"extrapolated to {real_text} blocks: forward",
             f"{ext['forward_ms'] / 1e3:.1f} s (unpatched x {ext['blocks']}/{r['blocks']})"],
            ["extrapolated: added per forward, inside",
             f"{ext['added_inside_ms']:.0f} ms ({C.pct(ext['added_inside_pct'])})"],
            ["extrapolated: added per forward, pairs", f"{ext['added_pairs_ms']:+.0f} ms"],
            ["tensors the patches hold", f"{r['held_mib']:.2f} MiB"],
            ["extrapolated: tensors held", f"{ext['held_mib']:.0f} MiB" + (
                f" (K/V x {ext['blocks']}/{r['blocks']})" if kind == "flux" else " (features + one call's tokens, "
                "shared by every block)")],
            ["adapter weights needed while sampling (models())",
             f"yes, {r['weights_needed_mib']:.0f} MiB (extrapolated to {ext['blocks']} blocks: "
             f"{r['weights_full_mib']:.0f} MiB)" if r["weights_needed"] else "no (K/V computed at Apply)"],
            ["adapter file / weights (fp32)", f"{r['file_mib']:.0f} / {r['adapter_mib']:.0f} MiB"],
            ["resident, all (anon / file): the model, built + one forward", mem(r["model"])],
            ["  then, against that: after load + 2 Apply", mem(r["after_apply"])],
            ["  after the forwards", mem(r["after_sampling"])],
            ["  loader output dropped (patched model kept)", mem(r["after_drop_loader"])],
            ["  patched model dropped too", mem(r["after_drop_all"])],
            ["Apply node, first / second (encode + tokens + K/V)", f"{r['apply_s'][0]:.3f} / {r['apply_s'][1]:.3f} s"],
            ["  bare encode of the same image (stand-in encoder)", f"{r['encode_s']:.3f} s"],
        ]
        if r["apply_parts"]:
            ap = r["apply_parts"]
            rows.append(["  image tokens alone, 1 row / 2 rows in one call; K/V of all blocks",
                         f"{ap['tokens_1_s']:.3f} / {ap['tokens_2_s']:.3f} s; {ap['kv_s']:.3f} s"])
            rows.append([f"  extrapolated: K/V of {ext['blocks']} blocks at Apply", f"{ext['apply_kv_s']:.2f} s"])
        rows += [
            ["Model Loader", f"{r['load_s']:.3f} s"],
        ]
        out.append(f"## {r['format']}\n" + C.table(["figure", "value"], rows))
    summary = []
    for fmt, r in results.items():
        ext = r["extrapolated"]
        per = ", ".join(f"{n} {ms:.2f}" for n, ms in r["inside_per_block_ms"].items())
        summary.append([r["format"], str(r["blocks"]), f"{r['plain_ms']:.0f}", f"{r['added_pairs_ms']:+.1f}",
                        f"{r['inside_ms_median']:.1f}", C.pct(r["inside_ms_median"] / r["plain_ms"]), per,
                        f"{ext['added_inside_ms']:.0f} ({C.pct(ext['added_inside_pct'])})", f"{r['held_mib']:.2f}",
                        "yes" if r["weights_needed"] else "no",
                        f"{r['after_drop_loader']['anon']:+.0f} / {r['after_drop_loader']['file']:+.0f}",
                        f"{min(r['apply_s']):.2f}"])
    out.append("## summary\n" + C.table(
        ["format", "blocks", "forward ms", "pairs ms", "inside ms", "inside", "per block ms (inside)",
         "extrapolated full model ms", "held MiB", "weights needed", "kept MiB (anon / file)", "Apply s"], summary))
    out.append(f"load average (1/5/15 min) at start {load_start}, at end {load_end}; {seconds / 60:.1f} min; "
               "this script's own threads account for up to --threads of it, the rest is other jobs on the 2 cores; "
               "the pairs are within that noise: trust the inside and alone figures.\n"
               "inside: the patches' own time in the patched forwards (median over them); alone: one block's captured "
               "inputs, min of reps; extrapolated: per-block inside figures x the real block count (+ the resampler "
               "once), over the unpatched forward x real/slice blocks.")
    return "\n\n".join(out)


def mem(d: dict) -> str:
    return f"{d['rss']:+.0f} ({d['anon']:+.0f} / {d['file']:+.0f}) MiB"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
