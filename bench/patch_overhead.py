"""Time and memory the IP-Adapter attention patch adds to one UNet forward, next to its arithmetic limit.

Real ComfyUI (in process, CPU, pytorch attention), the full-architecture random SD1.5 checkpoint (or
the SDXL-small one with the real 70-layer layout), batch 2 = cond + uncond, adapters installed by the
pack's own nodes (Encode once, then Apply Embeds; chained cases apply the same file N times).

For each case the added time is measured three ways:
  layer  - per-layer microbenchmark on the real inputs of each patched layer (captured from a forward):
           min over reps of (our patch call) minus min of (the host's text attention alone), summed
           over the layers; the most stable figure on a noisy machine.
  inside - inside real forwards: time spent in our patch minus the host attention it calls (min over
           the patched forwards).
  pairs  - interleaved unpatched/patched forwards (order flipped each pair): min/median/max of
           patched/unpatched - 1.
Percentages are of the fastest unpatched forward. `limit` is the arithmetic share: the image terms'
FLOPs (q kᵀ, p v, softmax, add) over the UNet's FLOPs (torch FlopCounterMode).

    python bench/patch_overhead.py                       # SD1.5 at 64 and 512 px, five cases (~8 min)
    python bench/patch_overhead.py --sizes 64 --pairs 10
    python bench/patch_overhead.py --family sdxl --sizes 1024 --cases plus,plus4,plus_mask
    python bench/patch_overhead.py --baseline-rev 0380c83   # also time that revision's patch per layer
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import types

import _common as C

CASES = {  # name -> (adapter label per family, Apply nodes chained, masked)
    "base": ({"sd15": "base"}, 1, False),
    "plus": ({"sd15": "plus", "sdxl": "plus_sdxl_small", "sdxl-full": "plus_sdxl_full"}, 1, False),
    "base4": ({"sd15": "base"}, 4, False),
    "plus4": ({"sd15": "plus", "sdxl": "plus_sdxl_small", "sdxl-full": "plus_sdxl_full"}, 4, False),
    "plus_mask": ({"sd15": "plus", "sdxl": "plus_sdxl_small", "sdxl-full": "plus_sdxl_full"}, 1, True),
}
CHECKPOINTS = {"sd15": C.SD15, "sdxl": C.SDXL_SMALL}  # sdxl-full: the real SDXL UNet, random weights, built here


def main(argv=None) -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=("sd15", "sdxl", "sdxl-full"), default="sd15",
                   help="sdxl: the SDXL-small checkpoint (real 70-layer layout, 320 channels); sdxl-full: the real SDXL "
                        "UNet (2.6B parameters, fp32, ~11 GB RAM) with random weights")
    p.add_argument("--sizes", default=None, help="image sizes in px, comma-separated (default 64,512; sdxl 1024)")
    p.add_argument("--cases", default=None, help=f"comma-separated of {', '.join(CASES)} (default: all for the family)")
    p.add_argument("--pairs", type=int, default=None, help="interleaved pairs per case (default 6 below 256 px, else 1; 0: no pairs)")
    p.add_argument("--reps", type=int, default=None, help="per-layer microbenchmark reps (default 40 below 256 px, else 5)")
    p.add_argument("--baseline-rev", default=None, help="git revision whose IPAKitAttn2/LayerPlan are timed per layer too")
    args = p.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("64,512" if args.family == "sd15" else "1024")).split(",")]
    cases = [c for c in (args.cases.split(",") if args.cases else CASES) if args.family in CASES[c][0]]

    load_at_start = load_average()
    labels = sorted({CASES[c][0][args.family] for c in cases})
    C.ensure_models(*labels)
    host = C.boot(args.threads)
    import _probe as P
    import torch

    from dev.host.torch_probes import UNetCall, attn2_patches, held_tensors

    P.install_text_timer()
    if args.family == "sdxl-full":
        model = full_sdxl(torch)
    else:
        model = host.outputs("CheckpointLoaderSimple", ckpt_name=CHECKPOINTS[args.family])[0]
    models = build_cases(host, model, cases, labels, args.family)
    convert = load_revision(host, args.baseline_rev) if args.baseline_rev else None
    observe = host.observe

    results, lines = [], []
    for size in sizes:
        small = size < 256
        pairs = args.pairs if args.pairs is not None else (6 if small else 1)
        reps = args.reps if args.reps is not None else (40 if small else 5)
        fwd = UNetCall(model, hw=(size // 8, size // 8), rows=(0, 1))
        fwd(model)  # warm up
        flops = C.unet_flops(fwd, model)
        plain_times: list[float] = []
        for name in cases:
            patched = models[name]
            patches = attn2_patches(patched)
            probe = P.probed(patched)
            # one forward that captures every layer's inputs and counts host syncs inside our patch
            P.CAPTURED.clear()
            P.STATS.reset()
            P.MODE.update(capture=True, syncs=True)
            fwd(probe)
            P.MODE.update(capture=False, syncs=False)
            syncs, layers = list(P.STATS.syncs), len(P.STATS.keys)
            queries = {key: (q.shape[1], q.shape[2]) for key, (q, _, _, _) in P.CAPTURED.items()}
            # interleaved pairs; every patched forward also gives the time spent inside our patch
            inside = []

            def run_patched():
                fwd(probe)
                inside.append(P.STATS.own_s)
                P.STATS.reset()

            P.STATS.reset()
            times = C.interleave({"plain": lambda: fwd(model), "patched": run_patched}, pairs)
            plain_times += times["plain"]
            ratios = [tb / ta - 1.0 for ta, tb in zip(times["plain"], times["patched"])]
            # per-layer microbenchmark on the captured inputs
            layer_added, layer_before, text_total = per_layer(P, patches, convert, reps, observe, torch)
            with torch.inference_mode():
                transient = max(P.image_attention_peak(observe, patches[key], q, eo) for key, (q, _, _, eo) in P.CAPTURED.items())
            results.append(dict(size=size, case=name, tokens=max(p.plan.num_tokens for p in patches.values()),
                                layers=layers, syncs=syncs, flops_unet=flops,
                                flops_patch=C.patch_flops(patches, queries, latent_batch_rows=2),
                                layer_s=layer_added, before_s=layer_before, text_s=text_total,
                                inside_s=inside, pair_ratios=ratios, transient_mib=transient / 2**20,
                                held_mib=sum(held_tensors(patches.values()).values()) / 2**20))
            P.CAPTURED.clear()
        if not plain_times:
            plain_times = [C.timed(lambda: fwd(model))]
        fastest = min(plain_times)
        for r in results:
            if r["size"] == size:
                r["plain_min_s"], r["plain_median_s"] = fastest, statistics.median(plain_times)
        lines.append(f"{size} px: unpatched forward min {fastest:.3f} s, median {statistics.median(plain_times):.3f} s "
                     f"({len(plain_times)} runs); UNet {flops / 1e9:.1f} GFLOP")

    headers = ["size", "case", "tokens", "layers", "limit", "layer (ms)", "layer", "inside (min, ms)", "inside",
               "pairs min/med/max"] + (["before: layer"] if convert else []) + ["syncs", "transient MiB", "held MiB"]
    rows = []
    for r in results:
        base = r["plain_min_s"]
        mn, md, mx = C.stats(r["pair_ratios"]) if r["pair_ratios"] else (float("nan"),) * 3
        row = [f"{r['size']}", r["case"], r["tokens"], r["layers"], C.pct(r["flops_patch"] / r["flops_unet"]),
               f"{1e3 * r['layer_s']:.2f}", C.pct(r["layer_s"] / base),
               f"{1e3 * min(r['inside_s']):.2f}" if r["inside_s"] else "-",
               C.pct(min(r["inside_s"]) / base) if r["inside_s"] else "-",
               f"{C.pct(mn)} / {C.pct(md)} / {C.pct(mx)}"]
        if convert:
            row.append(C.pct(r["before_s"] / base))
        row += [len(r["syncs"]), f"{r['transient_mib']:.1f}", f"{r['held_mib']:.1f}"]
        rows.append(row)
    text = "\n".join(lines) + "\n\n" + C.table(headers, rows)
    text += (f"\n\nfamily {args.family}; threads {args.threads}; load average (1/5/15 min) at start {load_at_start}, "
             f"at end {load_average()} (above ~0.5 other jobs shared the 2 cores: trust min figures, distrust pairs)"
             "\nlayer: per-layer microbenchmark (min patch call - min text attention, summed); inside: our patch's own time "
             "inside real forwards; pairs: interleaved whole forwards; limit: arithmetic share (FLOPs); syncs: host syncs "
             "inside our patch during one forward; transient: peak bytes the image attention allocates in one layer call "
             "(largest layer); held: tensors the patch objects keep (plans and their caches).")
    C.report(f"patch_overhead_{args.family}", args, text, {"results": results, "notes": lines})


def build_cases(host, model, cases, labels, family):
    """Patched models per case, built by the pack's nodes (Encode once per adapter, then Apply Embeds)."""
    import torch

    cv = host.outputs("CLIPVisionLoader", clip_name=C.VIT_H)[0]
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(0))
    adapters, embeds = {}, {}
    for label in labels:
        adapters[label] = host.outputs("IPAKitModelLoader", ipadapter_file=C.adapter_name(label))[0]
        embeds[label] = host.outputs("IPAKitEncode", ipadapter=adapters[label], image=image, clip_vision=cv)[0]
    mask = torch.zeros(1, 512, 512)
    mask[:, :, :256] = 1
    models = {}
    for name in cases:
        label_by_family, count, masked = CASES[name]
        label = label_by_family[family]
        m = model
        for _ in range(count):
            m = host.outputs("IPAKitApplyEmbeds", model=m, ipadapter=adapters[label], embeds=embeds[label],
                             attn_mask=mask if masked else None, **C.APPLY)[0]
        models[name] = m
    return models


def full_sdxl(torch):
    """A ComfyUI SDXL model with the real UNet architecture (the SDXL-small config at channel_mult 1, 2, 4), random weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    from dev.standins.comfy_models import SDXL_SMALL_UNET

    config = comfy.supported_models.SDXL(dict(SDXL_SMALL_UNET, channel_mult=[1, 2, 4]))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in base.diffusion_model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:  # norms
                param.fill_(1.0)
            else:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=gen)
    base.diffusion_model.requires_grad_(False)
    base.eval()
    device = mm.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=mm.unet_offload_device())


def per_layer(P, patches, convert, reps, observe, torch):
    """Sum over layers of min(patch) - min(text attention); the same for a baseline revision's patch."""
    added = before = text_total = 0.0
    old = {key: convert(p) for key, p in patches.items()} if convert else {}
    with torch.inference_mode():
        for key, (q, k, v, eo) in P.CAPTURED.items():
            tt, tn, to = [], [], []
            for _ in range(reps):
                tt.append(C.timed(lambda: observe.text_attention(q, k, v, eo)))  # what our patch adds to
                tn.append(C.timed(lambda: patches[key](q, k, v, eo)))
                if old:
                    to.append(C.timed(lambda: old[key](q, k, v, eo)))
            added += min(tn) - min(tt)
            text_total += min(tt)
            if old:
                before += min(to) - min(tt)
    return added, before, text_total


def load_revision(host, rev: str):
    """A converter from our current patch objects to the same plan run by revision `rev`'s code."""
    pack = host.pack.__name__

    def load(relpath: str, name: str, package: str):
        source = subprocess.check_output(["git", "show", f"{rev}:{relpath}"], cwd=C.REPO, text=True)
        module = types.ModuleType(name)
        module.__package__, module.__file__ = package, f"<{rev}:{relpath}>"
        sys.modules[name] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        return module

    attention = load("ipadapter_core/attention.py", f"{pack}.ipadapter_core._bench_rev_attention", f"{pack}.ipadapter_core")
    patch = load("nodes/_patch.py", f"{pack}.nodes._bench_rev_patch", f"{pack}.nodes")

    def convert(current):
        plan = current.plan
        segments = tuple(attention._Segment(s.start, s.stop, s.mask, s.sigma_range) for s in plan.segments)
        return patch.IPAKitAttn2(attention.LayerPlan(plan.k, plan.v, plan.heads, segments), base=current.base)

    return convert


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
