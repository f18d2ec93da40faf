"""Hostile input (issue 15, the inputs half): a catalogue of bad numbers, tensors, batches and shapes, each refused
where it enters with an error that names the input, what was found and the fix.

In process (no ComfyUI): the engine settings, the core checks, the preprocessing's memory on extreme aspect ratios
and the message defects. Through a real server's /prompt (tiny 64 px, 1-step prompts on one session server): every
numeric widget and tensor input of the apply and utility nodes with NaN / inf / out-of-range values, empty or
mismatched batches; after each the server keeps serving; isolation of patched and unpatched prompts; /interrupt
during an Apply's encode and during sampling.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import _host
import ipadapter_core as core
from dev.standins import names
from dev.standins.ipadapter import make_state_dict, write_checkpoint
from ipadapter_core import checks
from ipadapter_core import images as images_module

SD15 = core.Topology.sd15()
SDXL = core.Topology.sdxl()
NAN, INF = float("nan"), float("inf")


# in process: engine settings


@pytest.mark.parametrize("name", ["weight", "start_at", "end_at", "weight_faceidv2", "weight_composition", "style_boost",
                                  "composition_boost"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_every_numeric_setting_must_be_finite(name, value):
    with pytest.raises(ValueError, match=rf"^{name} is (nan|inf|-inf), not a finite number; give a plain number"):
        core.ApplySettings(**{name: value})


@pytest.mark.parametrize("name,value", [("start_at", 1.5), ("start_at", -0.1), ("end_at", 2.0)])
def test_start_and_end_outside_0_1_are_refused_with_the_range(name, value):
    with pytest.raises(ValueError, match=rf"{name} = {value:g} is outside its range from 0 to 1; set it within that range"):
        core.ApplySettings(**{name: value})


@pytest.mark.parametrize("weights", [[1.0, NAN], (INF,), torch.tensor([0.5, NAN])])
def test_per_frame_weight_lists_must_be_finite(weights):
    with pytest.raises(ValueError, match=r"weight: item \d+ is .*not a finite number"):
        core.ApplySettings(weight=weights)


@pytest.mark.parametrize("mask,found", [
    (torch.full((1, 8, 8), NAN), "holds 64 NaN"),
    (torch.full((8, 8), INF), "0 NaN and 64 infinite"),
    (torch.ones(0, 8, 8), "the mask batch is empty"),
    (torch.ones(1, 8, 0), "has no pixels"),
    (torch.ones(1, 0, 8), "has no pixels"),
])
def test_bad_attention_masks_are_refused_by_name(mask, found):
    with pytest.raises(ValueError, match=rf"^attn_mask.*{found}"):
        core.ApplySettings(attn_mask=mask)


# in process: the core checks used at the node boundary


@pytest.mark.parametrize("images,found", [
    (torch.ones(0, 8, 8, 3), "the batch is empty \\(0 images\\); connect at least one image"),
    (torch.ones(1, 0, 8, 3), "has no pixels"),
    (torch.ones(1, 8, 0, 3), "has no pixels"),
    (torch.full((1, 4, 4, 3), NAN), "holds 48 NaN and 0 infinite.*fix the node that produced it"),
    (torch.full((2, 4, 4, 3), -INF), "holds 0 NaN and 96 infinite"),
    (torch.ones(8, 3), "has shape \\(8, 3\\); an image batch is \\[B, H, W, C\\]"),
])
def test_bad_image_batches_are_refused_by_name(images, found):
    with pytest.raises(ValueError, match=rf"^image {found}|^image: {found}"):
        checks.image_batch("image", images)


@pytest.mark.parametrize("value,message", [
    (1e9, r"lora_strength = 1e\+09 is outside its range from 0 to 2; set it within that range"),
    (-50.0, r"lora_strength = -50 is outside its range from 0 to 2"),
    (NAN, r"lora_strength is nan, not a finite number; give a plain number from 0 to 2"),
    ("0.5", r"lora_strength is '0.5', not a number"),
])
def test_numbers_are_checked_against_their_declared_range(value, message):
    with pytest.raises(ValueError, match=message):
        checks.number("lora_strength", value, low=0.0, high=2.0)


def test_a_mask_per_image_must_match_the_images_when_encoding():
    with pytest.raises(ValueError, match=r"mask has shape \(3, 8, 8\) for 1 image\(s\); give one mask"):
        core.clip_pixels(torch.rand(1, 8, 8, 3), 16, torch.ones(3, 8, 8))


# in process: embeds and adapters


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    state = make_state_dict("sd15", scale="tiny", widths=SD15.widths_checkpoint_order, cross_dim=SD15.context_dim, seed=1,
                            dtype=torch.float32)
    return core.load_adapter(write_checkpoint(state, tmp_path_factory.mktemp("bad") / "ip-adapter_sd15.safetensors"))


def _embeds(spec, rows: int, fill=None):
    cond = torch.randn(rows, spec.clip_dim) if fill is None else torch.full((rows, spec.clip_dim), fill)
    return core.ImageEmbeds(cond={"clip": cond}, uncond={"clip": torch.zeros_like(cond)}, clip_encoder=spec.clip_encoder,
                            clip_output=spec.clip_output)


def test_embeds_with_no_rows_are_refused_at_apply(base):
    with pytest.raises(ValueError, match=r"hold 0 references; encode at least one image"):
        core.image_terms(base, SD15, _embeds(base.spec, 0), core.ApplySettings())


@pytest.mark.parametrize("fill", [NAN, INF])
def test_embeds_with_non_finite_features_are_refused_at_apply(base, fill):
    with pytest.raises(ValueError, match=r"\(clip features\) holds \d+ NaN and \d+ infinite.*encode the images again"):
        core.image_terms(base, SD15, _embeds(base.spec, 1, fill), core.ApplySettings())


def test_huge_embeds_that_overflow_the_projection_are_refused(base):
    with pytest.raises(ValueError, match=r"projected image tokens of .* NaN .*intact adapter file"):
        core.image_terms(base, SD15, _embeds(base.spec, 1, 3e38), core.ApplySettings())


def test_three_masks_for_one_reference_are_refused(base):
    with pytest.raises(ValueError, match=r"attn_mask has 3 masks for 1 reference image\(s\): give one mask"):
        core.image_terms(base, SD15, _embeds(base.spec, 1), core.ApplySettings(attn_mask=torch.ones(3, 8, 8)))


def test_an_sdxl_adapter_on_another_sdxl_unet_says_what_differs():
    spec = SimpleNamespace(layer_widths=(64,) * 70, cross_attention_dim=2048, family=core.Family.SDXL, num_layers=70)
    adapter = SimpleNamespace(spec=spec, name="ip-adapter_sdxl.safetensors")
    with pytest.raises(ValueError) as e:
        core.check_topology(adapter, SDXL)
    message = str(e.value)
    assert "adapter for SDXL (70 cross-attention layers of widths 64, context 2048)" in message
    assert "but the model is a different SDXL UNet (70 cross-attention layers of widths 640, 1280, context 2048)" in message
    assert "but the model is SDXL (" not in message


def test_deeply_nested_block_weights_are_a_clear_error():
    for text in ("{" * 100000, '{"up": ' * 5000, "[" * 100000, '{"up": {"block_0": [[[[[[[[[1]]]]]]]]]}}'):
        with pytest.raises(ValueError, match=r"^block_weights: "):
            core.parse_block_weights(text, SDXL)


def test_the_missing_face_hint_names_the_real_widget_and_value(monkeypatch):
    from ipadapter_core import faces

    monkeypatch.setattr(faces, "detect_faces", lambda analyzer, image: [])
    with pytest.raises(ValueError, match=r"no face in image 0 .*set on_missing_face to 'skip image'"):
        faces.analyze_images(None, torch.rand(1, 32, 32, 3), crop_size=224, choice="largest", on_missing="error")


# in process: preprocessing memory follows the output size, not the input's aspect


class _Largest(TorchDispatchMode):
    """The largest tensor any torch op produces while active (bytes)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("hw", [(1, 16384), (16384, 1), (3, 40000), (4096, 1)])
def test_preprocessing_an_extreme_aspect_ratio_allocates_about_the_output(hw, monkeypatch):
    real = images_module.resize

    def guarded(x, size, interpolation="BICUBIC"):  # refuse before allocating, should the bound ever regress
        assert size[0] * size[1] <= 4 * 224 * 224 + 2 * 224, f"would resize to {size}"
        return real(x, size, interpolation)

    monkeypatch.setattr(images_module, "resize", guarded)
    image = torch.rand(1, *hw, 3)
    with _Largest() as largest:
        pixels = core.clip_pixels(image, 224)
    assert pixels.shape == (1, 3, 224, 224) and bool(torch.isfinite(pixels).all())
    bound = max(image.numel() * 4, 3 * 224 * 4 * 224 * 4 * 2)  # the input, or a 4:1 224-high window (float32, 2x slack)
    assert largest.bytes <= bound, f"largest intermediate {largest.bytes / 2**20:.1f} MiB for a {hw} image"
    out = core.prep_image(image, 224, interpolation="LANCZOS")  # PIL's path too
    assert out.shape == (1, 224, 224, 3)


def test_images_up_to_4_to_1_are_still_resized_whole_then_cropped():
    x = torch.rand(1, 3, 50, 200)
    scale = 16 / 50
    whole = images_module.resize(x, (16, round(200 * scale)))
    left = (whole.shape[-1] - 16) // 2
    assert torch.equal(images_module.square(x, 16), whole[..., :, left:left + 16])


# through the server


@pytest.fixture(scope="module")
def srv(server, models_dir):
    from dev.host.comfy_client import ComfyClient

    with ComfyClient(server.url) as c:
        yield SimpleNamespace(server=server, client=c)


ADAPTER = "ip-adapter-plus_sd15.safetensors"


def _prompt(seed: int = 1, steps: int = 1, adapter: str | None = ADAPTER, **apply_inputs) -> dict:
    """txt2img at 64 px, 1 step; with `adapter`, an Apply IPAdapter (node 13) on a grey 64 px reference in between."""
    p = _host.txt2img_workflow(seed=seed, steps=steps, prefix="ipakit_bad")
    if adapter is None:
        return p
    p["10"] = {"class_type": "IPAKitModelLoader", "inputs": {"ipadapter_file": adapter}}
    p["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": names.VIT_H}}
    p["12"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x8040C0}}
    p["13"] = {"class_type": "IPAKitApply", "inputs": {
        "model": ["4", 0], "ipadapter": ["10", 0], "image": ["12", 0], "clip_vision": ["11", 0], "weight": 1.0,
        "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only",
        **apply_inputs}}
    p["3"]["inputs"]["model"] = ["13", 0]
    return p


def _solid(p: dict, node: str, value: float, count: int = 1) -> list:
    """A MASK of `count` 64 px masks of `value` (NaN passes the host's range check), as a link."""
    p[node] = {"class_type": "SolidMask", "inputs": {"value": value, "width": 64, "height": 64}}
    if count == 1:
        return [node, 0]
    p[node + "1"] = {"class_type": "MaskToImage", "inputs": {"mask": [node, 0]}}
    p[node + "2"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [node + "1", 0], "amount": count}}
    p[node + "3"] = {"class_type": "ImageToMask", "inputs": {"image": [node + "2", 0], "channel": "red"}}
    return [node + "3", 0]


def _nan_image(p: dict, node: str = "50") -> list:
    p[node + "i"] = {"class_type": "MaskToImage", "inputs": {"mask": _solid(p, node, NAN)}}
    return [node + "i", 0]


def _apply(**inputs):
    return lambda p: p["13"]["inputs"].update(inputs)


def _swap_apply(class_type: str, drop=(), **inputs):
    """Replace node 13 by another apply node with Apply's links and these inputs."""
    def edit(p):
        old = p["13"]["inputs"]
        keep = {k: v for k, v in old.items() if k not in drop}
        p["13"] = {"class_type": class_type, "inputs": {**keep, **inputs}}
    return edit


def _embeds_apply(**inputs):
    def edit(p):
        p["14"] = {"class_type": "IPAKitEncode", "inputs": {"ipadapter": ["10", 0], "image": ["12", 0], "clip_vision": ["11", 0]}}
        old = p["13"]["inputs"]
        p["13"] = {"class_type": "IPAKitApplyEmbeds", "inputs": {
            **{k: old[k] for k in ("model", "ipadapter", "weight", "weight_type", "combine_embeds", "start_at", "end_at",
                                   "embeds_scaling")}, "embeds": ["14", 0], **inputs}}
    return edit


def _preview(class_type: str, **inputs):
    """A utility node whose IMAGE output goes to a PreviewImage (the txt2img part stays)."""
    def edit(p):
        p["60"] = {"class_type": class_type, "inputs": inputs}
        p["61"] = {"class_type": "PreviewImage", "inputs": {"images": ["60", 0]}}
    return edit


def _nan_image_into(field):
    return lambda p: p["13"]["inputs"].update({field: _nan_image(p)})


def _mask_into(value, count=1):
    return lambda p: p["13"]["inputs"].update(attn_mask=_solid(p, "55", value, count))


def _regional(image_weight):
    def edit(p):
        p["70"] = {"class_type": "IPAKitRegionalConditioning", "inputs": {
            "image": ["12", 0], "image_weight": image_weight, "prompt_weight": 1.0, "weight_type": "linear",
            "start_at": 0.0, "end_at": 1.0}}
        p["13"] = {"class_type": "IPAKitApplyFromParams", "inputs": {
            "model": ["4", 0], "ipadapter": ["10", 0], "ipadapter_params": ["70", 0], "combine_embeds": "concat",
            "embeds_scaling": "V only", "clip_vision": ["11", 0]}}
    return edit


def _combined_weights(value):
    def edit(p):
        p["80"] = {"class_type": "IPAKitCombineWeights", "inputs": {"weights_1": value, "weights_2": 1.0}}
        p["13"]["inputs"]["weight"] = ["80", 0]
    return edit


# (case id, edit of the good prompt, node expected to fail ("queue": refused at queue time), message pattern)
CATALOGUE = [
    ("weight NaN", _apply(weight=NAN), "13", r"weight is nan, not a finite number; give a plain number from -1 to 5"),
    ("start_at NaN", _apply(start_at=NAN), "13", r"start_at is nan, not a finite number; give a plain number from 0 to 1"),
    ("end_at NaN", _apply(end_at=NAN), "13", r"end_at is nan, not a finite number"),
    ("encode_batch_size -3", _apply(encode_batch_size=-3), "13",
     r"encode_batch_size = -3 is outside its range from 0 to 4096; set it within that range"),
    ("style_boost NaN", _apply(style_boost=NAN, weight_type="style transfer precise"), "13", r"style_boost is nan"),
    ("composition_boost 1e9", _apply(composition_boost=1e9), "13", r"composition_boost = 1e\+09 is outside its range from -5 to 5"),
    ("weight_composition inf", _apply(weight_composition=INF), "13", r"weight_composition is inf, not a finite number"),
    ("NaN reference image", _nan_image_into("image"), "13", r"image holds 12288 NaN .*fix the node that produced it"),
    ("NaN image_negative", _nan_image_into("image_negative"), "13", r"image_negative holds 12288 NaN"),
    ("NaN attn_mask", _mask_into(NAN), "13", r"attn_mask holds 4096 NaN .*clamp the mask"),
    ("3 masks for 1 image", _mask_into(1.0, 3), "13", r"attn_mask has 3 masks for 1 reference image\(s\): give one mask"),
    ("block_weights NaN", _apply(block_weights='{"mid": NaN}'), "queue", r"'mid' is nan, not a finite number"),
    ("block_weights nested", _apply(block_weights="{" + '"up": {' * 400), "queue", r"brackets nested \d+ deep"),
    ("lora_strength 1e9", _embeds_apply(lora_strength=1e9), "13", r"lora_strength = 1e\+09 is outside its range from 0 to 2"),
    ("lora_strength -50", _embeds_apply(lora_strength=-50.0), "13", r"lora_strength = -50 is outside its range from 0 to 2"),
    ("weight_kolors NaN", _embeds_apply(weight_kolors=NAN), "13", r"weight_kolors is nan"),
    ("weight_faceidv2 inf", _embeds_apply(weight_faceidv2=INF), "13", r"weight_faceidv2 is inf"),
    ("embeds of a NaN image", lambda p: (_embeds_apply()(p), p["14"]["inputs"].update(image=_nan_image(p))), "14",
     r"image holds 12288 NaN .*fix the node that produced it"),  # refused by the Encode node, where it enters
    ("tiled sharpening NaN", _swap_apply("IPAKitApplyTiled", sharpening=NAN), "13",
     r"sharpening is nan, not a finite number; give a plain number from 0 to 1"),
    ("enhance_ratio NaN", _swap_apply("IPAKitApplyClipVisionEnhancer", enhance_tiles=2, enhance_ratio=NAN), "13",
     r"enhance_ratio is nan"),
    ("weight_style NaN", _swap_apply("IPAKitApplyStyleComposition", drop=("image", "weight", "weight_type"),
                                     image_style=["12", 0], image_composition=["12", 0], weight_style=NAN,
                                     weight_composition=1.0, expand_style=False), "13", r"weight_style is nan"),
    ("precise style_boost NaN", _swap_apply("IPAKitApplyPreciseStyle", style_boost=NAN), "13", r"style_boost is nan"),
    ("required weight -inf", _apply(weight=-INF), "queue", r"weight"),  # the host's own range check, at queue time
    ("prep sharpening NaN", _preview("IPAKitPrepImage", image=["12", 0], interpolation="BICUBIC", crop_position="center",
                                     sharpening=NAN, size=224), "60", r"sharpening is nan"),
    ("noise strength NaN", _preview("IPAKitNoise", type="fade", strength=NAN, blur=0), "60", r"strength is nan"),
    ("regional image_weight NaN", _regional(NAN), "70", r"image_weight is nan"),
    ("combined weights NaN", _combined_weights(NAN), "80", r"weights_1 is nan"),
    ("FaceID with a plus adapter", _swap_apply("IPAKitApplyFaceID", face_selection="largest", face_index=0,
                                               on_missing_face="error", lora_strength=0.6, weight_faceidv2=1.0), "13",
     r"is not a FaceID adapter \(it is .*\): use Apply IPAdapter for it"),
]


@pytest.mark.slow
def test_bad_inputs_through_the_server_are_named_and_the_server_keeps_serving(srv):
    from dev.host.comfy_client import ExecutionFailed, PromptRejected

    client = srv.client
    assert client.run(_prompt(seed=100), timeout=600)["status"]["status_str"] == "success"
    problems = []
    for i, (case, edit, node, pattern) in enumerate(CATALOGUE):
        prompt = _prompt(seed=100)
        edit(prompt)
        try:
            if node == "queue":
                with pytest.raises(PromptRejected) as rejected:
                    client.queue(prompt)
                message = str(rejected.value)
            else:
                try:
                    with pytest.raises(ExecutionFailed) as failed:
                        client.run(prompt, timeout=600)
                except PromptRejected as early:
                    # a newer host checks declared ranges of optional inputs itself, at queue time: fine when its
                    # answer is about this node and names the input
                    named = re.match(r"[a-z_]+", pattern).group(0)
                    assert node in early.node_errors and named in json.dumps(early.node_errors), (case, str(early))
                    message = None
                else:
                    assert failed.value.node_id == node, f"failed at node {failed.value.node_id}, not {node}"
                    assert not failed.value.interrupted
                    message = failed.value.exception_message
                    assert failed.value.exception_type.endswith("ValueError"), failed.value.exception_type
            if message is not None:
                assert re.search(pattern, message), f"message {message!r} does not match {pattern!r}"
        except AssertionError as e:
            problems.append(f"{case}: {e}")
        # the server keeps serving: the next good prompt (a new seed: the sampler runs again) succeeds
        entry = client.run(_prompt(seed=200 + i), timeout=600)
        assert entry["status"]["status_str"] == "success", case
    assert not problems, "\n".join(problems)
    assert len(CATALOGUE) >= 20


def _png_bytes(client, entry: dict) -> bytes:
    refs = [dict(ref, node_id=nid) for nid, out in sorted(entry.get("outputs", {}).items()) for ref in out.get("images", [])]
    assert len(refs) == 1
    return client.view(refs[0])


@pytest.mark.slow
def test_patched_prompts_leave_unpatched_ones_byte_identical_and_repeat_exactly(srv):
    client = srv.client
    plain = _prompt(seed=5, adapter=None)
    before = _png_bytes(client, client.run(plain, timeout=600))
    first_plus = _png_bytes(client, client.run(_prompt(seed=5), timeout=600))
    base = _png_bytes(client, client.run(_prompt(seed=5, adapter="ip-adapter_sd15.safetensors", weight=0.7,
                                                 weight_type="ease in"), timeout=600))
    again_plus = _png_bytes(client, client.run(_prompt(seed=5), timeout=600))  # node 13 re-ran (its inputs changed)
    after = _png_bytes(client, client.run(plain, timeout=600))
    assert before == after, "an unpatched prompt changed after patched prompts ran"
    assert first_plus == again_plus, "the same patched prompt gave another image"
    assert first_plus != before and base != first_plus


def _interrupt(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/interrupt", data=b"{}", headers={"Content-Type": "application/json"}),
                           timeout=30).read()


def _run_and_interrupt(srv, prompt: dict, node: str, when: str):
    """Run `prompt`, posting /interrupt when `node` starts (`when` "executing") or reports progress ("progress")."""
    from dev.host.comfy_client import ExecutionFailed

    sent = threading.Event()

    def on_progress(kind, data):
        if kind == when and str(data.get("node")) == node and not sent.is_set():
            sent.set()
            _interrupt(srv.server.url)

    started = time.monotonic()
    with pytest.raises(ExecutionFailed) as failed:
        srv.client.run(prompt, timeout=600, on_progress=on_progress)
    assert sent.is_set() and failed.value.interrupted, failed.value
    return failed.value, time.monotonic() - started


@pytest.mark.slow
def test_interrupt_during_the_encode_of_an_apply_and_during_sampling_then_the_next_prompt_runs(srv):
    # 12 distinct references (the encoder's per-image cache must not answer) encoded one at a time: the encode
    # checks /interrupt before each CLIP vision call
    encode = _prompt(seed=11, encode_batch_size=1)
    batch = ["12", 0]
    for k in range(1, 12):
        encode[f"12c{k}"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x0F0F0F * k}}
        encode[f"12b{k}"] = {"class_type": "ImageBatch", "inputs": {"image1": batch, "image2": [f"12c{k}", 0]}}
        batch = [f"12b{k}", 0]
    encode["13"]["inputs"]["image"] = batch
    failed, _ = _run_and_interrupt(srv, encode, "13", "executing")
    assert failed.node_id == "13" and failed.node_type == "IPAKitApply"

    sampling = _prompt(seed=12, steps=200)
    failed, seconds = _run_and_interrupt(srv, sampling, "3", "progress")
    assert failed.node_id == "3"

    entry = srv.client.run(_prompt(seed=13), timeout=600)
    assert entry["status"]["status_str"] == "success"


# the generic check covers every node of the pack that takes numbers or tensors


def test_every_node_with_numbers_or_tensors_checks_them(comfy):
    unchecked = []
    for node_id, cls in comfy.pack.NODE_CLASS_MAPPINGS.items():
        if not node_id.startswith("IPAKit"):
            continue
        declared = cls.INPUT_TYPES()
        kinds = {spec[0] for group in ("required", "optional") for spec in declared.get(group, {}).values()
                 if isinstance(spec[0], str)}
        if kinds & {"FLOAT", "INT", "IMAGE", "MASK"} and not getattr(getattr(cls, cls.FUNCTION), "_ipakit_checked", False):
            unchecked.append(node_id)
    assert not unchecked, f"nodes whose inputs are not checked: {unchecked}"


# in process, without ComfyUI: the node layer's encode and input checks, with the host's two modules faked


class _Interrupted(Exception):
    pass


@pytest.fixture
def pack(monkeypatch, base):
    """The pack's `nodes` package imported under a private name, with `comfy.model_management` (an interrupt flag) and
    `comfy.utils` (a progress bar that records its steps) faked; `.interrupt_after(n)` sets the flag after n checks."""
    import importlib
    import sys
    import types

    state = SimpleNamespace(checks=0, interrupt_at=None, bars=[])

    def throw():
        state.checks += 1
        if state.interrupt_at is not None and state.checks > state.interrupt_at:
            raise _Interrupted()

    class Bar:
        def __init__(self, total):
            self.total, self.steps = total, 0
            state.bars.append(self)

        def update(self, n):
            self.steps += n

    comfy = types.ModuleType("comfy")
    comfy.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=throw)
    comfy.utils = types.SimpleNamespace(ProgressBar=Bar)
    for name, module in {"comfy": comfy, "comfy.model_management": comfy.model_management, "comfy.utils": comfy.utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    root = types.ModuleType("ipakit_pack_under_test")
    root.__path__ = [str(_host.REPO)]
    monkeypatch.setitem(sys.modules, root.__name__, root)
    try:
        state.pipeline = importlib.import_module(f"{root.__name__}.nodes._pipeline")
        state.base = importlib.import_module(f"{root.__name__}.nodes._base")
        yield state
    finally:
        for name in [n for n in sys.modules if n.startswith(root.__name__)]:
            del sys.modules[name]


def _bundle(state, base, calls):
    spec = base.spec

    def encoder(clip_vision):
        def run(pixels):
            calls.append(pixels.shape[0])
            return {"image_embeds": torch.zeros(pixels.shape[0], spec.clip_dim),
                    "penultimate": torch.zeros(pixels.shape[0], 257, spec.clip_dim)}
        return run

    state.pipeline._clip.encoder = encoder
    state.pipeline._clip.check_clip = lambda *a, **k: None
    return SimpleNamespace(spec=spec, name="ip-adapter_sd15.safetensors", clip_vision=object())


def test_a_big_batch_is_encoded_in_chunks_by_default_with_a_progress_step_each(pack, base):
    calls = []
    bundle = _bundle(pack, base, calls)
    pack.pipeline.encode(bundle, torch.rand(70, 8, 8, 3), batch_size=0)
    chunk = pack.pipeline.DEFAULT_ENCODE_BATCH
    assert max(calls) <= chunk and sum(calls) >= 70 and len(calls) == -(-sum(calls) // chunk)
    assert [(b.total, b.steps) for b in pack.bars] == [(len(calls), len(calls))]


@pytest.mark.parametrize("batch_size", [0, 4])
def test_the_encode_stops_between_chunks_when_interrupted(pack, base, batch_size):
    calls = []
    bundle = _bundle(pack, base, calls)
    pack.interrupt_at = 2  # /interrupt arrives while the second chunk is encoded
    with pytest.raises(_Interrupted):
        pack.pipeline.encode(bundle, torch.rand(100, 8, 8, 3), batch_size=batch_size)
    assert len(calls) == 2


def test_the_node_check_reads_each_nodes_declared_ranges(pack):
    class Node(pack.base.CheckedNode):
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": ("IMAGE", {}), "ratio": ("FLOAT", {"min": 0.0, "max": 1.0})},
                    "optional": {"strength": ("FLOAT", {"min": 0.0, "max": 2.0}), "mask": ("MASK", {}), "n": ("INT", {"min": 1})}}

        def run(self, **inputs):
            return ("ran",)

    good = dict(image=torch.rand(1, 4, 4, 3), ratio=0.5)
    assert Node().run(**good) == ("ran",)
    assert Node().run(**good, strength=None) == ("ran",)  # not connected
    for bad, message in [
        (dict(ratio=NAN), r"^ratio is nan, not a finite number; give a plain number from 0 to 1"),
        (dict(strength=1e9), r"^strength = 1e\+09 is outside its range from 0 to 2"),
        (dict(strength=-50.0), r"^strength = -50 is outside its range"),
        (dict(n=0), r"^n = 0 is outside its range \(at least 1\)"),
        (dict(ratio=[0.5, INF]), r"^ratio \(item 1\) is inf"),
        (dict(image=torch.ones(0, 4, 4, 3)), r"^image: the batch is empty"),
        (dict(mask=torch.ones(1, 4, 0)), r"^mask has no pixels"),
        (dict(mask=torch.full((3, 4, 4), NAN)), r"^mask holds 48 NaN"),
    ]:
        with pytest.raises(ValueError, match=message):
            Node().run(**{**good, **bad})


def test_every_node_class_of_these_modules_checks_its_inputs_without_a_host(pack):
    import importlib
    import inspect

    unchecked = []
    for module_name in ("apply", "style", "tiled", "enhancer", "regional", "image", "weights", "faceid", "embeds", "loaders"):
        module = importlib.import_module(f"ipakit_pack_under_test.nodes.{module_name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or name.startswith("_") or not hasattr(cls, "FUNCTION"):
                continue
            if not getattr(getattr(cls, cls.FUNCTION), "_ipakit_checked", False):
                unchecked.append(f"{module_name}.{name}")
    assert not unchecked, f"node classes whose inputs are not checked: {unchecked}"


def test_a_linked_nan_weight_is_refused_by_the_apply_node_before_any_work(pack):
    import importlib

    apply = importlib.import_module("ipakit_pack_under_test.nodes.apply").Apply
    with pytest.raises(ValueError, match=r"^weight is nan"):
        apply().apply(model=None, ipadapter=None, image=torch.rand(1, 8, 8, 3), weight=math.nan, weight_type="linear",
                      combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    assert json.dumps({"weight": math.nan}) == '{"weight": NaN}'  # how a client posts it; the host reads it back
