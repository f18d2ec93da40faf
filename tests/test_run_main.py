"""The main job's pieces that need no server: finding real models, the prompt it queues, the progress lines.
(The whole job runs end to end in test_workflows.py.)"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

from dev.authoring import examples, workflows
from dev.mainjob import job, local_models, options
from dev.standins import names

SDXL_PROBE_SHAPE = [640, 2048]


def fake_safetensors(path: Path, tensors: dict[str, list[int]], metadata: dict | None = None) -> Path:
    """A header-only .safetensors file (the data is never read)."""
    header = {key: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for key, shape in tensors.items()}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def models_folder(root: Path, *, real_checkpoint: bool = True) -> Path:
    probe = local_models.SD15_PROBE
    fake_safetensors(root / "checkpoints" / "sd15" / "dreamy.safetensors", {probe: [320, 768]}, {} if real_checkpoint else {"weights": "random (not a trained model)"})
    fake_safetensors(root / "checkpoints" / "xl.safetensors", {probe: SDXL_PROBE_SHAPE})
    (root / "checkpoints" / "old.ckpt").write_bytes(b"pickle")
    (root / "ipadapter").mkdir(parents=True)
    (root / "ipadapter" / "ip-adapter-plus_sd15.safetensors").write_bytes(b"x")
    (root / "clip_vision").mkdir(parents=True)
    (root / "clip_vision" / names.VIT_H).write_bytes(b"x")
    return root


def test_checkpoint_family_reads_only_the_header(tmp_path):
    probe = local_models.SD15_PROBE
    assert local_models.checkpoint_family(fake_safetensors(tmp_path / "a.safetensors", {probe: [320, 768]})) == "sd15"
    random = fake_safetensors(tmp_path / "b.safetensors", {probe: [320, 768]}, {"weights": "random (not a trained model)"})
    assert local_models.checkpoint_family(random) == "sd15-random"
    assert local_models.checkpoint_family(fake_safetensors(tmp_path / "c.safetensors", {probe: SDXL_PROBE_SHAPE})) is None
    (tmp_path / "d.safetensors").write_bytes(b"\xff" * 16)
    assert local_models.checkpoint_family(tmp_path / "d.safetensors") is None


def test_real_models_are_found_in_a_models_folder(tmp_path):
    folders = local_models.from_models_dir(models_folder(tmp_path / "models"))
    found = local_models.find_real(folders, preset="plus (high strength)", placeholder="v1-5-pruned-emaonly.safetensors")
    assert found.complete, found.missing
    assert found.checkpoint == "sd15/dreamy.safetensors"
    assert found.ipadapter == "ip-adapter-plus_sd15.safetensors"
    assert found.clip_vision == names.VIT_H

    light = local_models.find_real(folders, preset="light - SD1.5 only (low strength)")
    assert not light.complete and "ip-adapter_sd15_light_v11" in light.missing[0]
    asked = local_models.find_real(folders, preset="plus (high strength)", checkpoint="nope.safetensors")
    assert asked.missing and "nope.safetensors" in asked.missing[0]


def test_random_stand_ins_do_not_count_as_real(tmp_path):
    folders = local_models.from_models_dir(models_folder(tmp_path / "models", real_checkpoint=False))
    found = local_models.find_real(folders, preset="plus (high strength)")
    assert found.missing == [f"an SD1.5 .safetensors checkpoint with trained weights (in {tmp_path / 'models' / 'checkpoints'})"]


def test_extra_model_paths_yaml_is_read_like_comfyui(tmp_path):
    models = models_folder(tmp_path / "store")
    yaml_file = tmp_path / "conf" / "extra_model_paths.yaml"
    yaml_file.parent.mkdir()
    yaml_file.write_text(f"mine:\n  base_path: {models}\n  checkpoints: |\n    checkpoints\n    more\n  ipadapter: ipadapter\n"
                         "  clip_vision: ../store/clip_vision\n")
    folders = local_models.from_yaml(yaml_file)
    assert folders["checkpoints"] == [models / "checkpoints", models / "more"]
    assert folders["clip_vision"] == [(models / "../store/clip_vision").resolve()]
    assert local_models.find_real(folders, preset="plus (high strength)").complete
    written = local_models.from_yaml(local_models.write_yaml(folders, tmp_path / "again.yaml"))
    assert written == folders


def test_the_prompt_uses_the_checkpoint_found_or_fast_stand_ins():
    api = json.loads((workflows.API_DIR / "basic_image_prompt.json").read_text())
    wf = examples.BY_NAME["basic_image_prompt"]
    args = options.parse_args([])

    def inputs(prompt, class_type):
        return next(n["inputs"] for n in prompt.values() if n["class_type"] == class_type)

    real = job.build_prompt(api, wf, "sd15/dreamy.safetensors", args)
    assert inputs(real, "CheckpointLoaderSimple")["ckpt_name"] == "sd15/dreamy.safetensors"
    assert inputs(real, "KSampler")["steps"] == inputs(api, "KSampler")["steps"] > 1
    random = job.build_prompt(api, wf, None, args)
    assert inputs(random, "CheckpointLoaderSimple")["ckpt_name"] == names.SD15_CHECKPOINT
    assert inputs(random, "KSampler")["steps"] == 1 and inputs(random, "EmptyLatentImage")["width"] == 64
    sized = job.build_prompt(api, wf, None, options.parse_args(["--steps", "4", "--size", "128"]))
    assert inputs(sized, "KSampler")["steps"] == 4 and inputs(sized, "EmptyLatentImage")["height"] == 128


def test_progress_prints_whole_lines_when_not_on_a_terminal():
    out = io.StringIO()
    progress = job.Progress(out)
    progress.step(2, "models")
    for value in range(1, 5):
        progress.bar("KSampler", value, 4, width=4)
    progress.update("starting ...")
    progress.update("ready", final=True)
    assert out.getvalue() == "[2/4] models\n      KSampler [####] 4/4\nready\n"
