"""Read tensor files without running code: safetensors with a checked header, pickles as plain tensors only.

Every file the pack opens (adapters, CLIP vision models, FaceID LoRAs, embeds) goes through `load_file`.
Pickle formats (`.bin`, `.pt`, `.pth`, `.ckpt`, `.ipadpt`) are read with `torch.load(weights_only=True)`;
when that fails, the pickle is scanned (never run) to tell a file that references code from one that is
merely damaged, so the message says which, names the file and gives the fix.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit; real headers are kilobytes to a few megabytes

# globals a plain tensor pickle may name (torch.save of tensors and dicts of tensors)
_SAFE_MODULES = ("torch", "torch._utils", "torch.storage", "torch.serialization", "torch._tensor", "collections")


class UnsafeFileError(ValueError):
    """A pickle that references code (or objects that are not tensors); nothing of it was run."""


class DamagedFileError(ValueError):
    """A file that cannot be read: truncated, garbage, or not the format its name says."""


def load_file(path: str | Path, *, what: str = "model") -> object:
    """The tensors of `path` (a dict for safetensors; whatever tensor container the pickle holds otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path.name}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path, what)
    return _load_pickle(path, what)


def state_dict(path: str | Path, *, what: str = "model") -> dict[str, torch.Tensor]:
    """A flat `{name: tensor}` dict, unwrapping a training checkpoint's `state_dict` (or one wrapping key) like ComfyUI."""
    obj = load_file(path, what=what)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))  # one wrapping key, as current ComfyUI's load_torch_file unwraps
    if not isinstance(obj, dict):
        raise DamagedFileError(f"{Path(path).name}: expected a dict of tensors, found {type(obj).__name__}. {_fix(what)}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def check_safetensors_header(path: str | Path, *, what: str = "model", limit: int = MAX_HEADER) -> int:
    """Refuse a safetensors file whose header length is absurd or larger than the file, before reading it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise DamagedFileError(f"{path.name}: not a readable safetensors file: only {size} bytes, no header. {_fix(what)}")
    (length,) = struct.unpack("<Q", head)
    if length > limit or length > size - 8:
        raise DamagedFileError(
            f"{path.name}: not a readable safetensors file: its header claims {length:,} bytes "
            f"{'(more than the file holds)' if length > size - 8 else f'(over the {limit:,}-byte limit)'}; "
            f"the file is {size:,} bytes. Refused before reading it. {_fix(what)}"
        )
    return length


def read_safetensors_header(path: str | Path, *, what: str = "model", limit: int = MAX_HEADER) -> dict:
    """The JSON header of a safetensors file (length checked first); DamagedFileError if it is not JSON."""
    path = Path(path)
    length = check_safetensors_header(path, what=what, limit=limit)
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise DamagedFileError(f"{path.name}: not a readable safetensors file: the header is not JSON ({e}). {_fix(what)}") from e
    if not isinstance(header, dict):
        raise DamagedFileError(f"{path.name}: not a readable safetensors file: the header is not a JSON object. {_fix(what)}")
    return header


def _load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    import safetensors.torch

    check_safetensors_header(path, what=what)
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise DamagedFileError(f"{path.name}: not a readable safetensors file ({_first_line(e)}). {_fix(what)}") from e


def _load_pickle(path: Path, what: str) -> object:
    is_zip = zipfile.is_zipfile(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... ; its text is not ours to quote
        error = e
    code = code_references(path)
    if code:
        raise UnsafeFileError(
            f"{path.name}: refused: this file contains code, not only tensors (its pickle calls {', '.join(code[:3])}). "
            f"Nothing from it was executed. Use the .safetensors release of this {what}, or a file that holds only tensors."
        ) from None
    detail = _first_line(error)
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in detail.lower() or "weights only" in detail.lower():
        detail = "its pickle data is cut short or garbage"  # torch's text here advises turning weights_only off
    elif isinstance(error, EOFError):
        detail = "the file ends early"
    raise DamagedFileError(f"{path.name}: not a readable torch file; it is damaged or not a {what} ({detail}). {_fix(what)}") from None


def code_references(path: str | Path) -> list[str]:
    """Globals a torch pickle names beyond the tensor-rebuilding ones, found by scanning (never running) it."""
    try:
        data = _pickle_bytes(Path(path))
    except (OSError, zipfile.BadZipFile, KeyError, RuntimeError, StopIteration):  # no pickle to scan
        return []
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(5):  # legacy torch files are a few pickles in a row (magic, protocol, info, object, keys)
        if stream.tell() >= len(data):
            break
        strings: list[str] = []
        start = stream.tell()
        try:
            for op, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    module, _, name = arg.partition(" ")
                    _note(found, module, name)
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    _note(found, strings[-2], strings[-1])
        except Exception:  # damaged data ends the scan; what was found so far stands
            break
        if stream.tell() == start:
            break
        if data[stream.tell() - 1 : stream.tell()] != b".":
            break
    return found


def _note(found: list[str], module: str, name: str) -> None:
    safe = module in _SAFE_MODULES and (
        module != "collections" or name == "OrderedDict"
    ) and not (module == "torch" and name in ("load", "save", "hub", "ops", "compile", "jit"))
    ref = f"{module}.{name}"
    if not safe and ref not in found:
        found.append(ref)


def _pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            member = next(n for n in z.namelist() if n.endswith("data.pkl"))
            return z.read(member)
    with open(path, "rb") as f:
        return f.read(64 * 1024 * 1024)  # the pickles of a legacy file come first; tensor data follows


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(e).__name__


def _fix(what: str) -> str:
    return f"Re-download the {what} file (or replace it with the original)."
