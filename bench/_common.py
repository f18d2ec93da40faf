"""Shared helpers of the benchmarks: boot the in-process ComfyUI host, build the cases, time, report.

Every script runs on the random-weight models of `.cache/models` (made by dev/standins/comfy_models.py
and dev/standins/ipadapter.py when missing), in-process ComfyUI on the CPU with pytorch attention, the
same host the tests use. Nothing here is imported by the pack.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # after ComfyUI's folder, which comfy_host puts first (the pack's nodes/ must not shadow it)

from dev.authoring.examples import APPLY_DEFAULTS  # noqa: E402
from dev.standins import comfy_models, names  # noqa: E402 (needs the path above; imports without torch)

SD15 = names.SD15_CHECKPOINT
SDXL_SMALL = names.SDXL_SMALL_CHECKPOINT
VIT_H = names.VIT_H
ADAPTERS = {  # label -> (gen_ipadapter variant, subfolder, generator options)
    "base": ("sd15", None, {}),
    "plus": ("plus_sd15", None, {}),
    "plus_sdxl_small": ("plus_sdxl_vit-h", names.SDXL_SMALL_SUBDIR, {"widths": comfy_models.SDXL_SMALL_WIDTHS}),
    "plus_sdxl_full": ("plus_sdxl_vit-h", None, {}),
}
APPLY = APPLY_DEFAULTS  # the settings the examples and tests apply


# setup


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2, the cores of the reference machine)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw figures here (default bench/out/<script>.json)")
    return p


def setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def ensure_models(*adapters: str) -> None:
    """Generate the random ComfyUI models (in a child process) and the named adapters when the cache lacks them."""
    comfy_models.ensure_models_in_child(names.MODELS_CACHE, ["sd15", "sdxl-small", "vit-h"])
    for label in adapters:
        adapter_path(label)


def adapter_path(label: str) -> Path:
    from dev.standins import ipadapter

    variant, sub, kw = ADAPTERS[label]
    folder = names.MODELS_CACHE / "ipadapter" / sub if sub else names.MODELS_CACHE / "ipadapter"
    return Path(ipadapter.ensure_checkpoint(variant, folder, **kw))


def adapter_name(label: str) -> str:
    sub = ADAPTERS[label][1]
    return f"{sub}/{adapter_path(label).name}" if sub else adapter_path(label).name


def boot(threads: int):
    """The in-process ComfyUI host with the pack loaded (one per process)."""
    import tempfile

    setup_torch(threads)
    from dev.host import comfy_host

    host = comfy_host.boot(names.MODELS_CACHE, output_dir=Path(tempfile.mkdtemp(prefix="ipakit-bench-")))
    setup_torch(threads)  # ComfyUI's import may have changed it
    return host


def pack_module(host, name: str):
    """A module of the pack as ComfyUI loaded it, e.g. `nodes._patch`."""
    return sys.modules[f"{host.pack.__name__}.{name}"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(fns: dict, reps: int) -> dict[str, list[float]]:
    """Times of each function over `reps` rounds, run in turn (order reversed every other round, gc between calls)."""
    times = {name: [] for name in fns}
    for i in range(reps):
        for name in list(fns) if i % 2 == 0 else list(reversed(fns)):
            times[name].append(timed(fns[name]))
            gc.collect()
    return times


def stats(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


# FLOPs


def unet_flops(forward, model) -> float:
    """FLOPs of one unpatched UNet forward (matmuls, convs, CPU SDPA) by torch's FlopCounterMode; `forward`
    is a dev.host.torch_probes.UNetCall.

    Counted on a meta-device replica built from the model's config, so no real forward is spent on it.
    """
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from torch.utils.flop_counter import FlopCounterMode

    def sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs):
        b, h, n, d = q_shape
        return 4 * b * h * n * k_shape[2] * d

    config = {k: v for k, v in model.model.model_config.unet_config.items() if k != "disable_unet_model_creation"}
    with torch.device("meta"):
        unet = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    meta = lambda t: None if t is None else t.to("meta")  # noqa: E731
    kw = {} if forward.y is None else {"y": meta(forward.y)}
    options = {k: v for k, v in forward.options(model).items() if k != "patches_replace"}
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flops,
               torch.ops.aten._scaled_dot_product_efficient_attention: sdpa_flops,
               torch.ops.aten._scaled_dot_product_flash_attention: sdpa_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        unet(meta(forward.x), timesteps=meta(forward.t), context=meta(forward.context), transformer_options=options, **kw)
    return float(counter.get_total_flops())


def patch_flops(patches: dict, queries: dict, latent_batch_rows: int) -> float:
    """Arithmetic cost of the image terms: q kᵀ and p v (2·2·n·s·c each) plus softmax and the add, per layer."""
    total = 0.0
    for key, patch in patches.items():
        n, c = queries[key]
        s = patch.plan.num_tokens
        m = latent_batch_rows * n
        total += 4 * m * s * c + 5 * m * s * patch.plan.heads + m * c
    return total


# reporting


def machine() -> str:
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu or platform.processor()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c}" for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def pct(x: float) -> str:
    return f"{100 * x:+.3f}%"


def report(name: str, args, text: str, data: dict) -> None:
    """Print the table and keep the raw figures under bench/out/."""
    header = f"# {name}  ({datetime.datetime.now().isoformat(timespec='seconds')})\n# {machine()}\n# {' '.join(sys.argv)}\n"
    print(header + text, flush=True)
    path = args.json or OUT / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "machine": machine(), "argv": sys.argv, "when": datetime.datetime.now().isoformat(),
                                "figures": data}, indent=1, default=str))
    (path.with_suffix(".txt")).write_text(header + text + "\n")
