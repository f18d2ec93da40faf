"""Hostile and damaged files, and names that try to leave their folders (issue 15, the files half).

Every file the pack opens goes through `ipadapter_core.safe_load`: pickles load as plain tensors only, a pickle
that names code is refused as such, a damaged file is reported as damaged, an absurd safetensors header is
refused before reading. File names resolve only inside their folders; any other name gets the missing-file
answer. The pure tests build each hostile file here (a pickle whose `__reduce__` would create a marker file);
the server tests put them through `/prompt` on one module-scoped server with its own model folders (so no
hostile file ever lands in the shared model cache) and check the server keeps serving.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import _host
from ipadapter_core import embeds_io, safe_load
from ipadapter_core.checkpoint import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parent.parent
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".ipadpt")
FACEID = "ip-adapter-faceid_sd15.safetensors"
TORCH_ADVICE = ("weights_only", "Weights only", "arbitrary code")
OWN_SERVER = True  # conftest: these server tests run before the session server starts (never two at once)


# hostile and damaged files


class Payload:
    """Unpickling this runs `Path(marker).touch()`: the marker file proves code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def evil(path: Path, marker: Path, *, legacy: bool = False, tensor_only: bool = False) -> Path:
    """A torch file holding real tensors plus the payload (zip format, or the legacy one)."""
    obj = Payload(marker) if tensor_only else {"w": torch.zeros(2, 2), "payload": Payload(marker)}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def truncated(path: Path) -> Path:
    torch.save({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 8)
    return path


def huge_header(path: Path) -> Path:
    """A safetensors header length field claiming a terabyte."""
    path.write_bytes(struct.pack("<Q", 1 << 40) + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    return path


def header_past_end(path: Path) -> Path:
    """A header length larger than the file."""
    path.write_bytes(struct.pack("<Q", 5000) + b'{"__metadata__": {}}')
    return path


def embeds_with(path: Path, **meta) -> Path:
    import safetensors.torch

    base = {"format": embeds_io.FORMAT, "format_version": "1", "clip_output": "penultimate", "count": "1",
            "shapes": json.dumps({"cond.clip": [1, 257, 1280]})}
    base.update(meta)
    safetensors.torch.save_file({"cond.clip": torch.zeros(1, 257, 1280)}, str(path), metadata=base)
    return path


def _assert_refused_as_code(message: str, name: str) -> None:
    assert name in message and "refused: this file contains code, not only tensors" in message, message
    assert not any(a in message for a in TORCH_ADVICE), message


def _assert_damaged(message: str, name: str) -> None:
    assert name in message and "re-download" in message.lower(), message
    assert "contains code" not in message and not any(a in message for a in TORCH_ADVICE), message


# pure: the readers


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_a_pickle_that_names_code_is_refused_and_never_runs(tmp_path, suffix, legacy):
    marker = tmp_path / "marker"
    path = evil(tmp_path / f"evil{suffix}", marker, legacy=legacy)
    with pytest.raises(safe_load.UnsafeFileError) as info:
        safe_load.load_file(path, what="model")
    _assert_refused_as_code(str(info.value), path.name)
    if suffix in (".bin", ".pth", ".pt", ".ckpt"):
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        _assert_refused_as_code(str(info.value), path.name)
    if suffix == ".ipadpt":
        with pytest.raises(ValueError) as info:
            embeds_io.load_embeds(path)
        _assert_refused_as_code(str(info.value), path.name)
    assert not marker.exists()


def test_the_payload_is_live(tmp_path):
    """The hostile files are real: an unsafe load runs the payload (this is what the pack never does)."""
    marker = tmp_path / "marker"
    torch.load(evil(tmp_path / "evil.bin", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("make", [truncated, garbage, lambda p: (p.write_bytes(b""), p)[1]], ids=["truncated", "garbage", "empty"])
@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ipadpt"])
def test_a_damaged_pickle_is_reported_as_damaged(tmp_path, make, suffix):
    path = make(tmp_path / f"broken{suffix}")
    with pytest.raises(safe_load.DamagedFileError) as info:
        safe_load.load_file(path, what="model")
    _assert_damaged(str(info.value), path.name)
    reader = embeds_io.load_embeds if suffix == ".ipadpt" else read_checkpoint
    with pytest.raises(ValueError) as info:
        reader(path)
    _assert_damaged(str(info.value), path.name)


def test_a_truncated_legacy_pickle_is_damaged_not_code(tmp_path):
    path = tmp_path / "old.bin"
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(safe_load.DamagedFileError) as info:
        safe_load.load_file(path)
    _assert_damaged(str(info.value), "old.bin")


@pytest.mark.parametrize("make", [huge_header, header_past_end], ids=["terabyte-header", "header-past-end"])
def test_absurd_safetensors_headers_are_refused_before_reading(tmp_path, monkeypatch, make):
    import safetensors
    import safetensors.torch

    def never(*a, **k):
        raise AssertionError("the file was handed to safetensors")

    monkeypatch.setattr(safetensors.torch, "load_file", never)
    monkeypatch.setattr(safetensors, "safe_open", never)
    path = make(tmp_path / "big.safetensors")
    started = time.perf_counter()
    for reader in (lambda p: safe_load.load_file(p, what="model"), read_checkpoint, embeds_io.load_embeds):
        with pytest.raises(ValueError) as info:
            reader(path)
        assert "big.safetensors" in str(info.value) and "header claims" in str(info.value)
        assert "Refused before reading" in str(info.value) and "Re-download" in str(info.value)
    assert time.perf_counter() - started < 1.0


def test_plain_tensor_files_still_load(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "a.ckpt")
    torch.save({"w": torch.ones(2)}, tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load.state_dict(tmp_path / "a.ckpt")["w"], torch.ones(2))
    assert torch.equal(safe_load.state_dict(tmp_path / "b.pt")["w"], torch.ones(2))


@pytest.mark.parametrize(
    "meta, what",
    [
        ({"format_version": "one"}, "format_version is 'one', not a number"),
        ({"clip_output": "pooled"}, "clip_output is 'pooled'; this pack knows"),
        ({"adapter_kind": "mystery"}, "adapter_kind is 'mystery'; this pack knows"),
        ({"shapes": "{not json"}, "its `shapes` metadata is not a JSON object"),
        ({"shapes": "[1, 2]"}, "its `shapes` metadata is not a JSON object"),
        ({"face_normed": "maybe"}, "face_normed is 'maybe'"),
        ({"shapes": json.dumps({"cond.clip": [2, 257, 1280]})}, "does not match its recorded shape"),
    ],
)
def test_damaged_embeds_metadata_names_the_file_and_the_fix(tmp_path, meta, what):
    path = embeds_with(tmp_path / "saved.safetensors", **meta)
    with pytest.raises(ValueError) as info:
        embeds_io.load_embeds(path)
    message = str(info.value)
    assert type(info.value) is ValueError and "saved.safetensors: damaged embeds file" in message and what in message
    assert "Save Embeds" in message


# pure: names that try to leave their folders


@pytest.fixture
def folders_module(monkeypatch, tmp_path):
    """nodes/_folders.py over a stand-in `folder_paths` that behaves like ComfyUI's (both hosts' get_full_path)."""
    import os

    root = tmp_path / "models" / "ipadapter"
    root.mkdir(parents=True)
    (root / "good.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "secret.safetensors").write_bytes(b"x")
    fake = types.ModuleType("folder_paths")
    fake.folder_names_and_paths = {"ipadapter": ([str(root)], {".safetensors"})}

    def get_full_path(kind, name):
        name = os.path.relpath(os.path.join("/", name), "/")
        full = os.path.join(fake.folder_names_and_paths[kind][0][0], name)
        return full if os.path.isfile(full) else None

    fake.get_full_path = get_full_path
    fake.get_folder_paths = lambda kind: fake.folder_names_and_paths[kind][0]
    fake.get_filename_list = lambda kind: ["good.safetensors"]
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    spec = importlib.util.spec_from_file_location("_ipakit_folders_under_test", REPO / "nodes" / "_folders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, root


ESCAPES = ["../secret.safetensors", "/etc/passwd", "sub/../../secret.safetensors", "good.safetensors\0.png", "C:/Windows/win.ini",
           "C:secret.safetensors", "\\\\server\\share\\x.safetensors", ""]


@pytest.mark.parametrize("name", ESCAPES)
def test_a_name_outside_the_folder_gets_the_missing_file_answer(folders_module, name):
    folders, root = folders_module
    assert folders.resolve("ipadapter", "good.safetensors") == root / "good.safetensors"
    with pytest.raises(FileNotFoundError) as escaped:
        folders.resolve("ipadapter", name)
    with pytest.raises(FileNotFoundError) as missing:
        folders.resolve("ipadapter", "nope.safetensors")
    assert str(escaped.value).replace(f"'{name}'", "'X'") == str(missing.value).replace("'nope.safetensors'", "'X'")
    assert folders.file_in(root, name) is None


def test_plain_names_and_subfolders_resolve(folders_module):
    folders, root = folders_module
    (root / "sub").mkdir()
    (root / "sub" / "a.bin").write_bytes(b"x")
    assert folders.file_in(root, "sub/a.bin") == root / "sub" / "a.bin"
    assert folders.file_in(root, "./sub/a.bin") is not None
    assert not folders.is_plain_name("sub/../../x") and folders.is_plain_name("sub/x..y.bin")


# in process: InsightFace packs


def test_an_insightface_pack_of_pickles_runs_nothing(tmp_path):
    pytest.importorskip("insightface")
    from ipadapter_core import faces

    marker = tmp_path / "marker"
    folder = tmp_path / "insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    for name in faces.PACK_FILES["buffalo_l"][0]:
        evil(folder / name, marker)
    with pytest.raises(Exception) as info:
        faces.load_face_analysis(tmp_path / "insightface", "buffalo_l", "CPU")
    assert not marker.exists(), "loading an InsightFace pack ran code"
    assert "det_10g.onnx" in str(info.value) or "buffalo_l" in str(info.value) or str(folder) in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["det_10g.onnx", "w600k_r50.onnx"])
def test_a_damaged_insightface_pack_names_the_file_and_says_download_again(tmp_path, name):
    pytest.importorskip("insightface")
    from dev.standins.insightface_pack import ensure_pack
    from ipadapter_core import faces

    folder = ensure_pack(tmp_path / "insightface", "buffalo_l", modules="detrec")
    assert folder == tmp_path / "insightface" / "models" / "buffalo_l"
    faces.load_face_analysis(tmp_path / "insightface", "buffalo_l", "CPU")  # whole, it loads
    (folder / name).write_bytes((folder / name).read_bytes()[:4000])  # an interrupted download
    with pytest.raises(RuntimeError, match=rf"pack buffalo_l in {folder} is damaged: onnxruntime cannot read {name} "
                                           r"\(.+\)\. Download the pack again"):
        faces.load_face_analysis(tmp_path / "insightface", "buffalo_l", "CPU")


# the real server: one per module, with model folders of its own


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    """A ComfyUI server whose model folders hold the stand-ins this module needs plus the hostile files it adds."""
    from dev.authoring import pictures
    from dev.host import comfy_host
    from dev.standins import names

    plus = _host.ensure_ipadapter("plus_sd15", models_dir)
    faceid = _host.ensure_ipadapter("faceid_sd15", models_dir)
    assert faceid.name == FACEID
    root = tmp_path_factory.mktemp("hostile-models")
    (root / "checkpoints").symlink_to(models_dir / "checkpoints", target_is_directory=True)
    for kind, files in (("clip_vision", [models_dir / "clip_vision" / names.VIT_H]), ("ipadapter", [plus, faceid]),
                        ("loras", []), ("insightface", [])):
        (root / kind).mkdir()
        for f in files:
            (root / kind / f.name).symlink_to(f)
    handle = comfy_host.start_server(None, root, work_dir=tmp_path_factory.mktemp("hostile-server"))
    handle.models = root
    handle.marker = root.parent / f"{root.name}-marker"
    pictures.write_references(handle.input_dir)
    yield handle
    handle.stop()


def _basic() -> dict:
    from dev.authoring import examples, graph, workflows

    api = json.loads((workflows.API_DIR / "basic_image_prompt.json").read_text())
    return graph.localize(api, examples.STAND_INS["sd15"], examples.FAST)


def _node(prompt: dict, class_type: str) -> str:
    return next(nid for nid, n in prompt.items() if n["class_type"] == class_type)


def _good_prompt_runs(client, server, seed: int) -> None:
    prompt = _basic()
    prompt[_node(prompt, "KSampler")]["inputs"]["seed"] = seed
    entry = client.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success" and server.alive()


def _with_model_loader(name: str) -> dict:
    prompt = _basic()
    loader, apply = _node(prompt, "IPAKitUnifiedLoader"), _node(prompt, "IPAKitApply")
    prompt["90"] = {"class_type": "IPAKitModelLoader", "inputs": {"ipadapter_file": name}}
    prompt["91"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}}
    prompt[apply]["inputs"].update(ipadapter=["90", 0], clip_vision=["91", 0], model=prompt[loader]["inputs"]["model"])
    del prompt[loader]
    return prompt


def _with_faceid_lora(name: str) -> dict:
    prompt = _basic()
    ckpt, sampler = _node(prompt, "CheckpointLoaderSimple"), _node(prompt, "KSampler")
    for nid in (_node(prompt, "IPAKitUnifiedLoader"), _node(prompt, "IPAKitApply"), _node(prompt, "LoadImage")):
        del prompt[nid]
    prompt["90"] = {"class_type": "IPAKitModelLoader", "inputs": {"ipadapter_file": FACEID}}
    prompt["92"] = {"class_type": "IPAKitFaceIDLoRA", "inputs": {"model": [ckpt, 0], "ipadapter": ["90", 0], "lora": name, "strength": 0.6}}
    prompt[sampler]["inputs"]["model"] = ["92", 0]
    return prompt


def _with_load_embeds(name: str) -> dict:
    from dev.authoring import examples, graph, workflows

    api = json.loads((workflows.API_DIR / "embeds_2_load.json").read_text())
    return graph.localize(api, examples.STAND_INS["sd15"], examples.FAST, {("IPAKitLoadEmbeds", "embeds"): name})


def _clip_case(server, name, make):
    folder = server.models / "clip_vision" / "0"  # sorts before the real file: the Unified Loader picks this one
    folder.mkdir(exist_ok=True)
    make(folder / name)
    return _basic(), lambda: shutil.rmtree(folder)


def _cases(server):
    """(id, prompt builder, expected node type, words the message must hold) for files that fail at run time."""
    m, vit_h = server.marker, "CLIP-ViT-H-14-laion2B-s32B-b79K"
    code, damaged = "refused: this file contains code, not only tensors", "Re-download"

    clip = "IPAKitUnifiedLoader"
    return [
        ("clip-zip-bin", "clip_vision", f"{vit_h}.bin", lambda p: evil(p, m), clip, code),
        ("clip-legacy-pt", "clip_vision", f"{vit_h}.pt", lambda p: evil(p, m, legacy=True), clip, code),
        ("clip-zip-pth", "clip_vision", f"{vit_h}.pth", lambda p: evil(p, m), clip, code),
        ("clip-truncated-bin", "clip_vision", f"{vit_h}.bin", truncated, clip, damaged),
        ("clip-garbage-bin", "clip_vision", f"{vit_h}.bin", garbage, clip, damaged),
        ("clip-huge-header", "clip_vision", f"{vit_h}.safetensors", huge_header, clip, "header claims"),
        ("clip-header-past-end", "clip_vision", f"{vit_h}.safetensors", header_past_end, clip, "more than the file holds"),
        ("clip-not-a-clip", "clip_vision", f"{vit_h}.bin", lambda p: torch.save({"w": torch.zeros(2)}, p), clip,
         "does not recognise this file as a CLIP vision model"),
        ("adapter-zip-bin", "ipadapter", "ip-adapter_hostile.bin", lambda p: evil(p, m), "IPAKitModelLoader", code),
        ("adapter-legacy-pth", "ipadapter", "ip-adapter_hostile.pth", lambda p: evil(p, m, legacy=True), "IPAKitModelLoader", code),
        ("adapter-truncated-bin", "ipadapter", "ip-adapter_broken.bin", truncated, "IPAKitModelLoader", damaged),
        ("adapter-huge-header", "ipadapter", "ip-adapter_big.safetensors", huge_header, "IPAKitModelLoader", "header claims"),
        ("adapter-garbage-ckpt", "ipadapter", "ip-adapter_junk.ckpt", garbage, "IPAKitModelLoader", damaged),
        ("lora-zip-pt", "loras", "faceid_hostile_lora.pt", lambda p: evil(p, m), "IPAKitFaceIDLoRA", code),
        ("lora-legacy-bin", "loras", "faceid_hostile_lora.bin", lambda p: evil(p, m, legacy=True), "IPAKitFaceIDLoRA", code),
        ("lora-huge-header", "loras", "faceid_big_lora.safetensors", huge_header, "IPAKitFaceIDLoRA", "header claims"),
        ("lora-truncated-pt", "loras", "faceid_broken_lora.pt", truncated, "IPAKitFaceIDLoRA", damaged),
        ("embeds-zip-ipadpt", "input", "hostile.ipadpt", lambda p: evil(p, m, tensor_only=True), "IPAKitLoadEmbeds", code),
        ("embeds-legacy-ipadpt", "input", "hostile_old.ipadpt", lambda p: evil(p, m, legacy=True, tensor_only=True), "IPAKitLoadEmbeds", code),
        ("embeds-garbage-ipadpt", "input", "junk.ipadpt", garbage, "IPAKitLoadEmbeds", damaged),
        ("embeds-huge-header", "input", "big.safetensors", huge_header, "IPAKitLoadEmbeds", "header claims"),
        ("embeds-bad-clip-output", "input", "meta1.safetensors", lambda p: embeds_with(p, clip_output="pooled"), "IPAKitLoadEmbeds",
         "damaged embeds file: clip_output is 'pooled'"),
        ("embeds-bad-version", "input", "meta2.safetensors", lambda p: embeds_with(p, format_version="one"), "IPAKitLoadEmbeds",
         "damaged embeds file: format_version is 'one'"),
        ("embeds-bad-shapes", "input", "meta3.safetensors", lambda p: embeds_with(p, shapes="{not json"), "IPAKitLoadEmbeds",
         "damaged embeds file: its `shapes` metadata"),
    ]


def test_hostile_and_damaged_files_fail_clearly_and_the_server_keeps_serving(server, client):
    from dev.host.comfy_client import ExecutionFailed

    _good_prompt_runs(client, server, seed=1)
    cases = _cases(server)
    for seed, (case, kind, name, make, node_type, words) in enumerate(cases, start=2):
        next_kind = cases[seed - 1][1] if seed - 1 < len(cases) else None
        if kind == "clip_vision":
            prompt, cleanup = _clip_case(server, name, make)
            # new inputs, or ComfyUI would reuse the loader's output from the last good prompt
            prompt[_node(prompt, "IPAKitUnifiedLoader")]["inputs"]["lora_strength"] = round(0.5 + seed / 1000, 3)
        else:
            path = (server.input_dir if kind == "input" else server.models / kind) / name
            make(path)
            cleanup = path.unlink
            builders = {"ipadapter": _with_model_loader, "loras": _with_faceid_lora, "input": _with_load_embeds}
            prompt = builders[kind](name)
        try:
            with pytest.raises(ExecutionFailed) as failed:
                client.run(prompt, timeout=300)
        finally:
            cleanup()
        message = failed.value.exception_message
        assert failed.value.node_type == node_type, (case, failed.value)
        assert name in message and words in message, (case, message)
        assert not any(a in message for a in TORCH_ADVICE), (case, message)
        assert not server.marker.exists(), f"{case}: the payload ran"
        assert server.alive() and client.system_stats()
        if kind != next_kind:  # a full good prompt after each kind of file (sampling costs seconds on a CPU)
            _good_prompt_runs(client, server, seed)


def test_names_outside_the_folders_get_the_missing_file_answer(server, client):
    from dev.host.comfy_client import PromptRejected

    secret = server.work_dir / "secret.safetensors"
    embeds_with(secret)
    shutil.copy(secret, server.output_dir / "mine.safetensors")

    def rejected(prompt) -> PromptRejected:
        with pytest.raises(PromptRejected) as info:
            client.queue(prompt)
        assert info.value.status == 400 and server.alive()
        return info.value

    def details(error: PromptRejected, name: str) -> str:
        (node,) = error.node_errors.values()
        return " ".join(e.get("details", "") for e in node["errors"]).replace(name, "NAME")

    missing = details(rejected(_with_load_embeds("gone.safetensors")), "gone.safetensors")
    assert "embeds file not found: NAME" in missing and "Save Embeds" in missing
    for name in (str(secret), "../secret.safetensors", "../../secret.safetensors", "../input/../../secret.safetensors",
                 "../secret.safetensors [output]", f"{secret} [output]", "mine.safetensors\0 [output]",
                 "C:/secret.safetensors", "mine.safetensors [temp]"):
        assert details(rejected(_with_load_embeds(name)), name) == missing, name
    # the combo widgets: ComfyUI's own list check answers before any of our code runs
    for prompt in (_with_model_loader("../clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
                   _with_model_loader(str(server.models / "ipadapter" / "ip-adapter-plus_sd15.safetensors")),
                   _with_faceid_lora(f"../ipadapter/{FACEID}")):
        error = rejected(prompt)
        assert any(e["type"] == "value_not_in_list" for n in error.node_errors.values() for e in n["errors"])
    # a real embeds file in the output folder loads with its annotation
    entry = client.run(_with_load_embeds("mine.safetensors [output]"), timeout=300)
    assert entry["status"]["status_str"] == "success"
    _good_prompt_runs(client, server, seed=99)
