"""Old workflows on a real ComfyUI server (127.0.0.1): the fixtures of dev/migration/fixtures.py in the older
IPAdapter Plus pack's UI and API formats, converted and checked against /object_info, then queued on the stand-in
models; the old-id API prompts (answered by the compatibility nodes) give the same pixels as the converted ones;
the pack's conversion route answers, and refuses junk without harm.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

import _host
from dev.authoring import graph, pictures
from dev.migration import fixtures
from dev.standins import comfy_models
from ipadapter_core import migration

pytestmark = pytest.mark.slow

NOT_HERE = ("ipa-faceid-plus.safetensors", "ipakit-random-sdxl-small.safetensors")  # kolors: no Kolors UNet, files absent


@pytest.fixture(scope="module")
def ready(server, models_dir):
    """The stand-ins the runnable fixtures need, the reference images and a legacy .ipadpt in the server's input."""
    import torch

    comfy_models.ensure_models_in_child(models_dir, ["sd15", "vit-h"])
    for name in fixtures.RUNNABLE:
        for variant in fixtures.STAND_INS[name]:
            _host.ensure_ipadapter(variant, models_dir)
    from dev.standins.insightface_pack import ensure_pack

    ensure_pack(models_dir / "insightface", "buffalo_l")
    pictures.write_references(server.input_dir)
    embeds = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(3)) * 0.1  # plus SD1.5: penultimate tokens
    torch.save(embeds, server.input_dir / fixtures.LEGACY_EMBEDS)
    return server


@pytest.fixture(scope="module")
def info(ready):
    from dev.host.comfy_client import ComfyClient

    with ComfyClient(ready.url) as client:
        return client.object_info()


@pytest.fixture(scope="module")
def rendered(info):
    core = {k: v for k, v in info.items() if k not in migration.LEGACY}
    return {name: fixtures.render(name, core) for name in fixtures.FIXTURES}


def test_the_older_ids_are_served_and_documented(info):
    for old_id in migration.CONVERTED_IDS:
        entry = info[old_id]
        assert entry["category"] == "ipadapter_kit/deprecated" and entry["description"].strip()
        names = [*entry["input"]["required"], *(entry["input"].get("optional") or {})]
        assert names == [i.name for i in migration.LEGACY[old_id].inputs]
    assert set(migration.CONVERTED_IDS) == set(migration.LEGACY)  # all 37 are served


@pytest.mark.parametrize("name", list(fixtures.FIXTURES))
def test_converted_fixtures_fit_the_catalogue_with_no_unknown_node_or_widget(name, rendered, info):
    ui, api = rendered[name]
    new_ui, report = migration.convert(ui, source=name)
    new_api, _ = migration.convert(api, source=name)
    assert graph.to_api(new_ui, info) == new_api
    problems = [p for p in graph.check_api(new_api, info) if not any(f in p for f in NOT_HERE)]
    assert problems == [], f"{name}:\n" + "\n".join(problems)
    assert [p for p in graph.check_api(api, info) if not any(f in p for f in NOT_HERE)] == []  # the old ids fit too


def _pixels(client, entry: dict, tmp_path, tag: str) -> bytes:
    from PIL import Image

    saved = [image for out in entry["outputs"].values() for image in out.get("images", []) if image["type"] == "output"]
    assert len(saved) == (2 if tag == "tiled_batch" else 1), entry["outputs"]  # tiled_batch: two latent frames
    pixels = b""
    for i, ref in enumerate(saved):
        with Image.open(client.download(dict(ref), tmp_path / f"{tag}{i}")) as image:
            assert image.size == (64, 64)
            pixels += image.convert("RGB").tobytes()
    return pixels


def test_an_old_id_api_prompt_runs_and_matches_the_converted_prompt_bit_for_bit(ready, rendered, client, tmp_path):
    old_api = rendered["api_route"][1]
    new_api, report = migration.convert(old_api, source="api_route")
    assert not fixtures.old_ids(new_api) and {n.old for n in report.converted} >= {"IPAdapterEncoder", "IPAdapterEmbeds"}
    old = client.run(old_api, timeout=900)  # the older ids, answered by the compatibility nodes
    new = client.run(new_api, timeout=900)
    assert old["status"]["status_str"] == new["status"]["status_str"] == "success"
    assert _pixels(client, old, tmp_path, "old") == _pixels(client, new, tmp_path, "new")
    reference = client.run(graph.localize(new_api, {("IPAKitApply", "weight"): 0.0, ("IPAKitApplyEmbeds", "weight"): 0.0}),
                           timeout=900)
    assert _pixels(client, reference, tmp_path, "none") != _pixels(client, new, tmp_path, "new2")  # the adapters act


@pytest.mark.parametrize("name", ("sd15", "faceid"))
def test_converted_workflows_run_on_core_and_our_nodes(name, ready, rendered, info, client, tmp_path):
    converted, report = migration.convert(rendered[name][0], source=name)
    assert report.converted and not report.kept
    entry = client.run(graph.to_api(converted, info), timeout=900)
    assert entry["status"]["status_str"] == "success"
    _pixels(client, entry, tmp_path, name)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_route_converts_and_refuses_junk_without_harm(ready, rendered, client):
    with urllib.request.urlopen(f"{ready.url}/ipadapter_kit/migration", timeout=30) as resp:
        about = json.loads(resp.read())
    assert about["older_pack"] is None and set(about["legacy_ids_registered"]) == set(migration.CONVERTED_IDS)
    assert not about["kept_ids"] and len(about["old_ids"]) == 37
    status, answer = _post(f"{ready.url}/ipadapter_kit/migration/convert", json.dumps(rendered["faceid"][0]).encode())
    assert status == 200 and not fixtures.old_ids(answer["workflow"]) and "IPAKitApplyFaceID" in answer["markdown"]
    for junk in (b"", b"{", b'{"nodes": []}', b"\xff\xfe", b'"just text"'):
        status, answer = _post(f"{ready.url}/ipadapter_kit/migration/convert", junk)
        assert status == 400 and answer["error"], junk
    from dev.host.comfy_client import PromptRejected

    bad = json.loads(json.dumps(rendered["api_route"][1]))  # one output: a bad node rejects the whole prompt
    loader = next(nid for nid, n in bad.items() if n["class_type"] == "IPAdapterUnifiedLoader")
    bad[loader]["inputs"]["preset"] = "MEGA"
    with pytest.raises(PromptRejected) as rejected:
        client.queue(bad)
    assert "'MEGA' is not an option" in str(rejected.value)
    assert ready.alive() and client.system_stats()


# the frontend extension, in a real headless browser

CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright never downloads a browser here
BROWSER_TIMEOUT_MS = 60_000


def _playwright():
    """playwright's sync API, or skip (fail under CI, where the test setup must have installed both)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [what for what, ok in (("the playwright package", sync_playwright is not None),
                                     (CHROMIUM, os.path.exists(CHROMIUM))) if not ok]
    if missing:
        message = f"needs {' and '.join(missing)}: python3 dev/run_tests.py installs them (dev/host/setup_env.py)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


def test_the_frontend_converts_an_old_workflow_on_load_and_queues_it(ready, rendered, client, tmp_path):
    """The bundled ComfyUI frontend loads an old UI workflow through its Load button; the pack's extension converts
    it (no missing-node dialog, a report panel), and queueing it from the page runs it."""
    sync_playwright = _playwright()
    ui, _ = rendered["faceid"]
    path = tmp_path / "old_faceid.json"
    path.write_text(json.dumps(ui))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, timeout=BROWSER_TIMEOUT_MS,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error) + " @ " + (error.stack or "")[:600]))
            page.goto(ready.url, wait_until="load")
            page.wait_for_function("() => window.app && app.graph && (app.extensions || [])"
                                   ".some(e => e.name === 'ipadapter_kit.migration')")
            # errors while the page starts count only when they come from our extension: the current frontend
            # (1.27.10, ComfyUI 0.3.64) throws one of its own in a setting's onChange, with or without this pack
            assert not [e for e in errors if "ipadapter_kit" in e], errors
            errors.clear()
            page.set_input_files("#comfy-file-input", str(path))
            page.wait_for_selector("#ipakit-migration-report")
            types = set(page.evaluate("() => app.graph._nodes.map(n => n.type)"))
            assert not types & set(migration.LEGACY) and "IPAKitApplyFaceID" in types, types
            assert page.locator(".comfy-missing-nodes").count() == 0, "a missing-node dialog is shown"
            assert "7 IPAdapter Plus node(s) converted" in page.inner_text("#ipakit-migration-report .ipakit-summary")
            assert page.evaluate("() => LiteGraph.registered_node_types['IPAdapterFaceID'].skip_list === true")
            page.screenshot(path=str(tmp_path / "converted.png"))
            with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as posted:
                page.evaluate("() => { app.queuePrompt(0, 1); }")
            answer = posted.value
            assert answer.status == 200, answer.text()
            entry = client.wait(answer.json()["prompt_id"], timeout=600)
            assert entry["status"]["status_str"] == "success"
            assert any(out.get("images") for out in entry["outputs"].values())
            assert errors == []
        finally:
            browser.close()
