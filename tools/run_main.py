#!/usr/bin/env python3
"""The README's first command: set up ComfyUI with the pack, start it on 127.0.0.1, queue the basic example
workflow through the HTTP API and print where the images are.

    python3 tools/run_main.py [--comfyui PATH] [--models DIR] [--extra-model-paths FILE] [--keep-running]

1. setup: `.venv` with the pinned packages, the bundled ComfyUI in `.host/ComfyUI` (or yours: --comfyui or
   $IPAKIT_COMFYUI), the pack linked into its custom_nodes (tools/setup_env.py);
2. models: your real models when the folders you point to (--models, --extra-model-paths, your ComfyUI's
   models/ and extra_model_paths.yaml) hold an SD1.5 checkpoint, the IP-Adapter of the workflow's preset
   and its CLIP vision model; otherwise random-weight stand-ins in `.cache/models` (the images are noise);
3. server: ComfyUI on 127.0.0.1 (a free port unless --port), logs in the work folder;
4. job: workflows/api/basic_image_prompt.json queued with POST /prompt, progress read from the WebSocket,
   the images fetched with /view into --out.

Each step skips what is already there, so a re-run starts the server and samples, nothing more. This file
runs under any python3 (stdlib only) until step 1 has made `.venv`; then it re-runs itself with that
interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import setup_env  # noqa: E402

STAGE_ENV = "IPAKIT_RUN_MAIN_STAGE"
ENV_MODELS = "IPAKIT_MODELS"
ENV_PYTHON = "IPAKIT_PYTHON"
MODELS_CACHE = REPO / ".cache" / "models"
WORK_DIR = REPO / ".host" / "run"
STEPS = 4
NOISE = ("The models are random-weight stand-ins in the real layouts, so the images are noise: this proves the "
         "pipeline, not the pictures. Point --models or --extra-model-paths at trained models for real pictures.")


# progress display (plain text; redraws one line on a terminal)


class Progress:
    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.tty = stream.isatty()
        self.open_line = False

    def step(self, n: int, text: str) -> None:
        self.line(f"[{n}/{STEPS}] {text}")

    def line(self, text: str) -> None:
        self.end_update()
        print(text, file=self.stream, flush=True)

    def update(self, text: str, final: bool = False) -> None:
        """A line redrawn in place on a terminal; elsewhere printed only when `final`."""
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self.open_line = True
            if final:
                self.end_update()
        elif final:
            print(text, file=self.stream, flush=True)

    def end_update(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False

    def run(self, cmd: list[str], label: str) -> None:
        """Run a command, showing `label` with the seconds elapsed; its output is shown only if it fails."""
        started = time.monotonic()
        with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            while proc.poll() is None:
                self.update(f"      {label} ... {time.monotonic() - started:.0f} s")
                time.sleep(0.5)
            output = proc.stdout.read()
        self.update(f"      {label} ... {time.monotonic() - started:.0f} s", final=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{output[-3000:]}")

    def bar(self, label: str, value: int, total: int, width: int = 24) -> None:
        done = int(width * value / max(total, 1))
        self.update(f"      {label} [{'#' * done}{'.' * (width - done)}] {value}/{total}", final=value >= total)


# step 2: models


def model_sources(args, comfy_dir: Path):
    """The model folders to look in: --models, --extra-model-paths, and the ComfyUI's own models/ and YAML."""
    from tools import local_models

    parts = []
    if args.models:
        parts.append(local_models.from_models_dir(args.models))
    for yaml_file in args.extra_model_paths:
        parts.append(local_models.from_yaml(yaml_file))
    if (comfy_dir / "models").is_dir():
        parts.append(local_models.from_models_dir(comfy_dir / "models"))
    if (comfy_dir / "extra_model_paths.yaml").is_file():
        parts.append(local_models.from_yaml(comfy_dir / "extra_model_paths.yaml"))
    return local_models.merge(*parts)


def generate_stand_ins(progress: Progress, workflow) -> None:
    """The random-weight models the workflow needs, in .cache/models (only the missing ones)."""
    from tools import gen_comfy_models, gen_ipadapter

    comfy, adapters = workflow.stand_ins()
    for name in comfy:
        model = gen_comfy_models.MODELS[name]
        if (MODELS_CACHE / model.relpath).exists():
            progress.line(f"      {model.relpath}: there")
            continue
        progress.run([sys.executable, "-m", "tools.gen_comfy_models", "--out", str(MODELS_CACHE), "--only", name],
                     f"generating {model.relpath} ({model.description})")
    for variant, subdir, kwargs in adapters:
        folder = MODELS_CACHE / "ipadapter" / (subdir or "")
        path = folder / gen_ipadapter.published_filename(variant, kwargs.get("fmt", "safetensors"))
        there = path.exists()
        gen_ipadapter.ensure_checkpoint(variant, folder, **kwargs)  # also redone when its stamp changed
        progress.line(f"      {path.relative_to(MODELS_CACHE)}: {'there' if there else 'generated'}")


# the job


def build_prompt(api: dict, workflow, checkpoint: str | None, args) -> dict:
    """The workflow's API form with the checkpoint found (or the stand-ins, fast settings when random)."""
    from tools import workflows

    tables = []
    if checkpoint is None:
        tables += [workflows.STAND_INS[workflow.family], workflows.FAST]
    else:
        tables.append({("CheckpointLoaderSimple", "ckpt_name"): checkpoint})
    sizes = {}
    if args.steps:
        sizes[("KSampler", "steps")] = args.steps
    if args.size:
        sizes.update({("EmptyLatentImage", "width"): args.size, ("EmptyLatentImage", "height"): args.size})
    return workflows.localize(api, *tables, sizes)


def follow(progress: Progress, prompt: dict):
    titles = {nid: node.get("_meta", {}).get("title", node["class_type"]) for nid, node in prompt.items()}

    def on_event(kind: str, data: dict) -> None:
        node = data.get("node")
        if kind == "executing" and node is not None:
            progress.update(f"      running {titles.get(node, node)}")
        elif kind == "execution_cached":
            cached = data.get("nodes") or []
            if cached:
                progress.update(f"      {len(cached)} node(s) cached from the previous run")
        elif kind == "progress":
            progress.bar(titles.get(str(node), "sampling"), int(data.get("value", 0)), int(data.get("max", 1)))

    return on_event


def run(args) -> int:
    from tools import comfy_host, example_workflows, local_models, workflow_pictures, workflows
    from tools.comfy_client import ComfyClient, ComfyError

    progress = Progress()
    comfy_dir = setup_env.check_comfyui(args.comfyui) if args.comfyui else setup_env.BUNDLED_COMFYUI
    bundled = not args.comfyui
    workflow = example_workflows.BY_NAME[example_workflows.MAIN]
    api = json.loads((workflows.API_DIR / f"{workflow.name}.json").read_text())
    preset = next(n["inputs"]["preset"] for n in api.values() if n["class_type"] == "IPAKitUnifiedLoader")

    progress.step(2, "models")
    folders = model_sources(args, comfy_dir)
    found = local_models.find_real(folders, preset=preset, placeholder=example_workflows.CKPT_SD15,
                                   checkpoint=args.checkpoint)
    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    extra_args: list[str] = []
    if found.complete:
        progress.line(f"      using your models: {found.checkpoint}, {found.ipadapter}, {found.clip_vision}")
        models_dir = work_dir / "models"  # left empty; the real folders come from this YAML
        extra_args = ["--extra-model-paths-config", str(local_models.write_yaml(folders, work_dir / "your_models.yaml"))]
    else:
        if folders:
            progress.line("      no complete set of real models: missing " + "; ".join(found.missing))
        progress.line("      using random-weight stand-ins in .cache/models (generated once, then reused)")
        generate_stand_ins(progress, workflow)
        models_dir = MODELS_CACHE

    progress.step(3, f"server: ComfyUI at {comfy_dir}")
    python = args.python or _comfy_python(comfy_dir, bundled) or sys.executable
    started = time.monotonic()
    progress.update("      starting ...")
    server = comfy_host.start_server(comfy_dir, models_dir, port=args.port, extra_args=extra_args, work_dir=work_dir,
                                     python=python, cpu=not args.gpu)
    progress.update(f"      ready at {server.url} in {time.monotonic() - started:.1f} s (log {server.log_path})", final=True)
    try:
        prompt = build_prompt(api, workflow, found.checkpoint if found.complete else None, args)
        workflow_pictures.write_references(server.input_dir, workflow_pictures.references_used(prompt))
        progress.step(4, f"job: workflows/{workflow.name}.json through POST /prompt")
        started = time.monotonic()
        with ComfyClient(server.url) as client:
            prompt_id = client.queue(prompt)
            progress.line(f"      queued prompt {prompt_id}")
            client.wait(prompt_id, timeout=args.timeout, on_progress=follow(progress, prompt))
            progress.end_update()
            paths = [client.download(ref, args.out) for ref in client.images(prompt_id)]
        progress.line(f"      done in {time.monotonic() - started:.1f} s")
        progress.line("images:")
        for path in paths:
            progress.line(f"  {path.resolve()}")
        if not found.complete or found.random_weights:
            progress.line(NOISE)
        if args.keep_running:
            progress.line(f"ComfyUI keeps running at {server.url}: drag workflows/*.json into it. Ctrl+C stops it.")
            while server.alive():
                time.sleep(1)
        return 0 if paths else 1
    except (ComfyError, TimeoutError) as err:
        progress.line(f"error: {err}\n(server log: {server.log_path})")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


def _comfy_python(comfy_dir: Path, bundled: bool) -> str | None:
    """The python of a user's ComfyUI (its venv), when it has one; the bundled host runs on .venv."""
    if bundled:
        return None
    for candidate in ("venv/bin/python", ".venv/bin/python", "../python_embeded/python.exe", "venv/Scripts/python.exe"):
        path = comfy_dir / candidate
        if path.is_file():
            return str(path)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", metavar="PATH", default=os.environ.get(setup_env.ENV_COMFYUI),
                        help=f"your ComfyUI folder (default: ${setup_env.ENV_COMFYUI}, else the bundled 2024 host)")
    parser.add_argument("--models", metavar="DIR", default=os.environ.get(ENV_MODELS),
                        help=f"a ComfyUI models folder with your models (default: ${ENV_MODELS})")
    parser.add_argument("--extra-model-paths", metavar="FILE", action="append", default=[],
                        help="an extra_model_paths.yaml naming your model folders (repeatable)")
    parser.add_argument("--checkpoint", metavar="NAME", help="the SD1.5 checkpoint to use, as ComfyUI lists it")
    parser.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--python", default=os.environ.get(ENV_PYTHON),
                        help="python that runs ComfyUI (default: your ComfyUI's venv if it has one, else .venv)")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (needs a CUDA torch in --python)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the workflow's; 1 with random models)")
    parser.add_argument("--size", type=int, help="image size in pixels (default: the workflow's; 64 with random models)")
    parser.add_argument("--work-dir", default=str(WORK_DIR), help="server folders and log (default: %(default)s)")
    parser.add_argument("--out", help="where the images are saved (default: <work-dir>/images)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the images (default %(default)s)")
    parser.add_argument("--keep-running", action="store_true", help="leave ComfyUI running afterwards (Ctrl+C stops it)")
    args = parser.parse_args(argv)
    args.out = args.out or str(Path(args.work_dir) / "images")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if os.environ.get(STAGE_ENV) == "venv":
        try:
            return run(args)
        except (RuntimeError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    print(f"[1/{STEPS}] setup (the first run installs about 1.4 GB of packages: a few minutes)", flush=True)
    try:
        env = setup_env.ensure(args.comfyui)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: setup failed: {err}", file=sys.stderr)
        return 1
    child_env = dict(os.environ, **{STAGE_ENV: "venv"})
    child_env.pop("PYTHONPATH", None)
    try:
        return subprocess.call([str(env.python), str(Path(__file__).resolve()), *argv], env=child_env, cwd=REPO)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
