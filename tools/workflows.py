"""Example workflows: one compact Python definition each (tools/example_workflows.py), rendered to ComfyUI's
UI format (what users drag in) and converted to the API format (what `POST /prompt` runs).

    python -m tools.workflows write [--url URL]      # rewrite workflows/*.json, workflows/api/*.json, thumbnails
    python -m tools.workflows check [--url URL]      # exit 1 when the committed files differ from the definitions
    python -m tools.workflows api UI.json [--url URL]   # convert any UI-format workflow to API format (stdout)

Rendering and converting need the node catalogue (`/object_info`): from `--url` of a running ComfyUI, else
from a server started on the test host (tools/comfy_host.py) for the duration of the command.

Widget rules (ComfyUI frontend, UI format 0.4): a node's `widgets_values` list, in INPUT_TYPES order
(required, then optional), the value of every input that is a combo (a list), INT, FLOAT, STRING or
BOOLEAN without `forceInput`; other inputs are sockets. The frontend adds values of its own: after an
INT named `seed`/`noise_seed` (or with `control_after_generate`) the control mode ("fixed"), and after
the last required widget of a node whose `image` input has `image_upload` the upload button ("image").
Frontend-only nodes (Note, MarkdownNote) have no backend class and are dropped by the converter.

Model names: the workflows name the files users have (published names, e.g.
`ip-adapter-plus_sd15.safetensors`); `STAND_INS` maps them onto the random-weight stand-ins the tests and
the demo generate, and `localize` applies such a table to an API workflow.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from . import gen_comfy_models

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = REPO / "workflows"
API_DIR = WORKFLOWS_DIR / "api"

FRONTEND_ONLY = ("Note", "MarkdownNote")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_NAMES = ("seed", "noise_seed")

# the random-weight stand-ins (names written by tools/gen_comfy_models.py and tools/gen_ipadapter.py)
SD15_RANDOM = gen_comfy_models.SD15_CHECKPOINT
SDXL_SMALL_RANDOM = gen_comfy_models.SDXL_SMALL_CHECKPOINT
CONTROLNET_SD15_RANDOM = gen_comfy_models.CONTROLNET_SD15
SDXL_SMALL_SUBDIR = gen_comfy_models.SDXL_SMALL_ADAPTER_SUBDIR  # SDXL adapters at the SDXL-small UNet's widths
SDXL_SMALL_WIDTHS = gen_comfy_models.SDXL_SMALL_ATTN2_WIDTHS

# Placeholder -> stand-in, per model family: (class_type, input) -> new value, or a function of the old one.
# Everything not listed keeps its published name (the generators write IP-Adapter and CLIP vision files
# under those names). SDXL adapters come from a subfolder because models/ipadapter may also hold
# full-size SDXL adapters, which do not fit the small UNet.
STAND_INS: dict[str, dict[tuple[str, str], object]] = {
    "sd15": {
        ("CheckpointLoaderSimple", "ckpt_name"): SD15_RANDOM,
        ("ControlNetLoader", "control_net_name"): CONTROLNET_SD15_RANDOM,
    },
    "sdxl": {
        ("CheckpointLoaderSimple", "ckpt_name"): SDXL_SMALL_RANDOM,
        ("IPAKitModelLoader", "ipadapter_file"): lambda name: f"{SDXL_SMALL_SUBDIR}/{name}",
    },
}
# Sampling at a size and step count that runs in seconds on a CPU (random weights give noise anyway).
FAST = {
    ("KSampler", "steps"): 1,
    ("EmptyLatentImage", "width"): 64,
    ("EmptyLatentImage", "height"): 64,
    ("ImageScale", "width"): 64,
    ("ImageScale", "height"): 64,
}


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


def slots(info: dict) -> list[Slot]:
    """Every input of a node as the frontend lays it out (see the module docstring)."""
    out = []
    upload = False
    for group in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(group) or {}).items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
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
    kind, opts = slot.spec[0], (slot.spec[1] if len(slot.spec) > 1 else {})
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
        inputs, values = [], []
        for s in layouts[node.id]:
            given = node.inputs.get(s.name)
            if s.kind == "extra":
                values.append(s.value)
            elif s.kind == "widget":
                if isinstance(given, Out):
                    raise WorkflowError(f"{name}: node {node.id} ({node.type}).{s.name} is a widget; give it a value")
                values.append(_default(s) if given is None else given)
            else:
                link_id = None
                if given is not None:
                    if not isinstance(given, Out):
                        raise WorkflowError(f"{name}: node {node.id} ({node.type}).{s.name} is a socket; link an output")
                    link_id = len(links) + 1
                    out_type = info[given.node.type]["output"][given.slot]
                    links.append([link_id, given.node.id, given.slot, node.id, len(inputs), out_type])
                inputs.append({"name": s.name, "type": s.spec[0], "link": link_id})
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
            kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
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


# files


def dumps(obj, indent: int = 0) -> str:
    """JSON with one item per line, except lists of plain values (positions, links, widget values) and small
    flat objects (node slots), which stay on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    flat = json.dumps(obj, ensure_ascii=False)
    nested = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    if not any(isinstance(v, dict) or (isinstance(v, list) and any(isinstance(i, (dict, list)) for i in v)) for v in nested):
        if not isinstance(obj, dict) or len(flat) <= 100:
            return flat
    if isinstance(obj, dict):
        return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {dumps(v, indent + 2)}" for k, v in obj.items()) + f"\n{pad}}}"
    return "[\n" + ",\n".join(f"{inner}{dumps(v, indent + 2)}" for v in obj) + f"\n{pad}]"


def rendered_files(info: dict) -> dict[Path, bytes]:
    """Every file `write` produces: workflows/<name>.json (UI), workflows/api/<name>.json, workflows/<name>.jpg."""
    from . import example_workflows, workflow_pictures

    files = {}
    for wf in example_workflows.WORKFLOWS:
        ui = render_ui(wf.graph(), info, name=wf.name, extra={"ipakit": wf.meta()})
        files[WORKFLOWS_DIR / f"{wf.name}.json"] = (dumps(ui) + "\n").encode()
        files[API_DIR / f"{wf.name}.json"] = (dumps(to_api(ui, info)) + "\n").encode()
        pictures = {name: workflow_pictures.REFERENCES[name]() for name in workflow_pictures.references_used(ui)}
        files[WORKFLOWS_DIR / f"{wf.name}.jpg"] = workflow_pictures.thumbnail(ui, wf.title, pictures)
    return files


def stale_files(info: dict, *, include_thumbnails: bool = False) -> list[str]:
    """Committed files that differ from what the definitions render (thumbnails depend on Pillow's JPEG coder,
    so they are compared only on request), and files under workflows/ no definition makes."""
    files = rendered_files(info)
    stale = [str(p.relative_to(REPO)) for p, data in files.items()
             if (include_thumbnails or p.suffix != ".jpg") and (not p.exists() or p.read_bytes() != data)]
    for path in sorted(WORKFLOWS_DIR.rglob("*")):
        if path.is_file() and path not in files:
            stale.append(f"{path.relative_to(REPO)} (no definition makes it)")
    return stale


# command line


def fetch_object_info(url: str | None) -> dict:
    from .comfy_client import ComfyClient

    if url:
        with ComfyClient(url) as client:
            return client.object_info()
    from . import comfy_host

    with tempfile.TemporaryDirectory(prefix="ipakit-workflows-") as tmp:
        with comfy_host.running_server(Path(tmp) / "models", work_dir=Path(tmp) / "work") as server:
            with ComfyClient(server.url) as client:
                return client.object_info()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render, check and convert the example workflows.")
    parser.add_argument("--url", help="a running ComfyUI with the pack (default: start the test host)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("write", help="rewrite workflows/ from tools/example_workflows.py")
    sub.add_parser("check", help="exit 1 when workflows/ is not what the definitions render")
    api = sub.add_parser("api", help="print the API format of a UI-format workflow")
    api.add_argument("workflow", type=Path)
    args = parser.parse_args(argv)
    info = fetch_object_info(args.url)
    if args.command == "api":
        print(dumps(to_api(json.loads(args.workflow.read_text()), info)))
        return 0
    if args.command == "check":
        stale = stale_files(info)
        for line in stale:
            print(f"stale: {line}", file=sys.stderr)
        return 1 if stale else 0
    for old in [*WORKFLOWS_DIR.rglob("*.json"), *WORKFLOWS_DIR.rglob("*.jpg")]:
        old.unlink()
    for path, data in rendered_files(info).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path.relative_to(REPO)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    from tools.workflows import main as _main  # the definitions use tools.workflows' classes, not __main__'s

    sys.exit(_main())
