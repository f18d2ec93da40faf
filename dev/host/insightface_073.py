"""A side environment with insightface 0.7.3, so tests cover it next to the main venv's insightface 2.x.

Most ComfyUI installs run insightface 0.7.3, which exists only as an sdist (it compiles a Cython C++
extension with g++). Installing it into the main venv would replace 2.x and, through albumentations, add
opencv-python-headless beside opencv-python (both provide `cv2`). Instead this installs 0.7.3 and the
minimum it needs to import (`insightface.app.FaceAnalysis`, `insightface.utils.face_align`) with
`pip install --no-deps --target` into a folder; putting that folder first on PYTHONPATH shadows the venv's
insightface while numpy, onnxruntime, onnx, opencv-python, scipy and scikit-image still come from the venv.

The minimal import-time set (found by removing packages one at a time):
- 0.7.3 imports `insightface.app.mask_renderer` -> albumentations (-> albucore -> simsimd, stringzilla;
  albumentations 2.0.8 pins albucore 0.0.24); its other dependencies (pydantic, PyYAML) are in the venv.
- `insightface.thirdparty.face3d.mesh.vis` -> matplotlib.pyplot (-> cycler, fonttools, kiwisolver,
  pyparsing, python-dateutil; contourpy is declared by matplotlib but not imported).
- 0.7.3's own declared easydict, prettytable, scikit-learn and cython are not imported.

`side_env()` also sets NO_ALBUMENTATIONS_UPDATE=1 (albumentations otherwise asks PyPI for updates when
imported) and MPLCONFIGDIR inside the folder (matplotlib writes a font cache on first import).

The setup is idempotent: a marker file records the pins and the Python version; a matching marker returns
at once. CLI: `python -m dev.host.insightface_073 [--target DIR]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

log = logging.getLogger(__name__)

VERSION = "0.7.3"
PINS = (
    "insightface==0.7.3",
    "albumentations==2.0.8",
    "albucore==0.0.24",
    "simsimd==6.5.16",
    "stringzilla==5.3.2",
    "matplotlib==3.11.2",
    "cycler==0.12.1",
    "fonttools==4.68.0",
    "kiwisolver==1.5.1",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
)
DEFAULT_TARGET = Path(__file__).resolve().parents[2] / ".cache" / f"insightface-{VERSION}"
MARKER = ".ready.json"
IMPORT_CHECK = (
    "import insightface, sys; from insightface.app import FaceAnalysis; from insightface.utils import face_align; "
    f"assert insightface.__version__ == {VERSION!r}, insightface.__version__; "
    "assert insightface.__file__.startswith(sys.argv[1]), insightface.__file__"
)


def side_env(target: Path | None = None) -> dict[str, str]:
    """This process's environment, plus what makes a subprocess of this Python import insightface 0.7.3 from
    `target`."""
    target = Path(target or DEFAULT_TARGET)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH", "")) if p)
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env["MPLCONFIGDIR"] = str(target / ".mplconfig")
    return env


def _stamp() -> dict:
    return {"pins": list(PINS), "python": sys.version.split()[0], "platform": sysconfig.get_platform()}


def _check_import(folder: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(folder)],
        env=side_env(folder), capture_output=True, text=True, timeout=300,
    )
    if proc.returncode:
        raise RuntimeError(f"insightface {VERSION} in {folder} does not import:\n{proc.stderr[-3000:]}")


def ensure_insightface_073(target: Path | None = None) -> Path:
    """Install insightface 0.7.3 and its import-time dependencies into `target` once; return `target`.

    Needs pip access to PyPI and a C++ compiler (g++) the first time. Raises RuntimeError with the reason
    (and pip's output) when that fails.
    """
    target = Path(target or DEFAULT_TARGET)
    marker = target / MARKER
    try:
        if json.loads(marker.read_text()) == _stamp():
            return target
    except (OSError, ValueError):
        pass
    if not (shutil.which("g++") or shutil.which("c++")):
        raise RuntimeError(
            f"insightface {VERSION} ships only as source with a C++ extension; install a compiler first "
            "(Debian/Ubuntu: apt-get install -y g++)"
        )
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cmd = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--prefer-binary", "--no-input",
        "--disable-pip-version-check", "--target", str(partial), *PINS,
    ]
    log.info("installing insightface %s into %s (compiles a C++ extension; under a minute)", VERSION, target)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise RuntimeError(
                f"pip could not install insightface {VERSION} into {partial} (exit {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-4000:]}"
            )
        _check_import(partial)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    marker.write_text(json.dumps(_stamp()))
    log.info("insightface %s ready in %s (%.0f s)", VERSION, target, time.monotonic() - started)
    return target


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="Install insightface 0.7.3 into a side folder for tests.")
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("%s", ensure_insightface_073(args.target))


if __name__ == "__main__":
    main()
