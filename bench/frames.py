"""Frame-level image prompts: what an unfolded 16-frame batch adds to one UNet forward, and what it keeps resident.

SD1.5 at 64 px (8x8 latents), 16 latent frames, cond and uncond (32 rows per forward), the plus adapter. Cases:
the batch without an image prompt (baseline), one shared reference (no unfolding), 16 references unfolded
(one per frame), the same with every other frame at weight 0, and per-frame weights on one reference. Times are
interleaved pairs of the baseline and the case; "added" is the median of (case - baseline) per pair.

    python bench/frames.py               # ~3 min on 2 cores
    python bench/frames.py --pairs 12 --threads 1
"""

from __future__ import annotations

import statistics

import _common as C

from dev.host.torch_probes import UNetCall, attn2_patches, held_tensors, resident_mib

FRAMES = 16


def main(argv=None) -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=8, help="interleaved baseline/case pairs per case")
    args = p.parse_args(argv)
    C.ensure_models("plus")
    host = C.boot(args.threads)
    import torch

    model = host.outputs("CheckpointLoaderSimple", ckpt_name=C.SD15)[0]
    clip_vision = host.outputs("CLIPVisionLoader", clip_name=C.VIT_H)[0]
    adapter = host.outputs("IPAKitModelLoader", ipadapter_file=C.adapter_name("plus"))[0]
    gen = torch.Generator().manual_seed(0)
    references = torch.rand(FRAMES, 224, 224, 3, generator=gen)
    ramp = [round(1.0 - i / (FRAMES - 1), 4) for i in range(FRAMES)]
    alternate = [1.0 if i % 2 == 0 else 0.0 for i in range(FRAMES)]
    cases = {
        "shared reference (no unfold)": dict(image=references[:1]),
        "16 references, unfolded": dict(image=references, unfold_batch=True),
        "16 references, unfolded, every other frame weight 0": dict(image=references, unfold_batch=True, weight=alternate),
        "1 reference, per-frame weights (ramp)": dict(image=references[:1], weight=ramp),
    }
    call = UNetCall(model, hw=(8, 8), rows=(1, 0), batch=FRAMES, seed=5)
    call(model)  # warm
    base_rss = resident_mib()
    rows, data = [], {}
    for name, kw in cases.items():
        options = {**C.APPLY, **kw}
        patched = host.outputs("IPAKitApply", model=model, ipadapter=adapter, clip_vision=clip_vision, **options)[0]
        call(patched)  # first call prepares the per-call selections
        times = C.interleave({"plain": lambda: call(model), "patched": lambda: call(patched)}, args.pairs)
        added = [b - a for a, b in zip(times["plain"], times["patched"])]
        plain = statistics.median(times["plain"])
        patches = attn2_patches(patched)
        held = sum(held_tensors(patches.values()).values()) / 2**20
        rss = resident_mib() - base_rss
        rows.append([name, f"{plain * 1e3:.1f}", f"{statistics.median(added) * 1e3:+.2f}", C.pct(statistics.median(added) / plain),
                     str(len(patches)), f"{held:.2f}", f"{rss:+.0f}"])
        data[name] = dict(plain_s=times["plain"], patched_s=times["patched"], held_mib=held, rss_mib=rss)
    text = C.table(["case (16 frames, 64 px, cond+uncond)", "forward ms", "added ms", "added", "layers", "held MiB",
                    "resident MiB vs start"], rows)
    C.report("frames", args, text, data)


if __name__ == "__main__":
    main()
