"""The repository's layout rules (README "Layout"), read from the source with `ast`:

- `ipadapter_core/` imports nothing from `nodes/`, the pack root or ComfyUI;
- the pack (`__init__.py`, `nodes/`, `ipadapter_core/`) imports nothing from the development folders
  (`dev/`, `tests/`, `bench/`);
- node files (`nodes/*.py` without a leading underscore) do not import each other;
- no module imports itself back through others: the import graph of the whole repository has no cycle
  (imports inside functions count too).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = ("nodes", "ipadapter_core")
DEV = ("dev", "tests", "bench")
COMFY = {"comfy", "comfy_extras", "comfy_execution", "comfy_api", "folder_paths", "server", "execution", "nodes", "node_helpers"}


def sources() -> list[Path]:
    found = [ROOT / "__init__.py"]
    for folder in (*PACK, *DEV):
        found += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return found


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts) or "<pack>"


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def core_exports() -> dict[str, str]:
    """Names the core's lazy `__init__` hands out -> the core module that defines them."""
    sys.path.insert(0, str(ROOT))
    try:
        import ipadapter_core

        return {name: f"ipadapter_core.{module}" for name, module in ipadapter_core._WHERE.items()}
    finally:
        sys.path.remove(str(ROOT))


class Graph:
    def __init__(self) -> None:
        self.paths = {module_of(p): p for p in sources()}
        self.exports = core_exports()
        self.edges: dict[str, set[str]] = {m: set() for m in self.paths}
        self.raw: dict[str, list[str]] = {m: [] for m in self.paths}  # every imported name, resolved to absolute form
        for module, path in self.paths.items():
            for target in self._imports(module, path):
                self.raw[module].append(target)
                local = self._local(target, path)
                if local is not None and local != module:
                    self.edges[module].add(local)

    def _imports(self, module: str, path: Path):
        """Every imported dotted name, relative imports made absolute (`from . import x` -> `package.x`)."""
        tree = ast.parse(path.read_text(), str(path))
        package = [] if module == "<pack>" else module.split(".")[: None if is_package(path) else -1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                stem = node.module or ""
                if node.level:
                    up = node.level - 1
                    base = package[: len(package) - up] if up <= len(package) else []
                    stem = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    yield f"{stem}.{alias.name}" if stem else alias.name
                if stem:
                    yield stem

    def _local(self, name: str, importer: Path) -> str | None:
        """The repository module an imported dotted name refers to (longest known prefix), or None."""
        parts = name.split(".")
        if parts[0] == "ipadapter_core" and len(parts) == 2 and parts[1] in self.exports:
            return self.exports[parts[1]]
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.paths:
                return candidate
            sibling = f"{module_of(importer).rpartition('.')[0]}.{candidate}".lstrip(".")
            if importer.parent != ROOT and sibling in self.paths and not is_package(importer):
                return sibling  # tests/ and bench/ scripts import their neighbours by plain name
        return None


def test_core_imports_nothing_from_the_nodes_the_pack_root_or_comfyui():
    g = Graph()
    offenders = []
    for module, names in g.raw.items():
        if module.startswith("ipadapter_core"):
            for name in names:
                top = name.split(".")[0]
                if top in COMFY or top in DEV:
                    offenders.append(f"{module}: {name}")
    assert offenders == []


def test_the_pack_imports_nothing_from_the_development_folders():
    g = Graph()
    offenders = [
        f"{module} -> {target}"
        for module, targets in g.edges.items()
        if module == "<pack>" or module.startswith(PACK)
        for target in targets
        if target.startswith(DEV)
    ]
    assert offenders == []


def test_node_files_do_not_import_each_other():
    g = Graph()
    node_files = {m for m in g.paths if m.startswith("nodes.") and not m.rpartition(".")[2].startswith("_")}
    offenders = [f"{m} -> {t}" for m in node_files for t in g.edges[m] if t in node_files]
    assert offenders == []


def test_no_import_cycles():
    g = Graph()
    cycles = strongly_connected(g.edges)
    assert [sorted(c) for c in cycles if len(c) > 1] == []


def test_the_graph_sees_real_imports():
    """Guards the checks above against a graph that resolves nothing."""
    g = Graph()
    assert "ipadapter_core.engine" in g.edges["nodes._pipeline"]
    assert "nodes._folders" in g.edges["<pack>"]
    assert "ipadapter_core.attention" in g.edges["ipadapter_core.terms"]
    components = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(map(sorted, components)) == [["a", "b", "c"], ["d"]]


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components
