"""Performance invariants of the attention patch, checked without timing anything (timings live in bench/).

- No host syncs: while our patches run inside a real KSampler run (full SD1.5, cfg so cond and uncond
  share a batch, chained adapters, a mask and a start/end gate), no torch call reads a value back to
  the host; on the meta device, where any read raises, the installed patches still run.
- One resident weight copy: N Apply nodes and clones of their models share one loaded adapter, its
  parameters are never copied, the patch objects hold no adapter weights, and RSS barely grows.
- Every cross-attention layer is patched: 16 on SD1.5 (the middle block included), 70 on SDXL.

The patches are observed by wrapping each installed patch object in an `Observer` that calls the real
patch with the real inputs and returns its output untouched.
"""

from __future__ import annotations

import gc

import torch

import _host
from _pipe import APPLY
from dev.host.torch_probes import SyncRecorder, UNetCall, attn2_patches, resident_mib
from dev.standins import names
from dev.standins.comfy_models import SDXL_SMALL_WIDTHS

PLUS_SDXL_SMALL = ("plus_sdxl_vit-h", {"subdir": names.SDXL_SMALL_SUBDIR, "widths": SDXL_SMALL_WIDTHS})


class Observer:
    """Wraps one installed attn2 patch: records the layer key and any host sync while the real patch runs."""

    def __init__(self, patch, key, log: dict):
        self.patch, self.key, self.log = patch, key, log

    def __call__(self, q, k, v, extra_options):
        recorder = SyncRecorder()
        with recorder:
            out = self.patch(q, k, v, extra_options)
        self.log["keys"].append(self.key)
        self.log["syncs"] += recorder.calls
        return out

    def to(self, *args, **kwargs):  # ComfyUI moves patches to the device and dtype before sampling
        return Observer(self.patch.to(*args, **kwargs), self.key, self.log)

    def __deepcopy__(self, memo):
        return self


def observed(model):
    """A clone of `model` whose attn2 patches are wrapped in observers, and the log they write."""
    log = {"keys": [], "syncs": []}
    clone = model.clone()
    for key, patch in attn2_patches(model).items():
        clone.set_model_attn2_replace(Observer(patch, key, log), *key)
    return clone, log


def attn2_layers(model) -> int:
    return sum(1 for m in model.model.diffusion_model.modules() if getattr(m, "attn2", None) is not None)


def test_no_host_syncs_in_the_patch_during_sampling(pipe):
    with SyncRecorder() as probe:  # the recorder itself sees the kind of read the incumbent does per layer
        torch.ones(1).cpu().item()
    assert probe.calls == ["cpu", "item"]

    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1
    model = pipe.apply(pipe.model, start_at=0.0, end_at=0.6, attn_mask=mask)  # gated and masked
    model = pipe.apply(model)  # chained: fused with the first (same token count)
    model = pipe.apply(model, adapter=pipe.base)  # another length: its own pass
    watched, log = observed(model)
    out = pipe.sample(watched, steps=2)  # 64 px, cfg 7: cond and uncond in one batch
    assert torch.isfinite(out).all()
    assert len(log["keys"]) >= 2 * 16  # every layer, every step (cond and uncond in one batch)
    assert log["syncs"] == [], f"host syncs inside the patch: {sorted(set(log['syncs']))}"

    # on the meta device every value read raises: the installed patches run there all the same
    with torch.inference_mode():
        for key, patch in attn2_patches(model).items():
            meta = patch.to(torch.device("meta"))
            heads = meta.plan.heads
            c = meta.plan.k.shape[-1]
            q = torch.empty(2, 16, c, device="meta")
            text = torch.empty(2, 77, c, device="meta")
            options = {"n_heads": heads, "cond_or_uncond": [1, 0], "sigmas": torch.empty(1, device="meta"),
                       "original_shape": [2, 4, 4, 4]}
            assert meta(q, text, text, options).shape == q.shape, key


def test_one_resident_weight_copy_across_apply_nodes_and_clones(pipe, comfy):
    loaded_adapter = type(pipe.plus.adapter)  # the class of the pack as ComfyUI imported it
    name = "ip-adapter-plus_sd15.safetensors"
    again = comfy.outputs("IPAKitModelLoader", ipadapter_file=name)[0]
    assert again.adapter is pipe.plus.adapter  # one loaded adapter per file
    first = pipe.apply(pipe.model)  # the adapter is now in its compute dtype on its device
    params = {p.data_ptr(): p.numel() * p.element_size() for p in pipe.plus.adapter.model.parameters()}
    before = resident_mib()

    models = [first]
    for _ in range(4):
        models.append(pipe.apply(models[-1]))
        models += [models[-1].clone(), models[-1].clone()]
    grown = resident_mib() - before

    assert {p.data_ptr() for p in pipe.plus.adapter.model.parameters()} == set(params)  # never copied or moved
    alive = [o for o in gc.get_objects() if type(o) is loaded_adapter and o.path.name == name]
    assert len(alive) == 1
    held: dict[int, int] = {}
    for m in models:
        for patch in attn2_patches(m).values():
            plan = patch.plan
            for t in (plan.k, plan.v, *(s.mask for s in plan.segments if s.mask is not None)):
                held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    assert not set(held) & set(params)  # patch objects hold keys/values, no adapter weights
    assert sum(held.values()) < 0.5 * sum(params.values())
    clone = models[-1].clone()
    assert all(attn2_patches(clone)[k].plan is p.plan for k, p in attn2_patches(models[-1]).items())  # clones share the plans
    assert grown < 128, f"RSS grew {grown:.0f} MiB for 4 more Apply nodes and 8 clones"


def test_the_patch_runs_on_all_16_sd15_layers(pipe):
    model, log = observed(pipe.apply(pipe.model))
    UNetCall(model)(model)
    assert attn2_layers(pipe.model) == 16
    assert len(set(log["keys"])) == 16 and len(log["keys"]) == 16
    assert ("middle", 0, 0) in log["keys"]


def test_the_patch_runs_on_all_70_sdxl_layers(pipe, comfy, models_dir, sdxl_small_checkpoint):
    path = _host.ensure_ipadapter(PLUS_SDXL_SMALL[0], models_dir, **PLUS_SDXL_SMALL[1])
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=f"{PLUS_SDXL_SMALL[1]['subdir']}/{path.name}")[0]
    sdxl = sdxl_small_checkpoint[0]
    # the SD1.5 plus embeds are ViT-H penultimate features: exactly what this adapter reads
    embeds = comfy.outputs("IPAKitEncode", ipadapter=pipe.plus, image=pipe.image, clip_vision=pipe.clip_vision)[0]
    patched = comfy.outputs("IPAKitApplyEmbeds", model=sdxl, ipadapter=adapter, embeds=embeds, **APPLY)[0]
    model, log = observed(patched)
    UNetCall(model)(model)
    assert attn2_layers(sdxl) == 70
    assert len(set(log["keys"])) == 70 and len(log["keys"]) == 70
    assert {k for k in log["keys"] if k[0] == "middle"} == {("middle", 0, i) for i in range(10)}
    assert log["syncs"] == []
