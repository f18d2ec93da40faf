"""The main job's command line (`python3 dev/run_main.py --help`). Stdlib only: `dev/run_main.py` parses it
under the machine's python3 before `.venv` exists, and `dev/mainjob/job.py` parses the same arguments again
in `.venv`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dev.host import setup_env

DESCRIPTION = ("Set up ComfyUI with the pack, start it on 127.0.0.1, queue the basic example workflow through the "
               "HTTP API and print where the images are.")
STEPS = 4  # setup, models, server, job: shown as [n/4]
ENV_MODELS = "IPAKIT_MODELS"
ENV_PYTHON = "IPAKIT_PYTHON"
WORK_DIR = setup_env.HOST / "run"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
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
