"""Face detection, selection, alignment and ArcFace embeddings with insightface, for IP-Adapter-FaceID.

Wraps `insightface.app.FaceAnalysis` (SCRFD detection, Guo et al. 2021; ArcFace recognition, Deng et al.
2019) for IP-Adapter-FaceID (Ye et al. 2023). Works with insightface 0.7.3 (what most ComfyUI installs
have) and 1.x/2.x:

- The pack folder is checked before insightface sees it, so a missing or misplaced pack gives an error
  naming the folder and the fix instead of a download attempt (insightface downloads when the folder is
  missing and leaves an empty `models/` behind offline).
- Only detection and recognition are loaded (`allowed_modules`), not the landmark/attribute models.
- The detector size is retried at 640, 576, 512, 448, 384, 320 like IPAdapter Plus, but set in a way that
  takes effect in every version: `prepare(det_size=...)` from 1.0 on (where assigning
  `det_model.input_size` is silently ignored), `det_model.input_size` on 0.7.3 (whose `prepare` ignores a
  second size). `det_size` is always passed, since 2.x's default is a multi-scale run.
- Faces are picked by size ("largest") or by index in left-to-right order, not "first returned".
- An image without a face can be skipped (zero embedding, `found=False`) instead of failing the batch.

numpy, cv2 and insightface are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import repeat

from .spec import FACE_DIM

log = logging.getLogger(__name__)

# configuration

FACE_PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
}
# files FaceID needs per known pack: (detection, recognition), then the optional ones we never load
PACK_FILES = {
    "buffalo_l": (("det_10g.onnx", "w600k_r50.onnx"), ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx")),
    "antelopev2": (("scrfd_10g_bnkps.onnx", "glintr100.onnx"), ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx")),
}
DET_SIZES = (640, 576, 512, 448, 384, 320)

INSTALL_HINT = (
    "Install it into the Python environment that runs ComfyUI with `pip install insightface onnxruntime` "
    "(or `onnxruntime-gpu` instead of `onnxruntime` for CUDA). Only the FaceID nodes need it; the other "
    "IPAdapter Kit nodes keep working without it."
)


class InsightFaceMissingError(ImportError):
    """insightface (or onnxruntime) cannot be imported; the message says how to install it."""


@dataclass(frozen=True, eq=False)
class FaceAnalyzer:
    """A loaded insightface `FaceAnalysis` (detection + recognition) and where it came from."""

    app: Any
    pack: str
    folder: Path
    providers: tuple[str, ...]  # onnxruntime providers the detector session actually uses
    version: str  # insightface.__version__

    @property
    def legacy(self) -> bool:
        """True for insightface < 1.0 (0.7.3), whose detector size is set on the model itself."""
        return _major(self.version) < 1


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    Args:
        bbox: `[4]` float32 box x1, y1, x2, y2.
        kps: `[5, 2]` float32 keypoints (eyes, nose, mouth corners), as ArcFace alignment uses them.
        det_score: detector confidence, 0..1.
        embedding: `[512]` float32 raw ArcFace embedding (used by FaceID portrait-unnorm).
        normed_embedding: `[512]` float32 L2-normalised embedding (every other FaceID model).
        det_size: the detector canvas size it was found at.
    """

    bbox: Any
    kps: Any
    det_score: float
    embedding: Any
    normed_embedding: Any
    det_size: int

    @property
    def area(self) -> float:
        return float(max(self.bbox[2] - self.bbox[0], 0) * max(self.bbox[3] - self.bbox[1], 0))


@dataclass(frozen=True, eq=False)
class FaceBatch:
    """Faces of an image batch for the node layer; rows of images without a face are zeros.

    Args:
        normed: `[B, 512]` float32 normalised embeddings.
        raw: `[B, 512]` float32 raw embeddings.
        crops: `[B, S, S, 3]` float32 aligned face crops in 0..1 (ComfyUI IMAGE layout).
        found: `[B]` bool, False where no face was found (give those rows zero weight).
        faces: the selected `Face` per image, None where none was found.
    """

    normed: torch.Tensor
    raw: torch.Tensor
    crops: torch.Tensor
    found: torch.Tensor
    faces: tuple[Face | None, ...]


# utilities


def _major(version: str) -> int:
    match = re.match(r"\d+", str(version))
    return int(match.group()) if match else 0


def _import_insightface():
    """Import insightface lazily, turning a failure into an install hint."""
    # 0.7.3 imports albumentations, whose import otherwise asks PyPI for a newer version (network access)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import insightface
        import insightface.app  # noqa: F401
        import insightface.utils.face_align  # noqa: F401
    except ImportError as err:
        message = f"FaceID needs insightface, which failed to import ({err}). {INSTALL_HINT}"
        raise InsightFaceMissingError(message) from err
    return insightface


@contextlib.contextmanager
def _quiet(legacy: bool):
    """Route insightface 0.7.3's stdout prints to the debug log and hide scikit-image's `estimate` warning.

    Both are process-wide switches, held only around insightface calls.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`estimate` is deprecated", category=FutureWarning)
        if not legacy:
            yield
            return
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                yield
        finally:
            for line in buffer.getvalue().splitlines():
                log.debug("insightface: %s", line)


def _listing(folder: Path, limit: int = 12) -> str:
    if not folder.is_dir():
        return "nothing (it does not exist)"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not entries:
        return "nothing (it is empty)"
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _expected(pack: str) -> str:
    if pack not in PACK_FILES:
        return "*.onnx files holding a detection and a recognition model"
    required, optional = PACK_FILES[pack]
    return f"{' + '.join(required)} (optional, not loaded: {', '.join(optional)})"


# loading


def check_pack_folder(root: str | os.PathLike, pack: str = "buffalo_l") -> Path:
    """Return `<root>/models/<pack>` if it holds the pack's .onnx files; else FileNotFoundError naming the fix.

    `root` is the insightface root (ComfyUI: `models/insightface`). Nothing is created or downloaded.
    """
    if not pack or Path(pack).name != pack or pack in (".", ".."):
        raise ValueError(f"pack must be a folder name such as 'buffalo_l' or 'antelopev2', got {pack!r}")
    root = Path(root).expanduser()
    folder = root / "models" / pack
    fix = (
        f"Fix: download {pack}.zip (insightface model zoo, github.com/deepinsight/insightface/releases) and unzip "
        f"it so the .onnx files sit directly in {folder}. IPAdapter Kit never downloads models itself."
    )
    head = f"InsightFace model pack '{pack}' not usable: "
    onnx = sorted(p.name for p in folder.glob("*.onnx")) if folder.is_dir() else []
    required = PACK_FILES.get(pack, ((), ()))[0]
    missing = [f for f in required if f not in onnx]
    if onnx and not missing:
        return folder
    if not folder.is_dir():
        problem = f"the folder {folder} does not exist; {folder.parent} contains {_listing(folder.parent)}."
        if (root / pack).is_dir():
            problem += f" A folder {root / pack} exists: move it into {root / 'models'}."
        if (folder.parent / f"{pack}.zip").is_file():
            problem += f" {folder.parent / (pack + '.zip')} exists but was not extracted."
    elif not onnx:
        problem = f"the folder {folder} holds no .onnx files; it contains {_listing(folder)}."
        nested = sorted({p.parent for p in folder.glob("*/*.onnx")})
        if nested:
            problem += (
                f" The .onnx files are in the nested folder {nested[0]}: move them up one level into {folder}"
                " (unzipping often creates this extra folder)."
            )
    else:
        problem = f"the folder {folder} lacks {', '.join(missing)}; it contains {_listing(folder)}."
    raise FileNotFoundError(f"{head}{problem} Expected: {_expected(pack)}. {fix}")


def resolve_providers(provider: str = "CPU") -> list[str]:
    """onnxruntime providers for a provider choice (a FACE_PROVIDERS key or its onnxruntime name).

    Falls back to CPU with a warning when onnxruntime does not offer the requested provider.
    """
    names = {k.lower(): v for k, v in FACE_PROVIDERS.items()} | {v.lower(): v for v in FACE_PROVIDERS.values()}
    name = names.get(str(provider).lower())
    if name is None:
        raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(FACE_PROVIDERS)}")
    try:
        import onnxruntime
    except ImportError as err:
        message = f"FaceID needs onnxruntime, which failed to import ({err}). {INSTALL_HINT}"
        raise InsightFaceMissingError(message) from err
    available = onnxruntime.get_available_providers()
    if name not in available:
        log.warning(
            "InsightFace provider %s (%s) is not available in this onnxruntime (available: %s); using CPU. "
            "For CUDA install onnxruntime-gpu in place of onnxruntime.",
            provider, name, ", ".join(available),
        )
        return ["CPUExecutionProvider"]
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def _damaged(folder: Path, pack: str, err: Exception) -> str:
    """The message for a pack file onnxruntime cannot read (truncated download, not an ONNX model)."""
    text = str(err)
    named = [p.name for p in sorted(folder.glob("*.onnx")) if str(p) in text]
    which = named[0] if named else "one of its .onnx files"
    reason = text.rsplit("failed:", 1)[-1].strip() if "failed:" in text else text.strip()
    return (f"the InsightFace pack {pack} in {folder} is damaged: onnxruntime cannot read {which} ({reason[:160]}). "
            f"Download the pack again and replace the folder's files; expected {_expected(pack)}.")


def load_face_analysis(root: str | os.PathLike, pack: str = "buffalo_l", provider: str = "CPU") -> FaceAnalyzer:
    """Load a pack's detection and recognition models from `<root>/models/<pack>` with insightface.

    Args:
        root: insightface root folder (ComfyUI: `models/insightface`).
        pack: model pack folder name, "buffalo_l" or "antelopev2".
        provider: a FACE_PROVIDERS key ("CPU", "CUDA", ...); unavailable ones fall back to CPU.
    """
    insightface = _import_insightface()
    folder = check_pack_folder(root, pack)
    providers = resolve_providers(provider)
    version = str(insightface.__version__)
    kwargs = {"allowed_modules": ["detection", "recognition"], "providers": providers}
    # 2.x: pass the folder itself; a bare name is first tried as a path relative to the working directory
    if _major(version) >= 2:
        where = {"name": str(folder.resolve())}
    else:
        where = {"name": pack, "root": str(Path(root).expanduser())}
    with _quiet(_major(version) < 1):
        try:
            app = insightface.app.FaceAnalysis(**where, **kwargs)
        except AssertionError as err:
            raise RuntimeError(
                f"insightface found no face detection model among the .onnx files in {folder} "
                f"({_listing(folder)}); expected {_expected(pack)}. Replace the files with the original pack."
            ) from err
        except Exception as err:
            if not type(err).__module__.startswith("onnxruntime"):
                raise
            raise RuntimeError(_damaged(folder, pack, err)) from err
        if "recognition" not in app.models:
            raise RuntimeError(
                f"insightface found no recognition model among the .onnx files in {folder} "
                f"({_listing(folder)}); expected {_expected(pack)}. Replace the files with the original pack."
            )
        app.prepare(ctx_id=0, det_size=(DET_SIZES[0], DET_SIZES[0]))
    used = tuple(app.det_model.session.get_providers())
    if used[0] != providers[0]:
        log.warning("InsightFace asked onnxruntime for %s but got %s", providers[0], used[0])
    log.info("InsightFace %s: %s from %s on %s", version, pack, folder, used[0])
    return FaceAnalyzer(app=app, pack=pack, folder=folder, providers=used, version=version)


# detection and selection


def _set_det_size(analyzer: FaceAnalyzer, size: int) -> None:
    app = analyzer.app
    if analyzer.legacy:  # 0.7.3: prepare() refuses to change a size once set
        app.det_model.input_size = (size, size)
        app.det_size = (size, size)
    elif tuple(getattr(app, "det_size", ()) or ()) != (size, size):
        app.prepare(ctx_id=0, det_size=(size, size))


def _check_image(image):
    import numpy as np

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3]; got {image.dtype} {tuple(image.shape)}")
    return image


def _reading_order(face: Face) -> tuple[float, float]:
    return float(face.bbox[0]), float(face.bbox[1])


def _frozen(array, dtype="float32"):
    import numpy as np

    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def detect_faces(analyzer: FaceAnalyzer, image_rgb_uint8) -> list[Face]:
    """All faces in an RGB uint8 `[H, W, 3]` image, left to right (by the box's left edge, then top edge).

    The detector canvas is tried at 640, 576, 512, 448, 384, 320 (stopping at the first size that finds a
    face), which helps faces that fill most of the frame. Returns [] when no size finds one.
    """
    import numpy as np

    image = _check_image(image_rgb_uint8)
    bgr = np.ascontiguousarray(image[..., ::-1])  # insightface takes OpenCV's BGR order
    for size in DET_SIZES:
        _set_det_size(analyzer, size)
        with _quiet(analyzer.legacy):
            found = analyzer.app.get(bgr)
        if not found:
            continue
        if size != DET_SIZES[0]:
            log.info("InsightFace found no face at detector size %d; found %d at %d", DET_SIZES[0], len(found), size)
        faces = [
            Face(
                bbox=_frozen(f.bbox),
                kps=_frozen(f.kps),
                det_score=float(f.det_score),
                embedding=_frozen(f.embedding),
                normed_embedding=_frozen(f.normed_embedding),
                det_size=size,
            )
            for f in found
        ]
        return sorted(faces, key=_reading_order)
    return []


def select_face(faces: list[Face], choice: str | int = "largest") -> Face | None:
    """Pick one face: "largest" (biggest box area; ties go to the leftmost) or an int index.

    Indices count faces left to right by the box's left edge (ties: top first), starting at 0; negative
    indices count from the right (-1 is the rightmost). Returns None when `faces` is empty or the index is
    out of range.
    """
    ordered = sorted(faces, key=_reading_order)
    if choice == "largest":
        return max(ordered, key=lambda f: f.area) if ordered else None
    if isinstance(choice, bool) or not isinstance(choice, int):
        raise ValueError(f"face choice must be 'largest' or an int index (0 = leftmost face), got {choice!r}")
    return ordered[choice] if -len(ordered) <= choice < len(ordered) else None


def align_face(image_rgb_uint8, face: Face, size: int):
    """ArcFace-aligned square crop `[size, size, 3]` uint8 (`insightface.utils.face_align.norm_crop`).

    Sizes: 224 (SD1.5 FaceID-Plus), 256 (SDXL), 336 (Kolors); insightface needs a multiple of 112 or 128.
    """
    if size <= 0 or (size % 112 and size % 128):
        raise ValueError(f"face crop size must be a multiple of 112 or 128 (224, 256, 336 ...), got {size}")
    _import_insightface()
    from insightface.utils import face_align

    image = _check_image(image_rgb_uint8)
    with _quiet(False):
        return face_align.norm_crop(image, landmark=face.kps, image_size=size)


# batches


def images_to_uint8(images: torch.Tensor):
    """ComfyUI IMAGE `[B, H, W, C]` float 0..1 -> numpy uint8 `[B, H, W, 3]` RGB.

    C may be 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); alpha is composited over black, so
    transparent areas look like insightface's own black padding.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"expected an IMAGE batch [B, H, W, C] with C in 1..4; got shape {tuple(images.shape)}"
            " (a [B, H, W] tensor is a MASK, not an IMAGE)"
        )
    x = images.detach().to("cpu", torch.float32).clamp(0, 1)
    if x.shape[-1] in (2, 4):
        x = x[..., :-1] * x[..., -1:]
    if x.shape[-1] == 1:
        x = repeat(x, "b h w 1 -> b h w c", c=3)
    return (x * 255).round().to(torch.uint8).numpy()


def analyze_images(
    analyzer: FaceAnalyzer,
    images: torch.Tensor,
    *,
    crop_size: int,
    choice: str | int = "largest",
    on_missing: str = "error",
    on_image=None,
) -> FaceBatch:
    """Detect, select and align one face per image of a ComfyUI IMAGE batch `[B, H, W, C]` (0..1).

    `choice` is as in `select_face`. `on_missing` "error" raises ValueError for the first image without a
    (matching) face; "skip" logs a warning and leaves zeros with `found=False` for it. `on_image(i)` is
    called after each image (progress reporting).
    """
    import numpy as np

    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if choice != "largest" and (isinstance(choice, bool) or not isinstance(choice, int)):
        raise ValueError(f"face choice must be 'largest' or an int index (0 = leftmost face), got {choice!r}")
    if crop_size <= 0 or (crop_size % 112 and crop_size % 128):
        raise ValueError(f"crop_size must be a multiple of 112 or 128 (224, 256, 336 ...), got {crop_size}")
    pixels = images_to_uint8(images)
    b = len(pixels)
    normed = np.zeros((b, FACE_DIM), np.float32)
    raw = np.zeros((b, FACE_DIM), np.float32)
    crops = np.zeros((b, crop_size, crop_size, 3), np.uint8)
    selected: list[Face | None] = []
    for i, image in enumerate(pixels):
        faces = detect_faces(analyzer, image)
        face = select_face(faces, choice)
        selected.append(face)
        if on_image is not None:
            on_image(i)
        if face is not None:
            normed[i], raw[i] = face.normed_embedding, face.embedding
            crops[i] = align_face(image, face, crop_size)
            continue
        where = f"image {i} (0-based; image {i + 1} of {b})"
        if faces:
            problem = f"found {len(faces)} face(s) in {where} but face index {choice} was asked for"
            hint = "faces are numbered from 0, left to right; use a smaller index or 'largest'"
        else:
            problem = f"InsightFace found no face in {where}"
            hint = "use a larger, clearer, front-facing face (crop closer to it, better light)"
        if on_missing == "error":
            raise ValueError(f"{problem}. Fix: {hint}, or set on_missing_face to 'skip image' (Apply FaceID) to give such images zero weight.")
        log.warning("%s; skipping it (zero embedding, zero weight).", problem)
    found = torch.tensor([f is not None for f in selected], dtype=torch.bool)
    return FaceBatch(
        normed=torch.from_numpy(normed),
        raw=torch.from_numpy(raw),
        crops=torch.from_numpy(crops).float() / 255,
        found=found,
        faces=tuple(selected),
    )
