"""Weight schedules for animation (ipadapter_core.frames): parsing, timings, trimming, batch methods, prompts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ipadapter_core.frames import (
    WeightsStrategy,
    build_frames,
    complement,
    concat_weights,
    gather_frames,
    interpolate,
    parse_weights,
    prompt_schedule,
)

S45 = math.sin(math.pi / 4)


def strategy(text="1.0, 0.0", **kw) -> WeightsStrategy:
    return WeightsStrategy.from_text(text, **kw)


# parsing


@pytest.mark.parametrize(
    "text, values",
    [
        ("1.0, 0.0", (1.0, 0.0)),
        ("1\n0.5\n0", (1.0, 0.5, 0.0)),
        ("1.0,\r\n0.25,\n\n0,", (1.0, 0.25, 0.0)),  # trailing comma, blank line, CRLF
        ("  0.5  ", (0.5,)),
        ("-1, 1e-1, +2", (-1.0, 0.1, 2.0)),
    ],
)
def test_parse_weights(text, values):
    assert parse_weights(text) == values


@pytest.mark.parametrize(
    "text, message",
    [
        ("1.0, abc", "weights: 'abc' (item 2) is not a number"),
        ("1, 0.5, 0 1", "weights: '0 1' (item 3) is not a number"),  # spaces do not separate
        ("1;0", "weights: '1;0' (item 1) is not a number"),
        ("", "weights: no values"),
        (" ,\n , ", "weights: no values"),
        ("1, nan", "weights: 'nan' (item 2) is not a finite number"),
        ("-inf", "weights: '-inf' (item 1) is not a finite number"),
    ],
)
def test_parse_weights_names_the_bad_token(text, message):
    with pytest.raises(ValueError) as e:
        parse_weights(text)
    assert str(e.value).startswith(message)


# timings


@pytest.mark.parametrize(
    "text, timing, frames, expected",
    [
        ("1, 0.5, 0", "custom", 0, [1.0, 0.5, 0.0]),
        ("1, 0.5, 0", "custom", 5, [1.0, 0.5, 0.0, 0.0, 0.0]),  # padded with the last value
        ("1, 0.5, 0", "custom", 2, [1.0, 0.5]),  # cut
        ("1, 0", "linear", 5, [1.0, 0.75, 0.5, 0.25, 0.0]),
        ("1, 0", "linear", 0, [1.0, 0.0]),  # 0 frames: one per typed value
        ("0, 1", "ease in", 3, [0.0, 1 - S45, 1.0]),
        ("0, 1", "ease out", 3, [0.0, S45, 1.0]),
        ("0, 1", "ease in-out", 5, [0.0, (1 - S45) / 2, 0.5, (1 + S45) / 2, 1.0]),
        ("2, 0", "ease out", 3, [2.0, 2 - 2 * S45, 0.0]),  # falling: fast drop first
        ("0, 1, 0", "linear", 5, [0.0, 0.5, 1.0, 0.5, 0.0]),  # more values: keyframes spread evenly
        ("0.7", "linear", 4, [0.7] * 4),  # one weight: constant
        ("0.7", "ease in", 0, [0.7]),
        ("1, 0", "ease in-out", 1, [1.0]),  # one frame: the first value
    ],
)
def test_timings(text, timing, frames, expected):
    assert strategy(text, timing=timing, frames=frames).segment() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("timing", ["linear", "ease in", "ease out", "ease in-out"])
def test_interpolation_endpoints_are_exact_and_monotone(timing):
    w = interpolate([0.1, 0.7], 11, timing)
    assert w[0] == 0.1 and w[-1] == 0.7
    assert all(a < b for a, b in zip(w, w[1:]))


def test_easing_names_have_their_usual_meaning():
    """ease in starts slow, ease out ends slow, in-out is slow at both ends (the older pack swaps in and out)."""
    steps = {t: [b - a for a, b in zip(w, w[1:])] for t in ("ease in", "ease out", "ease in-out") for w in [interpolate([0, 1], 11, t)]}
    assert steps["ease in"][0] < steps["ease in"][-1]
    assert steps["ease out"][0] > steps["ease out"][-1]
    inout = interpolate([0, 1], 11, "ease in-out")
    assert steps["ease in-out"][0] < steps["ease in-out"][5] and all(
        a + b == pytest.approx(1.0) for a, b in zip(inout, reversed(inout))
    )


def test_random_is_seeded_deterministic_and_inside_the_typed_range():
    a = strategy("0.2, 0.9", timing="random", frames=50, seed=7).segment()
    assert a == strategy("0.2, 0.9", timing="random", frames=50, seed=7).segment()
    assert a != strategy("0.2, 0.9", timing="random", frames=50, seed=8).segment()
    assert len(a) == 50 and all(0.2 <= w <= 0.9 for w in a) and max(a) - min(a) > 0.5
    assert strategy("0.9, 0.2", timing="random", frames=50, seed=7).segment() == a  # the range, not the order
    assert strategy("0.5", timing="random", frames=3).segment() == [0.5] * 3


# trimming and padding


@pytest.mark.parametrize(
    "kw, expected",
    [
        (dict(start_frame=1, end_frame=4), [0.75, 0.5, 0.25]),
        (dict(start_frame=3), [0.25, 0.0]),  # default end: to the end
        (dict(end_frame=1), [1.0]),
        (dict(end_frame=100), [1.0, 0.75, 0.5, 0.25, 0.0]),  # an end past the schedule keeps all
        (dict(add_starting_frames=2, add_ending_frames=1), [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),
        (dict(start_frame=1, end_frame=3, add_starting_frames=1, add_ending_frames=2), [0.75, 0.75, 0.5, 0.5, 0.5]),
    ],
)
def test_trim_then_pad(kw, expected):
    assert strategy(timing="linear", frames=5, **kw).segment() == expected


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(start_frame=5, end_frame=3), "start_frame (5) must be before end_frame (3)"),
        (dict(start_frame=3, end_frame=3), "start_frame (3) must be before end_frame (3)"),
        (dict(frames=-1), "frames must be 0 or more, got -1"),
        (dict(add_ending_frames=1.5), "add_ending_frames must be a whole number"),
        (dict(timing="ease_in"), "timing 'ease_in' is unknown; choose one of custom, linear"),
        (dict(method="full"), "method 'full' is unknown; choose one of full batch"),
    ],
)
def test_bad_settings_are_refused_when_the_strategy_is_made(kw, message):
    with pytest.raises(ValueError) as e:
        strategy(**kw)
    assert message in str(e.value)


def test_start_past_the_schedule_names_its_length():
    with pytest.raises(ValueError, match=r"start_frame 5 is past the end of the 5-frame schedule \(frames 0 to 4\)"):
        strategy(frames=5, start_frame=5).segment()


# batch methods: segment [1, 0.5, 0] (L = 3) over N images


SEG, COMP = [1.0, 0.5, 0.0], [0.0, 0.5, 1.0]


@pytest.mark.parametrize(
    "method, n, weights, image_1, image_2",
    [
        ("full batch", 3, SEG * 3, [0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2]),
        ("full batch", 1, SEG, [0, 0, 0], [0, 0, 0]),
        ("shift batches", 2, SEG, [0, 0, 0], [1, 1, 1]),
        ("shift batches", 3, SEG * 2, [0, 0, 0, 1, 1, 1], [1, 1, 1, 2, 2, 2]),
        ("alternate batches", 2, SEG, [0, 0, 0], [1, 1, 1]),
        ("alternate batches", 3, SEG + COMP, [0, 0, 0, 2, 2, 2], [1, 1, 1, 1, 1, 1]),
        ("alternate batches", 5, (SEG + COMP) * 2, [i for i in (0, 2, 2, 4) for _ in SEG], [i for i in (1, 1, 3, 3) for _ in SEG]),
    ],
)
def test_methods(method, n, weights, image_1, image_2):
    out = build_frames(strategy(frames=3, method=method), n)
    assert list(out.weights) == weights and out.total_frames == len(weights)
    assert list(out.image_1) == image_1 and list(out.image_2) == image_2
    assert list(out.weights_invert) == [1.0 - w for w in weights]


@pytest.mark.parametrize("method", ["full batch", "shift batches", "alternate batches"])
def test_without_images_there_is_one_segment_and_no_streams(method):
    out = build_frames(strategy(frames=3, method=method))
    assert list(out.weights) == SEG and list(out.weights_invert) == COMP and out.total_frames == 3
    assert out.image_1 is None and out.image_2 is None


@pytest.mark.parametrize("method", ["shift batches", "alternate batches"])
def test_every_frame_of_a_cross_fade_shares_the_typed_total_between_two_neighbouring_images(method):
    out = build_frames(strategy(frames=4, method=method), 4)
    for f in range(out.total_frames):
        assert abs(out.image_1[f] - out.image_2[f]) == 1
        assert out.weights[f] + out.weights_invert[f] == pytest.approx(1.0)


def test_alternate_changes_a_stream_s_image_only_where_its_weight_is_zero():
    out = build_frames(strategy(frames=4, method="alternate batches"), 5)
    for images, weights in ((out.image_1, out.weights), (out.image_2, out.weights_invert)):
        changes = [f for f in range(1, out.total_frames) if images[f] != images[f - 1]]
        assert changes and all(weights[f - 1] == 0.0 and weights[f] == 0.0 for f in changes)


@pytest.mark.parametrize(
    "method, n, message",
    [
        ("shift batches", 1, "shift batches cross-fades each reference image into the next and needs at least 2 images, got 1"),
        ("alternate batches", 1, "needs at least 2 images"),
        ("full batch", 0, "the batch is empty"),
    ],
)
def test_too_few_images(method, n, message):
    with pytest.raises(ValueError) as e:
        build_frames(strategy(frames=3, method=method), n)
    assert message in str(e.value)


# invert


def test_invert_mirrors_inside_the_typed_range_and_keeps_the_order():
    out = build_frames(strategy("1.0, 0.2", frames=5))
    assert list(out.weights_invert) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # trimmed: the complement of a frame does not change (range of the typed values, not of the kept frames)
    trimmed = build_frames(strategy("1.0, 0.0", frames=5, end_frame=2))
    assert list(trimmed.weights) == [1.0, 0.75] and list(trimmed.weights_invert) == [0.0, 0.25]
    assert list(build_frames(strategy("0.6")).weights_invert) == [0.6]  # a constant is its own complement


def test_invert_is_not_the_list_reversed():
    out = build_frames(strategy("0, 1, 0.5", timing="custom"))
    assert list(out.weights_invert) == [1.0, 0.0, 0.5] != list(reversed(out.weights))


def test_complement_defaults_to_the_list_range_with_exact_ends():
    assert complement([0.1, 0.7, 0.3]) == [0.7, 0.1, pytest.approx(0.5)]
    assert complement([]) == []
    assert complement([0.5], (0.0, 1.0)) == [0.5]


# strategy, image streams, prompt schedules, concatenation


def test_strategy_is_frozen_hashable_and_rebuilds_the_same_schedule():
    s = strategy("1, 0", frames=4, method="shift batches")
    assert {WeightsStrategy(values=[1, 0], frames=4, method="shift batches"): "same"}[s] == "same"
    assert s.values == (1.0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.frames = 8
    assert build_frames(s, 3) == build_frames(dataclasses.replace(s), 3)
    assert build_frames(s, 3).total_frames == 8 and build_frames(s, 4).total_frames == 12


def test_gather_frames():
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 2, 2, 3)
    out = gather_frames(images, [2, 0, 0, 1])
    assert out.shape == (4, 2, 2, 3) and out[:, 0, 0, 0].tolist() == [2.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"image indices \[3\] are outside the batch of 3 images"):
        gather_frames(images, [0, 3])


@pytest.mark.parametrize(
    "method, prompts, expected",
    [
        ("full batch", "a cat\nb dog\n\nc bird\n", '"0": "a cat",\n"3": "b dog",\n"6": "c bird",'),
        ("shift batches", "a\nb\nc", '"0": "a",\n"3": "b",\n"5": "c",'),  # last one on the last frame
        ("alternate batches", "a\nb", '"0": "a",\n"2": "b",'),
        ("shift batches", "only", '"0": "only",'),
        ("full batch", 'say "hi"', '"0": "say \\"hi\\"",'),  # escaped as JSON
    ],
)
def test_prompt_schedule(method, prompts, expected):
    assert prompt_schedule(strategy(frames=3, method=method), prompts) == expected


def test_prompt_schedule_edge_cases():
    with pytest.raises(ValueError, match="no prompts"):
        prompt_schedule(strategy(frames=3), " \n ")
    with pytest.raises(ValueError, match="1-frame segment"):
        prompt_schedule(strategy(frames=1, method="shift batches"), "a\nb")
    assert prompt_schedule(strategy(frames=2, add_starting_frames=2), "a\nb") == '"0": "a",\n"4": "b",'


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1.0, 0.5], [0.0], [1.0, 0.5, 0.0]),
        (0.3, [0.4, 0.5], [0.3, 0.4, 0.5]),
        (1, 2.0, [1.0, 2.0]),
        ((0.1,), torch.tensor([0.5, 0.25]), [0.1, 0.5, 0.25]),
    ],
)
def test_concat_weights(a, b, expected):
    assert concat_weights(a, b) == expected


def test_concat_weights_names_the_bad_input():
    with pytest.raises(ValueError, match=r"weights_2: item 2 is 'x', not a finite number"):
        concat_weights([1.0], [0.5, "x"])
    with pytest.raises(ValueError, match=r"weights_1: item 1 is nan"):
        concat_weights(float("nan"), 0.0)
