"""The older IPAdapter Plus pack's node ids, answered by thin nodes for API clients that post them.

Each compatibility node has the older node's inputs (names, order, options), translates them with the converter's
plan for that id (`ipadapter_core.migration`: the same translation a converted workflow gets, so both run the
same) and calls this pack's node. They are registered only where the older pack is absent (`older_pack`), are
DEPRECATED (hidden from the node search where the frontend supports it) and live in ipadapter_kit/deprecated. In
the editor, the pack's frontend extension converts workflows that use them to this pack's nodes when they load.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
from pathlib import Path

from ..ipadapter_core.migration import CONVERTED_IDS, LEGACY, PLANS, translate
from ..ipadapter_core.migration.convert import widget_values
from ..ipadapter_core.migration.report import display
from . import _docs

log = logging.getLogger(__name__)

CATEGORY = f"{_docs.CATEGORY}/deprecated"
ENV = "IPAKIT_LEGACY_IDS"  # "off": never register the older ids
OLDER_PACK_FILE = "IPAdapterPlus.py"  # the older pack's main module, in its folder
TYPES = {"IPADAPTER": _docs.ADAPTER, "INSIGHTFACE": _docs.INSIGHTFACE, "EMBEDS": _docs.EMBEDS,
         "IPADAPTER_PARAMS": "IPAKIT_PARAMS", "WEIGHTS_STRATEGY": "IPAKIT_WEIGHTS_STRATEGY"}


# detection


def _is_older_pack(entry: Path) -> bool:
    """A custom_nodes entry that is the older pack: its module name (any case and separators, a download's -main
    suffix, a fork's suffix), or a folder holding its main module. Disabled entries do not count."""
    if entry.name.endswith(".disabled") or entry.name.startswith((".", "__")):
        return False
    key = re.sub(r"[^a-z0-9]", "", entry.name.lower())
    return "ipadapterplus" in key or (entry.is_dir() and (entry / OLDER_PACK_FILE).is_file())


def custom_node_folders() -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths("custom_nodes"))
    except (KeyError, AttributeError):
        return []


def older_pack(folders: list[str] | None = None, registered: dict | None = None) -> str | None:
    """Where the older pack is installed (a custom_nodes entry, or the module that registered one of its ids),
    or None."""
    for folder in custom_node_folders() if folders is None else folders:
        try:
            entries = sorted(Path(folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            if _is_older_pack(entry):
                return str(entry)
    if registered is None:
        import nodes as comfy_nodes  # ComfyUI's node table: a pack loaded before this one

        registered = comfy_nodes.NODE_CLASS_MAPPINGS
    for node_id in LEGACY:
        cls = registered.get(node_id)
        if cls is not None and not getattr(cls, "IPAKIT_COMPAT", False):
            return getattr(cls, "__module__", node_id)
    return None


# the nodes


def _our_spec(our_cls, name: str) -> tuple | None:
    spec = our_cls.INPUT_TYPES()
    for group in ("required", "optional"):
        if name in (spec.get(group) or {}):
            return spec[group][name]
    return None


def _targets(old_id: str) -> list[str]:
    plan = PLANS[old_id]
    return [p.new for p in (plan, *(v for _, v in plan.variants)) if p.new]


def _input_types(old_id: str, ours: dict) -> dict:
    legacy, plan = LEGACY[old_id], PLANS[old_id]
    groups = {"required": {}, "optional": {}}
    for i in legacy.inputs:
        target = next((p for p in (plan, *(v for _, v in plan.variants)) if p.new and p.our_name(i.name)
                       and _our_spec(ours[p.new], p.our_name(i.name))), None)
        spec = _our_spec(ours[target.new], target.our_name(i.name)) if target else None
        ours_tip = (spec[1].get("tooltip", "") if spec and len(spec) > 1 else "") or ""
        if target is None:
            tip = f"Accepted for compatibility and not used: {plan.drop.get(i.name, 'it has no counterpart')}."
        elif target.our_name(i.name) != i.name:
            tip = f"{ours_tip} (IPAdapter Kit's {target.our_name(i.name)})"
        else:
            tip = ours_tip
        if i.name in plan.translate or any(i.name in v.translate for _, v in plan.variants):
            tip += " The older pack's option names are translated to IPAdapter Kit's."
        opts = {"tooltip": tip.strip() or f"{i.name} of the older pack's {old_id}."}
        if i.kind == "COMBO":
            choices = list(i.choices) if i.choices else list(spec[0]) if spec and isinstance(spec[0], list) else []
            entry = (choices, {**opts, **({"default": i.default} if i.default is not None else {})})
        elif i.widget:
            entry = (i.kind, {**opts, **{k: v for k, v in (("default", i.default), ("min", i.min), ("max", i.max),
                                                               ("step", i.step)) if v is not None},
                              **({"multiline": True} if i.multiline else {})})
        else:
            kind = spec[0] if spec and isinstance(spec[0], str) else TYPES.get(i.kind, i.kind)
            entry = (kind, opts)
        groups["optional" if i.optional else "required"][i.name] = entry
    return groups


def _outputs(old_id: str, ours: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    legacy, plan = LEGACY[old_id], PLANS[old_id]
    our_types = ours[plan.new].RETURN_TYPES
    types = []
    for index, (kind, _) in enumerate(legacy.outputs):
        mine = plan.our_output(index)
        types.append(our_types[mine] if mine is not None else TYPES.get(kind, kind))
    return tuple(types), tuple(name for _, name in legacy.outputs)


def _negative_embeds(embeds):
    """The Encoder's neg_embed: embeds whose features are the negative `embeds` carry (None when they carry none)."""
    if embeds is None or not embeds.uncond:
        return None
    return dataclasses.replace(embeds, cond=dict(embeds.uncond), uncond={})


_EXTRA_OUTPUTS = {("IPAdapterEncoder", 1): lambda outs: _negative_embeds(outs[0])}


def _signature(names: list[str]) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter("cls", kind)] + [inspect.Parameter(n, kind, default=None) for n in names])


def make_node(old_id: str, ours: dict) -> type:
    """The compatibility node class of old id `old_id`, calling the classes in `ours` (our node id -> class)."""
    legacy, plan = LEGACY[old_id], PLANS[old_id]
    widgets = {i.name for i in legacy.inputs if i.widget}
    sockets = {i.name for i in legacy.inputs if not i.widget}

    def call(kwargs: dict):
        """(our node id, our class, its inputs, the translation) for the old inputs `kwargs`."""
        values = {k: v for k, v in kwargs.items() if k in widgets and v is not None}
        linked = {k: _origin(k, v) for k, v in kwargs.items() if k in sockets and v is not None}
        t = translate(old_id, values, linked, node_id=old_id)
        if t.new is None:
            raise ValueError(f"{old_id}: {t.plan.missing}")
        inputs = widget_values(t.new, t.values)
        inputs.update({ours_name: kwargs[old] for old, ours_name in t.links.items() if kwargs.get(old) is not None})
        return t.new, ours[t.new], inputs, t

    def run(self, **kwargs):
        _, cls, inputs, t = call(kwargs)
        for line in t.change.warnings:
            log.warning("IPAdapter Kit (%s): %s", old_id, line)
        result = getattr(cls(), cls.FUNCTION)(**inputs)
        ui, outs = (result.get("ui"), tuple(result.get("result", ()))) if isinstance(result, dict) else (None, tuple(result))
        mapped = []
        for index in range(len(legacy.outputs)):
            mine = t.output(index)
            mapped.append(outs[mine] if mine is not None else _EXTRA_OUTPUTS[(old_id, index)](outs))
        return {"ui": ui, "result": tuple(mapped)} if ui is not None else tuple(mapped)

    translated = sorted({old for old in widgets for p in (plan, *(v for _, v in plan.variants))
                         if p.our_name(old) in p.translate})
    delegated = sorted({old for old in widgets | sockets for p in (plan, *(v for _, v in plan.variants)) if p.new
                        and hasattr(ours[p.new], "VALIDATE_INPUTS") and p.our_name(old)
                        in inspect.signature(ours[p.new].VALIDATE_INPUTS).parameters})

    def validate(cls, **kwargs):
        for name in translated:
            value = kwargs.get(name)
            if isinstance(value, str):
                for p in (plan, *(v for _, v in plan.variants)):
                    if p.our_name(name) in p.translate and p.translate[p.our_name(name)](value) is None:
                        return f"{value!r} is not an option of the older pack's {old_id}.{name} that IPAdapter Kit knows"
        if not delegated:
            return True
        new, target, inputs, _ = call({k: v for k, v in kwargs.items() if v is not None})
        names = inspect.signature(target.VALIDATE_INPUTS).parameters
        return target.VALIDATE_INPUTS(**{k: v for k, v in inputs.items() if k in names})

    def is_changed(cls, **kwargs):
        new, target, inputs, _ = call(kwargs)
        names = inspect.signature(target.IS_CHANGED).parameters
        return target.IS_CHANGED(**{k: v for k, v in inputs.items() if k in names})

    return_types, return_names = _outputs(old_id, ours)
    body = {
        "DESCRIPTION": (
            f"The older IPAdapter Plus pack's {legacy.display} ({old_id}), kept so API prompts that use its id run "
            f"unchanged: its inputs are translated and IPAdapter Kit's {display(plan.new)} ({plan.new}) runs them, "
            "with the same result as a converted workflow. The editor converts workflows that use it when they load; "
            "README \"Coming from IPAdapter Plus\" lists what behaves differently."
        ),
        "CATEGORY": CATEGORY,
        "DEPRECATED": True,
        "IPAKIT_COMPAT": True,
        "RETURN_TYPES": return_types,
        "RETURN_NAMES": return_names,
        "OUTPUT_TOOLTIPS": tuple(f"{name}, as the older node returned it." for name in return_names),
        "OUTPUT_NODE": legacy.output_node,
        "FUNCTION": "run",
        "INPUT_TYPES": classmethod(lambda cls: _input_types(old_id, ours)),
        "run": run,
    }
    if translated or delegated:
        validate.__signature__ = _signature(translated + [n for n in delegated if n not in translated])
        body["VALIDATE_INPUTS"] = classmethod(validate)
    if any(hasattr(ours[n], "IS_CHANGED") for n in _targets(old_id)):
        body["IS_CHANGED"] = classmethod(is_changed)
    return type(f"Legacy{old_id}", (), body)


def _origin(name: str, value) -> str:
    """What a translation needs to know of a linked input: a FaceID adapter counts as the FaceID loader's."""
    spec = getattr(value, "spec", None)
    if name == "ipadapter" and spec is not None and spec.kind.uses_face:
        return "IPAdapterUnifiedLoaderFaceID"
    return ""


def legacy_nodes(ours: dict) -> dict[str, tuple[type, str]]:
    """old id -> (compatibility class, display name), for every old id with an equivalent among `ours`; empty where
    the older pack is installed (it keeps its ids) or IPAKIT_LEGACY_IDS=off."""
    if os.environ.get(ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return {}
    found = older_pack()
    if found is not None:
        log.info("IPAdapter Kit: the older IPAdapter Plus pack is installed (%s); its node ids are left to it", found)
        return {}
    out = {}
    for old_id in CONVERTED_IDS:
        if all(target in ours for target in _targets(old_id)):
            out[old_id] = (make_node(old_id, ours), f"{LEGACY[old_id].display} (IPAdapter Plus id, runs IPAKit)")
    return out
