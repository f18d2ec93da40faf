"""Weight schedules over a batch of frames, for animation (AnimateDiff and video models).

Restates the schedule nodes users know from IPAdapter Plus (cubiq) in our own code, with two deliberate
differences: the easing names have their usual meaning (ease in starts slow, ease out ends slow; the older
pack has the two swapped) and "invert" mirrors each weight inside the range of the typed values instead of
reversing the list. Pure functions over floats and index lists; torch only in `gather_frames`.

A schedule is built in three steps, all captured by a frozen `WeightsStrategy`:

1. the *base*: the typed values taken as they are (`custom`), or eased between them over `frames`;
2. the *segment*: the base trimmed to the frames `start_frame <= i < end_frame`, then padded with
   `add_starting_frames` copies of its first value and `add_ending_frames` copies of its last;
3. the *layout*: `build_frames` repeats the segment over the reference images by the batch method and
   says which image each frame of the two image streams shows.
"""

from __future__ import annotations

import json
import math
import operator
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

TIMINGS = ("custom", "linear", "ease in", "ease out", "ease in-out", "random")
METHODS = ("full batch", "shift batches", "alternate batches")
END_OF_SCHEDULE = 9999  # the default end_frame: keep every frame
_EXAMPLE = "e.g. '1.0, 0.0'"

# easings: [0, 1] -> [0, 1], 0 -> 0 and 1 -> 1, with their usual names


def _ease_in(u: float) -> float:
    return 1.0 - math.cos(u * math.pi / 2)  # slow start, fast end


def _ease_out(u: float) -> float:
    return math.sin(u * math.pi / 2)  # fast start, slow end


def _ease_in_out(u: float) -> float:
    return (1.0 - math.cos(u * math.pi)) / 2  # slow at both ends


EASINGS = {"linear": lambda u: u, "ease in": _ease_in, "ease out": _ease_out, "ease in-out": _ease_in_out}

# text and lists


def parse_weights(text: str) -> tuple[float, ...]:
    """Numbers separated by commas or new lines; empty items (a trailing comma, blank lines) are skipped.

    Raises ValueError naming the first bad item (`weights: 'abc' (item 3) is not a number`), for a value
    that is NaN or infinite, and for a text with no values at all.
    """
    tokens = [t.strip() for t in re.split(r"[,\r\n]", str(text))]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise ValueError(f"weights: no values; type one or more numbers separated by commas or new lines, {_EXAMPLE}")
    values = []
    for n, token in enumerate(tokens, 1):
        try:
            value = float(token)
        except ValueError:
            raise ValueError(
                f"weights: {token!r} (item {n}) is not a number; separate numbers with commas or new lines, {_EXAMPLE}"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"weights: {token!r} (item {n}) is not a finite number; use a plain number such as 0.5")
        values.append(value)
    return tuple(values)


def as_weight_list(value, name: str = "weights") -> list[float]:
    """A weight input as a list of floats: a number gives a one-item list, a list or tuple (or a tensor) is
    taken item by item. Raises ValueError naming the input and the item that is not a finite number."""
    if hasattr(value, "tolist"):  # a tensor or array
        value = value.tolist()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for n, item in enumerate(items, 1):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"{name}: item {n} is {item!r}, not a finite number")
        out.append(float(item))
    return out


def concat_weights(weights_1, weights_2) -> list[float]:
    """The two weight inputs one after the other (a number counts as a one-item list)."""
    return as_weight_list(weights_1, "weights_1") + as_weight_list(weights_2, "weights_2")


def complement(weights: Sequence[float], value_range: tuple[float, float] | None = None) -> list[float]:
    """Each weight mirrored inside `value_range` (default: the list's own min and max): `lo + hi - w`.

    So `w + complement(w)` is `lo + hi` on every frame (1 for a 1 -> 0 fade), the two ends map exactly
    onto each other, and a constant list is its own complement. The order of the list is kept; this is
    not the list reversed (which is what the older pack's "weights_invert" gives).
    """
    if not weights:
        return []
    lo, hi = value_range if value_range is not None else (min(weights), max(weights))
    return [hi if w == lo else lo if w == hi else hi - (w - lo) for w in weights]


# timings


def interpolate(values: Sequence[float], frames: int, easing: str = "linear") -> list[float]:
    """`frames` values eased through `values`, which are keyframes spread evenly from the first frame to the last.

    Two values give the usual first -> last curve; more values give one eased piece between each pair of
    neighbours. The first and last frames are exactly the first and last values; one frame gives the first
    value, one value gives a constant.
    """
    ease = EASINGS[easing]
    if frames < 1:
        raise ValueError(f"interpolate: frames must be at least 1, got {frames}")
    if len(values) == 1 or frames == 1:
        return [float(values[0])] * frames
    last = len(values) - 1
    out = []
    for i in range(frames):
        pos = i * last / (frames - 1)
        j = min(int(pos), last - 1)
        u = pos - j
        a, b = float(values[j]), float(values[j + 1])
        out.append(a if u == 0 else b if u == 1 else a + (b - a) * ease(u))
    return out


def random_weights(values: Sequence[float], frames: int, seed: int = 0) -> list[float]:
    """`frames` values drawn uniformly between the smallest and the largest of `values`, from Python's
    Mersenne Twister seeded with `seed`: the same inputs always give the same list."""
    lo, hi = min(values), max(values)
    rng = random.Random(seed)
    return [lo + (hi - lo) * rng.random() for _ in range(frames)]


# the strategy


def _count(name: str, value) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if n < 0:
        raise ValueError(f"{name} must be 0 or more, got {n}")
    return n


@dataclass(frozen=True)
class WeightsStrategy:
    """Everything a weight schedule is built from, so it can be rebuilt for another image batch.

    `values`: the typed numbers. `timing`: `custom` takes them as they are (with `frames` > 0: cut to
    `frames`, or padded by repeating the last value); `linear`, `ease in`, `ease out`, `ease in-out`
    interpolate through them (`interpolate`); `random` draws uniformly between their min and max
    (`random_weights`, seeded by `seed`). `frames`: length of that base schedule; 0 means as many frames
    as values. `start_frame`/`end_frame`: keep base frames `start_frame <= i < end_frame` (0-based, end
    excluded; an end past the schedule keeps everything to its end). `add_starting_frames`/
    `add_ending_frames`: copies of the first/last kept value added before/after. `method`: how the
    segment is laid out over the reference images (`build_frames`).
    """

    values: tuple[float, ...]
    timing: str = "linear"
    frames: int = 0
    start_frame: int = 0
    end_frame: int = END_OF_SCHEDULE
    add_starting_frames: int = 0
    add_ending_frames: int = 0
    method: str = "full batch"
    seed: int = 0

    def __post_init__(self):
        values = tuple(as_weight_list(self.values, "weights"))
        if not values:
            raise ValueError(f"weights: no values; give at least one number, {_EXAMPLE}")
        object.__setattr__(self, "values", values)
        for name in ("frames", "start_frame", "end_frame", "add_starting_frames", "add_ending_frames"):
            object.__setattr__(self, name, _count(name, getattr(self, name)))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")
        if self.timing not in TIMINGS:
            raise ValueError(f"timing {self.timing!r} is unknown; choose one of {', '.join(TIMINGS)}")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        if self.start_frame >= self.end_frame:
            raise ValueError(
                f"start_frame ({self.start_frame}) must be before end_frame ({self.end_frame}): the frames from "
                "start_frame up to, not including, end_frame are kept"
            )

    @classmethod
    def from_text(cls, weights: str, **settings) -> WeightsStrategy:
        """A strategy from the weights text (`parse_weights`) and the other settings by name."""
        return cls(values=parse_weights(weights), **settings)

    @property
    def value_range(self) -> tuple[float, float]:
        """(min, max) of the typed values: the range every weight of the schedule lies in."""
        return min(self.values), max(self.values)

    def base(self) -> list[float]:
        """Step 1: the typed values as they are, or eased / drawn over `frames` (0: one frame per value)."""
        values = list(self.values)
        if self.timing == "custom":
            return values if self.frames == 0 else (values + [values[-1]] * self.frames)[: self.frames]
        frames = self.frames or len(values)
        if self.timing == "random":
            return random_weights(values, frames, self.seed)
        return interpolate(values, frames, self.timing)

    def segment(self) -> list[float]:
        """Step 2: the base trimmed to `start_frame <= i < end_frame` and padded at both ends."""
        base = self.base()
        if self.start_frame >= len(base):
            raise ValueError(
                f"start_frame {self.start_frame} is past the end of the {len(base)}-frame schedule (frames 0 to "
                f"{len(base) - 1}); lower start_frame or raise frames"
            )
        kept = base[self.start_frame : self.end_frame]
        return [kept[0]] * self.add_starting_frames + kept + [kept[-1]] * self.add_ending_frames


# layout over the reference images


@dataclass(frozen=True)
class FrameWeights:
    """One weight per frame for the image_1 stream (`weights`) and the image_2 stream (`weights_invert`),
    and which reference image each frame of the two streams shows (None when no images were given)."""

    weights: tuple[float, ...]
    weights_invert: tuple[float, ...]
    image_1: tuple[int, ...] | None
    image_2: tuple[int, ...] | None

    @property
    def total_frames(self) -> int:
        return len(self.weights)


def build_frames(strategy: WeightsStrategy, num_images: int | None = None) -> FrameWeights:
    """Lay the strategy's segment (L frames) out over `num_images` reference images (N).

    - `full batch`: each image is held for one segment, one after the other: image k on frames
      k*L .. k*L+L-1, every segment with the same weights. N*L frames; image_2 is the same as image_1.
    - `shift batches`: N-1 cross-fades; segment k shows image k in image_1 with the segment's weights and
      image k+1 in image_2 with their complement. (N-1)*L frames. Apply image_1 with `weights` and image_2
      with `weights_invert`; a segment from 1 to 0 fades each image into the next.
    - `alternate batches`: the same N-1 cross-fades, but the streams take turns so each keeps its image
      across a boundary: image_1 shows the even images, image_2 the odd ones (segment k: image_1 is image k
      for even k, k+1 for odd k; image_2 the other one), and the weights alternate segment, complement,
      segment, ... (a 1 -> 0 segment becomes a triangle wave, with no jump at the boundaries). (N-1)*L frames.

    `weights_invert` is always `complement(weights)` inside the typed values' range, so trimming or padding
    does not change a frame's complement. Without images (`num_images` None) there is one segment and no
    image streams. Shift and alternate need at least 2 images; 0 images is an error for every method.
    """
    seg = strategy.segment()
    lo_hi = strategy.value_range
    comp = complement(seg, lo_hi)
    if num_images is None:
        return FrameWeights(tuple(seg), tuple(comp), None, None)
    n = _count("the number of images", num_images)
    if n == 0:
        raise ValueError("image: the batch is empty; give at least one reference image")
    length = len(seg)
    if strategy.method == "full batch":
        first = [k for k in range(n) for _ in range(length)]
        return FrameWeights(tuple(seg * n), tuple(comp * n), tuple(first), tuple(first))
    if n < 2:
        raise ValueError(
            f"{strategy.method} cross-fades each reference image into the next and needs at least 2 images, got 1; "
            "give a batch of 2 or more images, or use full batch"
        )
    weights, first, second = [], [], []
    for k in range(n - 1):
        swap = strategy.method == "alternate batches" and k % 2 == 1
        weights += comp if swap else seg
        first += [k + 1 if swap else k] * length
        second += [k if swap else k + 1] * length
    return FrameWeights(tuple(weights), tuple(complement(weights, lo_hi)), tuple(first), tuple(second))


def gather_frames(images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """`images[indices]` along the batch axis: `[B, H, W, C]` -> `[len(indices), H, W, C]`, on the images' device."""
    if not indices:
        raise ValueError("no frames to gather")
    bad = [i for i in indices if not 0 <= i < images.shape[0]]
    if bad:
        raise ValueError(f"image indices {bad[:5]} are outside the batch of {images.shape[0]} images")
    return images.index_select(0, torch.tensor(list(indices), dtype=torch.long, device=images.device))


# prompt schedules


def prompt_keyframes(strategy: WeightsStrategy, count: int) -> list[int]:
    """The frame where each of `count` prompts (one per reference image) is keyed.

    Prompt k belongs to image k and is keyed on the first frame of segment k (k*L). With shift or alternate
    batches the last image starts no segment: it is complete at the end of the last cross-fade, so its
    prompt is keyed on the last frame ((count-1)*L - 1). One prompt is keyed on frame 0.
    """
    length = len(strategy.segment())
    if count < 1:
        raise ValueError("prompt: no prompts; write one prompt per line, one line per reference image")
    if strategy.method == "full batch" or count == 1:
        return [k * length for k in range(count)]
    if length < 2:
        raise ValueError(
            f"{strategy.method} with a 1-frame segment leaves the last prompt no frame of its own; "
            "make the schedule at least 2 frames long"
        )
    return [k * length for k in range(count - 1)] + [(count - 1) * length - 1]


def prompt_schedule(strategy: WeightsStrategy, prompt: str) -> str:
    """A batch prompt schedule (AnimateDiff / FizzNodes text: one `"frame": "prompt",` line per keyframe).

    Each non-blank line of `prompt` is the prompt of one reference image, in order, keyed as
    `prompt_keyframes` says; prompts are written as JSON strings, so quotes and backslashes are escaped.
    """
    prompts = [line.strip() for line in str(prompt).splitlines() if line.strip()]
    frames = prompt_keyframes(strategy, len(prompts))
    return "\n".join(f'"{f}": {json.dumps(p, ensure_ascii=False)},' for f, p in zip(frames, prompts))
