"""Interoperability with other attention packs that stack on the attn2 patch they find (issue 13).

IPAdapter Plus, InstantID and PuLID install their own attn2 replace patches; on a key that already holds a patch
they call `.add(callback, **kwargs)` on that object, after `model.clone()` and a shallow copy of the patch dicts, so
the object found there is changed in place. `TheirAttn2Replace` and `their_apply` below are a stand-in for such a
pack, written from that documented convention (shared/docs/incumbent.md §3; cubiq/ComfyUI_InstantID
`CrossAttentionPatch.py` and `InstantID.py`, cubiq/PuLID_ComfyUI `pulid.py`): they are the other pack, not the code
under test. The tests run both packs' patches in one UNet forward of the random SD1.5 model, in either order,
chained, and gated on sigma, and check that neither pack's patches leak into the models they were applied to.
"""

from __future__ import annotations

import pytest
import torch

from dev.host.torch_probes import SyncRecorder, attn2_patches

NO_SIGMA = 999999999.9  # the convention's sigma when a call has none, and ComfyUI's percent_to_sigma(0.0)


# the other pack


def optimized_attention(q, k, v, heads):
    from comfy.ldm.modules.attention import optimized_attention as host_attention

    return host_attention(q, k, v, heads)


class TheirAttn2Replace:
    """Their patch object: text attention, then every callback whose sigma range holds `sigmas[0]`, each adding what
    it returns to the running output; the sum in q's dtype."""

    def __init__(self, callback=None, **kwargs):
        self.callback = [callback]
        self.kwargs = [kwargs]

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        out = optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else NO_SIGMA
        for callback, kwargs in zip(self.callback, self.kwargs):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(dtype=q.dtype)


def their_set_model_patch_replace(model, callback, kwargs: dict, key: tuple) -> None:
    """Their registration: shallow copies of the option dicts; a new key gets their object, an existing one `.add`.
    On SD1.5 (one transformer per block) IPAdapter Plus uses the 2-tuple key `(block, id)`."""
    key = key[:2]
    to = model.model_options["transformer_options"].copy()
    to["patches_replace"] = to["patches_replace"].copy() if "patches_replace" in to else {}
    to["patches_replace"]["attn2"] = to["patches_replace"]["attn2"].copy() if "attn2" in to["patches_replace"] else {}
    found = to["patches_replace"]["attn2"].get(key)
    if found is None:
        to["patches_replace"]["attn2"][key] = TheirAttn2Replace(callback, **kwargs)
        model.model_options["transformer_options"] = to
    else:
        found.add(callback, **kwargs)  # the object found after clone(), changed in place


def their_apply(model, keys, callback=None, start: float = NO_SIGMA, end: float = 0.0, **kwargs):
    """Their apply node: a clone with `callback` (their image prompt by default) registered at every key."""
    work = model.clone()
    for key in keys:
        options = dict(kwargs, sigma_start=start, sigma_end=end)
        their_set_model_patch_replace(work, callback or image_prompt, options, key)
    return work


def image_prompt(out, q, k, v, extra_options, tokens=None, weight=1.0, calls=None, **kwargs):
    """Their attention callback: q attends to `tokens` (cut to the layer's width), times `weight`."""
    if calls is not None:
        calls.append((*extra_options["block"], extra_options["block_index"]))
    ip = tokens[:, : q.shape[-1]].to(q).expand(q.shape[0], -1, -1)
    return optimized_attention(q, ip, ip, extra_options["n_heads"]) * weight


def record_out(out, q, k, v, extra_options, seen=None, **kwargs):
    """A callback that keeps the output it was handed (PuLID's projections read it) and adds nothing."""
    seen.setdefault((*extra_options["block"], extra_options["block_index"]), []).append(out.clone())
    return 0


# fixtures and helpers


@pytest.fixture(scope="module")
def ours(pipe):
    return pipe.apply()


@pytest.fixture(scope="module")
def keys(ours):
    return sorted(attn2_patches(ours))  # every cross-attention layer, as (block, id, depth)


@pytest.fixture(scope="module")
def tokens():
    return torch.randn(4, 1280, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def eps_ours(pipe, ours):
    return pipe.eps(ours)


@pytest.fixture(scope="module")
def theirs(pipe, keys, tokens):
    """Their pack alone, and the patch objects it installed (taken before anything else touched the model)."""
    model = their_apply(pipe.model, keys, tokens=tokens)
    return model, dict(attn2_patches(model))


@pytest.fixture(scope="module")
def ours_on_theirs(pipe, theirs):
    return pipe.apply(model=theirs[0])


def layer_call(model, key, sigmas=None, seed=0):
    """Random projected q, k, v and ComfyUI's extra_options for one call of the patch at `key` (cond and uncond)."""
    unet = model.model.diffusion_model
    blocks = {"input": unet.input_blocks, "output": unet.output_blocks}
    block = blocks[key[0]][key[1]] if key[0] in blocks else unet.middle_block
    attn2 = next(m.attn2 for m in block.modules() if getattr(m, "attn2", None) is not None)
    c, heads = attn2.to_q.out_features, attn2.heads
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(2, 16, c, generator=g), torch.randn(2, 77, c, generator=g), torch.randn(2, 77, c, generator=g)
    options = {"n_heads": heads, "dim_head": c // heads, "cond_or_uncond": [1, 0], "original_shape": [2, 4, 4, 4],
               "block": key[:2], "block_index": key[2], "transformer_index": 0}
    if sigmas is not None:
        options["sigmas"] = sigmas
    return q, k, v, options


def differs(a, b, by=1e-2) -> bool:
    return (a - b).abs().max().item() > by


# tests


def test_ours_then_theirs_runs_both_and_leaves_ours_alone(pipe, ours, keys, tokens, eps_ours, theirs, ours_on_theirs):
    both = their_apply(ours, keys, tokens=tokens)
    mine, theirs_on_mine = attn2_patches(ours), attn2_patches(both)
    for key in keys:
        assert type(theirs_on_mine[key]) is type(mine[key]) and len(theirs_on_mine[key].added) == 1
        assert theirs_on_mine[key] is not mine[key] and theirs_on_mine[key].plan is mine[key].plan  # the plan is shared
        assert mine[key].added == []
    out = pipe.eps(both)
    assert torch.equal(pipe.eps(ours), eps_ours)  # nothing leaked into the model they cloned
    assert differs(out, eps_ours) and differs(out, pipe.eps(theirs[0]))  # both contributions are present
    # per layer the same sum in the other order (theirs wrapped by ours): the same forward up to rounding
    torch.testing.assert_close(out, pipe.eps(ours_on_theirs), rtol=1e-4, atol=1e-4)


def test_each_layer_outputs_text_plus_ours_plus_theirs(ours, keys, tokens):
    both = their_apply(ours, keys, tokens=tokens)
    for key in (keys[0], ("middle", 0, 0), keys[-1]):
        q, k, v, options = layer_call(ours, key, sigmas=torch.tensor([1.0]))
        text = optimized_attention(q, k, v, options["n_heads"])
        our_part = attn2_patches(ours)[key](q, k, v, options) - text
        their_part = image_prompt(text, q, k, v, options, tokens=tokens)
        torch.testing.assert_close(attn2_patches(both)[key](q, k, v, options), text + our_part + their_part)
        assert our_part.abs().max() > 1e-3 and their_part.abs().max() > 1e-3


def test_theirs_then_ours_wraps_theirs_and_leaves_it_alone(keys, tokens, theirs, ours_on_theirs):
    their_model, found = theirs
    patches = attn2_patches(ours_on_theirs)
    assert all(isinstance(patches[key].base, TheirAttn2Replace) and patches[key].base is not found[key] for key in keys)
    again = their_apply(ours_on_theirs, keys, tokens=-tokens)  # theirs, ours, theirs: the second lands on our object
    assert all(len(patches[key].added) == 0 and len(attn2_patches(again)[key].added) == 1 for key in keys)
    assert attn2_patches(their_model) == found and all(len(found[key].callback) == 1 for key in keys)
    call = layer_call(ours_on_theirs, keys[0], sigmas=torch.tensor([1.0]))
    assert differs(attn2_patches(again)[keys[0]](*call), patches[keys[0]](*call), 1e-3)


def test_ours_theirs_ours_keeps_the_order_and_each_model_alone(pipe, ours, keys, tokens, eps_ours):
    seen: dict = {}
    middle = their_apply(their_apply(ours, keys, tokens=tokens), keys, callback=record_out, seen=seen)
    top = pipe.apply(model=middle, adapter=pipe.base)
    assert all(len(attn2_patches(middle)[key].added) == 2 for key in keys)  # our chaining added nothing to theirs
    assert all(attn2_patches(top)[key].added == [] for key in keys)  # theirs run inside, before our second adapter
    out = pipe.eps(top)
    assert torch.isfinite(out).all() and differs(out, eps_ours)
    # their callbacks see text + our first adapter, not the second: the same output in both models' layer
    for key in (keys[0], keys[-1]):
        call = layer_call(ours, key, sigmas=torch.tensor([1.0]))
        assert differs(attn2_patches(top)[key](*call), attn2_patches(middle)[key](*call), 1e-3)
        assert torch.equal(seen[key][-1], seen[key][-2])
    # a fourth pack lands on the outermost object, and runs last
    fourth = their_apply(top, keys, tokens=tokens, weight=0.5)
    assert all(len(attn2_patches(fourth)[key].added) == 1 and attn2_patches(top)[key].added == [] for key in keys)
    call = layer_call(top, keys[0], sigmas=torch.tensor([1.0]))
    assert differs(attn2_patches(fourth)[keys[0]](*call), attn2_patches(top)[keys[0]](*call), 1e-3)


def test_their_callbacks_follow_their_sigma_range_and_read_sigma_once_per_call(pipe, ours, keys, tokens, eps_ours):
    calls: list = []
    gated = their_apply(ours, keys, start=5.0, end=2.0, tokens=tokens, calls=calls)
    assert torch.equal(pipe.eps(gated, sigma=1.0), eps_ours) and calls == []  # out of range: not called
    pipe.eps(gated, sigma=3.0)
    assert len(calls) == len(keys)  # in range: called on every layer

    always = their_apply(ours, keys, tokens=tokens)  # their defaults: percent_to_sigma(0.0) .. percent_to_sigma(1.0)
    for model, reads in ((gated, ["__float__"]), (always, [])):
        sigmas = torch.tensor([3.0])  # every layer of one UNet call gets the same tensor
        with SyncRecorder() as recorder:
            for key in keys:
                attn2_patches(model)[key](*layer_call(model, key, sigmas=sigmas))
        assert recorder.calls == reads

    # no sigmas: the convention's NO_SIGMA, outside a restricted range, inside the default one
    q, k, v, options = layer_call(ours, keys[0])
    calls.clear()
    mine = attn2_patches(ours)[keys[0]](q, k, v, options)
    assert torch.equal(attn2_patches(gated)[keys[0]](q, k, v, options), mine) and calls == []
    assert differs(attn2_patches(always)[keys[0]](q, k, v, options), mine, 1e-3)


def test_clones_and_moves_stay_cheap_and_separate(ours, keys, tokens):
    both = their_apply(ours, keys, tokens=tokens)
    clone = both.clone()  # ComfyUI deep-copies model_options
    for key in keys:
        a, b = attn2_patches(both)[key], attn2_patches(clone)[key]
        assert b is not a and b.plan is a.plan and b.base is a.base  # no plan or weight is copied
        assert b.added == a.added and b.added is not a.added
        assert b.added[0][1]["tokens"] is tokens  # nor their data
    third = their_apply(clone, keys, tokens=tokens)
    assert all(len(attn2_patches(both)[k].added) == 1 and len(attn2_patches(third)[k].added) == 2 for k in keys)

    patch = attn2_patches(both)[keys[0]]
    assert patch.to(torch.device("cpu")) is patch
    half = patch.to(torch.float16)
    assert half is not patch and half.plan.k.dtype == torch.float16 and patch.plan.k.dtype == torch.float32
    assert half.added == patch.added and half.added is not patch.added
    assert half.added[0][1]["tokens"] is tokens  # their callbacks keep their data where they put it
    assert patch.models() == []


def test_a_wrapped_patch_keeps_its_models_loaded(pipe, keys):
    class WithModels(TheirAttn2Replace):
        def models(self):
            return ["their model patcher"]

    host = pipe.model.clone()
    host.set_model_attn2_replace(WithModels(image_prompt, tokens=torch.ones(1, 1280)), *keys[0])
    patch = attn2_patches(pipe.apply(model=host))[keys[0]]
    assert patch.models() == ["their model patcher"]


def test_the_older_set_new_condition_call_gets_a_clear_error(ours, keys):
    patch = attn2_patches(ours.clone())[keys[0]]
    with pytest.raises(RuntimeError, match="set_new_condition.*Update that pack"):
        patch.set_new_condition(weight=1.0, cond=None, sigma_start=NO_SIGMA, sigma_end=0.0)
    with pytest.raises(TypeError, match="needs a callable"):
        patch.add(None, sigma_start=NO_SIGMA, sigma_end=0.0)
