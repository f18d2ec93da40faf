"""Bring your workflows: the older IPAdapter Plus pack's workflows and API prompts converted to this pack's nodes.

Standard library only (no torch, no ComfyUI), so the same converter serves the command line
(`python3 -m ipadapter_core.migration OLD.json`), the pack's server route behind the frontend extension, and the
compatibility nodes that answer to the older ids in API prompts.

- `legacy`: the older pack's 37 node ids, their inputs in widget order, options and outputs;
- `ours`: this pack's node inputs (generated from the live nodes; a test keeps it current);
- `plans`: per old id, what it becomes and how it behaves differently;
- `convert`: one node's inputs translated (`translate`), and API-format prompts (`convert_api`);
- `ui`: UI-format workflows (`convert_ui`); `report`: the per-workflow report.
"""

from __future__ import annotations

from .convert import convert_api, is_api, translate
from .legacy import NODES as LEGACY
from .plans import PLANS
from .report import Report
from .ui import convert_ui, is_ui

OLD_IDS = tuple(LEGACY)
"""The older pack's 37 node ids."""
CONVERTED_IDS = tuple(i for i in OLD_IDS if PLANS[i].new is not None)
"""The ids this pack has an equivalent for (the others are kept as they are and reported)."""


def convert(data, *, source: str = "") -> tuple[dict, Report]:
    """A UI-format workflow or an API-format prompt (or a `{"prompt": ...}` body) converted, and its report.
    Raises ValueError for anything else."""
    if is_ui(data):
        return convert_ui(data, source=source)
    if is_api(data) or (isinstance(data, dict) and is_api(data.get("prompt"))):
        return convert_api(data, source=source)
    raise ValueError(f"{source or 'the data'}: neither a UI-format workflow (with 'nodes' and 'links') nor an API-format "
                     "prompt (node ids mapping to class_type and inputs); export the workflow from ComfyUI and try again")


def uses_old_ids(data) -> bool:
    """Whether a workflow or prompt holds any of the older pack's node ids."""
    if is_ui(data):
        nodes = list(data["nodes"]) + [n for sub in ((data.get("definitions") or {}).get("subgraphs") or [])
                                       for n in (sub.get("nodes") or [])]
        return any(isinstance(n, dict) and n.get("type") in LEGACY for n in nodes)
    prompt = data.get("prompt") if isinstance(data, dict) and is_api(data.get("prompt")) else data
    return is_api(prompt) and any(n.get("class_type") in LEGACY for n in prompt.values())


__all__ = ["CONVERTED_IDS", "LEGACY", "OLD_IDS", "PLANS", "Report", "convert", "convert_api", "convert_ui", "is_api",
           "is_ui", "translate", "uses_old_ids"]
