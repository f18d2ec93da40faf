"""ComfyUI progress bars."""

from __future__ import annotations


def progress(total: int):
    """A ComfyUI progress bar (each update is also an interrupt point); a no-op outside a server."""
    import comfy.utils

    return comfy.utils.ProgressBar(max(1, total))
