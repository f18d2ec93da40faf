"""Frame-level image prompting through the Apply nodes (issue 12): per-frame weights, unfolded batches, per-frame
masks and context windows, on the SDXL-small UNet (Apply Embeds) and, for the paths from images, the full SD1.5
test UNet (Apply).

Every equality is on the noise prediction of one UNet forward the way the sampler makes it (cond and uncond rows in
one batch), fp32 on the CPU: frame i of a batch run against a run of that frame alone, a window of frames (core
context windows, AnimateDiff-Evolved's `ad_params`) against the same frames of the full run.

The host UNet itself does not give a latent the same numbers in batches of different sizes (on the SDXL-small UNet
up to ~2e-5 apart, unpatched: other GEMM blockings), so the 1e-5 comparisons are made at equal batch sizes: "frame i
alone" is the model prompted with frame i's reference, weight and mask only, read at frame i of the same batch, and
run alone (a batch of one latent) as a window of that one frame. Comparisons across batch sizes allow the host's
own difference, measured on the unpatched model for the same latents, on top of 1e-5.
"""

from __future__ import annotations

import types

import pytest
import torch

import _host
from _pipe import APPLY
from dev.host.torch_probes import SyncRecorder, UNetCall, attn2_patches
from dev.standins import names
from dev.standins.comfy_models import SDXL_SMALL_WIDTHS

TOL = 1e-5
ROWS = (1, 0)  # uncond chunk first, as ComfyUI's sampler batches cfg


def images(n: int, seed: int = 11) -> torch.Tensor:
    return torch.rand(n, 224, 224, 3, generator=torch.Generator().manual_seed(seed))


def region_masks() -> torch.Tensor:
    """Three different 64 px masks (left half, top half, a soft ramp)."""
    m = torch.zeros(3, 64, 64)
    m[0, :, :32] = 1
    m[1, :32, :] = 1
    m[2] = torch.linspace(0, 1, 64)[None, :]
    return m


class Frames:
    """UNet inputs for `count` latent frames in each cond/uncond chunk; runs all of them or any subset of frames
    (a window), with the same noise, timestep and text per frame."""

    def __init__(self, model, count: int, rows=ROWS, hw=(8, 8), sigma: float = 1.0):
        self.full = UNetCall(model, hw=hw, rows=rows, batch=count, sigma=sigma, seed=5)
        self.count, self.rows, self.sigma = count, tuple(rows), sigma

    def batch_rows(self, frames) -> list[int]:
        return [r * self.count + f for r in range(len(self.rows)) for f in frames]

    def __call__(self, model, frames=None, **extra) -> torch.Tensor:
        frames = list(range(self.count)) if frames is None else list(frames)
        idx = self.batch_rows(frames)
        full = self.full
        options = dict(model.model_options.get("transformer_options", {}))
        options.update(cond_or_uncond=list(self.rows), sigmas=torch.full((len(frames),), float(self.sigma)),
                       original_shape=[len(idx), *full.x.shape[1:]], **extra)
        kw = {} if full.y is None else {"y": full.y[idx]}
        with torch.inference_mode():
            return model.model.diffusion_model(full.x[idx], timesteps=full.t[idx], context=full.context[idx],
                                               transformer_options=options, **kw)

    def pick(self, out: torch.Tensor, frames) -> torch.Tensor:
        """The rows of `out` (a run over every frame) that belong to `frames`."""
        return out[self.batch_rows(list(frames))]

    def host_noise(self, model, frames) -> float:
        """How far the host UNet's own numbers for `frames` move between the full batch and a batch of just them."""
        return max_delta(self.pick(self(model), frames), self(model, frames))

    def alone(self, patched, solo, f: int, out: torch.Tensor | None = None) -> tuple[float, float]:
        """Frame f of `patched` (`out`: its run over every frame, when already made) against `solo` (f's reference,
        weight and mask only): in the same batch, and run alone (a window of that one frame against a batch of one
        latent)."""
        out = self(patched) if out is None else out
        same_batch = max_delta(self.pick(out, [f]), self.pick(self(solo), [f]))
        by_itself = max_delta(self(patched, [f], context_window=context_window([f])), self(solo, [f]))
        return same_batch, by_itself


def context_window(indices):
    """ComfyUI core's window object (current ComfyUI), or one with the same attributes on the 2024 host."""
    try:
        from comfy.context_windows import IndexListContextWindow

        return IndexListContextWindow(list(indices), dim=0)
    except ImportError:
        return types.SimpleNamespace(index_list=list(indices), dim=0, context_length=len(indices))


def max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# the two UNets, each driven through an apply node


class SD15Rig:
    name = "sd15"

    def __init__(self, pipe):
        self.pipe, self.model = pipe, pipe.model

    def apply(self, refs, model=None, **kw):
        return self.pipe.apply(model, image=refs, **kw)


class SDXLRig:
    name = "sdxl_small"
    PLUS = ("plus_sdxl_vit-h", {"subdir": names.SDXL_SMALL_SUBDIR, "widths": SDXL_SMALL_WIDTHS})

    def __init__(self, pipe, comfy, models_dir, sdxl):
        path = _host.ensure_ipadapter(self.PLUS[0], models_dir, **self.PLUS[1])
        self.adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=f"{self.PLUS[1]['subdir']}/{path.name}")[0]
        self.pipe, self.comfy, self.model = pipe, comfy, sdxl[0]

    def apply(self, refs, model=None, **kw):
        # the SD1.5 plus adapter reads ViT-H penultimate features: exactly what this adapter reads too
        embeds = self.comfy.outputs("IPAKitEncode", ipadapter=self.pipe.plus, image=refs, clip_vision=self.pipe.clip_vision)[0]
        args = dict(APPLY)
        args.update(kw)
        return self.comfy.outputs("IPAKitApplyEmbeds", model=model or self.model, ipadapter=self.adapter, embeds=embeds, **args)[0]


@pytest.fixture(scope="module")
def rig(pipe, comfy, models_dir, sdxl_small_checkpoint):
    """The frame equalities run on the SDXL-small UNet: the real 70-layer layout (several depths per transformer,
    3-tuple keys everywhere) at a fraction of the full SD1.5's cost; the SD1.5 path is checked by the tests that
    take `pipe` (the same frame code, reached from images through Apply)."""
    return SDXLRig(pipe, comfy, models_dir, sdxl_small_checkpoint)


# unfolding


def test_unfolded_frame_equals_that_frame_alone_with_its_reference_weight_and_mask(rig):
    refs, masks, weights = images(3), region_masks(), [0.9, 0.5, 1.3]
    patched = rig.apply(refs, weight=weights, attn_mask=masks, unfold_batch=True)
    frames = Frames(rig.model, 4)  # frame 3 repeats the last reference, weight and mask
    out, plain = frames(patched), frames(rig.model)
    for f in range(4):
        i = min(f, 2)
        solo = rig.apply(refs[i : i + 1], weight=weights[i], attn_mask=masks[i : i + 1])
        same_batch, by_itself = frames.alone(patched, solo, f, out)
        assert same_batch <= TOL and by_itself <= TOL, f"frame {f}"
        assert max_delta(frames.pick(plain, [f]), frames.pick(out, [f])) > 1e-3  # the image prompt acts on every frame
    assert max_delta(frames.pick(out, [0]), frames.pick(out, [1])) > 1e-3


def test_more_references_than_frames_are_cut_and_a_batch_of_one_works(rig):
    refs, weights = images(3), [0.7, 1.2, 0.4]
    patched = rig.apply(refs, weight=weights, unfold_batch=True)
    frames = Frames(rig.model, 2)
    out = frames(patched)
    for f in range(2):
        assert max(frames.alone(patched, rig.apply(refs[f : f + 1], weight=weights[f]), f, out)) <= TOL
    one = Frames(rig.model, 1)
    assert max_delta(one(patched), one(rig.apply(refs[:1], weight=weights[0]))) <= TOL


def test_unfolding_identical_references_equals_not_unfolding(rig):
    refs = images(1).expand(3, -1, -1, -1).contiguous()
    frames = Frames(rig.model, 3)
    unfolded = frames(rig.apply(refs, unfold_batch=True))
    assert max_delta(unfolded, frames(rig.apply(refs))) <= TOL
    assert max_delta(unfolded, frames(rig.model)) > 1e-3


def test_cond_uncond_orders_and_cfg_one(rig):
    refs = images(2)
    patched = rig.apply(refs, weight=[1.0, 0.6], unfold_batch=True)
    solos = [rig.apply(refs[f : f + 1], weight=[1.0, 0.6][f]) for f in range(2)]
    for rows in [(0,), (0, 1), (0, 0, 1)]:
        frames = Frames(rig.model, 2, rows=rows)
        out = frames(patched)
        for f in range(2):
            assert max_delta(frames.pick(out, [f]), frames.pick(frames(solos[f]), [f])) <= TOL


# per-frame weights


def test_a_list_of_equal_weights_equals_the_scalar(rig):
    frames = Frames(rig.model, 3)
    listed = rig.apply(images(1), weight=[0.8, 0.8, 0.8])
    assert isinstance(next(iter(attn2_patches(listed).values())).plan.frame_terms[0].k, torch.Tensor)  # the frame path ran
    assert max_delta(frames(listed), frames(rig.apply(images(1), weight=0.8))) <= TOL


def test_zero_weight_frames_equal_the_unpatched_model_and_are_skipped(rig):
    weights = [0.8, 0.0, 1.1, 0.0]
    patched = rig.apply(images(1), weight=weights)
    frames = Frames(rig.model, 5)  # frame 4 repeats the last weight: 0
    out, plain = frames(patched), frames(rig.model)
    for f in (1, 3, 4):
        assert max_delta(frames.pick(out, [f]), frames.pick(plain, [f])) <= 1e-6, f"frame {f}"
    for f in (0, 2):
        assert max_delta(frames.pick(out, [f]), frames.pick(frames(rig.apply(images(1), weight=weights[f])), [f])) <= TOL
    for patch in attn2_patches(patched).values():  # no work is planned for them
        (term,) = patch.plan.frame_terms
        assert term.frame_slots[1] is None and term.frame_slots[3] is None and term.k.shape[0] == 2


def test_all_zero_frame_weights_change_nothing(pipe):
    assert pipe.apply(weight=[0.0, 0.0]) is pipe.model  # changes_nothing: the model itself, nothing encoded


# context windows


@pytest.mark.parametrize("kind", ["context_window", "ad_params"])
def test_a_window_of_frames_equals_the_same_frames_of_the_full_run(rig, kind):
    refs, weights, masks = images(4), [1.0, 0.0, 0.7, 1.4, 0.9], region_masks()
    patched = rig.apply(refs, weight=weights, attn_mask=masks, unfold_batch=True)
    frames = Frames(rig.model, 6)
    full = frames(patched)
    window = [2, 3, 4, 5]
    if kind == "context_window":
        extra = {"context_window": context_window(window)}
    else:
        extra = {"ad_params": {"sub_idxs": window, "full_length": 6}}
    windowed = frames(patched, window, **extra)
    assert max_delta(windowed, frames.pick(full, window)) <= TOL + frames.host_noise(rig.model, window)
    # exactly (at the same batch size): the window's frames given their references, weights and masks directly
    direct = rig.apply(refs[2:], weight=weights[2:], attn_mask=masks[2:], unfold_batch=True)
    assert max_delta(windowed, frames(direct, window)) <= TOL
    # without the window's indices, these latents would be taken as frames 0..3
    assert max_delta(frames(patched, window), frames.pick(full, window)) > 1e-3


def test_without_unfolding_a_mask_batch_keeps_its_per_reference_meaning(pipe):
    rig = SD15Rig(pipe)
    refs, masks = images(2), region_masks()[:2]
    frames = Frames(rig.model, 2)
    per_frame = frames(rig.apply(refs, weight=[0.8, 0.8], attn_mask=masks))
    shared = frames(rig.apply(refs, weight=0.8, attn_mask=masks))
    assert max_delta(per_frame, shared) <= TOL
    with pytest.raises(ValueError, match="3 masks for 2 reference"):
        rig.apply(refs, weight=[0.8, 0.5], attn_mask=region_masks())
    rig.apply(refs, weight=[0.8, 0.5], attn_mask=region_masks(), unfold_batch=True)  # unfolding: one mask per frame


# speed invariants


class _Watch:
    def __init__(self, patch, log):
        self.patch, self.log = patch, log

    def __call__(self, q, k, v, extra_options):
        with SyncRecorder() as recorder:
            out = self.patch(q, k, v, extra_options)
        self.log["calls"] += 1
        self.log["syncs"] += recorder.calls
        return out

    def to(self, *args, **kwargs):
        return _Watch(self.patch.to(*args, **kwargs), self.log)

    def __deepcopy__(self, memo):
        return self


def test_no_host_syncs_in_the_patched_forward_with_unfolding(pipe):
    refs, masks = images(3), region_masks()
    patched = pipe.apply(image=refs, weight=[1.0, 0.0, 0.6], attn_mask=masks, unfold_batch=True, start_at=0.0, end_at=0.8)
    patched = pipe.apply(patched, image=refs[:1])  # chained with a shared (not per-frame) term
    log = {"calls": 0, "syncs": []}
    watched = patched.clone()
    for key, patch in attn2_patches(patched).items():
        watched.set_model_attn2_replace(_Watch(patch, log), *key)
    frames = Frames(watched, 4, sigma=0.5)
    for _ in range(2):  # the first call builds the per-call caches, the second reuses them
        frames(watched)
        frames(watched, [1, 2, 3], context_window=context_window([1, 2, 3]))
    assert log["calls"] == 4 * 16
    assert log["syncs"] == [], f"host syncs inside the patch: {sorted(set(log['syncs']))}"


def test_keys_and_values_are_computed_once_per_apply(pipe):
    refs = images(3)
    patched = pipe.apply(image=refs, weight=[1.0, 0.5, 0.5], unfold_batch=True)
    patch = next(iter(attn2_patches(patched).values()))
    (term,) = patch.plan.frame_terms
    assert term.k.shape[0] == 3 and term.frame_slots == (0, 1, 2)  # one key/value set per distinct (reference, weight)
    frames = Frames(pipe.model, 3)
    frames(patched)
    held = {id(t) for t in patch.plan.tensors()}
    assert len(held) > 2 + 2  # the frame term's keys/values, and what the first call prepared (head-split bank, selections)
    frames(patched)
    assert {id(t) for t in patch.plan.tensors()} == held  # prepared once, reused by later calls: nothing new


# nodes


def test_new_inputs_are_optional_widgets_after_the_existing_ones(comfy):
    older = {"IPAKitApply": ["block_weights"], "IPAKitApplyEmbeds": ["block_weights", "weight_faceidv2", "lora_strength"],
             "IPAKitApplyFaceID": ["block_weights"]}  # the optional widgets saved workflows had before
    for node, before in older.items():
        optional = comfy.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["optional"]
        widgets = [name for name, (kind, *opts) in optional.items()  # what a UI workflow's widgets_values holds, in order
                   if kind in ("BOOLEAN", "INT", "FLOAT", "STRING") and not (opts and opts[0].get("forceInput"))]
        want = ["unfold_batch", "encode_batch_size"] if node != "IPAKitApplyEmbeds" else ["unfold_batch"]
        assert widgets[: len(before) + len(want)] == before + want, node  # appended: older saves keep their values
        spec = comfy.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["optional"]["unfold_batch"]
        assert spec[0] == "BOOLEAN" and spec[1]["default"] is False and spec[1]["tooltip"]
    mask_tip = comfy.NODE_CLASS_MAPPINGS["IPAKitApply"].INPUT_TYPES()["optional"]["attn_mask"][1]["tooltip"]
    assert "unfold_batch" in mask_tip and "per latent frame" in mask_tip


def test_encode_batch_size_encodes_in_chunks_with_a_progress_bar(pipe, monkeypatch):
    import comfy.utils

    bars = []

    class Bar:
        def __init__(self, total, *args, **kwargs):
            self.total, self.steps = total, 0
            bars.append(self)

        def update(self, value):
            self.steps += value

        def update_absolute(self, value, *args, **kwargs):
            self.steps = value

    refs = images(5, seed=23)  # unseen images: the encoder's per-image cache does not answer for them
    monkeypatch.setattr(comfy.utils, "ProgressBar", Bar)
    chunked = pipe.apply(image=refs, encode_batch_size=2, unfold_batch=True)
    assert [(b.total, b.steps) for b in bars] == [(3, 3)]  # 5 references + the empty-image negative, 2 at a time
    monkeypatch.undo()
    whole = pipe.apply(image=refs, unfold_batch=True)
    frames = Frames(pipe.model, 5)
    assert max_delta(frames(chunked), frames(whole)) <= TOL
