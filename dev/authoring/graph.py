"""The workflow formats: the `Graph` definition language of the examples, rendering a definition to ComfyUI's
UI format (what users drag in), converting UI to API format (what `POST /prompt` runs), checking an API
prompt against the node catalogue (`/object_info`), and `localize` (replace widget values in an API prompt).

Widget rules (ComfyUI frontend, UI format 0.4): a node's `widgets_values` list, in INPUT_TYPES order
(required, then optional), the value of every input that is a combo (a list), INT, FLOAT, STRING or
BOOLEAN without `forceInput`; other inputs are sockets. The frontend adds values of its own: after an
INT named `seed`/`noise_seed` (or with `control_after_generate`) the control mode ("fixed"), and after
the last required widget of a node whose `image` input has `image_upload` the upload button ("image").
Frontend-only nodes (Note, MarkdownNote) have no backend class and are dropped by the converter.

Imports nothing of dev/: the example definitions, the pictures and the command line build on it.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field

FRONTEND_ONLY = ("Note", "MarkdownNote")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_NAMES = ("seed", "noise_seed")


class WorkflowError(ValueError):
    """A workflow that does not fit the node catalogue (unknown node, wrong widget count, bad link)."""


# the definition language


@dataclass(frozen=True)
class Out:
    node: NodeDef
    slot: int


@dataclass(eq=False)
class NodeDef:
    id: int
    type: str
    col: int
    inputs: dict
    title: str | None = None

    def __getitem__(self, slot: int) -> Out:
        return Out(self, slot)


@dataclass
class Graph:
    """Nodes in columns (left to right = data flow); `add` returns a node whose outputs are `node[i]`."""

    nodes: list[NodeDef] = field(default_factory=list)

    def add(self, class_type: str, col: int, *, title: str | None = None, **inputs) -> NodeDef:
        node = NodeDef(len(self.nodes) + 1, class_type, col, inputs, title)
        self.nodes.append(node)
        return node

    def note(self, col: int, text: str, title: str = "Note") -> NodeDef:
        return self.add("Note", col, title=title, text=textwrap.dedent(text).strip())


# the frontend's widget rules


@dataclass(frozen=True)
class Slot:
    name: str
    kind: str  # "widget" | "socket" | "extra" (a frontend-only widget value)
    spec: tuple | list | None = None
    value: object = None  # the value an "extra" slot holds


def kind_and_options(spec) -> tuple:
    """An input spec's type and options; a combo's type is its list of choices, whether the catalogue gives the
    list itself (V1 nodes) or `["COMBO", {"options": [...]}]` (current ComfyUI's V3 nodes)."""
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind == "COMBO":
        kind = list(opts.get("options", []))
    return kind, opts


def slots(info: dict) -> list[Slot]:
    """Every input of a node as the frontend lays it out (see the module docstring)."""
    out = []
    upload = False
    for group in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(group) or {}).items():
            kind, opts = kind_and_options(spec)
            widget = isinstance(kind, list) or (kind in WIDGET_TYPES and not opts.get("forceInput"))
            out.append(Slot(name, "widget" if widget else "socket", spec))
            if widget and kind == "INT" and (name in SEED_NAMES or opts.get("control_after_generate")):
                out.append(Slot("control_after_generate", "extra", value="fixed"))
            upload = upload or (group == "required" and name == "image" and opts.get("image_upload") is True)
        if group == "required" and upload:
            out.append(Slot("upload", "extra", value="image"))
    return out


def _node_info(info: dict, class_type: str, where: str) -> dict:
    if class_type not in info:
        raise WorkflowError(f"{where}: node type {class_type!r} is not installed in this ComfyUI")
    return info[class_type]


def _default(slot: Slot):
    kind, opts = kind_and_options(slot.spec)
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list) and kind:
        return kind[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


# rendering (definition -> UI format)

NODE_WIDTH = {"Note": 420, "CLIPTextEncode": 400, "IPAKitApply": 330, "IPAKitApplyFaceID": 330}
COLUMN_GAP, ROW_GAP, TITLE_HEIGHT, MARGIN = 60, 40, 30, 40
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}


def _size(node: NodeDef, layout: list[Slot], outputs: int) -> list[int]:
    width = NODE_WIDTH.get(node.type, 320)
    if node.type in FRONTEND_ONLY:
        lines = sum(max(1, -(-len(line) // 56)) for line in node.inputs["text"].splitlines())
        return [width, 30 + 17 * lines]
    sockets = sum(s.kind == "socket" for s in layout)
    height = 10 + 22 * max(sockets, outputs)
    for s in layout:
        if s.kind != "socket":
            multiline = s.kind == "widget" and len(s.spec) > 1 and s.spec[1].get("multiline")
            height += 100 if multiline else 26
    if node.type == "LoadImage":
        height += 240  # the preview
    return [width, height]


def _order(nodes: list[NodeDef]) -> dict[int, int]:
    """Execution order (a topological order, stable by id) as the frontend stores it in `order`."""
    deps = {n.id: {v.node.id for v in n.inputs.values() if isinstance(v, Out)} for n in nodes}
    order, done = {}, set()
    while len(done) < len(nodes):
        ready = [n.id for n in nodes if n.id not in done and deps[n.id] <= done]
        if not ready:
            raise WorkflowError("the graph has a cycle")
        for nid in ready:
            order[nid] = len(order)
            done.add(nid)
    return order


def _link(links: list, info: dict, given: Out, node_id: int, slot: int) -> int:
    """Append a link from `given` to input `slot` of node `node_id`; its id."""
    link_id = len(links) + 1
    links.append([link_id, given.node.id, given.slot, node_id, slot, info[given.node.type]["output"][given.slot]])
    return link_id


def render_ui(graph: Graph, info: dict, *, name: str, extra: dict | None = None) -> dict:
    """The UI-format workflow (frontend version 0.4) of a definition; missing widgets get their defaults."""
    layouts, sizes, nodes_out, links = {}, {}, {}, []
    for node in graph.nodes:
        where = f"{name}: node {node.id} ({node.type})"
        if node.type in FRONTEND_ONLY:
            layouts[node.id], outputs = [], 0
        else:
            layout = slots(_node_info(info, node.type, where))
            known = {s.name for s in layout if s.kind != "extra"}
            unknown = sorted(set(node.inputs) - known)
            if unknown:
                raise WorkflowError(f"{where}: no input(s) {unknown}; it has {sorted(known)}")
            layouts[node.id], outputs = layout, len(info[node.type]["output"])
        sizes[node.id] = _size(node, layouts[node.id], outputs)

    positions, x = {}, MARGIN
    for col in sorted({n.col for n in graph.nodes}):
        column = [n for n in graph.nodes if n.col == col]
        y = MARGIN + TITLE_HEIGHT
        for n in column:
            positions[n.id] = [x, y]
            y += sizes[n.id][1] + TITLE_HEIGHT + ROW_GAP
        x += max(sizes[n.id][0] for n in column) + COLUMN_GAP

    order = _order(graph.nodes)
    for node in graph.nodes:
        entry = {"id": node.id, "type": node.type, "pos": positions[node.id], "size": sizes[node.id], "flags": {},
                 "order": order[node.id], "mode": 0}
        if node.title:
            entry["title"] = node.title
        if node.type in FRONTEND_ONLY:
            entry.update(properties={"text": ""}, widgets_values=[node.inputs["text"]], **NOTE_COLORS)
            nodes_out[node.id] = entry
            continue
        node_info = info[node.type]
        inputs, values, converted = [], [], []
        for s in layouts[node.id]:
            given = node.inputs.get(s.name)
            if s.kind == "extra":
                values.append(s.value)
            elif s.kind == "widget":
                if isinstance(given, Out):  # a widget converted to an input: it keeps its value slot, the link wins
                    values.append(_default(s))
                    converted.append((s, given))
                else:
                    values.append(_default(s) if given is None else given)
            else:
                link_id = None
                if given is not None:
                    if not isinstance(given, Out):
                        raise WorkflowError(f"{name}: node {node.id} ({node.type}).{s.name} is a socket; link an output")
                    link_id = _link(links, info, given, node.id, len(inputs))
                inputs.append({"name": s.name, "type": s.spec[0], "link": link_id})
        for s, given in converted:  # the frontend lists converted widgets after the sockets
            link_id = _link(links, info, given, node.id, len(inputs))
            kind = s.spec[0] if isinstance(s.spec[0], str) else "COMBO"
            inputs.append({"name": s.name, "type": kind, "link": link_id, "widget": {"name": s.name}})
        if inputs:
            entry["inputs"] = inputs
        entry["outputs"] = [
            {"name": oname, "type": otype, "links": [], "slot_index": i}
            for i, (otype, oname) in enumerate(zip(node_info["output"], node_info.get("output_name") or node_info["output"]))
        ]
        entry["properties"] = {"Node name for S&R": node.type}
        entry["widgets_values"] = values
        nodes_out[node.id] = entry
    for link in links:
        nodes_out[link[1]]["outputs"][link[2]]["links"].append(link[0])
    for entry in nodes_out.values():
        for out in entry.get("outputs", []):
            if not out["links"]:
                out["links"] = None
    return {
        "last_node_id": len(graph.nodes),
        "last_link_id": len(links),
        "nodes": [nodes_out[n.id] for n in graph.nodes],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}, **(extra or {})},
        "version": 0.4,
    }


# converting (UI format -> API format)


def to_api(ui: dict, info: dict) -> dict:
    """The API-format prompt of a UI-format workflow; raises WorkflowError when a node does not fit `info`."""
    if "nodes" not in ui or "links" not in ui:
        raise WorkflowError("not a UI-format workflow (no 'nodes' and 'links'); API-format files are already converted")
    links = {link[0]: link for link in ui["links"]}
    kinds = {node["id"]: node["type"] for node in ui["nodes"]}
    api = {}
    for node in sorted(ui["nodes"], key=lambda n: n["id"]):
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"{where}: muted or bypassed nodes are not supported by this converter")
        layout = slots(_node_info(info, node["type"], where))
        values = list(node.get("widgets_values") or [])
        expected = [s for s in layout if s.kind != "socket"]
        if len(values) != len(expected):
            names = ", ".join(s.name for s in expected)
            raise WorkflowError(f"{where}: {len(values)} widget values for {len(expected)} widgets ({names}); "
                                "the node's inputs changed, re-save the workflow")
        linked = {}
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            link = links.get(slot["link"])
            if link is None:
                raise WorkflowError(f"{where}.{slot['name']}: link {slot['link']} is not in 'links'")
            if kinds.get(link[1]) in FRONTEND_ONLY or link[1] not in kinds:
                raise WorkflowError(f"{where}.{slot['name']}: linked from node {link[1]}, which the backend cannot run")
            linked[slot["name"]] = [str(link[1]), link[2]]
        widget_values = {s.name: v for s, v in zip(expected, values) if s.kind == "widget"}
        inputs = {}
        for s in layout:  # INPUT_TYPES order; a link wins over a widget converted to an input
            if s.name in linked:
                inputs[s.name] = linked[s.name]
            elif s.kind == "widget":
                inputs[s.name] = widget_values[s.name]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):  # only titles the workflow sets: display names differ between ComfyUI versions
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


def check_api(api: dict, info: dict) -> list[str]:
    """Problems of an API-format prompt against the node catalogue: unknown nodes or inputs, missing
    required inputs, values outside combos or min/max, links of the wrong type; [] when it fits."""
    problems = []
    for nid, node in api.items():
        where = f"node {nid} ({node.get('class_type')})"
        if node.get("class_type") not in info:
            problems.append(f"{where}: not installed")
            continue
        spec = info[node["class_type"]]["input"]
        declared = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
        for name in spec.get("required") or {}:
            if name not in node["inputs"]:
                problems.append(f"{where}: required input {name!r} is missing")
        for name, value in node["inputs"].items():
            if name not in declared:
                problems.append(f"{where}: unknown input {name!r}")
                continue
            kind, opts = kind_and_options(declared[name])
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source = api.get(value[0])
                if source is None or source.get("class_type") not in info:
                    problems.append(f"{where}.{name}: linked from missing node {value[0]}")
                    continue
                outputs = info[source["class_type"]]["output"]
                if not 0 <= value[1] < len(outputs):
                    problems.append(f"{where}.{name}: node {value[0]} has no output {value[1]}")
                elif kind != "*" and outputs[value[1]] != kind:
                    problems.append(f"{where}.{name}: wants {kind}, linked to {outputs[value[1]]}")
            else:
                problems += [f"{where}.{name}: {p}" for p in _value_problems(kind, opts, value)]
    if not any(info.get(n.get("class_type"), {}).get("output_node") for n in api.values()):
        problems.append("no output node (SaveImage, PreviewImage, ...)")
    return problems


def _value_problems(kind, opts: dict, value) -> list[str]:
    if isinstance(kind, list):
        return [] if value in kind else [f"{value!r} is not one of the {len(kind)} choices ({', '.join(map(str, kind[:8]))}...)"]
    numeric = {"INT": (int,), "FLOAT": (int, float)}.get(kind)
    if numeric is not None:
        if isinstance(value, bool) or not isinstance(value, numeric):
            return [f"{value!r} is not {kind}"]
        low, high = opts.get("min"), opts.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{value} is outside [{low}, {high}]"]
        return []
    if kind == "STRING" and not isinstance(value, str):
        return [f"{value!r} is not a string"]
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return [f"{value!r} is not a boolean"]
    return []


def localize(api: dict, *tables: dict) -> dict:
    """A copy of `api` with widget values replaced per (class_type, input) -> value | function(old value)."""
    out = json.loads(json.dumps(api))
    for node in out.values():
        for table in tables:
            for (class_type, name), new in table.items():
                if node["class_type"] == class_type and name in node["inputs"]:
                    old = node["inputs"][name]
                    if not isinstance(old, list):
                        node["inputs"][name] = new(old) if callable(new) else new
    return out


def node_types(workflow: dict) -> set[str]:
    """Node types of a UI- or API-format workflow."""
    if "nodes" in workflow:
        return {n["type"] for n in workflow["nodes"]}
    return {n["class_type"] for n in workflow.values()}
