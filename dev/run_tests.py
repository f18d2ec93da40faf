#!/usr/bin/env python3
"""The project's test command: `python3 dev/run_tests.py [pytest args...]`.

Sets up `.venv` and the ComfyUI test host (dev/host/setup_env.py; fast when already done), then runs
`.venv/bin/python -m pytest -c tests/pytest.ini tests` from the repository root and exits with
pytest's code. `-c tests/pytest.ini` makes tests/ the rootdir, so pytest never imports the pack's
root `__init__.py` (which needs ComfyUI). Paths among the arguments are taken relative to the
repository root; when none is given, the whole `tests` folder runs. Exit code 5 (no tests collected)
is a failure too. Stdlib only: this runs under the machine's python3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dev.host import setup_env  # noqa: E402 (needs the path above)

SUITE_DISK_GIB = 20
"""Disk the whole suite needs from a clean clone: the generated stand-in models in `.cache` (14 GiB on a clean
clone, 2026-12-07: the full-size SD1.5 checkpoint, the SDXL-small checkpoint, CLIP ViT-H, the full-size
adapters), `.venv` (2 GiB), the host, and the tests' temporary files (a few GiB at most), with room to spare."""


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def disk_warning(repo: Path = REPO) -> str | None:
    """A warning when the disk under the repository has less room than the suite still needs (what is
    already generated in `.cache` and `.venv` counts as done); None when there is enough. A full disk
    fails tests far from the cause (a checkpoint write, a server start, pytest's own output)."""
    need = SUITE_DISK_GIB * 2**30 - _tree_size(repo / ".cache") - _tree_size(repo / ".venv")
    free = shutil.disk_usage(repo).free
    if free >= need:
        return None
    return (f"[run_tests] WARNING: {free / 2**30:.1f} GiB free on the disk of {repo} (temporary files: "
            f"{tempfile.gettempdir()}), the suite still needs about {need / 2**30:.1f} GiB; tests that write "
            f"models or start servers will fail with 'No space left on device'. Free some space first.")


def pytest_command(python: Path, argv: list[str]) -> list[str]:
    has_path = any(not arg.startswith("-") and (REPO / arg.split("::")[0]).exists() for arg in argv)
    durations = [] if any(arg.startswith("--durations") for arg in argv) else ["--durations=10"]
    return [str(python), "-m", "pytest", "-c", "tests/pytest.ini", *durations, *argv, *([] if has_path else ["tests"])]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    warning = disk_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        python = setup_env.ensure()
    except (RuntimeError, ValueError, OSError) as err:
        print(f"[run_tests] setup failed: {err}", file=sys.stderr)
        return 1
    cmd = pytest_command(python, argv)
    print(f"[run_tests] {' '.join(cmd)}", flush=True)
    child_env = dict(os.environ)
    child_env.pop("PYTHONPATH", None)  # the repo root comes from tests/pytest.ini; nothing may shadow ComfyUI
    code = subprocess.call(cmd, cwd=REPO, env=child_env)
    if code == 5:
        print("[run_tests] FAILED: pytest collected no tests (exit code 5)", file=sys.stderr)
    elif code != 0:
        print(f"[run_tests] FAILED: pytest exit code {code}", file=sys.stderr)
    print(f"[run_tests] total {time.monotonic() - started:.1f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
