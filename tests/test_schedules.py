"""Weight types, InstantStyle block weights and layer-index weights on the SD1.5 and SDXL layer tables."""

import pytest

from ipadapter_core import WEIGHT_TYPES, Topology, layer_weights, parse_block_weights
from ipadapter_core.schedules import EXPANDED_STYLE, transformer_weights

SD15, SDXL = Topology.sd15(), Topology.sdxl()


def values(weight_type, topo, w=1.0, **kw):
    return [round(t.weight, 6) for t in transformer_weights(weight_type, w, topo, **kw)]


def test_layer_tables():
    assert len(SD15.layers) == 16 and SD15.num_transformers == 16
    assert len(SDXL.layers) == 70 and SDXL.num_transformers == 11
    # the middle block is patched and numbered last in the checkpoint
    assert [(l.key, l.checkpoint_index) for l in SD15.layers if l.block == "middle"] == [(("middle", 0, 0), 31)]
    mid = [l.checkpoint_index for l in SDXL.layers if l.block == "middle"]
    assert mid == list(range(121, 140, 2))
    assert sorted(l.checkpoint_index for l in SDXL.layers) == list(range(1, 140, 2))
    assert SDXL.widths_checkpoint_order == (640,) * 4 + (1280,) * 20 + (1280,) * 30 + (640,) * 6 + (1280,) * 10


def test_linear_and_easing_endpoints():
    assert values("linear", SD15, 0.8) == [0.8] * 16
    ease_in = values("ease in", SD15)
    assert ease_in[0] == 1.0 and ease_in == sorted(ease_in, reverse=True) and ease_in[-1] > 0.05
    ease_out = values("ease out", SD15)
    assert ease_out[0] == 0.05 and ease_out == sorted(ease_out)
    in_out = values("ease in-out", SDXL)
    assert max(in_out) == pytest.approx(0.05 + 0.95 * (1 - 0.5 / 5.5), abs=1e-6) and in_out[0] == 0.05
    rev = values("reverse in-out", SDXL)
    assert rev[0] == 1.0 and min(rev) == pytest.approx(0.05 + 0.95 * 0.5 / 5.5, abs=1e-6)


def test_weak_and_strong_blocks():
    assert values("weak input", SD15) == [0.2] * 6 + [1.0] * 10
    assert values("weak middle", SD15) == [1.0] * 6 + [0.2] + [1.0] * 9
    assert values("weak output", SDXL) == [1.0] * 5 + [0.2] * 6
    assert values("strong middle", SDXL) == [0.2] * 4 + [1.0] + [0.2] * 6


def test_instantstyle_tables():
    assert values("style transfer", SDXL, 0.9) == [0, 0, 0, 0, 0, 0, 0.9, 0, 0, 0, 0]
    assert values("composition", SDXL) == [0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0, 0]
    assert values("style transfer", SD15) == [1.0] * 4 + [0.0] * 5 + [1.0] * 7
    assert values("composition", SD15) == [0] * 4 + [0.25, 1.0] + [0] * 10
    assert values("strong style transfer", SDXL) == [1.0] * 3 + [0.0] + [1.0] * 7
    assert values("style and composition", SDXL, 1.0, weight_composition=0.5) == [0, 0, 0, 0.5, 0, 0, 1.0, 0, 0, 0, 0]
    sd15_sc = values("style and composition", SD15, 1.0, weight_composition=2.0)
    assert sd15_sc == [1.0] * 4 + [0.5, 2.0] + [0.0] * 3 + [1.0] * 7
    # no composition weight given: 1.0 (the older pack's default), whatever the main weight
    assert values("style and composition", SDXL, 0.4) == [0, 0, 0, 1.0, 0, 0, 0.4, 0, 0, 0, 0]


def test_expanded_style_keeps_style_everywhere_but_the_composition_layers():
    assert EXPANDED_STYLE not in WEIGHT_TYPES  # not a widget value: Style & Composition's expand_style selects it
    assert values(EXPANDED_STYLE, SDXL, 0.8, weight_composition=0.3) == [0.8] * 3 + [0.3] + [0.8] * 7
    assert values(EXPANDED_STYLE, SD15, 0.8, weight_composition=0.3) == [0.8] * 4 + [0.3, 0.3] + [0.8] * 10
    assert values(EXPANDED_STYLE, SD15, 0.8) == [0.8] * 4 + [1.0, 1.0] + [0.8] * 10


def test_precise_types_swap_into_negative_guidance():
    style = transformer_weights("style transfer precise", 1.0, SDXL, style_boost=0.3)
    assert [t.weight for t in style] == [0, 0, 0, 0.3, 0, 0, 1.0, 0, 0, 0, 0]
    assert [t.swap for t in style] == [False] * 3 + [True] + [False] * 7
    comp = transformer_weights("composition precise", 1.0, SDXL, composition_boost=0.5)
    assert [round(t.weight, 6) for t in comp] == [0.05, 0.05, 0.05, 1.0, 0.05, 0.05, 0.5, 0.05, 0.05, 0.05, 0.05]
    assert [t.swap for t in comp] == [True] * 3 + [False] + [True] * 7
    # no boost given: the boost is the weight (composition precise would otherwise turn into plain composition)
    comp_default = transformer_weights("composition precise", 0.8, SDXL)
    assert [round(t.weight, 6) for t in comp_default] == [0.08] * 3 + [0.8, 0.08, 0.08, 0.8] + [0.08] * 4
    style_default = transformer_weights("style transfer precise", 0.8, SDXL)
    assert [round(t.weight, 6) for t in style_default] == [0, 0, 0, 0.8, 0, 0, 0.8, 0, 0, 0, 0]
    sd15 = transformer_weights("style transfer precise", 1.0, SD15)
    assert [t.swap for t in sd15].count(True) == 2 and sd15[5].weight == 1.0 and sd15[4].weight == 0.25


def test_every_weight_type_is_defined_on_both_layouts():
    for wt in WEIGHT_TYPES:
        for topo in (SD15, SDXL):
            per_layer = layer_weights(topo, wt, 1.0)
            assert len(per_layer) == len(topo.layers)


def test_unknown_weight_type():
    with pytest.raises(ValueError, match="unknown weight_type"):
        layer_weights(SD15, "sideways", 1.0)


def test_block_weights_instantstyle_dict_sdxl():
    style = parse_block_weights('{"up": {"block_0": [0.0, 1.0, 0.0]}}', SDXL)
    assert style == (0,) * 6 + (1.0,) + (0,) * 4
    layout = parse_block_weights("{'down': {'block_2': [0.0, 1.0]}, 'mid': 0.5}", SDXL)
    assert layout == (0, 0, 0, 1.0, 0.5) + (0,) * 6
    scalar = parse_block_weights('{"down": {"block_1": 0.7}}', SDXL)
    assert scalar == (0.7, 0.7) + (0,) * 9


def test_block_weights_dict_sd15_maps_to_transformers():
    s = parse_block_weights('{"down": {"block_2": [0.2, 0.4]}, "up": {"block_1": [1, 2, 3]}, "mid": 5}', SD15)
    assert s[4:10] == (0.2, 0.4, 5.0, 1.0, 2.0, 3.0) and sum(s) == pytest.approx(11.6)


def test_block_weights_layer_indices():
    assert parse_block_weights("3:1.0, 6:0.5", SDXL) == (0, 0, 0, 1.0, 0, 0, 0.5, 0, 0, 0, 0)
    assert parse_block_weights("0=1\n15: -0.5", SD15)[15] == -0.5
    assert parse_block_weights("  ", SD15) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("3:x", "cannot read"),
        ("11:1.0", "layer 11 does not exist"),
        ('{"down": {"block_0": [1.0, 1.0]}}', "no attention layers"),
        ('{"up": {"block_0": [1.0, 1.0]}}', "3 attention layers but 2"),
        ('{"side": 1}', "unknown part"),
        ('{"up": {"block_0": [[1.0, 0.5], 1, 1]}}', "per-image"),
        ("{not json", "not a valid dict"),
    ],
)
def test_block_weights_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_block_weights(text, SDXL)


def test_layer_weights_multiply_type_and_blocks_and_expand_to_layers():
    per_layer = layer_weights(SDXL, "linear", 0.5, block_weights='{"up": {"block_0": [0.0, 1.0, 0.0]}}')
    active = [l for l, w in zip(SDXL.layers, per_layer) if w.weight]
    assert len(active) == 10 and {l.key[:2] for l in active} == {("output", 1)}
    assert {w.weight for w in per_layer} == {0.0, 0.5}
