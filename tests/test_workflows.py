"""The example workflows on a real ComfyUI server (127.0.0.1): the pack in /object_info, the committed UI and API
files, every workflow queued through the HTTP API, clear errors from failing nodes, and the README's main job.

The workflows name published model files; dev.authoring.examples.STAND_INS maps them onto the random-weight
stand-ins generated here, and FAST samples 64 px in one step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import _host
from dev.authoring import examples, graph, pictures, workflows
from dev.standins import comfy_models, names

pytestmark = pytest.mark.slow

FRONTEND_ONLY = set(graph.FRONTEND_ONLY)


@pytest.fixture(scope="module")
def ready(server, models_dir):
    """Every stand-in model and reference image the examples need, on the session server (the Flux/SD3.5 ones only
    on a ComfyUI that can run them)."""
    from dev.host.comfy_client import ComfyClient

    with ComfyClient(server.url) as client:
        catalogue = client.object_info()
    for wf in examples.WORKFLOWS:
        if wf.current_only:
            if workflows.renderable(wf, catalogue):
                from dev.standins import dit_adapters, dit_models

                dit_models.ensure_models_in_child(models_dir, dit_models.FAMILIES[wf.family])
                for variant in wf.adapters:
                    dit_adapters.ensure(variant, models_dir)
            continue
        comfy, adapters = wf.stand_ins()
        comfy_models.ensure_models_in_child(models_dir, comfy)
        for variant, subdir, kwargs in adapters:
            _host.ensure_ipadapter(variant, models_dir, subdir=subdir, **kwargs)
        if wf.faces:
            from dev.standins.insightface_pack import ensure_pack

            ensure_pack(models_dir / "insightface", "buffalo_l")
    pictures.write_references(server.input_dir)
    return server


@pytest.fixture(scope="module")
def info(ready):
    from dev.host.comfy_client import ComfyClient

    with ComfyClient(ready.url) as client:
        return client.object_info()


def _ui(name: str) -> dict:
    return json.loads((workflows.WORKFLOWS_DIR / f"{name}.json").read_text())


def _api(name: str) -> dict:
    return json.loads((workflows.API_DIR / f"{name}.json").read_text())


# the catalogue and the committed files


def test_every_pack_node_is_in_object_info_with_description_and_tooltips(info, comfy):
    ids = list(comfy.pack.NODE_CLASS_MAPPINGS)
    assert len(ids) >= 12
    for node_id in ids:
        assert node_id in info, f"{node_id} is missing from /object_info"
        entry = info[node_id]
        assert entry["description"].strip(), f"{node_id} has no description"
        assert entry["category"].startswith("ipadapter_kit")
        for group in ("required", "optional"):
            for name, spec in (entry["input"].get(group) or {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert str(opts.get("tooltip", "")).strip(), f"{node_id}.{name} has no tooltip"


def test_committed_workflows_are_what_the_definitions_render(info):
    from dev.host import setup_env

    if setup_env.default_comfy_dir().resolve() != setup_env.BUNDLED_COMFYUI.resolve():
        pytest.skip("the committed UI files are rendered against the vendored ComfyUI's /object_info (core nodes differ elsewhere)")
    assert workflows.stale_files(info) == [], "run: .venv/bin/python -m dev.authoring.workflows write"
    for wf in examples.WORKFLOWS:
        thumb = workflows.WORKFLOWS_DIR / f"{wf.name}.jpg"
        assert thumb.read_bytes()[:2] == b"\xff\xd8" and thumb.stat().st_size < 30_000, thumb
        ui = _ui(wf.name)
        assert ui["version"] == 0.4 and ui["extra"]["ipakit"]["family"] == wf.family
        assert any(n["type"] == "Note" and len(n["widgets_values"][0]) > 100 for n in ui["nodes"]), f"{wf.name} explains nothing"
        positions = {tuple(n["pos"]) for n in ui["nodes"]}
        assert len(positions) == len(ui["nodes"]), f"{wf.name}: nodes on top of each other"
        api = _api(wf.name)
        assert all(k.isdigit() and {"class_type", "inputs"} <= set(node) for k, node in api.items())
        assert len(api) == sum(n["type"] not in FRONTEND_ONLY for n in ui["nodes"])


def test_workflows_use_only_pack_and_core_nodes(comfy):
    ours = set(comfy.pack.NODE_CLASS_MAPPINGS)
    extras = str(comfy.comfy_dir / "comfy_extras") + os.sep  # the 2024 host names extras by path, current ComfyUI as modules
    core = {name for name, cls in comfy.NODE_CLASS_MAPPINGS.items()
            if cls.__module__ == "nodes" or cls.__module__.startswith(("comfy_extras.", extras))}
    files = sorted(workflows.WORKFLOWS_DIR.rglob("*.json"))
    assert len(files) == 2 * len(examples.WORKFLOWS)
    if "EmptySD3LatentImage" not in comfy.NODE_CLASS_MAPPINGS:  # a host without Flux/SD3 lacks their core nodes
        dit = {wf.name for wf in examples.WORKFLOWS if wf.current_only}
        files = [p for p in files if p.stem not in dit]
    for path in files:
        foreign = graph.node_types(json.loads(path.read_text())) - ours - core - FRONTEND_ONLY
        assert not foreign, f"{path.name} uses nodes that are neither the pack's nor ComfyUI core: {sorted(foreign)}"


def test_the_ui_check_catches_drift(info):
    ui = _ui("basic_image_prompt")
    assert graph.check_api(graph.localize(graph.to_api(ui, info), examples.STAND_INS["sd15"]), info) == []

    apply = next(n for n in ui["nodes"] if n["type"] == "IPAKitApply")
    short = json.loads(json.dumps(ui))
    next(n for n in short["nodes"] if n["id"] == apply["id"])["widgets_values"].pop()
    with pytest.raises(graph.WorkflowError, match="8 widget values for 9 widgets"):
        graph.to_api(short, info)

    # the node gained a widget: the saved values no longer line up with its inputs
    grown = json.loads(json.dumps(info))
    required = grown["IPAKitApply"]["input"]["required"]
    grown["IPAKitApply"]["input"]["required"] = {"weight_scale": ["FLOAT", {"default": 1.0}], **required}
    with pytest.raises(graph.WorkflowError, match="9 widget values for 10 widgets"):
        graph.to_api(ui, grown)

    renamed = json.loads(json.dumps(info))
    spec = renamed["IPAKitApply"]["input"]["required"]
    renamed["IPAKitApply"]["input"]["required"] = {("strength" if k == "weight" else k): v for k, v in spec.items()}
    problems = graph.check_api(graph.to_api(ui, info), renamed)
    assert any("unknown input 'weight'" in p for p in problems) and any("'strength' is missing" in p for p in problems)

    bad = graph.localize(graph.to_api(ui, info), {("IPAKitApply", "weight_type"): "sideways"})
    assert any("'sideways' is not one of" in p for p in graph.check_api(bad, info))


# every example, queued through the API


_saved_embeds: dict[str, str] = {}


def _tables(wf) -> list[dict]:
    tables = [examples.STAND_INS[wf.family], examples.FAST]
    if wf.after == "embeds_1_save":
        tables.append({("IPAKitLoadEmbeds", "embeds"): _saved_embeds["name"]})
    return tables


def _run(wf, client) -> dict:
    info = client.object_info()  # now: Load Image and Load Embeds list the files there at this moment
    api = graph.to_api(_ui(wf.name), info)
    assert api == _api(wf.name), f"workflows/api/{wf.name}.json is not the conversion of workflows/{wf.name}.json"
    prompt = graph.localize(api, *_tables(wf))
    problems = graph.check_api(prompt, info)
    assert not problems, f"{wf.name} does not fit the nodes' inputs:\n" + "\n".join(problems)
    entry = client.wait(client.queue(prompt), timeout=900)
    assert entry["status"]["status_str"] == "success"
    return entry


@pytest.mark.parametrize("name", [wf.name for wf in examples.WORKFLOWS])
def test_example_workflow_runs_on_the_server(name, ready, client, tmp_path):
    wf = examples.BY_NAME[name]
    if wf.current_only and not workflows.renderable(wf, client.object_info()):
        pytest.skip(f"{name} needs a ComfyUI with Flux/SD3.5 (run with IPAKIT_COMFYUI=<current ComfyUI>)")
    if wf.after and not _saved_embeds:
        _record_embeds(_run(examples.BY_NAME[wf.after], client))
    entry = _run(wf, client)
    if name == "embeds_1_save":
        _record_embeds(entry)
    saves = [nid for nid, n in _api(name).items() if n["class_type"] == "SaveImage"]
    for nid in saves:
        images = entry["outputs"][nid]["images"]
        assert images and images[0]["type"] == "output"
        on_disk = ready.output_dir / images[0]["subfolder"] / images[0]["filename"]
        width, height = _host.png_size(on_disk)
        assert width == height and width in (64, 256), (name, width, height)
        assert client.download(dict(images[0]), tmp_path).read_bytes() == on_disk.read_bytes()
    if name == "faceid":
        preview = next(nid for nid, n in _api(name).items() if n["class_type"] == "PreviewImage")
        assert _host.png_size(client.download(entry["outputs"][preview]["images"][0], tmp_path)) == (224, 224)


def _record_embeds(entry: dict) -> None:
    saved = [e for out in entry["outputs"].values() for e in out.get("embeds", [])]
    assert len(saved) == 1 and saved[0]["filename"].endswith(".safetensors")
    _saved_embeds["name"] = "/".join(filter(None, (saved[0]["subfolder"], saved[0]["filename"]))) + " [output]"


# failures


def test_failing_nodes_report_clear_errors_and_the_server_keeps_serving(ready, client):
    from dev.host.comfy_client import ExecutionFailed, PromptRejected

    basic = graph.localize(_api("basic_image_prompt"), examples.STAND_INS["sd15"], examples.FAST)
    loader_id = next(nid for nid, n in basic.items() if n["class_type"] == "IPAKitUnifiedLoader")
    apply_id = next(nid for nid, n in basic.items() if n["class_type"] == "IPAKitApply")

    def with_model_loader(file_name: str) -> dict:
        prompt = json.loads(json.dumps(basic))
        prompt["90"] = {"class_type": "IPAKitModelLoader", "inputs": {"ipadapter_file": file_name}}
        prompt["91"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": examples.VIT_H}}
        prompt[apply_id]["inputs"].update(ipadapter=["90", 0], clip_vision=["91", 0], model=prompt[loader_id]["inputs"]["model"])
        del prompt[loader_id]
        return prompt

    # a file name that is not there: rejected at queue time, naming the node and the file
    with pytest.raises(PromptRejected) as rejected:
        client.queue(with_model_loader("ip-adapter-no-such-file.safetensors"))
    assert rejected.value.status == 400
    errors = rejected.value.node_errors["90"]
    assert errors["class_type"] == "IPAKitModelLoader" and errors["errors"][0]["type"] == "value_not_in_list"
    assert "ip-adapter-no-such-file.safetensors" in str(rejected.value)

    # an SDXL adapter on an SD1.5 model: fails at run time with a message that names both and the fix
    sdxl = f"{names.SDXL_SMALL_SUBDIR}/ip-adapter-plus_sdxl_vit-h.safetensors"
    with pytest.raises(ExecutionFailed) as failed:
        client.run(with_model_loader(sdxl), timeout=600)
    assert failed.value.node_id == apply_id and failed.value.node_type == "IPAKitApply"
    message = failed.value.exception_message
    assert "adapter for SDXL" in message and "SD1.5" in message and "Unified Loader" in message

    # a preset without a file for this model family
    no_file = json.loads(json.dumps(basic))
    no_file[loader_id]["inputs"]["preset"] = "faceid portrait unnorm - SDXL only"
    with pytest.raises(ExecutionFailed) as failed:
        client.run(no_file, timeout=600)
    assert failed.value.node_type == "IPAKitUnifiedLoader"
    assert re.search(r"has no SD1\.?5 version; pick another preset", failed.value.exception_message)

    # a missing embeds file is refused at queue time by the node's own check
    load = graph.localize(_api("embeds_2_load"), examples.STAND_INS["sd15"], examples.FAST,
                              {("IPAKitLoadEmbeds", "embeds"): "gone.safetensors"})
    with pytest.raises(PromptRejected) as rejected:
        client.queue(load)
    assert "embeds file not found: gone.safetensors" in str(rejected.value)

    # and the next prompt runs
    basic[next(nid for nid, n in basic.items() if n["class_type"] == "KSampler")]["inputs"]["seed"] = 7
    entry = client.run(basic, timeout=600)
    save_id = next(nid for nid, n in basic.items() if n["class_type"] == "SaveImage")
    assert entry["status"]["status_str"] == "success" and entry["outputs"][save_id]["images"] and ready.alive()


# the README's first command


@pytest.mark.ends_session_server
def test_main_job_sets_up_runs_the_basic_workflow_and_reuses_everything(ready, client, tmp_path):
    # the main job starts a server of its own: the session server's models must not stay resident beside it
    # (its cached node outputs hold them, /free or not), so it stops here; conftest runs this test last
    ready.stop()
    python = shutil.which("python3") or sys.executable
    cmd = [python, "dev/run_main.py", "--models", str(names.MODELS_CACHE), "--work-dir", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IPAKIT_COMFYUI", "IPAKIT_MODELS")}
    proc = subprocess.run(cmd, cwd=_host.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    for step in ("[1/4] setup", "[2/4] models", "[3/4] server", "[4/4] job"):
        assert step in out
    assert "random-weight stand-ins" in out and "noise" in out
    assert "generating" not in out  # the test models were there already: nothing is regenerated
    images = [line.strip() for line in out.splitlines() if line.strip().endswith(".png")]
    assert images and all(_host.png_size(path) == (64, 64) for path in images)
    assert str(tmp_path / "run" / "images") in images[0]
