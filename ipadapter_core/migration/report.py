"""The report of one converted workflow: what became what, what the conversion changed, and how the converted
nodes behave differently from the older pack's, as data (`to_dict`), Markdown (`to_markdown`) or one line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .ours import DISPLAY
from .ours import NODES as OURS


def display(node_id: str | None) -> str:
    """Our node's display name without the pack suffix (the id itself for anything else)."""
    return DISPLAY.get(node_id or "", node_id or "").removesuffix(" (IPAKit)")


@dataclass
class NodeChange:
    """One old node: what it became (`new` None: kept as it is), and why."""

    id: str
    old: str
    new: str | None
    title: str | None = None
    mapped: list[str] = field(default_factory=list)  # what the conversion did on this node
    differences: list[str] = field(default_factory=list)  # how the converted node behaves differently
    warnings: list[str] = field(default_factory=list)  # what could not be carried over

    def heading(self) -> str:
        title = f' "{self.title}"' if self.title else ""
        target = f"{self.new} ({display(self.new)})" if self.new else "kept as it is"
        return f"node {self.id}{title}: {self.old} -> {target}"


@dataclass
class Report:
    source: str
    format: str  # "ui" | "api"
    nodes: list[NodeChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    untouched: int = 0  # nodes of ComfyUI and other packs, left as they were

    @property
    def converted(self) -> list[NodeChange]:
        return [n for n in self.nodes if n.new]

    @property
    def kept(self) -> list[NodeChange]:
        return [n for n in self.nodes if not n.new]

    def all_warnings(self) -> list[str]:
        return self.warnings + [f"node {n.id} ({n.old}): {w}" for n in self.nodes for w in n.warnings]

    def summary(self) -> str:
        parts = [f"{len(self.converted)} IPAdapter Plus node(s) converted"]
        if self.kept:
            parts.append(f"{len(self.kept)} kept as they are ({', '.join(sorted({n.old for n in self.kept}))})")
        parts.append(f"{self.untouched} other node(s) untouched")
        warnings = len(self.all_warnings())
        if warnings:
            parts.append(f"{warnings} warning(s)")
        return f"{self.source or 'workflow'}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"source": self.source, "format": self.format, "summary": self.summary(), "untouched": self.untouched,
                "warnings": self.all_warnings(), "nodes": [asdict(n) for n in self.nodes]}

    def to_markdown(self) -> str:
        lines = [f"# IPAdapter Plus -> IPAdapter Kit: {self.source or 'workflow'}", "", self.summary() + ".", ""]
        if self.all_warnings():
            lines += ["## Warnings", "", *(f"- {w}" for w in self.all_warnings()), ""]
        for node in self.nodes:
            lines += [f"## {node.heading()}", ""]
            lines += [f"- {m}" for m in node.mapped] or (["- inputs carried over as they were"] if node.new else [])
            if node.differences:
                lines += ["", "Differs from IPAdapter Plus:", "", *(f"- {d}" for d in node.differences)]
            if node.warnings:
                lines += ["", "Warnings:", "", *(f"- {w}" for w in node.warnings)]
            lines.append("")
        return "\n".join(lines)


def our_outputs(node_id: str) -> tuple[tuple[str, str], ...]:
    return OURS[node_id][1]
