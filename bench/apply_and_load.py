"""Node-time costs: adapter load vs a bare safetensors load, Apply node time vs ComfyUI's own CLIP vision
encode (its floor), and encoding many references vs one batched encoder forward.

    python bench/apply_and_load.py                   # SDXL plus 848 MB load, Apply base/plus, 16 references (~6 min)
    python bench/apply_and_load.py --reps 5 --images 16
    python bench/apply_and_load.py --skip encode     # leave out the 16-image encode
"""

from __future__ import annotations

import gc
import statistics
import time

import _common as C

LOAD_FILES = ("plus_sdxl_full", "plus", "base")


def main(argv=None) -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions of each timing (interleaved); min and median reported")
    p.add_argument("--images", type=int, default=16, help="reference images for the batched-encode comparison")
    p.add_argument("--encode-reps", type=int, default=3, help="interleaved repetitions of the batched-encode comparison")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: load, apply, encode")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    C.ensure_models(*LOAD_FILES)
    host = C.boot(args.threads)
    import torch

    sections, data = [], {}
    if "load" not in skip:
        text, data["load"] = bench_load(host, args.reps, torch)
        sections.append(text)
    if "apply" not in skip or "encode" not in skip:
        model = host.outputs("CheckpointLoaderSimple", ckpt_name=C.SD15)[0]
        clip_vision = host.outputs("CLIPVisionLoader", clip_name=C.VIT_H)[0]
        if "apply" not in skip:
            text, data["apply"] = bench_apply(host, model, clip_vision, args.reps, torch)
            sections.append(text)
        if "encode" not in skip:
            text, data["encode"] = bench_encode(host, clip_vision, args.images, args.encode_reps, torch)
            sections.append(text)
    C.report("apply_and_load", args, "\n\n".join(sections), data)


def interleave(fns: dict, reps: int) -> dict[str, list[float]]:
    times = {name: [] for name in fns}
    for i in range(reps):
        order = list(fns) if i % 2 == 0 else list(reversed(fns))
        for name in order:
            times[name].append(C.timed(fns[name]))
            gc.collect()
    return times


def bench_load(host, reps, torch):
    """Our loader (read + detect + strict load, no copy) vs safetensors.torch.load_file of the same file.

    safetensors maps the file lazily, so both are also timed "resident": the load followed by one read
    of every byte (a copy of each tensor), which is what the first use of the weights pays.
    """
    import safetensors.torch

    core = C.pack_module(host, "ipadapter_core")
    _comfy = C.pack_module(host, "nodes._comfy")

    def touch(tensors):
        for t in tensors:
            t.clone()

    rows, data = [], {}
    for label in LOAD_FILES:
        path = C.adapter_path(label)
        name = C.adapter_name(label)
        safetensors.torch.load_file(str(path))  # page cache warm for both

        def node():
            _comfy._adapters.clear()
            return host.outputs("IPAKitModelLoader", ipadapter_file=name)

        times = interleave({
            "bare": lambda: safetensors.torch.load_file(str(path)),
            "core": lambda: core.load_adapter(path),
            "node": node,
            "bare_resident": lambda: touch(safetensors.torch.load_file(str(path)).values()),
            "core_resident": lambda: touch(core.load_adapter(path).model.parameters()),
        }, reps)
        module = core.load_adapter(path).model
        first = next(module.parameters())
        convert = C.timed(lambda: module.to(torch.float32)) if first.dtype != torch.float32 else 0.0
        t = {k: min(v) for k, v in times.items()}
        rows.append([path.name, f"{path.stat().st_size / 2**20:.0f}", f"{t['bare']:.3f}", f"{t['core']:.3f}",
                     f"{t['node']:.3f}", f"{t['core'] / t['bare']:.1f}x", f"{t['bare_resident']:.3f}",
                     f"{t['core_resident']:.3f}", f"{t['core_resident'] / t['bare_resident']:.2f}x", f"{convert:.3f}"])
        data[label] = {**times, "fp32_convert_s": convert, "bytes": path.stat().st_size}
        module = None
        gc.collect()
    headers = ["file", "MiB", "bare load_file (s)", "core load_adapter (s)", "IPAKitModelLoader (s)", "core/bare (lazy)",
               "bare + read all (s)", "core + read all (s)", "core/bare (resident)", "fp16->fp32 at first apply (s)"]
    return (f"## adapter load (min of {reps}, page cache warm; load_file maps lazily, 'read all' copies every tensor once)\n"
            + C.table(headers, rows), data)


def bench_apply(host, model, clip_vision, reps, torch):
    """One Apply node (ViT-H encode included) with a new image each time, next to CLIPVisionEncode of the same image."""
    gen = torch.Generator().manual_seed(1)
    rows, data = [], {}
    for label in ("base", "plus"):
        adapter = host.outputs("IPAKitModelLoader", ipadapter_file=C.adapter_name(label))[0]
        image = torch.rand(1, 224, 224, 3, generator=gen)
        start = time.perf_counter()
        host.outputs("IPAKitApply", model=model, ipadapter=adapter, image=image, clip_vision=clip_vision, **C.APPLY)
        cold = time.perf_counter() - start  # first use: adapter to compute dtype, reference negative encoded
        fresh = lambda: torch.rand(1, 224, 224, 3, generator=gen)  # noqa: E731 (no encoder-cache hits)
        embeds = host.outputs("IPAKitEncode", ipadapter=adapter, image=fresh(), clip_vision=clip_vision)[0]
        times = interleave({
            "CLIPVisionEncode": lambda: host.outputs("CLIPVisionEncode", clip_vision=clip_vision, image=fresh()),
            "IPAKitApply": lambda: host.outputs("IPAKitApply", model=model, ipadapter=adapter, image=fresh(),
                                                clip_vision=clip_vision, **C.APPLY),
            "IPAKitApplyEmbeds": lambda: host.outputs("IPAKitApplyEmbeds", model=model, ipadapter=adapter, embeds=embeds,
                                                      **C.APPLY),
        }, reps)
        enc, app, emb = (min(times[k]) for k in ("CLIPVisionEncode", "IPAKitApply", "IPAKitApplyEmbeds"))
        rows.append([label, f"{cold:.3f}", f"{app:.3f}", f"{statistics.median(times['IPAKitApply']):.3f}", f"{enc:.3f}",
                     f"{app / enc:.2f}x", f"{emb:.3f}"])
        data[label] = {**times, "cold_s": cold}
    headers = ["adapter", "Apply, first use (s)", "Apply min (s)", "Apply median (s)", "CLIPVisionEncode min (s)",
               "Apply/encode", "ApplyEmbeds, no encode (s)"]
    return (f"## Apply node (SD1.5, ViT-H encode of a new 224 px image included; min of {reps})\n" + C.table(headers, rows),
            data)


def bench_encode(host, clip_vision, images, reps, torch):
    """Encoding N references for a plus adapter (pack's Encode node) vs one batched encoder forward."""
    adapter = host.outputs("IPAKitModelLoader", ipadapter_file=C.adapter_name("plus"))[0]
    gen = torch.Generator().manual_seed(2)
    batch = lambda: torch.rand(images, 224, 224, 3, generator=gen)  # noqa: E731 (new images: no cache hits)
    host.outputs("IPAKitEncode", ipadapter=adapter, image=batch()[:1], clip_vision=clip_vision)  # the constant negative, once

    def encode_image():
        with torch.inference_mode():  # as ComfyUI runs nodes
            return clip_vision.encode_image(batch())

    times = interleave({
        "encode_image": encode_image,
        "IPAKitEncode": lambda: host.outputs("IPAKitEncode", ipadapter=adapter, image=batch(), clip_vision=clip_vision),
    }, reps)
    ref, ours = times["encode_image"], times["IPAKitEncode"]
    headers = ["images", "reps", "one batched ComfyUI encode_image, min / median (s)", "IPAKitEncode, min / median (s)",
               "ratio of mins"]
    row = [images, reps, f"{min(ref):.2f} / {statistics.median(ref):.2f}", f"{min(ours):.2f} / {statistics.median(ours):.2f}",
           f"{min(ours) / min(ref):.3f}x"]
    text = (f"## encoding {images} references (plus adapter, new images; the constant negative was encoded before)\n"
            + C.table(headers, [row]))
    return text, times


if __name__ == "__main__":
    main()
