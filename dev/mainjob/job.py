"""Steps 2 to 4 of the README's first command, run by `dev/run_main.py` with the `.venv` Python once step 1
(setup) is done: `python -m dev.mainjob.job [the same arguments]`.

2. models: the user's real models when the folders given (--models, --extra-model-paths, the ComfyUI's own
   models/ and extra_model_paths.yaml) hold a complete set for the basic workflow (dev/mainjob/local_models.py);
   otherwise the random-weight stand-ins in `.cache/models` (dev/standins/), generated once;
3. server: ComfyUI on 127.0.0.1 (dev/host/comfy_host.py), its folders and log in the work folder;
4. job: workflows/api/basic_image_prompt.json queued with POST /prompt, progress read from the WebSocket and
   shown as text, the images fetched with /view into --out (dev/host/comfy_client.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dev.authoring import examples, pictures, workflows
from dev.authoring.graph import localize
from dev.host import comfy_host, setup_env
from dev.host.comfy_client import ComfyClient, ComfyError
from dev.mainjob import local_models, options
from dev.standins import comfy_models
from dev.standins.names import MODELS_CACHE

REPO = setup_env.REPO
NOISE = ("The models are random-weight stand-ins in the real layouts, so the images are noise: this proves the "
         "pipeline, not the pictures. Point --models or --extra-model-paths at trained models for real pictures.")


# progress display (plain text; redraws one line on a terminal)


class Progress:
    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.tty = stream.isatty()
        self.open_line = False

    def step(self, n: int, text: str) -> None:
        self.line(f"[{n}/{options.STEPS}] {text}")

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
    """The random-weight models the workflow needs, in .cache/models (only the missing ones): the ComfyUI models
    each in a child Python (its memory goes with it), the IP-Adapter files here."""
    from dev.standins import ipadapter  # imports torch: only when stand-ins are used, never with real models

    comfy, adapters = workflow.stand_ins()
    for name in comfy:
        model = comfy_models.MODELS[name]
        if (MODELS_CACHE / model.relpath).exists():
            progress.line(f"      {model.relpath}: there")
            continue
        progress.run([sys.executable, "-m", "dev.standins.comfy_models", "--out", str(MODELS_CACHE), "--only", name],
                     f"generating {model.relpath} ({model.description})")
    for variant, subdir, kwargs in adapters:
        folder = MODELS_CACHE / "ipadapter" / (subdir or "")
        path = folder / ipadapter.published_filename(variant, kwargs.get("fmt", "safetensors"))
        there = path.exists()
        ipadapter.ensure_checkpoint(variant, folder, **kwargs)  # also redone when its stamp changed
        progress.line(f"      {path.relative_to(MODELS_CACHE)}: {'there' if there else 'generated'}")


# the job


def build_prompt(api: dict, workflow, checkpoint: str | None, args) -> dict:
    """The workflow's API form with the checkpoint found (or the stand-ins, fast settings when random)."""
    tables = []
    if checkpoint is None:
        tables += [examples.STAND_INS[workflow.family], examples.FAST]
    else:
        tables.append({("CheckpointLoaderSimple", "ckpt_name"): checkpoint})
    sizes = {}
    if args.steps:
        sizes[("KSampler", "steps")] = args.steps
    if args.size:
        sizes.update({("EmptyLatentImage", "width"): args.size, ("EmptyLatentImage", "height"): args.size})
    return localize(api, *tables, sizes)


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
    progress = Progress()
    comfy_dir = setup_env.check_comfyui(args.comfyui) if args.comfyui else setup_env.BUNDLED_COMFYUI
    bundled = not args.comfyui
    workflow = examples.BY_NAME[examples.MAIN]
    api = json.loads((workflows.API_DIR / f"{workflow.name}.json").read_text())
    preset = next(n["inputs"]["preset"] for n in api.values() if n["class_type"] == "IPAKitUnifiedLoader")

    progress.step(2, "models")
    folders = model_sources(args, comfy_dir)
    found = local_models.find_real(folders, preset=preset, placeholder=examples.CKPT_SD15,
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
        pictures.write_references(server.input_dir, pictures.references_used(prompt))
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


def main(argv: list[str] | None = None) -> int:
    try:
        return run(options.parse_args(argv))
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
