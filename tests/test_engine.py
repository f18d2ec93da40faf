"""The engine's entry point: settings from node inputs, the one "changes nothing" decision, the topology
check, masks, start/end and the portrait rule, on a real (tiny-width) adapter file and the SD1.5 topology.
Its numbers against diffusers are in test_parity_diffusers.py."""

import pytest
import torch

import ipadapter_core as core
from dev.authoring.examples import APPLY_DEFAULTS
from dev.standins.ipadapter import make_state_dict, write_checkpoint

SD15 = core.Topology.sd15()
SDXL = core.Topology.sdxl()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return adapter_file("sd15", tmp_path_factory.mktemp("engine") / "ip-adapter_sd15.safetensors")


def adapter_file(variant, path):
    """A tiny-width adapter whose layers fit the real SD1.5 topology."""
    state = make_state_dict(variant, scale="tiny", widths=SD15.widths_checkpoint_order, cross_dim=SD15.context_dim, seed=1,
                            dtype=torch.float32)
    return core.load_adapter(write_checkpoint(state, path))


def embeds_for(adapter, n=1, seed=0):
    spec = adapter.spec
    g = torch.Generator().manual_seed(seed)
    shape = (n, spec.clip_dim) if spec.clip_output is core.ClipOutput.IMAGE_EMBEDS else (n, 257, spec.clip_dim)
    return core.ImageEmbeds(cond={"clip": torch.randn(*shape, generator=g)}, uncond={"clip": torch.zeros(*shape)},
                            clip_encoder=spec.clip_encoder, clip_output=spec.clip_output)


def test_settings_from_node_inputs_keep_defaults_for_absent_and_none_inputs():
    s = core.ApplySettings.from_inputs({"weight": 0.5, "weight_type": "ease in", "block_weights": None, "image": object()})
    assert (s.weight, s.weight_type, s.block_weights, s.combine_embeds) == (0.5, "ease in", "", "concat")
    assert core.ApplySettings(weight=0.8).schedule_inputs() == dict(
        weight=0.8, weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    assert APPLY_DEFAULTS == core.ApplySettings(weight=0.8).schedule_inputs()  # what the examples, tests and benches apply


def test_changes_nothing_is_the_one_zero_decision(base):
    assert core.changes_nothing(SD15, core.ApplySettings(weight=0.0))
    assert core.changes_nothing(SD15, core.ApplySettings(weight=1.0, block_weights="3:0"))
    assert not core.changes_nothing(SD15, core.ApplySettings(weight=1.0, block_weights="3:0.5"))
    assert core.image_terms(base, SD15, embeds_for(base), core.ApplySettings(weight=0.0)) == {}
    terms = core.image_terms(base, SD15, embeds_for(base), core.ApplySettings(weight=1.0, block_weights="3:0.5"))
    assert {layer.transformer_index for layer in SD15.layers if layer.key in terms} == {3}


def test_terms_fold_the_weight_and_follow_the_adapters_dtype(base):
    one = core.image_terms(base, SD15, embeds_for(base), core.ApplySettings(weight=1.0))
    half = core.image_terms(base, SD15, embeds_for(base), core.ApplySettings(weight=0.5))
    assert one.keys() == half.keys() and len(one) == 16
    key = SD15.layers[0].key
    assert torch.equal(one[key].k, half[key].k) and torch.allclose(one[key].v * 0.5, half[key].v)


def test_an_adapter_for_another_unet_is_refused_by_name(base):
    with pytest.raises(ValueError, match=r"ip-adapter_sd15.safetensors is an adapter for SD15 .* but the model is SDXL \(context 2048\)"):
        core.image_terms(base, SDXL, embeds_for(base), core.ApplySettings())
    with pytest.raises(ValueError, match="but the model is SDXL"):
        core.check_topology(base, SDXL)  # also when the weight is 0: a wrong pairing is an error either way


def test_masks_one_per_reference_or_one_for_all(base):
    embeds = embeds_for(base, n=2)
    per_image = core.image_terms(base, SD15, embeds, core.ApplySettings(attn_mask=torch.ones(2, 8, 8)))
    assert next(iter(per_image.values())).segments == (4, 4)  # each reference its own softmax
    one = core.image_terms(base, SD15, embeds, core.ApplySettings(attn_mask=torch.ones(8, 8)))
    assert next(iter(one.values())).segments == (8,)
    with pytest.raises(ValueError, match="attn_mask has 3 masks for 2 reference image"):
        core.image_terms(base, SD15, embeds, core.ApplySettings(attn_mask=torch.ones(3, 8, 8)))


def test_start_end_become_a_sigma_range_through_the_hosts_map(base):
    to_sigma = lambda p: 10.0 * (1.0 - p)  # noqa: E731
    terms = core.image_terms(base, SD15, embeds_for(base), core.ApplySettings(start_at=0.2, end_at=0.6), percent_to_sigma=to_sigma)
    assert next(iter(terms.values())).sigma_range == pytest.approx((8.0, 4.0))
    always = core.image_terms(base, SD15, embeds_for(base), core.ApplySettings())
    assert next(iter(always.values())).sigma_range is None
    with pytest.raises(ValueError, match="percent_to_sigma"):
        core.image_terms(base, SD15, embeds_for(base), core.ApplySettings(end_at=0.5))


def test_combine_applies_and_portrait_adapters_always_concat(base, tmp_path):
    embeds = embeds_for(base, n=3)
    averaged = core.image_terms(base, SD15, embeds, core.ApplySettings(combine_embeds="average"))
    concat = core.image_terms(base, SD15, embeds, core.ApplySettings(combine_embeds="concat"))
    key = SD15.layers[0].key
    assert averaged[key].k.shape[1] * 3 == concat[key].k.shape[1]
    portrait = adapter_file("faceid-portrait_sd15", tmp_path / "portrait.safetensors")
    faces = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
    face_embeds = core.ImageEmbeds(cond={"face": faces}, uncond={"face": torch.zeros_like(faces)}, face_normed=True)
    terms = core.image_terms(portrait, SD15, face_embeds, core.ApplySettings(combine_embeds="average"))
    assert next(iter(terms.values())).k.shape[1] == 3 * portrait.spec.num_tokens
