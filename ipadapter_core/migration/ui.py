"""Converting UI-format workflows (what the frontend saves: `nodes`, `links`, positional `widgets_values`).

Each node of the older pack keeps its id, position, size, title, colours, mode and order; its widgets are read by
position in the older pack's order (an older save with fewer widgets gets the defaults of the missing trailing
ones) and laid out in ours; its links are re-wired by socket name. Links are `[id, origin, slot, target, slot,
type]` lists (format 0.4) or objects (format 1 and subgraphs); both are handled. Groups and every other node are
left as they are.
"""

from __future__ import annotations

import copy

from .convert import Translated, is_widget, output_type, translate
from .legacy import LEGACY_TYPES
from .legacy import NODES as LEGACY
from .ours import NODES as OURS
from .report import Report

PACK_REGISTRY_ID = "ipadapter-kit"
PASS_THROUGH = ("Reroute", "PrimitiveNode")
_LINK_KEYS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def is_ui(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


class _Link:
    """A link as a list or an object, read and written by field name."""

    def __init__(self, raw):
        self.raw = raw

    def __getitem__(self, key: str):
        return self.raw[_LINK_KEYS.index(key)] if isinstance(self.raw, list) else self.raw.get(key)

    def __setitem__(self, key: str, value) -> None:
        if isinstance(self.raw, list):
            self.raw[_LINK_KEYS.index(key)] = value
        else:
            self.raw[key] = value


def convert_ui(workflow: dict, *, source: str = "") -> tuple[dict, Report]:
    """A UI-format workflow with the older pack's nodes replaced by ours (a new dict), and its report."""
    if not is_ui(workflow):
        raise ValueError(f"{source or 'this file'}: not a UI-format workflow (no 'nodes' list and 'links')")
    out = copy.deepcopy(workflow)
    report = Report(source, "ui")
    _convert_graph(out, report, "")
    for sub in ((out.get("definitions") or {}).get("subgraphs") or []):
        if isinstance(sub, dict) and isinstance(sub.get("nodes"), list):
            _convert_graph(sub, report, f"subgraph {sub.get('name') or sub.get('id')}: ")
    for name, group in ((out.get("extra") or {}).get("groupNodes") or {}).items():
        old = sorted({n.get("type") for n in (group or {}).get("nodes", []) if n.get("type") in LEGACY})
        if old:
            report.warnings.append(f"group node {name!r} holds {', '.join(old)}, which was not converted; ungroup it "
                                   "(right click > Convert to nodes), save, and convert again")
    return out, report


def _convert_graph(graph: dict, report: Report, where: str) -> None:
    nodes = {n.get("id"): n for n in graph["nodes"] if isinstance(n, dict)}
    links = {(link := _Link(raw))["id"]: link for raw in graph.get("links") or [] if isinstance(raw, (list, dict))}
    done: dict = {}
    for node in graph["nodes"]:
        kind = node.get("type")
        if kind not in LEGACY:
            report.untouched += 1
            continue
        t = _translate_node(node, nodes, links, where, report)
        report.nodes.append(t.change)
        if t.new is not None:
            done[node["id"]] = (t, copy.deepcopy(node))
    dropped = set()
    for node_id, (t, old) in done.items():
        _rewrite_node(nodes[node_id], t, old, links)
    for link_id, link in links.items():
        target, origin = done.get(link["target_id"]), done.get(link["origin_id"])
        target_name = _input_name(target[1] if target else nodes.get(link["target_id"]), link["target_slot"])
        if target is not None:
            t, old = target
            old_name = target_name
            ours = t.links.get(old_name)
            if ours is None:
                dropped.add(link_id)
            else:
                link["target_slot"] = _slot_of(nodes[link["target_id"]], ours)
                _translate_primitive(nodes.get(link["origin_id"]), t, old_name, ours)
        if origin is not None:
            t, old = origin
            index = t.output(link["origin_slot"])
            if index is None:
                dropped.add(link_id)
                _report_neg_embed(t, link, target_name, nodes.get(link["target_id"]) or {}, done, links)
            else:
                link["origin_slot"] = index
                link["type"] = output_type(t.new, index)
        if link_id not in dropped and (target is None) != (origin is None):
            _warn_foreign_type(link, nodes, done)
    _remove_links(graph, nodes, links, dropped, done)


def _translate_node(node: dict, nodes: dict, links: dict, where: str, report: Report) -> Translated:
    legacy = LEGACY[node["type"]]
    warnings = []
    linked = {}
    for slot in node.get("inputs") or []:
        link = links.get(slot.get("link")) if slot.get("link") is not None else None
        if link is not None:
            linked[slot.get("name")] = (nodes.get(link["origin_id"]) or {}).get("type", "")
    values = _read_widgets(legacy, node.get("widgets_values"), warnings)
    t = translate(node["type"], values, linked, node_id=f"{where}{node.get('id')}", title=node.get("title"))
    t.change.warnings[:0] = warnings
    return t


def _read_widgets(legacy, saved, warnings: list) -> dict:
    """The old node's widget values by name, from a positional list (in the documented widget order or an
    alternate one that fits) or a dict."""
    if isinstance(saved, dict):
        return {k: v for k, v in saved.items() if legacy.input(k) is not None}
    saved = list(saved or [])
    orders = [tuple(i.name for i in legacy.widgets), *legacy.alternate_orders]
    for order in orders:
        if len(order) == len(saved) and all(legacy.input(n).fits(v) for n, v in zip(order, saved)):
            return dict(zip(order, saved))
    order = orders[0]
    values = {}
    for name, value in zip(order, saved):
        if legacy.input(name).fits(value):
            values[name] = value
        else:
            warnings.append(f"saved value {value!r} does not fit widget {name!r}; its default was used")
    if len(saved) < len(order):
        missing = ", ".join(order[len(saved):])
        warnings.append(f"saved with {len(saved)} widget values for {len(order)}: {missing} took their defaults "
                        "(a workflow from an older version of the pack)")
    elif len(saved) > len(order):
        warnings.append(f"saved with {len(saved)} widget values for {len(order)}: the extra ones were ignored")
    return values


def _rewrite_node(node: dict, t: Translated, old: dict, links: dict) -> None:
    """Turn `node` into ours in place: type, widgets, sockets (with their links) and outputs."""
    entries = OURS[t.new][0]
    old_slots = {s.get("name"): s for s in old.get("inputs") or []}
    linked_ours = {ours: old_slots[old_name].get("link") for old_name, ours in t.links.items() if old_name in old_slots}
    inputs, converted = [], []
    for entry in entries:
        name = entry[0]
        slot = {"name": name, "type": entry[1] if not is_widget(entry) or entry[1] != "COMBO" else "COMBO",
                "link": linked_ours.get(name)}
        old_name = next((o for o, ours in t.links.items() if ours == name), name)
        if old_slots.get(old_name, {}).get("label"):
            slot["label"] = old_slots[old_name]["label"]
        if not is_widget(entry):
            inputs.append(slot)
        elif slot["link"] is not None:
            slot["widget"] = {"name": name}
            converted.append(slot)
    node["inputs"] = inputs + converted
    widgets = []
    for entry in entries:
        if is_widget(entry):
            widgets.append(t.values.get(entry[0], entry[2]))
            if len(entry) > 3:
                widgets.append("fixed")
    node["widgets_values"] = widgets
    outputs = []
    for index, (kind, name) in enumerate(OURS[t.new][1]):
        outputs.append({"name": name, "type": kind, "links": [], "slot_index": index})
    for old_index, old_out in enumerate(old.get("outputs") or []):
        index = t.output(old_index)
        if index is not None:
            outputs[index]["links"] += list(old_out.get("links") or [])
            if old_out.get("label"):
                outputs[index]["label"] = old_out["label"]
    for out in outputs:
        out["links"] = out["links"] or None
    node["outputs"] = outputs
    node["type"] = t.new
    properties = {k: v for k, v in (node.get("properties") or {}).items() if k not in ("ver", "aux_id")}
    properties["Node name for S&R"] = t.new
    if "cnr_id" in properties:
        properties["cnr_id"] = PACK_REGISTRY_ID
    node["properties"] = properties


def _slot_of(node: dict, name: str) -> int:
    return next(i for i, s in enumerate(node["inputs"]) if s["name"] == name)


def _translate_primitive(origin: dict | None, t: Translated, old_name: str, ours: str) -> None:
    """A PrimitiveNode that drives a converted widget: its widget name and (translated) value follow."""
    if not origin or origin.get("type") != "PrimitiveNode":
        return
    for out in origin.get("outputs") or []:
        if isinstance(out.get("widget"), dict) and out["widget"].get("name") == old_name:
            out["widget"]["name"] = ours
    translator = t.plan.translate.get(ours)
    values = origin.get("widgets_values")
    if translator is not None and isinstance(values, list) and values:
        new = translator(values[0])
        if new is not None and new != values[0]:
            t.change.mapped.append(f"{old_name} (from primitive node {origin.get('id')}): {values[0]!r} -> {new!r}")
            values[0] = new


def _input_name(node: dict | None, slot) -> str | None:
    inputs = (node or {}).get("inputs") or []
    return inputs[slot].get("name") if isinstance(slot, int) and 0 <= slot < len(inputs) else None


def _report_neg_embed(t: Translated, link, to: str | None, target: dict, done: dict, links: dict) -> None:
    """A link from an output without a counterpart (the Encoder's neg_embed) is removed: say where it went, and
    whether the Apply it fed gets the same negative from its embeds anyway."""
    index = link["origin_slot"]
    name = LEGACY[t.change.old].outputs[index][1]
    old_target = done[target["id"]][1] if target.get("id") in done else target
    where = f"node {target.get('id')} ({old_target.get('type')})"
    same = False
    if old_target.get("type") in ("IPAdapterEmbeds", "IPAdapterEmbedsBatch") and to == "neg_embed":
        pos = next((s.get("link") for s in old_target.get("inputs") or [] if s.get("name") == "pos_embed"), None)
        same = pos in links and links[pos]["origin_id"] == link["origin_id"]
    line = f"{name} -> {where}.{to}: link removed ({t.plan.output_notes.get(index, 'it has no counterpart')})"
    if same:
        t.change.mapped.append(f"{name} -> {where}.{to}: link removed (that Apply uses the negative its embeds carry)")
    else:
        t.change.warnings.append(line)


def _warn_foreign_type(link, nodes: dict, done: dict) -> None:
    """A link between a converted node and another pack's node over one of the older pack's own types."""
    inner, outer = (link["origin_id"], link["target_id"]) if link["origin_id"] in done else (link["target_id"], link["origin_id"])
    other = nodes.get(outer) or {}
    t = done[inner][0]
    kind = link["type"]
    if other.get("type") in PASS_THROUGH or other.get("type") in OURS:
        return
    if kind in LEGACY_TYPES or str(kind).startswith("IPAKIT_"):
        t.change.warnings.append(f"linked to node {outer} ({other.get('type')}) over type {kind}: IPAdapter Kit's "
                                 f"{str(kind).removeprefix('IPAKIT_').lower()} is its own type, which that node cannot take")


def _remove_links(graph: dict, nodes: dict, links: dict, dropped: set, done: dict) -> None:
    if not dropped:
        return
    graph["links"] = [raw for raw in graph.get("links") or [] if _Link(raw)["id"] not in dropped] \
        if isinstance(graph.get("links"), list) else graph.get("links")
    for node in nodes.values():
        for slot in node.get("inputs") or []:
            if slot.get("link") in dropped:
                slot["link"] = None
        for out in node.get("outputs") or []:
            if out.get("links"):
                out["links"] = [i for i in out["links"] if i not in dropped] or None
