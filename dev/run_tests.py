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
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dev.host import setup_env  # noqa: E402 (needs the path above)


def pytest_command(python: Path, argv: list[str]) -> list[str]:
    has_path = any(not arg.startswith("-") and (REPO / arg.split("::")[0]).exists() for arg in argv)
    durations = [] if any(arg.startswith("--durations") for arg in argv) else ["--durations=10"]
    return [str(python), "-m", "pytest", "-c", "tests/pytest.ini", *durations, *argv, *([] if has_path else ["tests"])]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
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
