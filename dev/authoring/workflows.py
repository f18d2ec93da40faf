"""The files of workflows/ and the command line that writes and checks them: each example definition
(dev/authoring/examples.py) rendered to ComfyUI's UI format (workflows/<name>.json), converted to the API
format (workflows/api/<name>.json), and its thumbnail (workflows/<name>.jpg).

    python -m dev.authoring.workflows write [--url URL] [--only NAME ...]   # rewrite workflows/*.json, api/*.json, thumbnails
    python -m dev.authoring.workflows check [--url URL]      # exit 1 when the committed files differ from the definitions
    python -m dev.authoring.workflows api UI.json [--url URL]   # convert any UI-format workflow to API format (stdout)

Rendering and converting need the node catalogue (`/object_info`): from `--url` of a running ComfyUI, else
from a server started on the test host (dev/host/comfy_host.py) for the duration of the command. The Flux and
SD3.5 examples need a catalogue with those models' nodes (a current ComfyUI): with the 2024 test host's they are
neither rendered nor checked, and their committed files are kept. Render them with
`IPAKIT_COMFYUI=<current ComfyUI> python -m dev.authoring.workflows write --only flux_xlabs flux_instantx sd35_instantx`
(the SD examples stay rendered against the test host's catalogue, whose core nodes they are checked with).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from dev.authoring import examples, pictures
from dev.authoring.graph import render_ui, to_api
from dev.host import comfy_host
from dev.host.comfy_client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO / "workflows"
API_DIR = WORKFLOWS_DIR / "api"


# files


def dumps(obj, indent: int = 0) -> str:
    """JSON with one item per line, except lists of plain values (positions, links, widget values) and small
    flat objects (node slots), which stay on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    flat = json.dumps(obj, ensure_ascii=False)
    nested = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    if not any(isinstance(v, dict) or (isinstance(v, list) and any(isinstance(i, (dict, list)) for i in v)) for v in nested):
        if not isinstance(obj, dict) or len(flat) <= 100:
            return flat
    if isinstance(obj, dict):
        return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {dumps(v, indent + 2)}" for k, v in obj.items()) + f"\n{pad}}}"
    return "[\n" + ",\n".join(f"{inner}{dumps(v, indent + 2)}" for v in obj) + f"\n{pad}]"


def renderable(wf: examples.Workflow, info: dict) -> bool:
    """Whether the catalogue has the nodes and options the example uses (Flux/SD3.5 need a current ComfyUI)."""
    if not wf.current_only:
        return True
    types = info.get("DualCLIPLoader", {}).get("input", {}).get("required", {}).get("type", [[]])[0]
    return all(n in info for n in ("FluxGuidance", "EmptySD3LatentImage", "TripleCLIPLoader")) and "flux" in types


def _files_of(name: str) -> tuple[Path, Path, Path]:
    return WORKFLOWS_DIR / f"{name}.json", API_DIR / f"{name}.json", WORKFLOWS_DIR / f"{name}.jpg"


def rendered_files(info: dict, only: set[str] | None = None) -> dict[Path, bytes]:
    """Every file `write` produces: workflows/<name>.json (UI), workflows/api/<name>.json, workflows/<name>.jpg,
    for the examples this catalogue can render (and, with `only`, those named)."""
    files = {}
    for wf in examples.WORKFLOWS:
        if not renderable(wf, info) or (only is not None and wf.name not in only):
            continue
        ui = render_ui(wf.graph(), info, name=wf.name, extra={"ipakit": wf.meta()})
        files[WORKFLOWS_DIR / f"{wf.name}.json"] = (dumps(ui) + "\n").encode()
        files[API_DIR / f"{wf.name}.json"] = (dumps(to_api(ui, info)) + "\n").encode()
        drawn = {name: pictures.REFERENCES[name]() for name in pictures.references_used(ui)}
        files[WORKFLOWS_DIR / f"{wf.name}.jpg"] = pictures.thumbnail(ui, wf.title, drawn)
    return files


def stale_files(info: dict) -> list[str]:
    """Committed UI and API files that differ from what the definitions render, and files under workflows/ no
    definition makes. Thumbnails are not compared: their bytes depend on Pillow's JPEG coder."""
    files = rendered_files(info)
    stale = [str(p.relative_to(REPO)) for p, data in files.items()
             if p.suffix != ".jpg" and (not p.exists() or p.read_bytes() != data)]
    made = {p for wf in examples.WORKFLOWS for p in _files_of(wf.name)}
    for path in sorted(WORKFLOWS_DIR.rglob("*")):
        if path.is_file() and path not in made:
            stale.append(f"{path.relative_to(REPO)} (no definition makes it)")
    return stale


# command line


def fetch_object_info(url: str | None) -> dict:
    if url:
        with ComfyClient(url) as client:
            return client.object_info()
    with tempfile.TemporaryDirectory(prefix="ipakit-workflows-") as tmp:
        with comfy_host.running_server(Path(tmp) / "models", work_dir=Path(tmp) / "work") as server:
            with ComfyClient(server.url) as client:
                return client.object_info()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render, check and convert the example workflows.")
    parser.add_argument("--url", help="a running ComfyUI with the pack (default: start the test host)")
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="rewrite workflows/ from dev/authoring/examples.py")
    write.add_argument("--only", nargs="+", choices=sorted(examples.BY_NAME), help="rewrite these examples only")
    sub.add_parser("check", help="exit 1 when workflows/ is not what the definitions render")
    api = sub.add_parser("api", help="print the API format of a UI-format workflow")
    api.add_argument("workflow", type=Path)
    args = parser.parse_args(argv)
    info = fetch_object_info(args.url)
    if args.command == "api":
        print(dumps(to_api(json.loads(args.workflow.read_text()), info)))
        return 0
    if args.command == "check":
        stale = stale_files(info)
        for line in stale:
            print(f"stale: {line}", file=sys.stderr)
        return 1 if stale else 0
    files = rendered_files(info, set(args.only) if args.only else None)
    made = {p for wf in examples.WORKFLOWS for p in _files_of(wf.name)}
    for old in [*WORKFLOWS_DIR.rglob("*.json"), *WORKFLOWS_DIR.rglob("*.jpg")]:
        if old in files or old not in made:  # rewritten below, or made by no definition
            old.unlink()
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path.relative_to(REPO)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
