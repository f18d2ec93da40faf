"""What every apply node shares: one MODEL output, the block_weights check, settings from its inputs, and the
input checks every node of the pack runs before its work (`CheckedNode`)."""

from __future__ import annotations

import functools

from ..ipadapter_core import ApplySettings, ImageEmbeds, checks
from . import _docs


def check_inputs(node_class, inputs: dict) -> None:
    """Check the inputs a node received against its declared INPUT_TYPES, once, where they enter.

    Numbers (FLOAT, INT): finite and within the widget's min/max, for optional inputs too (the 2024 host checks
    only required ones, and none when a link feeds them); a linked list of numbers (per-frame weights): finite.
    IMAGE and MASK: at least one image/mask and one pixel, every value finite. Embeds: at least one reference.
    """
    declared = node_class.INPUT_TYPES()
    specs = {**declared.get("required", {}), **declared.get("optional", {})}
    for name, value in inputs.items():
        spec = specs.get(name)
        if value is None or spec is None or not isinstance(spec[0], str):
            continue
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if kind in ("FLOAT", "INT"):
            checks.weight_values(name, value, low=options.get("min"), high=options.get("max"))
        elif kind == "IMAGE":
            checks.image_batch(name, value)
        elif kind == "MASK":
            checks.mask_batch(name, value)
        elif kind == _docs.EMBEDS and isinstance(value, ImageEmbeds) and value.count == 0:
            raise ValueError(f"{name}: the embeds hold 0 references; encode at least one image")


class CheckedNode:
    """Base of the pack's nodes: its FUNCTION runs `check_inputs` on the inputs first (subclasses included), so no
    widget or socket is forgotten and a bad value is refused by name before any work."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = getattr(cls, "FUNCTION", None)
        method = cls.__dict__.get(name) if name else None
        if callable(method) and not getattr(method, "_ipakit_checked", False):
            setattr(cls, name, _checked(method))


def _checked(method):
    @functools.wraps(method)
    def run(self, *args, **inputs):
        check_inputs(type(self), inputs)
        return method(self, *args, **inputs)

    run._ipakit_checked = True
    return run


class ApplyNode(CheckedNode):
    """Base of the apply nodes: ComfyUI's class attributes they share and the queue-time block_weights check."""

    CATEGORY = _docs.CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the image prompt; the input model is untouched.",)
    FUNCTION = "apply"

    @classmethod
    def VALIDATE_INPUTS(cls, block_weights=None):
        return _docs.validate_block_weights(block_weights)

    @staticmethod
    def settings(inputs: dict) -> ApplySettings:
        """The engine settings from the node's inputs (those that are not settings are ignored)."""
        return ApplySettings.from_inputs(inputs)
