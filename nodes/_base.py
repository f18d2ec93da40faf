"""What every apply node shares: one MODEL output, the block_weights check, and settings from its inputs."""

from __future__ import annotations

from ..ipadapter_core import ApplySettings
from . import _docs


class ApplyNode:
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
