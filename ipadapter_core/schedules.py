"""Per-layer weights: weight types, InstantStyle per-block scales and layer-index weights.

Weight types follow the behaviour users know from IPAdapter Plus (restated, not copied); per-block
scales follow diffusers' `set_ip_adapter_scale` (InstantStyle, Wang et al. 2024): blocks that are not
named get 0. Everything is indexed by `transformer_index`, the SpatialTransformer counter in
execution order (SD1.5: 16, SDXL: 11), so every depth layer of one transformer shares its weight.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass

from .spec import Family
from .topology import Topology

WEIGHT_TYPES = (
    "linear",
    "ease in",
    "ease out",
    "ease in-out",
    "reverse in-out",
    "weak input",
    "weak output",
    "weak middle",
    "strong middle",
    "style transfer",
    "composition",
    "strong style transfer",
    "style and composition",
    "style transfer precise",
    "composition precise",
)
EXPANDED_STYLE = "strong style and composition"
"""Style on every layer but the composition ones, composition there: what Style & Composition's expand_style
selects. Not a widget value (the older pack hides it the same way), but accepted wherever a weight type is."""
EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
DEFAULT_WEIGHT_COMPOSITION = 1.0
"""The composition weight of the style-and-composition types when none is given."""


@dataclass(frozen=True)
class TransformerWeight:
    """The weight of one transformer; `swap` turns it into negative guidance (cond gets nothing,
    uncond gets the image), which is how the "precise" types push a feature away."""

    weight: float
    swap: bool = False


# weight types


def transformer_weights(
    weight_type: str,
    weight: float,
    topology: Topology,
    *,
    weight_composition: float | None = None,
    style_boost: float | None = None,
    composition_boost: float | None = None,
) -> tuple[TransformerWeight, ...]:
    """One `TransformerWeight` per transformer index for a weight type."""
    n = topology.num_transformers
    blocks = _blocks_by_transformer(topology)
    w = weight
    wc = DEFAULT_WEIGHT_COMPOSITION if weight_composition is None else weight_composition
    if weight_type == "linear":
        return tuple(TransformerWeight(w) for _ in range(n))
    if weight_type in ("ease in", "ease out", "ease in-out", "reverse in-out"):
        return tuple(TransformerWeight(w * (0.05 + 0.95 * _ease(weight_type, t, n))) for t in range(n))
    if weight_type in ("weak input", "weak output", "weak middle", "strong middle"):
        weak = {"weak input": ("input",), "weak output": ("output",), "weak middle": ("middle",)}.get(
            weight_type, ("input", "output")
        )
        return tuple(TransformerWeight(w * (0.2 if blocks[t] in weak else 1.0)) for t in range(n))
    if weight_type not in WEIGHT_TYPES and weight_type != EXPANDED_STYLE:
        raise ValueError(f"unknown weight_type '{weight_type}'; choose one of: {', '.join(WEIGHT_TYPES)}")
    table = _style_table(topology)
    comp, style = table["composition"], table["style"]
    weights: dict[int, float] = {}
    swapped: set[int] = set()
    if weight_type == "style transfer":
        weights = {t: w for t in style}
    elif weight_type == "composition":
        weights = {t: w * f for t, f in comp.items()}
    elif weight_type == "strong style transfer":
        weights = {t: w for t in range(n) if t not in comp}
    elif weight_type == "style and composition":
        weights = {t: w for t in style} | {t: wc * f for t, f in comp.items()}
    elif weight_type == EXPANDED_STYLE:
        weights = {t: w for t in range(n) if t not in comp} | {t: wc for t in comp}
    elif weight_type == "style transfer precise":
        b = w if style_boost is None else style_boost
        weights = {t: w for t in style} | {t: b * f for t, f in comp.items()}
        swapped = set(comp)
    elif weight_type == "composition precise":
        b = w if composition_boost is None else composition_boost
        weights = {t: 0.1 * b for t in range(n)} | {t: b for t in style} | {t: w * f for t, f in comp.items()}
        swapped = set(range(n)) - set(comp)
    return tuple(TransformerWeight(weights.get(t, 0.0), t in swapped) for t in range(n))


def _ease(kind: str, t: int, n: int) -> float:
    if kind == "ease in":
        return 1 - t / n
    if kind == "ease out":
        return t / n
    centre = abs(t - n / 2) / (n / 2)
    return 1 - centre if kind == "ease in-out" else centre


def _blocks_by_transformer(topology: Topology) -> dict[int, str]:
    return {layer.transformer_index: layer.block for layer in topology.layers}


def _style_table(topology: Topology) -> dict:
    """InstantStyle's style and composition transformers for the two known layouts."""
    if topology.family is Family.SDXL:  # 11 transformers: up_blocks.0.attentions.1 is style, down_blocks.2.attentions.1 is layout
        return {"style": (6,), "composition": {3: 1.0}}
    if topology.family is Family.SD15:  # 16 transformers
        return {"style": (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15), "composition": {4: 0.25, 5: 1.0}}
    raise ValueError(
        f"style/composition weight types are defined for SD1.5 (16 transformers) and SDXL (11); this model has "
        f"{topology.num_transformers}. Use linear, an ease type or block_weights."
    )


# block weights


def parse_block_weights(text: str, topology: Topology) -> tuple[float, ...] | None:
    """Parse `block_weights` into one scale per transformer index (None when `text` is blank).

    Two forms are accepted:
      * diffusers/InstantStyle: `{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}, "mid": 0.5}`
        (JSON or a Python literal); blocks not named get 0.
      * layer indices: `3:1.0, 6:0.5` (commas or new lines), indices are transformer indices; unlisted get 0.
    Raises ValueError saying what is wrong.
    """
    text = (text or "").strip()
    if not text:
        return None
    n = topology.num_transformers
    if text.startswith("{"):
        return _parse_block_dict(_literal(text), topology)
    return parse_index_weights(text, n)


def parse_index_weights(text: str, n: int, *, unit: str = "layer", owner: str = "model",
                        example: str = "'3:1.0, 6:0.5' or a dict") -> tuple[float, ...]:
    """`index:weight` pairs (commas, semicolons or new lines) as n scales, unlisted indices 0; `unit`, `owner` and
    `example` word the errors (UNet layers here, DiT adapter blocks in the nodes)."""
    scales = [0.0] * n
    for item in filter(None, (part.strip() for part in re.split(r"[,\n;]", text))):
        m = re.fullmatch(r"(\d+)\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", item)
        if not m:
            raise ValueError(f"block_weights: cannot read '{_clip_text(item)}'; write {unit}:weight pairs like {example}")
        index = int(m.group(1))
        if index >= n:
            raise ValueError(f"block_weights: {unit} {index} does not exist; this {owner} has {unit}s 0..{n - 1}")
        scales[index] = _finite(float(m.group(2)), f"{unit} {index}")
    return tuple(scales)


def _clip_text(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_MAX_DEPTH = 8
"""Brackets deeper than this are refused before parsing (the dict form needs 3; parsers recurse per level)."""


def _literal(text: str):
    depth = deepest = 0
    for ch in text:
        depth += (ch in "[{(") - (ch in "]})")
        deepest = max(deepest, depth)
    if deepest > _MAX_DEPTH:
        raise ValueError(
            f"block_weights: brackets nested {deepest} deep; the dict form needs at most 3, e.g. "
            '{"up": {"block_0": [0.0, 1.0, 0.0]}}'
        )
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(f"block_weights: not a valid dict ({e.__class__.__name__}: {e})") from None


def _parse_block_dict(spec, topology: Topology) -> tuple[float, ...]:
    if not isinstance(spec, dict):
        raise ValueError("block_weights: expected a dict like {\"up\": {\"block_0\": [0.0, 1.0, 0.0]}}")
    # transformer index of every diffusers attention block
    index = {layer.diffusers_block: layer.transformer_index for layer in topology.layers}
    scales = [0.0] * topology.num_transformers
    for part, value in spec.items():
        if part == "mid":
            scales[index["mid_block.attentions.0"]] = _scalar(value, "mid")
            continue
        if part not in ("down", "up"):
            raise ValueError(f"block_weights: unknown part '{part}'; use 'down', 'mid' or 'up'")
        if not isinstance(value, dict):
            raise ValueError(f"block_weights: '{part}' must map block names like 'block_1' to weights")
        for block, entry in value.items():
            m = re.fullmatch(r"block_(\d+)", str(block))
            if not m:
                raise ValueError(f"block_weights: '{part}.{block}' is not a block name; use block_0, block_1, ...")
            prefix = f"{part}_blocks.{m.group(1)}.attentions."
            names = sorted((k for k in index if k.startswith(prefix)), key=lambda k: int(k.rsplit(".", 1)[1]))
            if not names:
                valid = sorted({k.split(".attentions")[0].replace("_blocks.", ".block_") for k in index if k.startswith(part)})
                raise ValueError(f"block_weights: '{part}.{block}' has no attention layers; blocks with attention: {', '.join(valid)}")
            values = entry if isinstance(entry, (list, tuple)) else [entry]
            if len(values) == 1:
                values = list(values) * len(names)
            if len(values) != len(names):
                raise ValueError(
                    f"block_weights: '{part}.{block}' has {len(names)} attention layers but {len(values)} weights were given"
                )
            for name, v in zip(names, values):
                scales[index[name]] = _scalar(v, f"{part}.{block}")
    return tuple(scales)


def _scalar(value, where: str) -> float:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"block_weights: '{where}' must be a number (per-image lists are not supported), got {value!r}")
    return _finite(float(value), where)


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"block_weights: '{where}' is {value}, not a finite number; give a plain number such as 0.5")
    return value


# per layer


def layer_weights(
    topology: Topology,
    weight_type: str,
    weight: float,
    *,
    block_weights: str = "",
    **kwargs: float | None,
) -> tuple[TransformerWeight, ...]:
    """One `TransformerWeight` per cross-attention layer of `topology` (execution order)."""
    per_t = transformer_weights(weight_type, weight, topology, **kwargs)
    scales = parse_block_weights(block_weights, topology)
    if scales is not None:
        per_t = tuple(TransformerWeight(tw.weight * s, tw.swap) for tw, s in zip(per_t, scales))
    return tuple(per_t[layer.transformer_index] for layer in topology.layers)
