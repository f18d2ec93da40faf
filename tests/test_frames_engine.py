"""Frame-level terms in the engine (issue 12), without ComfyUI: `LayerPlan` running `FrameTerm`s against a plain
per-row reference computation, per-frame weights in `ApplySettings` / `changes_nothing`, and `image_terms` building
one key/value set per distinct (reference, weight) on a tiny-width SD1.5 adapter."""

from __future__ import annotations

import pytest
import torch

import ipadapter_core as core
from dev.host.torch_probes import SyncRecorder
from dev.standins.ipadapter import make_state_dict, write_checkpoint
from ipadapter_core.attention import FrameTerm, LayerPlan

SD15 = core.Topology.sd15()
H, D = 2, 8  # heads, head width
C = H * D


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference(q, term: FrameTerm, rows, frames, sigmas=None):
    """Row by row: latent j of chunk i attends to the slot of frame frames[j] (clamped), each segment with its own
    softmax, times the frame's mask and the start/end gate."""
    b, n = len(frames), q.shape[1]
    out = torch.zeros_like(q)
    for i, row in enumerate(rows):
        for j, f in enumerate(frames):
            slot = term.frame_slots[min(f, len(term.frame_slots) - 1)]
            if slot is None:
                continue
            qi = q[i * b + j].view(n, H, D).transpose(0, 1)  # h n d
            k = term.k[slot, row].view(-1, H, D).transpose(0, 1)
            v = term.v[slot, row].view(-1, H, D).transpose(0, 1)
            o, start = 0, 0
            for g, length in enumerate(term.segments):
                p = (qi @ k[:, start : start + length].transpose(-1, -2) / D**0.5).softmax(-1)
                part = p @ v[:, start : start + length]
                if term.masks is not None and not term.frame_masks and term.masks.shape[0] > 1:
                    part = part * term.masks[g].flatten()[None, :, None]
                o, start = o + part, start + length
            if term.masks is not None:
                if term.frame_masks:
                    o = o * term.masks[min(f, term.masks.shape[0] - 1)].flatten()[None, :, None]
                elif term.masks.shape[0] == 1:
                    o = o * term.masks[0].flatten()[None, :, None]
            if term.sigma_range is not None and sigmas is not None:
                s = float(sigmas[j])
                o = o * float(term.sigma_range[1] <= s <= term.sigma_range[0])
            out[i * b + j] = o.transpose(0, 1).reshape(n, C)
    return out


def frame_term(slots=3, tokens=4, segments=None, frame_slots=(0, None, 2, 1), masks=None, frame_masks=False, sigma_range=None):
    return FrameTerm(k=rand(slots, 2, tokens, C, seed=1), v=rand(slots, 2, tokens, C, seed=2), frame_slots=frame_slots,
                     segments=segments or (tokens,), masks=masks, frame_masks=frame_masks, sigma_range=sigma_range)


CASES = {
    "slots": dict(),
    "segments and per-segment masks": dict(tokens=6, segments=(3, 3), masks=torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3))),
    "one mask": dict(masks=torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(4))),
    "frame masks": dict(masks=torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(5)), frame_masks=True),
    "gate": dict(sigma_range=(5.0, 1.0)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rows, frames", [((1, 0), (0, 1, 2, 3, 4)), ((0,), (0, 1, 2)), ((0, 0, 1), (3, 1)), ((1, 0), (2,))])
def test_frame_terms_match_the_row_by_row_reference(case, rows, frames):
    term = frame_term(**CASES[case])
    plan = LayerPlan.from_terms([term], H)
    b = len(frames)
    q = rand(len(rows) * b, 16, C, seed=7)
    sigmas = torch.tensor([0.5, 2.0, 3.0, 9.0, 4.0])[:b]
    window = frames if frames != tuple(range(b)) else None
    got = plan(q, rows=rows, latent_hw=(4, 4), sigmas=sigmas, frames=window)
    want = reference(q, term, rows, frames, sigmas)
    assert (got - want).abs().max().item() <= 1e-5


def test_frame_terms_chain_with_shared_terms_and_move():
    shared = core.ImageTerm(k=rand(2, 4, C, seed=8), v=rand(2, 4, C, seed=9), segments=(4,))
    term = frame_term()
    q = rand(2 * 3, 16, C, seed=10)
    both = LayerPlan.from_terms([shared], H).extend([term])
    alone = LayerPlan.from_terms([shared], H)(q, rows=(1, 0)) + LayerPlan.from_terms([term], H)(q, rows=(1, 0))
    assert (both(q, rows=(1, 0)) - alone).abs().max().item() <= 1e-5
    again = LayerPlan.from_terms([term], H).extend([shared])
    assert (again(q, rows=(1, 0)) - alone).abs().max().item() <= 1e-5
    assert again.to(torch.float64).frame_terms[0].k.dtype == torch.float64


def test_a_call_whose_frames_all_have_weight_zero_adds_nothing_and_reads_nothing_back():
    term = frame_term(frame_slots=(None, 0, None))
    plan = LayerPlan.from_terms([term], H)
    q = rand(2, 16, C)
    out = torch.ones_like(q)
    with SyncRecorder() as rec:
        plan(q, rows=(1, 0), frames=(2,), out=out)  # frame 2: weight 0 -> untouched
        plan(q, rows=(1, 0), frames=(1,), out=out.clone())
    assert torch.equal(out, torch.ones_like(q)) and rec.calls == []


# settings and terms


def test_weight_lists_in_settings():
    assert core.ApplySettings(weight=[0.5]).weight == 0.5  # one weight is the plain weight
    assert core.ApplySettings(weight=[1, 0.5]).weight == (1.0, 0.5)
    assert core.ApplySettings(weight=(0.25, 0.0)).frame_weights == (0.25, 0.0)
    assert core.ApplySettings(weight=0.7).frame_weights == (0.7,)
    with pytest.raises(ValueError, match="empty"):
        core.ApplySettings(weight=[])
    with pytest.raises(ValueError, match="weight: item 2"):
        core.ApplySettings(weight=[1.0, "x"])


def test_changes_nothing_only_when_every_frame_weight_is_zero():
    assert core.changes_nothing(SD15, core.ApplySettings(weight=[0.0, 0.0, 0.0]))
    assert not core.changes_nothing(SD15, core.ApplySettings(weight=[0.0, 0.0, 0.3]))
    assert not core.changes_nothing(SD15, core.ApplySettings(weight=[0.0, 0.0], weight_type="composition precise", composition_boost=1.0))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    state = make_state_dict("sd15", scale="tiny", widths=SD15.widths_checkpoint_order, cross_dim=SD15.context_dim, seed=1,
                            dtype=torch.float32)
    return core.load_adapter(write_checkpoint(state, tmp_path_factory.mktemp("frames") / "ip-adapter_sd15.safetensors"))


def embeds(adapter, n):
    spec = adapter.spec
    return core.ImageEmbeds(cond={"clip": rand(n, spec.clip_dim, seed=n)}, uncond={"clip": torch.zeros(n, spec.clip_dim)},
                            clip_encoder=spec.clip_encoder, clip_output=spec.clip_output)


def test_image_terms_make_one_key_value_set_per_distinct_reference_and_weight(base):
    e = embeds(base, 3)
    terms = core.image_terms(base, SD15, e, core.ApplySettings(weight=[1.0, 0.0, 0.5, 0.5], unfold_batch=True))
    term = terms[SD15.layers[0].key]
    assert isinstance(term, FrameTerm)
    # frames: (ref 0, 1.0), (ref 1, 0.0) skipped, (ref 2, 0.5), (ref 2, 0.5) again -> two slots
    assert term.frame_slots == (0, None, 1, 1) and term.k.shape[0] == 2
    shared = core.image_terms(base, SD15, embeds(base, 1), core.ApplySettings(weight=0.5))[SD15.layers[0].key]
    alone = core.ImageEmbeds(cond={"clip": e.cond["clip"][2:]}, uncond={"clip": e.uncond["clip"][2:]},
                             clip_encoder=e.clip_encoder, clip_output=e.clip_output)
    third = core.image_terms(base, SD15, alone, core.ApplySettings(weight=0.5))[SD15.layers[0].key]
    assert torch.allclose(term.k[1], third.k, atol=1e-5) and torch.allclose(term.v[1], third.v, atol=1e-5)
    assert not torch.allclose(term.v[1], shared.v)
    # unfolding one reference with one mask is the shared image prompt
    one = core.image_terms(base, SD15, embeds(base, 1), core.ApplySettings(weight=0.5, unfold_batch=True))
    assert isinstance(one[SD15.layers[0].key], core.ImageTerm)


def test_zero_weight_layers_get_no_frame_term(base):
    terms = core.image_terms(base, SD15, embeds(base, 2), core.ApplySettings(weight=[1.0, 0.5], block_weights="3:1.0", unfold_batch=True))
    assert {layer.transformer_index for layer in SD15.layers if layer.key in terms} == {3}
