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
