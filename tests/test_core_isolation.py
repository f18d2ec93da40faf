"""The core stands alone: it imports with torch, einops and safetensors only, and never loads ComfyUI."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import sys
import torch  # the environment the core may assume
before = {m.split('.')[0] for m in sys.modules}
import ipadapter_core, ipadapter_core.faces, ipadapter_core.lora
after = {m.split('.')[0] for m in sys.modules}
new = sorted(after - before - set(sys.stdlib_module_names))
print(",".join(new))
"""


def test_core_imports_only_torch_einops_safetensors():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    new = set(out.strip().split(",")) - {""}
    assert new <= {"ipadapter_core", "einops", "safetensors"}, new
    assert not any(m.startswith(("comfy", "folder_paths", "nodes", "server", "execution")) for m in new)


def test_core_source_has_no_comfyui_imports_and_only_relative_internal_imports():
    offenders = []
    for path in (ROOT / "ipadapter_core").glob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                mod = s.split()[1]
                if mod.split(".")[0] in {"comfy", "folder_paths", "nodes", "server", "execution", "comfy_extras", "ipadapter_core"}:
                    offenders.append(f"{path.name}: {s}")
    assert offenders == []


def _distribution_tree(names: list[str]) -> set[str]:
    """The named distributions and everything they require (extras excluded)."""
    import importlib.metadata as md
    import re

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for req in md.requires(name) or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return seen


def _top_levels(dist_name: str) -> set[str]:
    import importlib.metadata as md

    dist = md.distribution(dist_name)
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return set(declared)
    return {p.parts[0].removesuffix(".py") for p in dist.files or [] if p.parts and not p.parts[0].endswith((".dist-info", ".data", "..")) and p.parts[0] != "__pycache__"}


def test_core_imports_in_an_interpreter_with_only_torch_einops_and_safetensors(tmp_path):
    """A site folder holding torch (with its own requirements), einops and safetensors, and nothing else:
    not numpy, not ComfyUI, not insightface."""
    import importlib.util

    site = tmp_path / "site"
    site.mkdir()
    for dist in _distribution_tree(["torch", "einops", "safetensors"]):
        for top in _top_levels(dist):
            spec = importlib.util.find_spec(top)
            if spec is None or not spec.origin:
                continue
            origin = Path(spec.origin)
            source = origin.parent if origin.name == "__init__.py" else origin
            if not (site / source.name).exists():
                (site / source.name).symlink_to(source)
    (site / "ipadapter_core").symlink_to(ROOT / "ipadapter_core")
    probe = (
        "import sys; sys.path.insert(0, %r)\n"
        "import ipadapter_core, ipadapter_core.faces, ipadapter_core.lora, ipadapter_core.embeds_io\n"
        "spec = ipadapter_core.Topology.sd15()\n"
        "print(len(spec.layers), sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'comfy', 'insightface', 'PIL', 'cv2'}))\n"
    ) % str(site)
    out = subprocess.run([sys.executable, "-I", "-S", "-W", "ignore", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["16", "[]"]
