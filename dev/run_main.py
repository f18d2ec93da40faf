#!/usr/bin/env python3
"""The README's first command: set up ComfyUI with the pack, start it on 127.0.0.1, queue the basic example
workflow through the HTTP API and print where the images are.

    python3 dev/run_main.py [--comfyui PATH] [--models DIR] [--extra-model-paths FILE] [--keep-running]

1. setup: `.venv` with the pinned packages, the bundled ComfyUI in `.host/ComfyUI` (or yours: --comfyui or
   $IPAKIT_COMFYUI), the pack linked into its custom_nodes (dev/host/setup_env.py);
2. models: your real models when the folders you point to (--models, --extra-model-paths, your ComfyUI's
   models/ and extra_model_paths.yaml) hold an SD1.5 checkpoint, the IP-Adapter of the workflow's preset
   and its CLIP vision model; otherwise random-weight stand-ins in `.cache/models` (the images are noise);
3. server: ComfyUI on 127.0.0.1 (a free port unless --port), logs in the work folder;
4. job: workflows/api/basic_image_prompt.json queued with POST /prompt, progress read from the WebSocket,
   the images fetched with /view into --out.

Each step skips what is already there, so a re-run starts the server and samples, nothing more. This file
does step 1 under any python3 (stdlib only); steps 2 to 4 run in `.venv` (dev/mainjob/job.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dev.host import setup_env  # noqa: E402 (needs the path above)
from dev.mainjob import options  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = options.parse_args(argv)  # --help and bad arguments stop here, before any setup
    print(f"[1/{options.STEPS}] setup (the first run installs about 1.4 GB of packages: a few minutes)", flush=True)
    try:
        python = setup_env.ensure(args.comfyui)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: setup failed: {err}", file=sys.stderr)
        return 1
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        return subprocess.call([str(python), "-m", "dev.mainjob.job", *argv], env=env, cwd=REPO)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
