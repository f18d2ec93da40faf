"""The converter from the older IPAdapter Plus pack's workflows (ipadapter_core/migration), its command line, and
the compatibility node ids (nodes/compat.py), in process: fixtures in the older pack's UI and API formats written
by dev/migration/fixtures.py from its node table, converted and checked against the live node catalogue.

The server side (queueing the converted fixtures, the old-id API prompts bit for bit, the route) is in
tests/test_migration_server.py; the frontend extension in tests/test_migration_browser.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import subprocess
import sys

import pytest

import _host
from dev.authoring import graph
from dev.migration import fixtures, ours_table
from ipadapter_core import migration
from ipadapter_core.migration import legacy, ours, plans

FILE_LISTS = ("LoadImage", "IPAKitLoadEmbeds", "IPAKitModelLoader")  # folder listings: files the fixtures only name


@pytest.fixture(scope="module")
def core(comfy):
    """/object_info-style entries of every node the in-process host knows (ComfyUI core and this pack)."""
    return {node_id: fixtures.class_info(cls) for node_id, cls in comfy.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def rendered(core):
    return {name: fixtures.render(name, core) for name in fixtures.FIXTURES}


def _problems(api: dict, info: dict) -> list[str]:
    """check_api's problems, less the folder listings that name files only the server test puts in place."""
    return [p for p in graph.check_api(api, info) if not any(f"({kind})." in p and "is not one of" in p for kind in FILE_LISTS)]


# the tables


def test_the_static_table_is_the_live_input_types(comfy):
    live = ours_table.table({node_id: cls for node_id, cls, _ in comfy.pack.NODES})
    assert live == ours.NODES, "run: .venv/bin/python -m dev.migration.ours_table write"
    assert ours_table.display_names(comfy.pack.NODES) == ours.DISPLAY


def test_the_older_pack_has_37_ids_and_every_plan_fits_both_tables():
    assert len(legacy.NODES) == 37 and len(plans.PLANS) == 37 and set(plans.PLANS) == set(legacy.NODES)
    assert set(migration.OLD_IDS) == set(migration.CONVERTED_IDS)  # every id has an equivalent
    for old_id, top in plans.PLANS.items():
        for plan in (top, *(v for _, v in top.variants)):
            if plan.new is None:
                assert plan.missing
                continue
            names = {entry[0] for entry in ours.NODES[plan.new][0]}
            for i in legacy.NODES[old_id].inputs:
                assert plan.our_name(i.name) is None or plan.our_name(i.name) in names, (old_id, i.name, plan.new)
            assert set(plan.translate) | set(plan.fixed) <= names, old_id
            assert all(plan.our_output(k) is None or plan.our_output(k) < len(ours.NODES[plan.new][1])
                       for k in range(len(legacy.NODES[old_id].outputs))), old_id


def test_translated_options_are_ours(core):
    def choices(node_id, name):
        spec = core[node_id]["input"]
        return (spec.get("required", {}) | spec.get("optional", {}))[name][0]

    for old, new in plans.PRESETS.table.items():
        assert new in choices("IPAKitUnifiedLoader", "preset"), old
    assert set(plans.SIMPLE_WEIGHT_TYPES.table.values()) <= set(choices("IPAKitApply", "weight_type"))
    assert set(plans.TIMINGS.table.values()) == set(choices("IPAKitWeights", "timing"))
    for kind, values in (("IPAKitApply", legacy.WEIGHT_TYPES), ("IPAKitCombineEmbeds", legacy.EMBEDS_METHODS),
                         ("IPAKitNoise", legacy.NOISE_TYPES), ("IPAKitPrepImage", legacy.CROP_POSITIONS)):
        assert set(values) <= set(choices(kind, "weight_type" if kind == "IPAKitApply" else "method" if "Combine" in kind
                                          else "type" if "Noise" in kind else "crop_position")), kind
    assert set(legacy.FACEID_PROVIDERS) <= set(choices("IPAKitUnifiedLoader", "provider"))
    # tolerant: case, punctuation, a preset name without its suffix
    assert plans.PRESETS("full face - sd1.5 only") == "full face - SD1.5 only (portraits stronger)"
    assert plans.PRESETS("FACEID PORTRAIT UNNORM - SDXL only") == "faceid portrait unnorm - SDXL only"
    assert plans.PRESETS("plus (high strength)") == "plus (high strength)" and plans.PRESETS("sideways") is None


# the fixtures, converted


def test_the_fixtures_hold_all_37_ids_in_both_formats(rendered):
    seen_ui = set().union(*(fixtures.old_ids(ui) for ui, _ in rendered.values()))
    seen_api = set().union(*(fixtures.old_ids(api) for _, api in rendered.values()))
    assert seen_ui == seen_api == set(legacy.NODES)
    ui, _ = rendered["sd15"]
    ksampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert ksampler["widgets_values"][1] == "fixed"  # the frontend's control_after_generate
    batch = next(n for n in ui["nodes"] if n["type"] == "IPAdapterBatch")
    assert any(s.get("widget") == {"name": "weight"} and s["link"] for s in batch["inputs"])  # a widget driven by a link


def test_the_fixtures_hold_every_id_and_the_runnable_ones_queue_every_id(rendered):
    assert set().union(*(fixtures.old_ids(rendered[name][1]) for name in fixtures.FIXTURES)) == set(legacy.NODES)
    assert set().union(*(fixtures.old_ids(rendered[name][1]) for name in fixtures.RUNNABLE)) == set(legacy.NODES)


@pytest.mark.parametrize("name", list(fixtures.FIXTURES))
def test_ui_and_api_fixtures_convert_to_the_same_prompt_of_core_and_our_nodes(name, rendered, core):
    ui, api = rendered[name]
    new_ui, ui_report = migration.convert(ui, source=name)
    new_api, api_report = migration.convert(api, source=name)
    assert fixtures.old_ids(new_ui) == fixtures.old_ids(new_api) == set()
    assert not ui_report.kept and not api_report.kept
    old_nodes = sum(n["type"] in legacy.NODES for n in ui["nodes"])
    assert len(ui_report.converted) == len(api_report.converted) == old_nodes
    assert graph.to_api(new_ui, core) == new_api
    assert _problems(new_api, core) == []


def test_ui_conversion_keeps_ids_layout_titles_colours_groups_and_consistent_links(rendered):
    ui, _ = rendered["sd15"]
    new, report = migration.convert(ui)
    before, after = {n["id"]: n for n in ui["nodes"]}, {n["id"]: n for n in new["nodes"]}
    assert before.keys() == after.keys() and new["groups"] == ui["groups"]
    for node_id, old in before.items():
        for key in ("pos", "size", "mode", "order", "flags", "title", "color", "bgcolor"):
            assert after[node_id].get(key) == old.get(key), (node_id, key)
        if old["type"] not in legacy.NODES:
            assert after[node_id] == old, node_id  # core nodes keep everything, their links included
    assert any(n.get("color") for n in after.values() if n["type"].startswith("IPAKit"))
    links = {link[0]: link for link in new["links"]}
    for node in after.values():  # every link is listed on both of its ends, at the right slots
        for slot, entry in enumerate(node.get("inputs") or []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                assert (link[3], link[4]) == (node["id"], slot)
        for slot, entry in enumerate(node.get("outputs") or []):
            for link_id in entry.get("links") or []:
                assert (links[link_id][1], links[link_id][2]) == (node["id"], slot)
    assert len(new["links"]) == len(ui["links"]) - 2  # the loader chain and the Encoder's neg_embed
    encoder = next(n for n in report.nodes if n.old == "IPAdapterEncoder")
    assert any("uses the negative its embeds carry" in m for m in encoder.mapped) and not encoder.warnings
    loader = next(n for n in report.nodes if n.old == "IPAdapterUnifiedLoader" and any("ipadapter" in m for m in n.mapped))
    assert any("link removed" in m for m in loader.mapped)


def test_values_are_translated_and_the_report_says_what_changed(rendered):
    new, report = migration.convert(rendered["sd15"][1])
    by_old = {n.id: n for n in report.nodes}
    kinds = {nid: node["class_type"] for nid, node in new.items()}
    simple = next(nid for nid, n in rendered["sd15"][1].items() if n["class_type"] == "IPAdapter")
    assert kinds[simple] == "IPAKitApply" and new[simple]["inputs"]["weight_type"] == "ease out"
    assert "weight_type: 'prompt is more important' -> 'ease out'" in by_old[simple].mapped
    assert any("middle block" in d for d in by_old[simple].differences)
    assert any("mask" in d for d in by_old[simple].differences)  # attn_mask is linked there
    ms = next(nid for nid, n in rendered["sd15"][1].items() if n["class_type"] == "IPAdapterMS")
    assert new[ms]["inputs"]["block_weights"] == "3:1.0, 6:0.5" and new[ms]["inputs"]["weight_type"] == "linear"
    assert any("norm average" in d for d in by_old[ms].differences)
    weights = next(nid for nid, n in new.items() if n["class_type"] == "IPAKitWeights")
    assert new[weights]["inputs"]["timing"] == "ease out"
    batches = [nid for nid, n in rendered["sd15"][1].items() if n["class_type"].endswith("Batch")]
    assert batches and all(new[nid]["inputs"]["unfold_batch"] is True for nid in batches)
    text = report.to_markdown()
    assert "IPAdapterAdvanced -> IPAKitApply (Apply IPAdapter)" in text and "Differs from IPAdapter Plus" in text
    assert json.loads(json.dumps(report.to_dict()))["nodes"]


def test_faceid_nodes_become_apply_faceid_with_the_lora_left_to_the_loader(rendered):
    new, report = migration.convert(rendered["faceid"][1])
    kinds = {n.old + ":" + n.id: n.new for n in report.nodes}
    assert sorted(v for k, v in kinds.items() if k.split(":")[0] in ("IPAdapterFaceID", "IPAAdapterFaceIDBatch",
                                                                     "IPAdapterAdvanced", "IPAdapterMS")) == ["IPAKitApplyFaceID"] * 4
    for node in new.values():
        if node["class_type"] == "IPAKitApplyFaceID":
            assert node["inputs"]["lora_strength"] == 0.0 and node["inputs"]["face_selection"] == "largest"
    assert any("largest face" in d for n in report.nodes for d in n.differences)
    advanced = next(nid for nid, n in rendered["faceid"][1].items() if n["class_type"] == "IPAdapterAdvanced")
    assert new[advanced]["inputs"]["weight_faceidv2"] == 0.8  # the older Advanced node: 2 x weight for Plus v2
    kolors, _ = migration.convert(rendered["kolors"][1])
    apply = next(n for n in kolors.values() if n["class_type"] == "IPAKitApplyFaceID")
    assert apply["inputs"]["weight_kolors"] == 1.2
    loader = next(n for n in kolors.values() if n["class_type"] == "IPAKitUnifiedLoader")
    assert loader["inputs"]["preset"] == "kolors plus - Kolors only"


def test_widgets_are_read_from_older_saves_and_other_orders():
    def ui(kind: str, values: list) -> dict:
        return {"last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4,
                "nodes": [{"id": 1, "type": kind, "pos": [0, 0], "size": [300, 200], "inputs": [], "outputs": [],
                           "properties": {"Node name for S&R": kind, "cnr_id": "comfyui_ipadapter_plus", "ver": "1"},
                           "widgets_values": values, "mode": 0}]}

    # saved before embeds_scaling existed: the default fills in, and the report says so
    new, report = migration.convert(ui("IPAdapterAdvanced", [0.7, "style transfer", "average", 0.1, 0.9]))
    node = new["nodes"][0]
    assert node["type"] == "IPAKitApply" and node["widgets_values"][:6] == [0.7, "style transfer", "average", 0.1, 0.9, "V only"]
    assert any("took their defaults" in w for w in report.all_warnings())
    assert node["properties"] == {"Node name for S&R": "IPAKitApply", "cnr_id": "ipadapter-kit"}
    # Kolors' weight_kolors after weight_faceidv2 instead of last: recognised by the values' kinds
    new, report = migration.convert(ui("IPAdapterFaceIDKolors", [0.8, 1.0, 1.3, "linear", "concat", 0.0, 1.0, "V only"]))
    widgets = dict(zip([e[0] for e in ours.NODES["IPAKitApplyFaceID"][0] if len(e) > 2], new["nodes"][0]["widgets_values"]))
    assert widgets["weight_kolors"] == 1.3 and widgets["weight_type"] == "linear" and not report.all_warnings()
    # a value of the wrong kind: default and a warning, never a crash
    new, report = migration.convert(ui("IPAdapterUnifiedLoader", [42]))
    assert new["nodes"][0]["widgets_values"][0] == "standard (medium strength)" and report.all_warnings()


def test_other_packs_nodes_primitives_and_group_nodes(rendered, monkeypatch):
    # an id without an equivalent (none today: a plan that says so stands in for a future one) is kept and reported
    monkeypatch.setitem(plans.PLANS, "IPAdapterTiledBatch", plans.Plan(None, missing="no equivalent in this test"))
    ui = json.loads(json.dumps(rendered["tiled_batch"][0]))
    loader = next(n for n in ui["nodes"] if n["type"] == "IPAdapterUnifiedLoader")
    primitive = {"id": 90, "type": "PrimitiveNode", "pos": [0, 0], "size": [200, 80], "mode": 0, "inputs": [],
                 "outputs": [{"name": "COMBO", "type": "COMBO", "links": [90], "widget": {"name": "preset"}}],
                 "widgets_values": ["PLUS FACE (portraits)"], "properties": {}}
    foreign = {"id": 91, "type": "easy ipadapterApply", "pos": [0, 0], "size": [200, 80], "mode": 0,
               "inputs": [{"name": "ipadapter", "type": "IPADAPTER", "link": 91}], "outputs": [], "widgets_values": [0.5]}
    loader["inputs"].append({"name": "preset", "type": "COMBO", "link": 90, "widget": {"name": "preset"}})
    next(o for o in loader["outputs"] if o["name"] == "ipadapter")["links"].append(91)
    ui["nodes"] += [primitive, foreign]
    ui["links"] += [[90, 90, 0, loader["id"], len(loader["inputs"]) - 1, "COMBO"], [91, loader["id"], 1, 91, 0, "IPADAPTER"]]
    ui["extra"]["groupNodes"] = {"old group": {"nodes": [{"type": "IPAdapterAdvanced", "index": 0}]}}
    new, report = migration.convert(ui)
    nodes = {n["id"]: n for n in new["nodes"]}
    assert nodes[90]["widgets_values"] == ["plus face (portraits)"]
    assert nodes[91] == foreign  # another pack's node is left alone...
    assert any("91 (easy ipadapterApply)" in w and "own type" in w for w in report.all_warnings())  # ...and flagged
    assert any("old group" in w for w in report.all_warnings())
    tiled = next(n for n in new["nodes"] if n["type"] == "IPAdapterTiledBatch")
    assert tiled == next(n for n in ui["nodes"] if n["type"] == "IPAdapterTiledBatch")  # kept, untouched
    assert [n.old for n in report.kept] == ["IPAdapterTiledBatch"]
    assert any("no equivalent in this test" in w for w in report.all_warnings())


def test_bad_input_gives_clear_errors():
    for bad in ({}, [], {"nodes": "x"}, {"1": {"inputs": {}}}, "text"):
        with pytest.raises(ValueError, match="neither a UI-format workflow"):
            migration.convert(bad, source="bad.json")
    assert migration.uses_old_ids({"1": {"class_type": "IPAdapterAdvanced", "inputs": {}}})
    assert not migration.uses_old_ids({"1": {"class_type": "KSampler", "inputs": {}}})


# the command line


def test_the_command_line_runs_with_the_machine_python_and_the_standard_library(rendered, tmp_path):
    python = shutil.which("python3") or sys.executable
    ui, api = rendered["sd15"]
    (tmp_path / "old.json").write_text(json.dumps(ui))
    (tmp_path / "old_api.json").write_text(json.dumps(api))
    (tmp_path / "broken.json").write_text("{not json")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [python, "-I", "-c", "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); sys.modules['torch'] = None; "
           "runpy.run_module('ipadapter_core.migration', run_name='__main__')", str(_host.REPO)]
    proc = subprocess.run([*cmd, str(tmp_path / "old.json"), str(tmp_path / "old_api.json"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "33 IPAdapter Plus node(s) converted" in proc.stdout
    converted = json.loads((tmp_path / "out" / "old.ipakit.json").read_text())
    assert converted == migration.convert(ui)[0]
    assert (tmp_path / "out" / "old_api.ipakit.md").read_text().startswith("# IPAdapter Plus -> IPAdapter Kit")
    proc = subprocess.run([*cmd, str(tmp_path / "broken.json"), str(tmp_path / "missing.json")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "broken.json: not JSON" in proc.stderr and "missing.json" in proc.stderr


# the compatibility node ids


def test_compatibility_ids_mirror_the_older_inputs_and_are_hidden(comfy):
    pack = comfy.pack
    assert set(pack.LEGACY_NODES) == set(migration.CONVERTED_IDS)
    for old_id, (cls, name) in pack.LEGACY_NODES.items():
        assert comfy.NODE_CLASS_MAPPINGS[old_id] is cls and pack.NODE_DISPLAY_NAME_MAPPINGS[old_id] == name
        assert cls.DEPRECATED is True and cls.CATEGORY == "ipadapter_kit/deprecated"
        spec = cls.INPUT_TYPES()
        names = [*spec["required"], *spec["optional"]]
        assert names == [i.name for i in legacy.NODES[old_id].inputs], old_id
        assert len(cls.RETURN_TYPES) == len(legacy.NODES[old_id].outputs) == len(cls.OUTPUT_TOOLTIPS)
    loader = comfy.NODE_CLASS_MAPPINGS["IPAdapterUnifiedLoader"]
    assert loader.VALIDATE_INPUTS(preset="PLUS (high strength)") is True
    assert "not an option" in loader.VALIDATE_INPUTS(preset="MEGA")
    assert "not a number" in comfy.NODE_CLASS_MAPPINGS["IPAdapterWeights"].VALIDATE_INPUTS(weights="1, x", timing="linear")


def test_compatibility_nodes_run_ours(comfy):
    old = comfy.NODE_CLASS_MAPPINGS["IPAdapterWeights"]()
    new = comfy.NODE_CLASS_MAPPINGS["IPAKitWeights"]()
    kwargs = dict(weights="1.0, 0.2", frames=5, start_frame=0, end_frame=9999, add_starting_frames=1, add_ending_frames=0,
                  method="full batch")
    assert old.run(timing="ease_out", **kwargs)[:3] == new.weights(timing="ease in", **kwargs)[:3]
    combined = comfy.NODE_CLASS_MAPPINGS["IPAdapterCombineWeights"]().run(weights_1=[0.5, 1.0], weights_2=0.25)
    assert combined == ([0.5, 1.0, 0.25], 3)


def test_the_older_pack_is_detected_by_its_folder(comfy, tmp_path):
    from importlib import import_module

    compat = import_module(f"{comfy.pack.__name__}.nodes.compat")
    for name, found in (("ComfyUI_IPAdapter_plus", True), ("comfyui_ipadapter_plus", True), ("ComfyUI_IPAdapter_plus-main", True),
                        ("ComfyUI_IPAdapter_plus.disabled", False), ("ipadapter_kit", False), ("renamed", False)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
        assert (compat.older_pack([str(tmp_path)], registered={}) is not None) is found, name
        shutil.rmtree(folder)
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "IPAdapterPlus.py").write_text("")
    assert compat.older_pack([str(tmp_path)], registered={}) == str(tmp_path / "renamed")
    assert compat.older_pack([], registered={"IPAdapterAdvanced": type("Foreign", (), {})}) is not None
    assert compat.older_pack([], registered={"IPAdapterAdvanced": type("Ours", (), {"IPAKIT_COMPAT": True})}) is None


def test_with_the_older_pack_installed_the_pack_leaves_it_the_ids(comfy, tmp_path):
    """A stand-in folder with the older pack's module name next to a second copy of this pack, loaded by ComfyUI's
    own custom-node loader: the copy registers its nodes but none of the older ids."""
    nodes, folder_paths = comfy.nodes, comfy.folder_paths
    custom = tmp_path / "custom_nodes"
    (custom / "ComfyUI_IPAdapter_plus").mkdir(parents=True)
    (custom / "ComfyUI_IPAdapter_plus" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (custom / "ipakit_probe").symlink_to(_host.REPO, target_is_directory=True)
    saved = (dict(nodes.NODE_CLASS_MAPPINGS), dict(nodes.NODE_DISPLAY_NAME_MAPPINGS), dict(nodes.EXTENSION_WEB_DIRS))
    folder_paths.folder_names_and_paths["custom_nodes"][0].append(str(custom))
    try:
        loaded = nodes.load_custom_node(str(custom / "ipakit_probe"))
        if inspect.iscoroutine(loaded):  # current ComfyUI loads custom nodes asynchronously
            loaded = asyncio.run(loaded)
        assert loaded is not False
        probe = next(m for name, m in sys.modules.items() if name.endswith("ipakit_probe")
                     and str(getattr(m, "__file__", "")).startswith(str(custom)))
        assert probe.LEGACY_NODES == {} and not set(probe.NODE_CLASS_MAPPINGS) & set(legacy.NODES)
        assert "IPAKitApply" in probe.NODE_CLASS_MAPPINGS and probe.WEB_DIRECTORY == "./web"
    finally:
        folder_paths.folder_names_and_paths["custom_nodes"][0].remove(str(custom))
        for table, before in zip((nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS, nodes.EXTENSION_WEB_DIRS), saved):
            table.clear()
            table.update(before)
        for name in [m for m in sys.modules if "ipakit_probe" in m]:
            del sys.modules[name]


# the route and the host's node replacement


def test_the_route_answers_bad_input_with_400_and_converts_workflows(comfy, rendered):
    from importlib import import_module

    routes = import_module(f"{comfy.pack.__name__}.nodes._migration_routes")
    for body in (b"{oops", b"[]", b'{"nodes": 3}', "\u00e9".encode("latin-1")):
        status, answer = routes.convert_body(body)
        assert status == 400 and answer["error"]
    status, answer = routes.convert_body(json.dumps({"workflow": rendered["sd15"][0]}).encode())
    assert status == 200 and answer["summary"].startswith("workflow: 33 IPAdapter Plus node(s) converted")
    assert not fixtures.old_ids(answer["workflow"]) and answer["markdown"].startswith("#")
    assert routes.register(None, []) is False  # no server in this process: nothing to register


def test_node_replacements_use_only_inputs_both_sides_have(comfy):
    from importlib import import_module

    routes = import_module(f"{comfy.pack.__name__}.nodes._migration_routes")
    mappings = routes.node_replacements()
    assert 20 <= len(mappings) < len(migration.CONVERTED_IDS)
    for m in mappings:
        old, new = legacy.NODES[m["old_node_id"]], dict((e[0], e) for e in ours.NODES[m["new_node_id"]][0])
        assert m["old_widget_ids"] == [i.name for i in old.widgets]
        for entry in m["input_mapping"]:
            assert entry["new_id"] in new and ("set_value" in entry or old.input(entry["old_id"]) is not None)
    assert not any(m["old_node_id"] in ("IPAdapterUnifiedLoader", "IPAdapter", "IPAdapterWeights") for m in mappings)


def test_the_converter_needs_only_the_standard_library():
    probe = ("import sys; before = set(sys.modules); import ipadapter_core.migration, ipadapter_core.migration.__main__; "
             "print(','.join(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=_host.REPO, capture_output=True, text=True, check=True).stdout
    assert set(out.strip().split(",")) - {""} == {"ipadapter_core"}


def test_node_replacement_fields_follow_the_hosts_signature(comfy):
    """ComfyUI releases differ: NodeReplace took old_widget_ids only from some release on. No reachable ComfyUI has
    the registration API, so the two published signatures are written out here."""
    from importlib import import_module

    routes = import_module(f"{comfy.pack.__name__}.nodes._migration_routes")

    class Early:
        def __init__(self, new_node_id, old_node_id, input_mapping=None, output_mapping=None):
            pass

    class Later:
        def __init__(self, new_node_id, old_node_id, old_widget_ids=None, input_mapping=None, output_mapping=None):
            pass

    class Open:
        def __init__(self, **fields):
            pass

    assert routes._parameters(Early) == {"new_node_id", "old_node_id", "input_mapping", "output_mapping"}
    assert routes._parameters(Later) == routes._parameters(Early) | {"old_widget_ids"}
    assert routes._parameters(Open) is None
    assert set(routes.node_replacements()[0]) == routes._parameters(Later)
