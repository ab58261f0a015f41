"""Export a checkpoint to the runtime: ``model.onnx`` + ``model.pt2`` + ``model.json``.

``python -m tsal_dist.export --checkpoint PATH --out DIR [--which teacher|student] [--opset N]``

The exported graph is the whole path uint8 RGB NHWC crops (B, S, S, 3) -> ``landmarks`` (B, K, 2)
crop-normalised ``(px + 0.5) / S`` and ``scores`` (B, K): the model's own ``predict`` (the one
model interface, tsal_dist.models), so normalisation uses the model's mean/std buffers and a
detector's heatmap decoding is its ``HeatmapCodec.locate``, in-graph (docs/CONTRACTS.md
"Export <-> runtime"). Two heads are supported:

- ``heatmap``: a :class:`~tsal_dist.models.LandmarkDetector` (teacher or student); scores are the
  decoded heatmap peak values.
- ``regression``: a :class:`~tsal_dist.models.MobileNetV2Regressor` (a distilled student, whose
  checkpoint says so: ``student_arch``); it has no confidence, so scores are all 1.

The network is rebuilt by ``tsal_dist.loop.checkpoint.model_from_checkpoint``, the one reader of
checkpoints. The entry points (``tsal_dist.train``, ``tsal_dist.distill``) call
:func:`export_run` at the end of a run.

``model.pt2`` is the same program as a ``torch.export`` ExportedProgram (the runtime's torch
engine runs it without tsal_dist). ``model.json`` is written last; every file goes to a temp
file in ``DIR`` and is renamed into place. After writing, ONNX Runtime output is checked against
torch on random crops (skipped with a warning if onnxruntime is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tsal_dist.atomic import atomic_path
from tsal_dist.config import ConfigError, ExperimentConfig
from tsal_dist.data.schemes import AFLW19, IBUG68, WFLW98
from tsal_dist.data.transforms import IMAGENET_MEAN_RGB
from tsal_dist.loop.checkpoint import CheckpointError, latest_checkpoint, model_from_checkpoint
from tsal_dist.models import LandmarkModel

log = logging.getLogger("tsal_dist.export")

SCHEMA_VERSION = 1
INPUT_NAME = "crops"
OUTPUT_NAMES = ("landmarks", "scores")
MAX_BATCH = 1024

# model.json's landmark_scheme, flip_pairs and eye corners (inter-ocular NME) by K, from the one
# table of schemes (tsal_dist.data.schemes); any other K exports as custom<K> with neither.
SCHEMES: dict[int, tuple[str, tuple[tuple[int, int], ...], tuple[int, int] | tuple[()]]] = {
    s.num_points: (s.name, s.flip_pairs, s.eye_corners or ()) for s in (IBUG68, AFLW19, WFLW98)
}


class ExportError(RuntimeError):
    """Export cannot proceed (bad checkpoint, missing weights, failed parity check)."""


class CropToLandmarks(nn.Module):
    """uint8 NHWC RGB crops -> (crop-normalised landmarks, scores); the exported program.

    Args:
        model: a landmark model (``LandmarkDetector`` or ``MobileNetV2Regressor``); its
            ``predict`` is the program.

    Attributes:
        model, input_size (S).
    """

    def __init__(self, model: LandmarkModel) -> None:
        super().__init__()
        self.model = model
        self.input_size = int(model.input_size)

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        # the uint8 input goes straight into a Cast (TensorRT accepts uint8 only at the network
        # input); exact, and the model's normalisation takes 0..255 floats as it takes uint8
        x = crops.to(torch.float32).permute(0, 3, 1, 2)
        pred = self.model.predict(x)
        return pred.landmarks, pred.scores


def load_export_module(checkpoint: str | os.PathLike[str], which: str = "teacher"
                       ) -> tuple[CropToLandmarks, ExperimentConfig, str, dict[str, Any]]:
    """Build the export module from a checkpoint.

    Returns:
        (module in eval mode, config, head "heatmap"|"regression", checkpoint dict).
    Raises:
        ExportError: unreadable checkpoint, missing keys or mismatched weights (naming the file).
    """
    if which not in ("teacher", "student"):
        raise ExportError(f"--which must be teacher or student, got {which!r}")
    try:
        loaded = model_from_checkpoint(checkpoint, which)
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        raise ExportError(str(e)) from None
    return CropToLandmarks(loaded.model).eval(), loaded.config, loaded.head, loaded.checkpoint


def _atomic(path: Path, writer: Callable[[str], None]) -> None:
    """Write ``path`` via ``writer(tmp_path)`` then rename into place (mode 0644)."""
    # the temporary name keeps the extension: writers may pick the format by it (ONNX)
    with atomic_path(path, ext=path.suffix) as tmp:
        writer(str(tmp))
        os.chmod(tmp, 0o644)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ONNX ops the TensorRT 10 ONNX parser supports that an export may contain (a conservative subset
# of onnx-tensorrt's operator matrix; Mod, for one, is not in it)
TENSORRT_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil",
    "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Div", "Equal",
    "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid", "Identity",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul",
    "Neg", "Not", "Or", "Pad", "Pow", "PRelu", "Range", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceSum", "Relu", "Reshape", "Resize", "Round", "Shape", "Sigmoid", "Sign", "Slice",
    "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose",
    "Unsqueeze", "Where"})


def tensorrt_problems(onnx_path: str | os.PathLike[str]) -> list[str]:
    """Why TensorRT 10/11 could not build an exported graph ([] = nothing found).

    Static checks: every op is in :data:`TENSORRT_OPS`; a uint8 network input feeds Cast nodes
    only (TensorRT accepts uint8 solely as a network input/output); no other tensor is uint8 or
    int8; the model carries no weights outside its file.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = onnx.shape_inference.infer_shapes(model).graph
    out: list[str] = []
    for op in sorted({n.op_type for n in graph.node} - TENSORRT_OPS):
        out.append(f"op {op} is not supported by TensorRT's ONNX parser")
    u8 = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}
    inputs = {v.name for v in graph.input if v.type.tensor_type.elem_type in u8}
    for n in graph.node:
        if inputs & set(n.input) and n.op_type != "Cast":
            out.append(f"uint8 input feeds a {n.op_type} (TensorRT needs a Cast first)")
    for v in list(graph.value_info) + list(graph.output):
        if v.type.tensor_type.elem_type in u8 and v.name not in inputs:
            out.append(f"tensor {v.name} is 8-bit inside the network")
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.append(f"initializer {t.name} is stored outside the .onnx file")
    return out


def write_onnx(module: CropToLandmarks, path: str | os.PathLike[str], opset: int = 18) -> None:
    """``module`` as the runtime's ONNX program at ``path``: uint8 NHWC crops of any batch up to
    ``MAX_BATCH`` in, landmarks and scores out (torch.export + the ONNX optimizer, which folds
    constant subgraphs such as the DARK blur operator). Benchmarks that time a model in ONNX
    Runtime export it here, so they time what users deploy."""
    size = module.input_size
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                      output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=True,
                      external_data=False, dynamic_shapes={"crops": {0: batch}},
                      optimize=True, verbose=False)


# the opsets an export may ask for: torch's dynamo exporter writes 18 and converts to the others
OPSETS = range(18, 22)
EXPORT_FILES = ("model.onnx", "model.pt2", "model.json")


def check_export_dir(out: str | os.PathLike[str]) -> Path:
    """``out`` as an export folder that can be written (made if missing), checked before any
    work: a file, a folder under a file, an unwritable folder, or a model file there that is not
    a regular file raise ExportError (an input problem)."""
    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():
        raise ExportError(f"{outdir}: output exists and is not a folder")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):  # the files are moved in there at the end
            pass
    except OSError as e:
        raise ExportError(f"{e.filename or outdir}: cannot write the export there "
                          f"({e.strerror or e})") from None
    for name in EXPORT_FILES:
        p = outdir / name
        if p.exists() and not p.is_file():
            raise ExportError(f"{p}: output exists and is not a file")
    return outdir


def export(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str],
           which: str = "teacher", opset: int = 18, check: bool = True,
           check_atol: float = 1e-4) -> dict[str, Any]:
    """Export a checkpoint to ``out`` (created if needed); returns the model.json dict.

    The three files are made and checked in a staging folder beside ``out`` and moved in at the
    end, ``model.json`` last (and an earlier ``model.json`` removed first): a failed export
    leaves an earlier export in ``out`` as it was, and a folder is never a mix of two exports
    that the runtime would load.

    Args:
        checkpoint: ``ckpt-*.pt`` written by the training loop.
        out: output folder.
        which: "teacher" or "student".
        opset: ONNX opset, one of :data:`OPSETS`.
        check: compare ONNX Runtime against torch on 4 random crops (max abs diff of the
            normalised landmarks <= ``check_atol``).
    Raises:
        ExportError: see :func:`load_export_module`, an opset outside :data:`OPSETS`, an output
            folder that cannot be written, or the parity check failed.
    """
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported (one of {OPSETS.start}-"
                          f"{OPSETS.stop - 1})")
    outdir = check_export_dir(out)
    module, cfg, head, ckpt = load_export_module(checkpoint, which)
    stage = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".staging",
                                  dir=outdir.parent))
    try:
        meta = _export_into(stage, module, cfg, head, ckpt, checkpoint, which, opset,
                            check=check, check_atol=check_atol)
        _move_in(stage, outdir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


def _move_in(stage: Path, outdir: Path) -> None:
    """Replace the export in ``outdir`` by the one in ``stage``: model.json goes first and
    comes back last, so that a reader never meets a model.json beside files it does not pin."""
    try:
        (outdir / "model.json").unlink(missing_ok=True)
        for name in EXPORT_FILES:
            os.replace(stage / name, outdir / name)
    except OSError as e:
        raise ExportError(f"{outdir}: cannot move the export in ({e.strerror or e})") from None


def _export_into(outdir: Path, module: CropToLandmarks, cfg: Any, head: str, ckpt: dict,
                 checkpoint: str | os.PathLike[str], which: str, opset: int, *, check: bool,
                 check_atol: float) -> dict[str, Any]:
    """Write and check model.onnx, model.pt2 and model.json in ``outdir``."""
    size, k = module.input_size, cfg.data.num_points
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        ep = torch.export.export(module, (example,), dynamic_shapes={"crops": {0: batch}})
    onnx_path, pt2_path = outdir / "model.onnx", outdir / "model.pt2"
    _atomic(onnx_path, lambda tmp: write_onnx(module, tmp, opset))
    written = _onnx_opset(onnx_path)
    if written != opset:
        raise ExportError(f"opset {opset}: the ONNX exporter could not convert this model to it "
                          f"(it wrote opset {written}); use {written}")
    _atomic(pt2_path, lambda tmp: torch.export.save(ep, tmp))
    scheme, flips, eyes = SCHEMES.get(k, (f"custom{k}", (), ()))
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "input_name": INPUT_NAME,
        "output_names": list(OUTPUT_NAMES),
        "input_size": size,
        "layout": "NHWC",
        "channel_order": "RGB",
        "dtype": "uint8",
        "crop_expand": cfg.data.pre_crop_expand,
        "num_landmarks": k,
        "landmark_scheme": scheme,
        "flip_pairs": [list(p) for p in flips],
        "eye_corners": list(eyes),
        "head": head,
        "decode": ({"stride": int(module.model.stride), "window": cfg.model.decode_window,
                    "sigma_px": cfg.model.heatmap_sigma_px, "method": cfg.model.decode,
                    "blur_cells": cfg.model.decode_blur_cells} if head == "heatmap" else None),
        "opset": opset,
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "step": int(ckpt.get("step", -1)),
        "config_hash": cfg.hash(),
        "onnx_sha256": _sha256(onnx_path),
        "which": which,
        # crop convention of tsal_dist.data.transforms.warp_image (the runtime copies it)
        "border_value": [float(v) for v in IMAGENET_MEAN_RGB],
        "antialias": True,
        # model.pt2 can hold pickled code: the runtime opens it only when its bytes match this
        "pt2_sha256": _sha256(pt2_path),
        # static TensorRT check of the graph ([] = none found; tsal_dist.export.tensorrt_problems)
        "tensorrt_problems": tensorrt_problems(onnx_path),
    }
    # the runtime recomputes this hash when it loads model.json: one definition, the reader's
    from tsal_runtime.spec import meaning_sha256

    meta["meaning_sha256"] = meaning_sha256(meta)
    if check:
        check_parity(module, onnx_path, size, atol=check_atol)
    _atomic(outdir / "model.json",
            lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return meta


def _onnx_opset(path: Path) -> int:
    """The default-domain opset an ONNX file imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def check_parity(module: CropToLandmarks, onnx_path: Path, size: int, atol: float = 1e-4,
                 batch: int = 4, seed: int = 0, tie_rtol: float = 1e-4) -> float:
    """Max |onnxruntime - torch| of the normalised landmarks on random crops; raises above atol.

    A landmark of a heatmap model may differ by more than ``atol`` only where the torch map
    whose argmax the decode takes has a numerical tie: another cell within ``tie_rtol`` (relative
    to the map's range or magnitude) of the maximum, within the decode's reach of ONNX
    Runtime's answer. On
    the nearly flat maps of an untrained or briefly trained model the two runtimes' last-bit
    differences pick different cells of such ties; that is no difference in the exported program.

    Returns:
        The max difference outside ties.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime not installed: parity check skipped")
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    crops = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        ref_lm, ref_sc = module(crops)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    lm, sc = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: crops.numpy()})
    diff = np.abs(lm - ref_lm.numpy()).max(axis=-1)  # (B, K)
    if (diff > atol).any():
        diff = np.where(_numerical_ties(module, crops, lm, tie_rtol, atol), 0.0, diff)
    err = float(max(diff.max(), np.abs(sc - ref_sc.numpy()).max()))
    if not err <= atol:
        raise ExportError(f"{onnx_path}: onnxruntime differs from torch by {err:.3g} (> {atol})")
    return err


def _numerical_ties(module: CropToLandmarks, crops: Tensor, ort_lm: np.ndarray, rtol: float,
                    atol: float) -> np.ndarray:
    """(B, K) True where ONNX Runtime's landmark is explained by a tie in torch's peak map
    (never for a model without heatmaps: a regressor has no argmax)."""
    from tsal_dist.codec import peak_map

    with torch.no_grad():
        pred = module.model.predict(crops.permute(0, 3, 1, 2))
    if pred.heatmaps is None:
        return np.zeros(ort_lm.shape[:2], dtype=bool)
    codec = module.model.codec
    maps, reach = peak_map(codec, pred.heatmaps)
    m = maps.numpy()  # (B, K, h, w)
    b, k, h, w = m.shape
    flat = m.reshape(b, k, h * w)
    top = flat.max(-1, keepdims=True)
    span = top - flat.min(-1, keepdims=True)
    # tied: within rtol of the maximum, relative to the map's range or magnitude (float32
    # rounding scales with the values; a flat map's range can be below it)
    tied = flat >= top - rtol * np.maximum(np.maximum(span, np.abs(top)), 1e-12)
    s = codec.stride
    cx = (np.arange(h * w) % w) * s + (s - 1) / 2.0
    cy = (np.arange(h * w) // w) * s + (s - 1) / 2.0
    px = ort_lm * float(module.input_size) - 0.5  # crop px
    dist = np.maximum(np.abs(cx - px[..., :1]), np.abs(cy - px[..., 1:]))  # (B, K, h*w)
    near = dist <= reach * s + atol * float(module.input_size) + 1e-6
    return (tied & near).any(-1) & (tied.sum(-1) > 1)


def export_run(run_dir: str | os.PathLike[str], which: str) -> Path | None:
    """Export the newest checkpoint of a run folder to ``<run>/export`` (the end of a run);
    returns that folder, or None when the run has no checkpoint."""
    ckpt = latest_checkpoint(Path(run_dir) / "checkpoints")
    if ckpt is None:
        return None
    export(ckpt, Path(run_dir) / "export", which=which)
    return Path(run_dir) / "export"


def _is_input_problem(e: ExportError) -> bool:
    """A bad checkpoint is the user's to fix (2); a failed parity check is ours (1)."""
    return "differs from torch" not in str(e)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tsal-export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--which", default="teacher", choices=["teacher", "student"])
    ap.add_argument("--opset", type=int, default=18, choices=OPSETS, metavar="N",
                    help=f"ONNX opset ({OPSETS.start}-{OPSETS.stop - 1})")
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    args = ap.parse_args(argv)
    missing = [m for m in ("onnx", "onnxscript", "tsal_runtime")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"tsal-export: error: the export needs {', '.join(missing)}: "
              f"pip install -e '.[runtime]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="tsal-export: %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        meta = export(args.checkpoint, args.out, args.which, args.opset, check=not args.no_check)
    except ExportError as e:
        print(f"tsal-export: error: {e}", file=sys.stderr)
        return 2 if _is_input_problem(e) else 1
    except OSError as e:  # the output folder cannot be made or written
        print(f"tsal-export: error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    log.info("wrote %s/model.{onnx,pt2,json} (%s head, %d points, %d px)", args.out,
             meta["head"], meta["num_landmarks"], meta["input_size"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
