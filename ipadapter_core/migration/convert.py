"""Translating one old node's inputs to ours (`translate`, shared by both formats and the compatibility nodes),
and converting API-format prompts (`convert_api`). UI-format workflows are in `ui.py`."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .legacy import NODES as LEGACY
from .ours import NODES as OURS
from .plans import PLANS, Plan, View
from .report import NodeChange, Report, display, our_outputs


def our_inputs(node_id: str) -> dict[str, tuple]:
    """Our node's inputs by name: (name, type) sockets, (name, kind, default[, "control"]) widgets."""
    return {entry[0]: entry for entry in OURS[node_id][0]}


def is_widget(entry: tuple) -> bool:
    return len(entry) >= 3


@dataclass
class Translated:
    """One old node's inputs as ours: widget `values` by our name, `links` old input -> our input, `outputs` old
    output index -> ours (None: removed), and the report entry."""

    plan: Plan
    values: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    change: NodeChange | None = None

    @property
    def new(self) -> str | None:
        return self.plan.new

    def output(self, index: int) -> int | None:
        return self.plan.our_output(index)


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def translate(old_id: str, values: dict, linked: dict, *, node_id: str = "", title: str | None = None) -> Translated:
    """Our node and inputs for old node `old_id` with widget `values` (old names) and `linked` inputs (old name ->
    the node type the link comes from, "" when unknown)."""
    legacy = LEGACY[old_id]
    view = View(dict(values), dict(linked))
    plan = PLANS[old_id].pick(view)
    change = NodeChange(str(node_id), old_id, plan.new, title)
    out = Translated(plan, change=change)
    if plan.new is None:
        change.warnings.append(plan.missing)
        return out
    ours = our_inputs(plan.new)
    known = {i.name for i in legacy.inputs}
    for name in [*values, *linked]:
        if name not in known and name not in change.warnings:
            change.warnings.append(f"input {name!r} is not one the older pack's {old_id} has; it was left out")
    for old in legacy.inputs:
        name = plan.our_name(old.name)
        given = old.name in values
        if name is None or name not in ours:
            why = plan.drop.get(old.name) or f"{plan.new} has no input {name!r}"
            if old.name in linked:
                (change.mapped if old.name in plan.drop else change.warnings).append(f"{old.name}: link removed ({why})")
            elif given and not _same(values[old.name], old.default):
                (change.mapped if old.name in plan.drop else change.warnings).append(
                    f"{old.name} = {values[old.name]!r} left out ({why})")
            continue
        renamed = f"{old.name} -> {name}" if name != old.name else ""
        if old.name in linked:
            out.links[old.name] = name
            if name in plan.translate:
                change.warnings.append(f"{old.name} is linked: the value it receives must now be one of "
                                       f"{display(plan.new)}'s {name} options")
            if renamed:
                change.mapped.append(renamed)
            continue
        if not given:
            continue
        value = values[old.name]
        if not is_widget(ours[name]):
            change.warnings.append(f"{old.name} = {value!r} left out ({name} is a socket on {plan.new}; link a value)")
            continue
        translator = plan.translate.get(name)
        if translator is not None:
            new_value = translator(value)
            if new_value is None:
                default = ours[name][2]
                change.warnings.append(f"{old.name} = {value!r} has no counterpart; set to {default!r}")
                new_value = default
            if new_value != value:
                renamed = f"{old.name}: {value!r} -> {new_value!r}" if not renamed else f"{renamed}: {value!r} -> {new_value!r}"
            value = new_value
        if renamed:
            change.mapped.append(renamed)
        out.values[name] = value
    for name, (value, why) in plan.fixed.items():
        out.values[name] = value
        change.mapped.append(f"{name} = {value!r} ({why})")
    if plan.adjust is not None:
        change.mapped += plan.adjust(out.values, view)
    change.differences += [note.text for note in plan.notes if note.applies(view)]
    return out


def widget_values(new: str, values: dict) -> dict:
    """Every widget of our node `new`: the given value, else the default (folder listings without one are left out)."""
    out = {}
    for entry in OURS[new][0]:
        if is_widget(entry):
            value = values.get(entry[0], entry[2])
            if value is not None:
                out[entry[0]] = value
    return out


# API format


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)


def is_api(data) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(v, dict) and "class_type" in v for v in data.values())


def convert_api(prompt: dict, *, source: str = "") -> tuple[dict, Report]:
    """An API-format prompt with the older pack's nodes replaced by ours (a new dict), and its report.
    A `{"prompt": {...}, ...}` body as clients post it is converted in place of its prompt."""
    if isinstance(prompt, dict) and "prompt" in prompt and is_api(prompt["prompt"]):
        converted, report = convert_api(prompt["prompt"], source=source)
        return {**copy.deepcopy(prompt), "prompt": converted}, report
    if not is_api(prompt):
        raise ValueError(f"{source or 'this file'}: not an API-format prompt (a dict of nodes with class_type)")
    out = copy.deepcopy(prompt)
    report = Report(source, "api")
    done: dict[str, Translated] = {}
    for nid, node in prompt.items():
        kind = node["class_type"]
        if kind not in LEGACY:
            report.untouched += 1
            continue
        inputs = node.get("inputs") or {}
        linked = {k: prompt.get(str(v[0]), {}).get("class_type", "") for k, v in inputs.items() if is_link(v)}
        values = {k: v for k, v in inputs.items() if not is_link(v)}
        t = translate(kind, values, linked, node_id=nid, title=(node.get("_meta") or {}).get("title"))
        report.nodes.append(t.change)
        if t.new is None:
            continue
        done[nid] = t
        new_inputs = {}
        reverse = {ours: old for old, ours in t.links.items()}
        for entry in OURS[t.new][0]:
            name = entry[0]
            if name in reverse:
                new_inputs[name] = inputs[reverse[name]]
            elif is_widget(entry):
                value = t.values.get(name, entry[2])
                if value is not None:
                    new_inputs[name] = value
        out[nid] = {**{k: v for k, v in node.items() if k not in ("class_type", "inputs")}, "class_type": t.new, "inputs": new_inputs}
    for nid, node in out.items():  # links from converted nodes: their outputs moved
        for name, value in list(node["inputs"].items()):
            if not is_link(value) or str(value[0]) not in done:
                continue
            source_t = done[str(value[0])]
            index = source_t.output(value[1])
            if index is None:
                del node["inputs"][name]
                _report_removed_output(report, source_t, value[1], f"node {nid} ({prompt[nid]['class_type']}).{name}")
            else:
                node["inputs"][name] = [value[0], index]
    return out, report


def _report_removed_output(report: Report, t: Translated, index: int, where: str) -> None:
    note = t.plan.output_notes.get(index, "it has no counterpart")
    name = LEGACY[t.change.old].outputs[index][1] if index < len(LEGACY[t.change.old].outputs) else str(index)
    line = f"{name} -> {where}: link removed ({note})"
    if line not in t.change.mapped:
        t.change.mapped.append(line)


def output_type(new: str, index: int) -> str:
    return our_outputs(new)[index][0]
