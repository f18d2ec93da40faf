"""Tiny deterministic random-weight insightface model packs (buffalo_l, antelopev2) for offline tests.

The real packs cannot be downloaded in CI, so this writes ONNX graphs that the REAL
`insightface.app.FaceAnalysis` recognises and runs:

- detection (`det_10g.onnx` / `scrfd_10g_bnkps.onnx`): a "constant-map SCRFD" with 9 outputs (strides 8, 16,
  32; 2 anchors; kps). It ignores image content except for a dark gate, and fires exactly one anchor, at the
  centre cell of the stride-32 grid, with score sigmoid(6) = 0.9975274, a square box of side 0.35 * min(canvas)
  and the ArcFace 5-point template mapped into that box. A near-black canvas (mean pixel below about 4.6)
  gives no face.
- recognition (`w600k_r50.onnx` / `glintr100.onnx`): 112x112 -> AveragePool 8 -> Flatten -> Gemm 588x512,
  so embeddings depend on the image. No node name starts with Sub/Mul, so insightface uses mean/std 127.5
  like the real models.
- `1k3d68.onnx`, `2d106det.onnx`, `genderage.onnx`: tiny pooled Gemm heads that route to landmark_3d_68,
  landmark_2d_106 and genderage (gender "M", age 30).

Graphs are opset 13, IR version 8. Weights come from numpy's legacy `RandomState` (its streams are frozen by
numpy's compatibility policy), so files are byte-identical from run to run.

CLI: `python -m dev.standins.insightface_pack --root DIR [--packs buffalo_l antelopev2] [--modules all|detrec]`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the bytes change; recorded as the models' producer_version
OPSET = 13
IR_VERSION = 8
STRIDES = (8, 16, 32)
ANCHORS = 2
# ArcFace 5-point template for a 112x112 crop (insightface.utils.face_align.arcface_dst)
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
BOX_FRACTION = 0.35  # face box side / min(canvas side)
CENTRE_LOGIT = 6.0  # det_score = sigmoid(6)

# configuration: file name -> (role, seed) per pack; roles: det, rec, lmk3d, lmk2d, genderage

PACKS: dict[str, dict[str, tuple[str, int]]] = {
    "buffalo_l": {
        "det_10g.onnx": ("det", 0),
        "w600k_r50.onnx": ("rec", 1234),
        "1k3d68.onnx": ("lmk3d", 68),
        "2d106det.onnx": ("lmk2d", 106),
        "genderage.onnx": ("genderage", 96),
    },
    "antelopev2": {
        "scrfd_10g_bnkps.onnx": ("det", 0),
        "glintr100.onnx": ("rec", 4321),
        "1k3d68.onnx": ("lmk3d", 68),
        "2d106det.onnx": ("lmk2d", 106),
        "genderage.onnx": ("genderage", 96),
    },
}
DETREC_ROLES = ("det", "rec")


# utilities


class _Graph:
    """Collects nodes and initializers; every node gets a unique name `<prefix><op>_<n>`."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._count = 0

    def const(self, value, name: str, dtype=np.float32) -> str:
        """An initializer; asking for the same name again reuses the first one."""
        if name not in self._names:
            self._names.add(name)
            self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        self._count += 1
        output = output or f"{self.prefix}{op_type.lower()}_{self._count}"
        self.nodes.append(
            helper.make_node(op_type, inputs, [output], name=f"{self.prefix}{op_type}_{self._count}", **attrs)
        )
        return output


def _model(g: _Graph, name: str, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ipadapter-kit-tiny-insightface",
        producer_version=str(GENERATOR_VERSION),
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _image_input(size: int | str, batch: str = "None") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, size, size])


# detection


def _to_rows(g: _Graph, nchw: str, width: int, output: str) -> str:
    """[1, A*width, h, w] -> [(y*w + x)*A + a, width], SCRFD's cell-major row order."""
    nhwc = g.op("Transpose", [nchw], perm=[0, 2, 3, 1])
    return g.op("Reshape", [nhwc, g.const([-1, width], f"rows_{width}", np.int64)], output)


def _constant_map(g: _Graph, pooled: str, bias, tag: str) -> str:
    """A 1x1 Conv with zero weights: a [1, len(bias), h, w] map holding `bias` per channel."""
    bias = np.asarray(bias, dtype=np.float32)
    weight = g.const(np.zeros((bias.size, 3, 1, 1)), f"{tag}_w")
    return g.op("Conv", [pooled, weight, g.const(bias, f"{tag}_b")])


def build_detector() -> onnx.ModelProto:
    """The constant-map SCRFD detector: one face at the canvas centre unless the canvas is near black."""
    g = _Graph("det_")
    x = "input.1"
    # dark gate: min(100 * (mean + 0.9), 0) on the normalised canvas ((pixel - 127.5) / 128)
    mean = g.op("ReduceMean", [x], keepdims=1)
    shifted = g.op("Add", [mean, g.const(0.9, "gate_shift")])
    gate = g.op("Min", [g.op("Mul", [shifted, g.const(100.0, "gate_gain")]), g.const(0.0, "zero")])

    scores, boxes, kpss = [], [], []
    kps_unit = ((ARCFACE_DST - 56.0) * BOX_FRACTION / 112.0).reshape(-1)  # per min(h, w) stride units
    for s in STRIDES:
        pooled = g.op("AveragePool", [x], kernel_shape=[s, s], strides=[s, s])
        if s != STRIDES[-1]:
            score_logits = _constant_map(g, pooled, [-20.0] * ANCHORS, f"s{s}_score")
            box_map = _constant_map(g, pooled, [1.0] * 4 * ANCHORS, f"s{s}_bbox")
            kps_map = _constant_map(g, pooled, [0.0] * 10 * ANCHORS, f"s{s}_kps")
        else:
            ones = _constant_map(g, pooled, [1.0], "s32_ones")
            rows = g.op("CumSum", [ones, g.const(2, "axis_h", np.int64)])  # 1-based row index
            cols = g.op("CumSum", [ones, g.const(3, "axis_w", np.int64)])  # 1-based column index
            h = g.op("ReduceMax", [rows], keepdims=1)
            w = g.op("ReduceMax", [cols], keepdims=1)
            half = g.const(0.5, "half")
            one = g.const(1.0, "one")
            # 1-based index of the 0-based centre cell floor(n / 2)
            cy = g.op("Add", [g.op("Floor", [g.op("Mul", [h, half])]), one])
            cx = g.op("Add", [g.op("Floor", [g.op("Mul", [w, half])]), one])
            dy = g.op("Sub", [rows, cy])
            dx = g.op("Sub", [cols, cx])
            dist2 = g.op("Add", [g.op("Mul", [dy, dy]), g.op("Mul", [dx, dx])])
            logit0 = g.op("Sub", [g.const(CENTRE_LOGIT, "centre_logit"), g.op("Mul", [dist2, g.const(100.0, "far")])])
            logit0 = g.op("Add", [logit0, gate])
            logit1 = g.op("Sub", [logit0, g.const(30.0, "second_anchor")])
            score_logits = g.op("Concat", [logit0, logit1], axis=1)
            short = g.op("Min", [h, w])
            box_map = g.op(
                "Mul",
                [_constant_map(g, pooled, [1.0] * 4 * ANCHORS, "s32_bbox"),
                 g.op("Mul", [short, g.const(BOX_FRACTION / 2, "half_box")])],
            )
            kps_map = g.op("Mul", [_constant_map(g, pooled, np.tile(kps_unit, ANCHORS), "s32_kps"), short])
        scores.append(_to_rows(g, g.op("Sigmoid", [score_logits]), 1, f"score_{s}"))
        boxes.append(_to_rows(g, box_map, 4, f"bbox_{s}"))
        kpss.append(_to_rows(g, kps_map, 10, f"kps_{s}"))

    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{name.split('_')[1]}", width])
        for names, width in ((scores, 1), (boxes, 4), (kpss, 10))
        for name in names
    ]
    return _model(g, "tiny_scrfd", [_image_input("?", batch=1)], outputs)


# recognition, landmarks, attributes: pooled features -> Gemm


def build_pooled_gemm(
    *, size: int, pool: int, out: int, seed: int, weight_scale: float | None, bias: np.ndarray | None = None,
    tag: str,
) -> onnx.ModelProto:
    """input [None, 3, size, size] -> AveragePool(pool) -> Flatten -> Gemm -> [None, out].

    `weight_scale=None` means N(0, 1) / sqrt(features), the recognition head's scale.
    """
    features = 3 * (size // pool) ** 2
    rng = np.random.RandomState(seed)
    weight = rng.standard_normal((out, features))
    weight = weight / np.sqrt(features) if weight_scale is None else weight * weight_scale
    bias = np.zeros(out) if bias is None else bias
    # node names start with the tag, never with Sub/Mul (insightface would then assume mean 0 / std 1)
    g = _Graph(f"{tag}_")
    pooled = g.op("AveragePool", ["input.1"], kernel_shape=[pool, pool], strides=[pool, pool])
    flat = g.op("Flatten", [pooled], axis=1)
    g.op("Gemm", [flat, g.const(weight, f"{tag}_weight"), g.const(bias, f"{tag}_bias")], "output", transB=1)
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["None", out])
    return _model(g, f"tiny_{tag}", [_image_input(size)], [output])


def build_model(role: str, seed: int) -> onnx.ModelProto:
    """One model of the pack by role (det, rec, lmk3d, lmk2d, genderage)."""
    if role == "det":
        return build_detector()
    if role == "rec":
        return build_pooled_gemm(size=112, pool=8, out=512, seed=seed, weight_scale=None, tag="recognition")
    rng = np.random.RandomState(seed + 1)
    if role == "lmk3d":
        bias = np.zeros(3309)
        bias[-68 * 3:] = rng.uniform(-0.5, 0.5, 68 * 3)  # insightface reads the last 68 (x, y, z) rows
        return build_pooled_gemm(size=192, pool=64, out=3309, seed=seed, weight_scale=1e-3, bias=bias, tag="lmk3d")
    if role == "lmk2d":
        bias = rng.uniform(-0.5, 0.5, 212)
        return build_pooled_gemm(size=192, pool=64, out=212, seed=seed, weight_scale=1e-3, bias=bias, tag="lmk2d")
    if role == "genderage":
        bias = np.array([0.2, 0.8, 0.3])  # gender argmax -> 1 ("M"), age round(0.3 * 100) = 30
        return build_pooled_gemm(size=96, pool=16, out=3, seed=seed, weight_scale=1e-4, bias=bias, tag="genderage")
    raise ValueError(f"unknown model role {role!r}; known: det, rec, lmk3d, lmk2d, genderage")


# packs


def pack_files(name: str, modules: str = "all") -> dict[str, tuple[str, int]]:
    """The files of pack `name`: {file name: (role, seed)}; modules "detrec" keeps detection + recognition."""
    if name not in PACKS:
        raise ValueError(f"unknown pack {name!r}; this generator knows {sorted(PACKS)}")
    if modules not in ("all", "detrec"):
        raise ValueError(f"modules must be 'all' or 'detrec', got {modules!r}")
    files = PACKS[name]
    return {f: spec for f, spec in files.items() if modules == "all" or spec[0] in DETREC_ROLES}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_pack(root: Path, name: str, *, modules: str = "all") -> Path:
    """Write `<root>/models/<name>/*.onnx`, the insightface layout (`FaceAnalysis(name, root=root)`).

    Files that are missing or whose bytes differ from what this generator makes are (re)written atomically;
    matching files are left alone, so the call is cheap and safe to repeat. Other files in the folder are
    left in place. Returns the pack folder.
    """
    folder = Path(root).expanduser() / "models" / name
    files = pack_files(name, modules)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, (role, seed) in files.items():
        data = build_model(role, seed).SerializeToString()
        path = folder / file_name
        if path.is_file() and path.read_bytes() == data:
            continue
        _write_atomic(path, data)
        log.info("wrote %s (%d bytes, sha256 %s)", path, len(data), hashlib.sha256(data).hexdigest()[:12])
    return folder


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="Write tiny random-weight insightface packs for offline tests.")
    parser.add_argument("--root", type=Path, required=True, help="insightface root (packs go to ROOT/models/<pack>)")
    parser.add_argument("--packs", nargs="+", default=sorted(PACKS), choices=sorted(PACKS))
    parser.add_argument("--modules", default="all", choices=("all", "detrec"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.packs:
        log.info("%s", ensure_pack(args.root, name, modules=args.modules))


if __name__ == "__main__":
    main()
