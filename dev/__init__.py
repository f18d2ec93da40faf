"""Everything outside the pack, one sub-package per audience (the pack, `nodes/` and `ipadapter_core/`,
never imports any of it):

- `run_main.py`, `run_tests.py`: the README's two commands (stdlib only at import, so the machine's
  `python3` runs them before `.venv` exists);
- `host/`: the ComfyUI host for the tests, the main job and the benchmarks (venv and host setup, in-process
  boot and server, HTTP client, side environments, torch observation helpers);
- `standins/`: the random-weight stand-in models (ComfyUI checkpoints, CLIP vision, ControlNet, IP-Adapter
  files, InsightFace packs) and, in `standins/names.py`, the file names they are written under;
- `authoring/`: the example workflows of `workflows/`: their definitions, rendering and pictures;
- `mainjob/`: the library of the first command (`run_main.py`).

Imports go one way: `run_main`/`run_tests` -> `mainjob` -> `authoring` -> `standins` -> `host`; each
sub-package may import those to its right, never back, and nothing here imports the pack's `nodes/`
(ComfyUI loads it; `ipadapter_core` may be imported directly).
"""
