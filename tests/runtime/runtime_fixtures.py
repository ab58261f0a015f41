"""What the runtime tests share: a tiny hand-made ONNX "model" with known outputs.

The model ignores the picture except for its mean brightness: landmarks are a constant
crop-normalised shape whose tight box is exactly the un-expanded face box (so tracking from
landmarks is a fixed point), and every score is the crop's mean intensity / 255 (a black crop
has score 0 -> the track is lost). That makes every pipeline output computable by hand.

A module of its own, not conftest.py: test files import from it by a name no other test folder
uses (``from conftest import`` resolved to whichever conftest was loaded last, so
``pytest tests/runtime tests/integration`` failed to collect).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "runtime") not in sys.path:
    sys.path.insert(0, str(ROOT / "runtime"))

SIZE, K, EXPAND = 32, 5, 0.2


def const_shape(k: int = K, expand: float = EXPAND) -> np.ndarray:
    """(K, 2) normalised points whose tight box is the un-expanded box: min e/(1+2e), max
    (1+e)/(1+2e)."""
    lo, hi = expand / (1 + 2 * expand), (1 + expand) / (1 + 2 * expand)
    pts = np.array([[lo, lo], [hi, hi], [(lo + hi) / 2, (lo + hi) / 2], [lo, hi], [hi, lo]])
    return np.resize(pts, (k, 2)).astype(np.float32)


def write_const_onnx(path: Path, size: int = SIZE, k: int = K, input_name: str = "crops") -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = const_shape(k)[None]  # (1, K, 2)
    nodes = [
        helper.make_node("Cast", [input_name], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Div", ["m", "c255"], ["m01"]),
        helper.make_node("Mul", ["m01", "zero"], ["z"]),
        helper.make_node("Unsqueeze", ["z", "ax12"], ["z3"]),
        helper.make_node("Add", ["z3", "shape"], ["landmarks"]),
        helper.make_node("Unsqueeze", ["m01", "ax1"], ["m2"]),
        helper.make_node("Add", ["m2", "zerosk"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(c, "shape"),
             numpy_helper.from_array(np.zeros((1, k), np.float32), "zerosk")]
    graph = helper.make_graph(
        nodes, "const",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["B", size, size, 3])],
        [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["B", k, 2]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def model_json(size: int = SIZE, k: int = K, **over: object) -> dict:
    d = {"schema_version": 1, "input_name": "crops", "output_names": ["landmarks", "scores"],
         "input_size": size, "layout": "NHWC", "channel_order": "RGB", "dtype": "uint8",
         "crop_expand": EXPAND, "num_landmarks": k, "landmark_scheme": "custom5",
         "flip_pairs": [], "eye_corners": [0, 1], "head": "heatmap",
         "decode": {"stride": 4, "window": 2, "sigma_px": 1.5}, "opset": 17,
         "source_checkpoint": "none", "config_hash": "0" * 16, "onnx_sha256": "",
         "which": "teacher"}
    d.update(over)
    return d
