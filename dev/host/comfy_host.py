"""Boot the ComfyUI test host: in-process (`boot`) or as a real server (`start_server`).

In process: the ComfyUI folder and the torchvision stand-in go first on
sys.path, `--cpu` and pytorch attention are set before `comfy.model_management` is imported, model
folders are registered like `extra_model_paths.yaml` would, and ComfyUI's custom-node loader loads the
pack from `custom_nodes/ipadapter_kit` exactly as a real install does. ComfyUI keeps its state in
module globals, so there is one booted host per process.

Server: `python main.py --cpu ...` from the ComfyUI folder, with a generated
`--extra-model-paths-config` of absolute paths, its log captured to a file and checked for a failed
import of the pack.

Beware module-name shadowing: ComfyUI adds top-level `nodes`, `server`, `execution`,
`folder_paths`, `comfy`, ... The repository root holds the pack's own `nodes/` package, so the
ComfyUI folder must come before the repository root on sys.path, and nothing may have imported
another `nodes` first.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dev.host import setup_env

PACK_NAME = setup_env.PACK_DIR_NAME
STUBS = setup_env.STUBS

# model folders registered for the tests, under one models directory laid out like ComfyUI's models/
MODEL_FOLDERS = ("checkpoints", "clip_vision", "controlnet", "ipadapter", "loras", "insightface", "vae", "clip",
                 "embeddings", "style_models", "upscale_models", "unet")

# top-level modules that ComfyUI brings and that must come from its folder
COMFY_TOP_LEVEL = ("nodes", "server", "execution", "folder_paths", "latent_preview", "comfy", "comfy_extras",
                   "app", "main", "cuda_malloc", "new_updater")


def _require_comfy_dir(comfy_dir: str | os.PathLike | None) -> Path:
    """`comfy_dir`, else $IPAKIT_COMFYUI, else the bundled `.host/ComfyUI`; it must hold ComfyUI's main.py."""
    comfy_dir = Path(comfy_dir) if comfy_dir is not None else setup_env.default_comfy_dir()
    if not (comfy_dir / "main.py").is_file():
        raise FileNotFoundError(f"no ComfyUI at {comfy_dir}; run `python3 dev/host/setup_env.py` first "
                                f"(or set {setup_env.ENV_COMFYUI} to your ComfyUI folder)")
    return comfy_dir.resolve()


def _module_dir(module) -> Path | None:
    path = getattr(module, "__file__", None)
    if path:
        return Path(path).resolve().parent
    search = list(getattr(module, "__path__", []) or [])  # namespace package (ComfyUI's comfy/ has no __init__)
    return Path(search[0]).resolve().parent if search else None


# in-process


def prepare_imports() -> Path:
    """Make `import comfy...` of the test host's ComfyUI work in this process on the CPU; idempotent. Returns
    the ComfyUI folder."""
    comfy_dir = _require_comfy_dir(None)
    for name in COMFY_TOP_LEVEL:
        module = sys.modules.get(name)
        if module is None:
            continue
        where = _module_dir(module)
        if where is None or not (where == comfy_dir or comfy_dir in where.parents):
            raise RuntimeError(f"module {name!r} is already imported from {where or module!r}, not from {comfy_dir}; "
                               f"it shadows ComfyUI's own {name!r}. Import the pack's modules relatively "
                               f"(never as top-level `nodes`) and boot the host before anything else imports them.")
    entries = [str(comfy_dir)]
    if str(STUBS) in sys.path or importlib.util.find_spec("torchvision") is None:
        entries.append(str(STUBS))  # the import-only stand-in, only where no real torchvision exists
    for entry in reversed(entries):  # comfy_dir ends up first
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)

    import comfy.cli_args  # argv is not parsed unless comfy.options.enable_args_parsing() ran

    args = comfy.cli_args.args
    if "comfy.model_management" not in sys.modules:
        args.cpu = True
        args.use_pytorch_cross_attention = True
    elif not args.cpu:
        raise RuntimeError("comfy.model_management was imported before --cpu could be set; "
                           "call dev.host.comfy_host.prepare_imports() before importing anything from comfy")
    return comfy_dir


@dataclass
class InProcessHost:
    """The booted in-process ComfyUI: its modules, the node table and a way to run one node."""

    comfy_dir: Path
    output_dir: Path
    nodes: Any  # ComfyUI's nodes module
    folder_paths: Any
    pack: Any  # the pack module as ComfyUI loaded it: sys.modules["ipadapter_kit"]

    @property
    def NODE_CLASS_MAPPINGS(self) -> dict:  # noqa: N802 (ComfyUI's name)
        return self.nodes.NODE_CLASS_MAPPINGS

    @property
    def observe(self):
        """The pack's public observation module (`nodes/observe.py`) as ComfyUI loaded the pack."""
        import importlib

        return importlib.import_module(f"{self.pack.__name__}.nodes.observe")

    def node_class(self, class_id: str):
        try:
            return self.nodes.NODE_CLASS_MAPPINGS[class_id]
        except KeyError:
            raise KeyError(f"no node {class_id!r} is registered; the pack registered "
                           f"{sorted(getattr(self.pack, 'NODE_CLASS_MAPPINGS', {}))}") from None

    def run(self, class_id: str, **inputs):
        """Instantiate node `class_id` and call its FUNCTION with `inputs` under torch.inference_mode().

        Returns what the FUNCTION returns: a tuple, or a dict with "ui"/"result".
        """
        import torch

        cls = self.node_class(class_id)
        with torch.inference_mode():
            return getattr(cls(), cls.FUNCTION)(**inputs)

    def outputs(self, class_id: str, **inputs) -> tuple:
        """Like `run`, but always the tuple of outputs (the "result" of a {"ui", "result"} dict)."""
        out = self.run(class_id, **inputs)
        if isinstance(out, dict):
            return tuple(out.get("result", ()))
        return tuple(out)


_BOOTED: InProcessHost | None = None


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _register_models(folder_paths, models_dir: Path) -> None:
    known = folder_paths.folder_names_and_paths
    for name in MODEL_FOLDERS:
        path = models_dir / name
        path.mkdir(parents=True, exist_ok=True)
        if name in known and str(path) in known[name][0]:
            continue
        folder_paths.add_model_folder_path(name, str(path))
    folder_paths.filename_list_cache.clear()


def pack_import_errors(log_lines: list[str] | str) -> list[str]:
    """Lines of a ComfyUI log that say the pack failed to load (with the traceback before them)."""
    lines = log_lines.splitlines() if isinstance(log_lines, str) else list(log_lines)
    needle = f"{os.sep}{PACK_NAME}"
    bad = []
    for i, line in enumerate(lines):
        mine = needle in line or line.rstrip().endswith(PACK_NAME)
        if mine and ("IMPORT FAILED" in line or "Cannot import" in line or "lack of NODE_CLASS_MAPPINGS" in line):
            start = i
            while start > 0 and i - start < 40 and not lines[start - 1].startswith("Traceback"):
                start -= 1
            context = lines[start - 1:i + 1] if start > 0 and lines[start - 1].startswith("Traceback") else [line]
            bad.append("\n".join(context))
    return bad


def _loaded_pack(comfy_dir: Path):
    """The pack module as ComfyUI registered it: `ipadapter_kit` on the 2024 host, its folder path on current ComfyUI."""
    init = (comfy_dir / "custom_nodes" / PACK_NAME / "__init__.py").resolve()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and name.endswith(PACK_NAME) and Path(path).resolve() == init:
            return module
    return None


def boot(models_dir: str | os.PathLike, *, output_dir: str | os.PathLike | None = None) -> InProcessHost:
    """Boot ComfyUI in this process with the pack loaded; later calls return the same host.

    Model folders (MODEL_FOLDERS) under `models_dir` are registered (and created); output, input and
    temp folders go under `output_dir` (a new temporary folder by default). Raises RuntimeError if the
    pack failed to import.
    """
    global _BOOTED
    models_dir = Path(models_dir).resolve()
    if _BOOTED is not None:
        _register_models(_BOOTED.folder_paths, models_dir)
        return _BOOTED

    comfy_dir = prepare_imports()
    import folder_paths

    import nodes

    if Path(nodes.__file__).resolve().parent != comfy_dir:
        raise RuntimeError(f"`import nodes` gave {nodes.__file__}, not ComfyUI's nodes.py in {comfy_dir}")
    if output_dir is None:
        output_dir = Path(tempfile.mkdtemp(prefix="ipakit-comfy-"))
        atexit.register(shutil.rmtree, output_dir, ignore_errors=True)
    output_dir = Path(output_dir).resolve()
    for sub in ("output", "input", "temp"):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output_dir / "output"))
    folder_paths.set_input_directory(str(output_dir / "input"))
    folder_paths.set_temp_directory(str(output_dir / "temp"))
    _register_models(folder_paths, models_dir)  # before the pack loads, as extra_model_paths.yaml would be

    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        if hasattr(nodes, "init_extra_nodes"):  # current ComfyUI: async, and the API nodes need network access
            import asyncio

            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        else:
            nodes.init_custom_nodes()
    finally:
        root.removeHandler(capture)
    errors = pack_import_errors(capture.lines)
    pack = _loaded_pack(comfy_dir)
    if errors or pack is None:
        detail = "\n".join(errors) or f"custom_nodes/{PACK_NAME} was not found in {comfy_dir}/custom_nodes"
        raise RuntimeError(f"ComfyUI did not load the pack:\n{detail}")

    _BOOTED = InProcessHost(comfy_dir=comfy_dir, output_dir=output_dir, nodes=nodes,
                            folder_paths=folder_paths, pack=pack)
    return _BOOTED


# server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_extra_model_paths(models_dir: Path, path: Path) -> Path:
    """An extra_model_paths.yaml with absolute paths (the 2024 host resolves relative ones against the CWD)."""
    lines = ["# generated by dev/host/comfy_host.py", "ipakit_tests:"]
    for name in MODEL_FOLDERS:
        (models_dir / name).mkdir(parents=True, exist_ok=True)
        lines.append(f"  {name}: {json.dumps(str((models_dir / name).resolve()))}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class ServerHandle:
    """A running ComfyUI server process started by `start_server`."""

    process: subprocess.Popen
    url: str
    work_dir: Path
    log_path: Path
    _log_file: Any = field(default=None, repr=False)

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 20 seconds; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        return self.process.returncode

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _lacks_torchvision(python: str) -> bool:
    """True when `python` cannot find a real torchvision (then the stand-in goes on PYTHONPATH)."""
    if python == sys.executable:
        spec = importlib.util.find_spec("torchvision")
        return spec is None or (spec.origin or "").startswith(str(STUBS))
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is not None)"
    return subprocess.run([python, "-c", code], env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-60:])


def start_server(comfy_dir: str | os.PathLike | None, models_dir: str | os.PathLike, port: int | None = None,
                 extra_args: tuple[str, ...] | list[str] = (), *, work_dir: str | os.PathLike | None = None,
                 python: str | None = None, timeout: float = 180.0, cpu: bool = True) -> ServerHandle:
    """Start `python main.py --cpu ...` in `comfy_dir` and wait until /system_stats answers.

    `cpu=False` leaves out `--cpu`, so ComfyUI picks the device (a GPU build of torch in `python`).

    Output, input and temp folders, the generated YAML and `server.log` go in `work_dir` (a new
    temporary folder by default). Raises RuntimeError with the log tail if the server exits, does not
    answer within `timeout` seconds, or logs a failed import of the pack.
    """
    comfy_dir = _require_comfy_dir(comfy_dir)
    models_dir = Path(models_dir).resolve()
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="ipakit-server-")).resolve()
    for sub in ("output", "input", "temp"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    yaml_path = write_extra_model_paths(models_dir, work_dir / "extra_model_paths.yaml")

    env = dict(os.environ)
    if _lacks_torchvision(python or sys.executable):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STUBS), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_DISABLE", "1")

    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        log_path = work_dir / "server.log"
        cmd = [python or sys.executable, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1",
               "--port", str(chosen), "--disable-auto-launch", "--use-pytorch-cross-attention",
               "--output-directory", str(work_dir / "output"), "--input-directory", str(work_dir / "input"),
               "--temp-directory", str(work_dir / "temp"), "--extra-model-paths-config", str(yaml_path),
               *extra_args]
        log_file = open(log_path, "w")
        log_file.write(f"$ cd {comfy_dir} && {' '.join(cmd)}\n")
        log_file.flush()
        started = time.monotonic()
        process = subprocess.Popen(cmd, cwd=comfy_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        handle = ServerHandle(process=process, url=f"http://127.0.0.1:{chosen}", work_dir=work_dir, log_path=log_path,
                              _log_file=log_file)
        atexit.register(handle.stop)
        while time.monotonic() - started < timeout:
            if process.poll() is not None:
                break
            if _http_ok(f"{handle.url}/system_stats"):
                errors = pack_import_errors(handle.log_text())
                if errors:
                    handle.stop()
                    raise RuntimeError("ComfyUI started but did not load the pack:\n" + "\n".join(errors))
                return handle
            time.sleep(0.25)
        handle.stop()
        text = handle.log_text()
        if "address already in use" in text.lower() and attempt + 1 < attempts:
            continue
        why = f"exited with code {process.returncode}" if process.returncode not in (None, -signal.SIGTERM) \
            else f"did not answer /system_stats within {timeout:.0f} s"
        raise RuntimeError(f"ComfyUI server {why}; log {log_path}:\n{_tail(text)}")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_server(models_dir: str | os.PathLike, **kwargs):
    """`with running_server(models_dir) as server:` starts the default host and stops it on exit."""
    handle = start_server(None, models_dir, **kwargs)
    try:
        yield handle
    finally:
        handle.stop()
