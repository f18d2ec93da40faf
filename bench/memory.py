"""Resident memory that chained Apply nodes add: one shared adapter copy, small per-node plans.

A fresh process loads SD1.5 and ViT-H, then loads one adapter file and chains N Apply nodes that use
it (a new reference image each, so every node encodes), makes clones of the result (as downstream
nodes do), and samples once. RSS is read after gc and malloc_trim (freed heap handed back), so it
shows what stays alive; the peak is sampled during each node.

    python bench/memory.py                 # plus, 4 nodes (~3 min)
    python bench/memory.py --adapter base --nodes 8
"""

from __future__ import annotations

import gc
import threading
import time

import _common as C

from dev.host.torch_probes import attn2_patches, held_tensors, resident_mib, rss_mib


def main(argv=None) -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--adapter", choices=("base", "plus"), default="plus")
    p.add_argument("--nodes", type=int, default=4)
    args = p.parse_args(argv)
    C.ensure_models(args.adapter)
    host = C.boot(args.threads)
    import torch

    model, clip, _ = host.outputs("CheckpointLoaderSimple", ckpt_name=C.SD15)
    clip_vision = host.outputs("CLIPVisionLoader", clip_name=C.VIT_H)[0]
    pos = host.outputs("CLIPTextEncode", text="a photo of a cat", clip=clip)[0]
    neg = host.outputs("CLIPTextEncode", text="blurry", clip=clip)[0]
    latent = host.outputs("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    host.outputs("CLIPVisionEncode", clip_vision=clip_vision, image=torch.rand(1, 224, 224, 3))  # encoder warm
    gen = torch.Generator().manual_seed(0)

    rows = []
    start_rss = resident_mib()
    rows.append(["SD1.5 + ViT-H loaded", f"{start_rss:.0f}", "+0", "-", ""])

    adapter, peak = with_peak(lambda: host.outputs("IPAKitModelLoader", ipadapter_file=C.adapter_name(args.adapter))[0])
    loaded = resident_mib()
    rows.append([f"+ IPAKitModelLoader ({C.adapter_name(args.adapter)})", f"{loaded:.0f}", f"{loaded - start_rss:+.0f}",
                 f"{peak - start_rss:+.0f}", f"file {C.adapter_path(args.adapter).stat().st_size / 2**20:.0f} MiB"])
    chain = [model]
    for i in range(args.nodes):
        image = torch.rand(1, 224, 224, 3, generator=gen)
        out, peak = with_peak(lambda: host.outputs("IPAKitApply", model=chain[-1], ipadapter=adapter, image=image,
                                                   clip_vision=clip_vision, **C.APPLY)[0])
        chain.append(out)
        now = resident_mib()
        note = "adapter -> fp32 compute dtype" if i == 0 else ""
        rows.append([f"+ IPAKitApply #{i + 1} (chained)", f"{now:.0f}", f"{now - start_rss:+.0f}", f"{peak - start_rss:+.0f}", note])
    applied = resident_mib()
    clones = [m.clone() for m in chain[1:] for _ in range(2)]
    now = resident_mib()
    rows.append([f"+ {len(clones)} clones of the patched models", f"{now:.0f}", f"{now - start_rss:+.0f}", "-", ""])
    samples, peak = with_peak(lambda: host.outputs(
        "KSampler", model=chain[-1], seed=1, steps=1, cfg=7.0, sampler_name="euler", scheduler="normal", positive=pos,
        negative=neg, latent_image=latent, denoise=1.0))
    sampled = resident_mib()
    rows.append(["+ KSampler 64 px, 1 step (plans cache their keys/values)", f"{sampled:.0f}", f"{sampled - start_rss:+.0f}",
                 f"{peak - start_rss:+.0f}", ""])

    loaded_cls = type(adapter.adapter)
    model_cls = type(adapter.adapter.model)
    live_adapters = sum(1 for o in gc.get_objects() if type(o) is loaded_cls)
    live_modules = sum(1 for o in gc.get_objects() if type(o) is model_cls)
    params = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in adapter.adapter.model.parameters()}
    held = held_tensors(p for m in chain[1:] for p in attn2_patches(m).values())
    shared = bool(set(held) & set(params))
    summary = [
        ["LoadedAdapter objects alive", live_adapters],
        ["IPAdapterModel modules alive", live_modules],
        ["adapter parameters (MiB, compute dtype)", f"{sum(params.values()) / 2**20:.1f}"],
        ["tensors held by all patch objects of the chain (MiB)", f"{sum(held.values()) / 2**20:.1f}"],
        ["patch objects share storage with adapter weights", shared],
        [f"RSS added by load + {args.nodes} Apply nodes (MiB)", f"{applied - start_rss:+.0f}"],
        [f"RSS added by {args.nodes} Apply nodes after the load (MiB)", f"{applied - loaded:+.0f}"],
    ]
    text = ("## resident memory (RSS after gc + malloc_trim; peak sampled during the step)\n"
            + C.table(["step", "RSS MiB", "Δ vs start", "peak Δ during", "note"], rows)
            + "\n\n" + C.table(["check", "value"], summary))
    C.report(f"memory_{args.adapter}", args, text, {"rows": rows, "summary": summary, "samples": str(type(samples))})


def with_peak(fn, interval: float = 0.002):
    peak = rss_mib()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return out, max(peak, rss_mib())


if __name__ == "__main__":
    main()
