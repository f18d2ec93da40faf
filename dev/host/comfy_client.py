"""A small stdlib-only client for a running ComfyUI server (HTTP API and the /ws progress socket).

    client = ComfyClient("http://127.0.0.1:8188")
    prompt_id = client.queue(workflow_api)          # PromptRejected on HTTP 400/500
    entry = client.wait(prompt_id, timeout=600)     # ExecutionFailed if a node raised
    for ref in client.images(prompt_id):
        client.download(ref, "out/")

CLI: python -m dev.host.comfy_client --url http://127.0.0.1:8188 run workflow_api.json --out DIR

`wait` follows the WebSocket (`/ws?clientId=`): `progress` ({value, max, node}) and `executing`
events go to `on_progress(event_type, data)`; the prompt is done at `executing` with `node: null` for
its prompt id. The socket is opened before the prompt is posted, so no event is missed; if it cannot
be opened or breaks, `wait` polls `/history` instead. The socket is a minimal RFC 6455 client:
handshake, server text/binary frames (fragmented or not), ping/pong and close.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HISTORY_CHECK_S = 5.0  # while the socket is silent, look at /history this often (safety net)
HTTP_TIMEOUT_S = 60.0  # per HTTP request

ProgressCallback = Callable[[str, dict], None]


# errors


class ComfyError(RuntimeError):
    """Base class of this client's errors."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400/500: validation failed (`error`, `node_errors` as the server sent them)."""

    def __init__(self, status: int, error, node_errors: dict | None):
        self.status = status
        self.error = error
        self.node_errors = node_errors or {}
        super().__init__(self._describe())

    def _describe(self) -> str:
        if isinstance(self.error, dict):
            head = f"{self.error.get('message', 'prompt rejected')}"
            if self.error.get("details"):
                head += f": {self.error['details']}"
        else:
            head = str(self.error).strip() or "prompt rejected"
        lines = [f"HTTP {self.status}: {head}"]
        for node_id, info in (self.node_errors.items() if isinstance(self.node_errors, dict) else []):
            for err in info.get("errors", []):
                detail = err.get("details") or err.get("message")
                lines.append(f"  node {node_id} ({info.get('class_type', '?')}): {err.get('type')}: {detail}")
        if self.status == 500:
            lines.append("  (the 2024 host answers an unknown class_type with HTTP 500)")
        return "\n".join(lines)


class ExecutionFailed(ComfyError):
    """The prompt ran and a node raised (history status "error"), or it was interrupted."""

    def __init__(self, prompt_id: str, details: dict, interrupted: bool = False):
        self.prompt_id = prompt_id
        self.details = details
        self.interrupted = interrupted
        self.node_id = details.get("node_id")
        self.node_type = details.get("node_type")
        self.exception_type = details.get("exception_type")
        self.exception_message = details.get("exception_message", "")
        self.traceback = details.get("traceback", [])
        what = "was interrupted" if interrupted else f"failed: {self.exception_type}: {self.exception_message}".rstrip()
        super().__init__(f"prompt {prompt_id}: node {self.node_id} ({self.node_type}) {what}")


# WebSocket (RFC 6455, client side)


class WebSocket:
    """Minimal blocking WebSocket client: enough for ComfyUI's /ws event stream."""

    def __init__(self, url: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "http"):
            raise ComfyError(f"{url}: only plain ws:// / http:// is supported")
        self.host, self.port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self._buf = b""
        self.closed = False
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            self._fill(deadline)
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if len(lines[0].split()) < 2 or lines[0].split()[1] != "101":
            self.sock.close()
            raise ComfyError(f"WebSocket handshake refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self.sock.close()
            raise ComfyError("WebSocket handshake: bad Sec-WebSocket-Accept")

    def _fill(self, deadline: float | None) -> None:
        while True:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("WebSocket read timed out")
            self.sock.settimeout(min(wait, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                if deadline is None:
                    raise TimeoutError("WebSocket read timed out") from None
                continue
            if not chunk:
                self.closed = True
                raise ConnectionError("WebSocket closed by the server")
            self._buf += chunk
            return

    def _read(self, n: int, deadline: float | None) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """Send one masked frame (clients must mask, section 5.3)."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self, timeout: float | None = None) -> tuple[int, bytes]:
        """Next complete data message as (opcode, payload); answers pings, raises ConnectionError on close.

        Raises TimeoutError when nothing complete arrives within `timeout` seconds (a partly read frame
        stays buffered for the next call).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        message, message_op = b"", None
        while True:
            need = 2
            if len(self._buf) < need:
                self._fill(deadline)
                continue
            b0, b1 = self._buf[0], self._buf[1]
            n = b1 & 0x7F
            need += {126: 2, 127: 8}.get(n, 0) + (4 if b1 & 0x80 else 0)
            if len(self._buf) < need:
                self._fill(deadline)
                continue
            if n == 126:
                n = struct.unpack("!H", self._buf[2:4])[0]
            elif n == 127:
                n = struct.unpack("!Q", self._buf[2:10])[0]
            if len(self._buf) < need + n:
                self._fill(deadline)
                continue
            mask = self._buf[need - 4:need] if b1 & 0x80 else None
            payload = self._read(need + n, deadline)[need:]
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                if not self.closed:
                    self.closed = True
                    try:
                        self.send(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                raise ConnectionError("WebSocket closed by the server")
            else:
                if opcode != OP_CONT:
                    message, message_op = b"", opcode
                message += payload
                if fin:
                    return message_op or OP_BINARY, message

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.send(OP_CLOSE, struct.pack("!H", 1000))
            except OSError:
                pass
        self.sock.close()


# client


class ComfyClient:
    """Client of one ComfyUI server at `base_url` (e.g. "http://127.0.0.1:8188")."""

    def __init__(self, base_url: str = "http://127.0.0.1:8188"):
        self.base_url = base_url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self._ws: WebSocket | None = None

    # HTTP

    def _request(self, path: str, data: dict | None = None) -> tuple[int, bytes]:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.base_url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str):
        status, body = self._request(path)
        if status != 200:
            raise ComfyError(f"GET {path}: HTTP {status}: {body[:500].decode(errors='replace')}")
        return json.loads(body)

    def system_stats(self) -> dict:
        return self.get_json("/system_stats")

    def object_info(self, class_type: str | None = None) -> dict:
        """All node definitions, or one class's (`{class_type: {...}}`)."""
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(class_type)}" if class_type else ""))

    def queue(self, prompt: dict) -> str:
        """POST an API-format prompt; returns its prompt_id. Raises PromptRejected on HTTP 400/500."""
        if "nodes" in prompt and "links" in prompt:
            raise ValueError("this is a UI-format workflow; export it with 'Save (API Format)' to queue it")
        self._open_ws()  # before posting, so the first events are not missed
        status, body = self._request("/prompt", {"prompt": prompt, "client_id": self.client_id})
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
            if isinstance(answer, dict):
                raise PromptRejected(status, answer.get("error", answer), answer.get("node_errors"))
            raise PromptRejected(status, body.decode(errors="replace"), None)
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict:
        """The /history entry of `prompt_id` ({} while it has not finished)."""
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id, {})

    def free(self) -> None:
        """POST /free: the server unloads its models (and drops its cached node outputs) once it is idle."""
        status, body = self._request("/free", {"unload_models": True, "free_memory": True})
        if status != 200:
            raise ComfyError(f"POST /free: HTTP {status}: {body[:200].decode(errors='replace')}")

    # waiting

    def _open_ws(self) -> WebSocket | None:
        if self._ws is not None and not self._ws.closed:
            return self._ws
        url = self.base_url.replace("https://", "wss://") + f"/ws?clientId={urllib.parse.quote(self.client_id)}"
        try:
            self._ws = WebSocket(url)
        except (OSError, ComfyError):
            self._ws = None
        return self._ws

    def wait(self, prompt_id: str, timeout: float = 600.0, on_progress: ProgressCallback | None = None) -> dict:
        """Wait for `prompt_id` to finish; returns its /history entry.

        Raises ExecutionFailed if the history says "error" (or the prompt was interrupted) and
        TimeoutError after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        ws = self._open_ws()
        if ws is not None:
            try:
                self._follow(ws, prompt_id, deadline, on_progress)
            except (ConnectionError, OSError, ComfyError) as err:
                if isinstance(err, TimeoutError):
                    raise
                self.close()  # fall back to polling
        entry = self._poll(prompt_id, deadline)
        return self._check(prompt_id, entry)

    def _follow(self, ws: WebSocket, prompt_id: str, deadline: float, on_progress) -> None:
        if self.history(prompt_id):
            return  # finished before we listened
        next_check = time.monotonic() + HISTORY_CHECK_S
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish in time")
            try:
                opcode, payload = ws.recv(timeout=min(deadline, next_check) - now)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"prompt {prompt_id} did not finish in time") from None
                if self.history(prompt_id):
                    return
                next_check = time.monotonic() + HISTORY_CHECK_S
                continue
            if opcode != OP_TEXT:
                continue  # binary frames are preview images
            message = json.loads(payload)
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if on_progress is not None and kind in ("progress", "executing", "execution_cached", "executed",
                                                    "execution_start"):
                on_progress(kind, data)
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return
            if kind in ("execution_error", "execution_interrupted") and data.get("prompt_id") == prompt_id:
                return  # the history entry carries the same details

    def _poll(self, prompt_id: str, deadline: float) -> dict:
        delay = 0.1
        while True:
            entry = self.history(prompt_id)
            if entry and (entry.get("status") is None or entry["status"].get("completed") is not None):
                return entry
            if time.monotonic() >= deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish in time")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 1.0)

    @staticmethod
    def _check(prompt_id: str, entry: dict) -> dict:
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            details, interrupted = {}, False
            for name, data in status.get("messages", []):
                if name in ("execution_error", "execution_interrupted"):
                    details, interrupted = dict(data), name == "execution_interrupted"
            details.pop("current_inputs", None)  # full tensor reprs
            details.pop("current_outputs", None)
            raise ExecutionFailed(prompt_id, details, interrupted)
        return entry

    def run(self, prompt: dict, timeout: float = 600.0, on_progress: ProgressCallback | None = None) -> dict:
        """queue + wait: returns the history entry."""
        return self.wait(self.queue(prompt), timeout=timeout, on_progress=on_progress)

    # results

    def images(self, prompt_id: str) -> list[dict]:
        """Image references ({filename, subfolder, type, node_id}) of a finished prompt, by node id."""
        refs = []
        for node_id, out in sorted(self.history(prompt_id).get("outputs", {}).items()):
            for ref in out.get("images", []):
                refs.append(dict(ref, node_id=node_id))
        return refs

    def view(self, image_ref: dict) -> bytes:
        query = urllib.parse.urlencode({k: image_ref.get(k, "") for k in ("filename", "subfolder", "type")})
        status, body = self._request(f"/view?{query}")
        if status != 200:
            raise ComfyError(f"/view {image_ref.get('filename')}: HTTP {status}")
        return body

    def download(self, image_ref: dict, dest_dir: str | os.PathLike) -> Path:
        """Fetch one image through /view into `dest_dir`; returns its path."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / Path(image_ref["filename"]).name
        path.write_bytes(self.view(image_ref))
        return path

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# CLI


def _print_progress(kind: str, data: dict) -> None:
    if kind == "progress":
        print(f"  node {data.get('node')}: {data.get('value')}/{data.get('max')}", file=sys.stderr, flush=True)
    elif kind == "executing" and data.get("node") is not None:
        print(f"  executing node {data['node']}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Queue ComfyUI API-format workflows and fetch their images.")
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="server address (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="queue a workflow_api.json, wait, download its images")
    run.add_argument("workflow", help="API-format workflow (ComfyUI 'Save (API Format)')")
    run.add_argument("--out", default=".", help="folder for the images (default: current folder)")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default %(default)s)")
    info = sub.add_parser("object-info", help="print /object_info (or one class)")
    info.add_argument("class_type", nargs="?")
    args = parser.parse_args(argv)

    client = ComfyClient(args.url)
    try:
        if args.command == "object-info":
            print(json.dumps(client.object_info(args.class_type), indent=1))
            return 0
        prompt = json.loads(Path(args.workflow).read_text())
        if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), dict):
            prompt = prompt["prompt"]
        started = time.monotonic()
        prompt_id = client.queue(prompt)
        print(f"queued {prompt_id}", file=sys.stderr)
        client.wait(prompt_id, timeout=args.timeout, on_progress=_print_progress)
        for ref in client.images(prompt_id):
            print(client.download(ref, args.out))
        print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 0
    except (ComfyError, TimeoutError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
