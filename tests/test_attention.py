"""Decoupled attention: the reference formula, LayerPlan segments, masks, gates and CFG rows."""

import pytest
import torch

from ipadapter_core import ImageTerm, LayerPlan, decoupled_attention
from ipadapter_core.attention import attention, sdpa

HEADS, D = 2, 8
C = HEADS * D


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def naive(q, k, v, heads=HEADS):
    """Attention written out longhand, independent of SDPA."""
    b, n, c = q.shape
    d = c // heads
    qh = q.view(b, n, heads, d).transpose(1, 2)
    kh = k.view(b, -1, heads, d).transpose(1, 2)
    vh = v.view(b, -1, heads, d).transpose(1, 2)
    w = (qh @ kh.transpose(-1, -2) / d**0.5).softmax(-1)
    return (w @ vh).transpose(1, 2).reshape(b, n, c)


def test_attention_matches_longhand():
    q, k, v = rand(2, 12, C), rand(2, 5, C, seed=1), rand(2, 5, C, seed=2)
    assert torch.allclose(attention(q, k, v, HEADS), naive(q, k, v), atol=1e-6)


def test_scale_zero_is_plain_attention_and_large_scale_differs():
    q, k, v = rand(1, 16, C), rand(1, 7, C, seed=1), rand(1, 7, C, seed=2)
    ik, iv = rand(1, 4, C, seed=3), rand(1, 4, C, seed=4)
    plain = attention(q, k, v, HEADS)
    assert torch.equal(decoupled_attention(q, k, v, ik, iv, heads=HEADS, scale=0.0), plain)
    strong = decoupled_attention(q, k, v, ik, iv, heads=HEADS, scale=42.0)
    assert (strong - plain).abs().max() > 1e-2
    expected = plain + 0.7 * naive(q, ik, iv)
    assert torch.allclose(decoupled_attention(q, k, v, ik, iv, heads=HEADS, scale=0.7), expected, atol=1e-5)


def term(s=4, seed=0, **kw):
    return ImageTerm(k=rand(2, s, C, seed=seed), v=rand(2, s, C, seed=seed + 1), segments=kw.pop("segments", (s,)), **kw)


def test_plan_rows_pick_cond_and_uncond_tokens():
    t = term()
    plan = LayerPlan.from_terms([t], HEADS)
    q = rand(4, 9, C, seed=5)  # rows (uncond, cond), latent batch 2
    out = plan(q, rows=(1, 0))
    for i, row in enumerate((1, 1, 0, 0)):
        ref = naive(q[i : i + 1], t.k[row : row + 1], t.v[row : row + 1])
        assert torch.allclose(out[i : i + 1], ref, atol=1e-5)


@pytest.mark.parametrize("rows", [(0,), (1,), (0, 1), (1, 0), (0, 0, 1), (1, 0, 0, 1)])
def test_plan_any_cond_or_uncond_order(rows):
    t = term(seed=3)
    plan = LayerPlan.from_terms([t], HEADS)
    q = rand(len(rows) * 3, 6, C, seed=7)
    out = plan(q, rows=rows)
    refs = [naive(q[i * 3 : (i + 1) * 3], t.k[r : r + 1].expand(3, -1, -1), t.v[r : r + 1].expand(3, -1, -1)) for i, r in enumerate(rows)]
    assert torch.allclose(out, torch.cat(refs), atol=1e-5)


def test_same_image_twice_in_one_softmax_equals_once():
    t1 = term(s=4, seed=11)
    k2 = torch.cat([t1.k, t1.k], 1)
    v2 = torch.cat([t1.v, t1.v], 1)
    twice = ImageTerm(k=k2, v=v2, segments=(8,))
    q = rand(2, 10, C)
    a = LayerPlan.from_terms([t1], HEADS)(q, rows=(0, 1))
    b = LayerPlan.from_terms([twice], HEADS)(q, rows=(0, 1))
    assert torch.allclose(a, b, atol=1e-6)
    separate = ImageTerm(k=k2, v=v2, segments=(4, 4))  # two softmaxes sum: twice the single output
    c = LayerPlan.from_terms([separate], HEADS)(q, rows=(0, 1))
    assert torch.allclose(c, 2 * a, atol=1e-5)


def test_chained_terms_add_their_attentions():
    t1, t2 = term(s=4, seed=1), term(s=16, seed=2)
    q = rand(2, 10, C, seed=9)
    single = [LayerPlan.from_terms([t], HEADS)(q, rows=(0, 1)) for t in (t1, t2)]
    both = LayerPlan.from_terms([t1], HEADS).extend([t2])(q, rows=(0, 1))
    assert torch.allclose(both, single[0] + single[1], atol=1e-5)
    assert LayerPlan.from_terms([t1, t2], HEADS).num_tokens == 20


def test_masks_weight_each_segment_on_the_layer_grid():
    # latent 4x6, layer at full resolution: 24 queries; the mask is drawn at 4x that (like image pixels)
    m1 = torch.zeros(16, 24)
    m1[:, :12] = 1
    m2 = 1 - m1
    t = ImageTerm(k=rand(2, 8, C), v=rand(2, 8, C, seed=1), segments=(4, 4), masks=torch.stack([m1, m2]))
    q = rand(2, 24, C, seed=3)
    out = LayerPlan.from_terms([t], HEADS)(q, rows=(0, 1), latent_hw=(4, 6))
    left = torch.zeros(4, 6)
    left[:, :3] = 1
    lm = left.flatten()[None, :, None]
    for row in (0, 1):
        a = naive(q[row : row + 1], t.k[row : row + 1, :4], t.v[row : row + 1, :4])
        b = naive(q[row : row + 1], t.k[row : row + 1, 4:], t.v[row : row + 1, 4:])
        assert torch.allclose(out[row : row + 1], a * lm + b * (1 - lm), atol=1e-5)


def test_one_mask_over_all_images_and_odd_latent_sizes():
    mask = torch.ones(1, 9, 13)
    t = term(s=4, masks=mask)
    q = rand(1, 5 * 7, C)  # latent 9x13 halved twice with rounding up: 3x4 ... use the 5x7 level
    out = LayerPlan.from_terms([t], HEADS)(q, rows=(0,), latent_hw=(9, 13))
    ref = LayerPlan.from_terms([term(s=4)], HEADS)(q, rows=(0,))
    assert torch.allclose(out, ref, atol=1e-6)


def test_sigma_gate_switches_terms_without_host_sync():
    t = term(sigma_range=(10.0, 1.0))
    plan = LayerPlan.from_terms([t], HEADS)
    q = rand(4, 6, C)
    on = plan(q, rows=(0, 1), sigmas=torch.tensor([5.0, 5.0]))
    off = plan(q, rows=(0, 1), sigmas=torch.tensor([0.5, 0.5]))
    mixed = plan(q, rows=(0, 1), sigmas=torch.tensor([5.0, 11.0]))
    assert torch.count_nonzero(off) == 0
    assert torch.allclose(mixed[[0, 2]], on[[0, 2]]) and torch.count_nonzero(mixed[[1, 3]]) == 0
    # on the meta device every value read would raise, so the call proves no host sync happens
    meta = plan.to("meta")
    out = meta(q.to("meta"), rows=(0, 1), sigmas=torch.tensor([5.0, 5.0], device="meta"))
    assert out.shape == q.shape


def test_plan_to_device_and_dtype():
    plan = LayerPlan.from_terms([term()], HEADS)
    half = plan.to(torch.float16)
    assert half.k.dtype == torch.float16 and half is not plan
    assert plan.to(torch.float8_e4m3fn) is plan  # fp8 storage dtypes are not compute dtypes
    assert plan.to("cpu") is plan
    q = rand(2, 5, C).half()
    assert half(q, rows=(0, 1)).dtype == torch.float16


def test_term_validation():
    with pytest.raises(ValueError, match="segments"):
        ImageTerm(k=rand(2, 4, C), v=rand(2, 4, C), segments=(3,))
    with pytest.raises(ValueError, match="masks"):
        ImageTerm(k=rand(2, 4, C), v=rand(2, 4, C), segments=(2, 2), masks=torch.ones(3, 4, 4))


def test_sdpa_is_the_default_kernel():
    q, k, v = rand(1, 2, 5, D), rand(1, 2, 3, D), rand(1, 2, 3, D)
    w = (q @ k.transpose(-1, -2) / D**0.5).softmax(-1)
    assert torch.allclose(sdpa(q, k, v), w @ v, atol=1e-6)
