"""``model.json`` reader: the runtime side of the export <-> runtime contract.

The writer is ``tsal_dist/export.py``; docs/CONTRACTS.md ("Export <-> runtime") lists the fields.
This module imports neither tsal_dist nor torch. ``load_spec(model_dir)`` reads and validates
``model.json`` and checks that ``model.onnx`` has the promised inputs and outputs, raising
:class:`SpecError` with a one-line message naming the file otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tsal_runtime.errors import SpecError

SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
MODEL_ONNX = "model.onnx"
MODEL_PT2 = "model.pt2"

# The training crops' fill colour outside the image (tsal_dist.data.transforms.warp_image):
# the ImageNet mean on the 0-255 scale, RGB. Default for model.json files that do not say.
IMAGENET_MEAN_RGB: tuple[float, float, float] = (123.675, 116.28, 103.53)

_REQUIRED = ("schema_version", "input_name", "input_size", "layout", "channel_order", "dtype",
             "crop_expand", "num_landmarks")


@dataclass(frozen=True)
class DecodeSpec:
    """Heatmap decode constants of the exported graph (informational: decoding is in-graph)."""

    stride: int = 0
    window: int = 0
    sigma_px: float = 0.0
    method: str = "window"  # "window" (SBR mean) or "dark" (blur + log-Taylor), as exported
    blur_cells: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything model-specific the runtime needs, as read from ``model.json``.

    Attributes:
        model_dir: folder holding model.json / model.onnx (/ model.pt2).
        input_size: crop side S in pixels; the graph takes uint8 (B, S, S, 3).
        crop_expand: the face box grows by this fraction of its width (height) on EACH side
            before it is mapped to S x S (the training ``data.pre_crop_expand``).
        num_landmarks: K.
        head: "heatmap" (decoded in-graph) or "regression" (direct normalised coordinates).
        eye_corners: [left, right] landmark indices for inter-ocular normalisation, or ().
        border_value: RGB fill of crop pixels outside the frame (as in training).
        antialias: box-filter the crop's footprint first when it shrinks the frame >= 2x
            (as ``tsal_dist.data.transforms.warp_image``).
    """

    model_dir: Path
    schema_version: int
    input_name: str
    input_size: int
    layout: str
    channel_order: str
    dtype: str
    crop_expand: float
    num_landmarks: int
    output_names: tuple[str, str] = ("landmarks", "scores")
    landmark_scheme: str = ""
    flip_pairs: tuple[tuple[int, int], ...] = ()
    eye_corners: tuple[int, ...] = ()
    decode: DecodeSpec = field(default_factory=DecodeSpec)
    head: str = "heatmap"
    opset: int = 0
    source_checkpoint: str = ""
    config_hash: str = ""
    onnx_sha256: str = ""
    pt2_sha256: str = ""
    meaning_sha256: str = ""
    which: str = ""
    border_value: tuple[float, float, float] = IMAGENET_MEAN_RGB
    antialias: bool = True

    @property
    def onnx_path(self) -> Path:
        return self.model_dir / MODEL_ONNX

    @property
    def pt2_path(self) -> Path:
        return self.model_dir / MODEL_PT2

    def to_json_dict(self) -> dict[str, Any]:
        """The model.json content this spec corresponds to (model_dir left out)."""
        d = asdict(self)
        d.pop("model_dir")
        d["output_names"] = list(self.output_names)
        d["flip_pairs"] = [list(p) for p in self.flip_pairs]
        d["eye_corners"] = list(self.eye_corners)
        d["border_value"] = list(self.border_value)
        return d


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_spec(d: dict[str, Any], model_dir: Path, where: str = MODEL_JSON) -> ModelSpec:
    """Validate a decoded model.json dict and build a :class:`ModelSpec`.

    Raises:
        SpecError: wrong schema version, missing field or a field of the wrong type/value.
    """
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a JSON object, got {type(d).__name__}")
    version = d.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # true == 1 in Python
        raise SpecError(f"{where}: schema_version {version!r} is not supported by this runtime "
                        f"(expects {SCHEMA_VERSION}); re-export the model with a matching "
                        f"tsal_dist or upgrade tsal-runtime")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise SpecError(f"{where}: missing field(s) {', '.join(missing)}")
    dec = d.get("decode") or {}
    if not isinstance(dec, dict):
        raise SpecError(f"{where}: bad field value (decode must be an object, got "
                        f"{type(dec).__name__})")
    antialias = d.get("antialias", True)
    if not isinstance(antialias, bool):  # bool("false") is True
        raise SpecError(f"{where}: bad field value (antialias must be true or false, got "
                        f"{antialias!r})")
    try:
        spec = ModelSpec(
            model_dir=model_dir,
            schema_version=int(version),
            input_name=str(d["input_name"]),
            input_size=int(d["input_size"]),
            layout=str(d["layout"]),
            channel_order=str(d["channel_order"]),
            dtype=str(d["dtype"]),
            crop_expand=float(d["crop_expand"]),
            num_landmarks=int(d["num_landmarks"]),
            output_names=tuple(d.get("output_names", ("landmarks", "scores"))),  # type: ignore[arg-type]
            landmark_scheme=str(d.get("landmark_scheme", "")),
            flip_pairs=tuple((int(a), int(b)) for a, b in d.get("flip_pairs", [])),
            eye_corners=tuple(int(i) for i in d.get("eye_corners", [])),
            decode=DecodeSpec(stride=int(dec.get("stride", 0)), window=int(dec.get("window", 0)),
                              sigma_px=float(dec.get("sigma_px", 0.0)),
                              method=str(dec.get("method", "window")),
                              blur_cells=float(dec.get("blur_cells", 0.0))),
            head=str(d.get("head", "heatmap")),
            opset=int(d.get("opset", 0)),
            source_checkpoint=str(d.get("source_checkpoint", "")),
            config_hash=str(d.get("config_hash", "")),
            onnx_sha256=str(d.get("onnx_sha256", "")),
            pt2_sha256=str(d.get("pt2_sha256", "")),
            meaning_sha256=str(d.get("meaning_sha256", "")),
            which=str(d.get("which", "")),
            border_value=tuple(  # type: ignore[arg-type]
                float(v) for v in d.get("border_value", IMAGENET_MEAN_RGB)),
            antialias=antialias,
        )
    except (TypeError, ValueError, OverflowError) as e:  # int(Infinity) is an OverflowError
        raise SpecError(f"{where}: bad field value ({e})") from None
    checks = [
        (spec.layout == "NHWC", f"layout {spec.layout!r} (runtime supports 'NHWC')"),
        (spec.channel_order == "RGB", f"channel_order {spec.channel_order!r} (supports 'RGB')"),
        (spec.dtype == "uint8", f"dtype {spec.dtype!r} (supports 'uint8')"),
        (spec.input_size >= 8, f"input_size {spec.input_size} (must be >= 8)"),
        (spec.num_landmarks >= 1, f"num_landmarks {spec.num_landmarks} (must be >= 1)"),
        (0.0 <= spec.crop_expand <= 2.0, f"crop_expand {spec.crop_expand} (must be in [0, 2])"),
        (len(spec.border_value) == 3, f"border_value {list(spec.border_value)} (need 3 values)"),
        (len(spec.output_names) == 2, f"output_names {spec.output_names} (need 2)"),
        (spec.head in ("heatmap", "regression"), f"head {spec.head!r}"),
        (len(spec.eye_corners) in (0, 2)
         and all(0 <= i < spec.num_landmarks for i in spec.eye_corners),
         f"eye_corners {list(spec.eye_corners)}"),
    ]
    for ok, what in checks:
        if not ok:
            raise SpecError(f"{where}: unsupported {what}")
    if spec.meaning_sha256 and meaning_sha256(d) != spec.meaning_sha256:
        raise SpecError(f"{where}: edited after export (a field that changes the model -- input "
                        f"size, crop expansion, decode, file hashes ... -- no longer matches "
                        f"meaning_sha256); re-export the model instead of editing model.json")
    return spec


# The fields of model.json that change what the model computes (tsal_dist.export writes the hash).
MEANING_FIELDS = ("input_name", "output_names", "input_size", "layout", "channel_order", "dtype",
                  "crop_expand", "num_landmarks", "head", "decode", "border_value", "antialias",
                  "onnx_sha256", "pt2_sha256")


def meaning_sha256(d: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``MEANING_FIELDS`` of a model.json dict."""
    blob = json.dumps({k: d.get(k) for k in MEANING_FIELDS}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def check_pt2_pinned(spec: ModelSpec) -> None:
    """Refuse model.pt2 unless its bytes are the ones export pinned (``pt2_sha256``).

    ``torch.export.load`` can unpickle objects from a .pt2 archive, so an unverified file may
    run code: it is never opened before this check passes.

    Raises:
        SpecError: no pin in model.json, or the file differs from it.
    """
    p = spec.pt2_path
    if not spec.pt2_sha256:
        raise SpecError(f"{p}: refused: model.json pins no pt2_sha256 (exported by an older "
                        f"tsal_dist); re-export, or use --engine onnxruntime")
    if not p.is_file():
        raise SpecError(f"{p}: not found")
    if sha256_file(p) != spec.pt2_sha256:
        raise SpecError(f"{p}: refused: its sha256 differs from model.json's pt2_sha256 (the "
                        f"file was changed after export, and a .pt2 can run code when loaded)")


def load_spec(model_dir: str | os.PathLike[str], check_onnx: bool = True) -> ModelSpec:
    """Read ``model_dir/model.json`` and (optionally) check ``model.onnx`` against it.

    Args:
        model_dir: folder written by ``python -m tsal_dist.export``.
        check_onnx: also verify the ONNX file's sha256 (when recorded) and its I/O signature.

    Raises:
        SpecError: one-line message naming the offending file.
    """
    model_dir = Path(model_dir)
    path = model_dir / MODEL_JSON
    if not model_dir.is_dir():
        raise SpecError(f"{model_dir}: model folder does not exist")
    if not path.is_file():
        raise SpecError(f"{path}: not found (expected model.json next to model.onnx)")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"{path}: unreadable JSON ({e})") from None
    spec = parse_spec(d, model_dir, where=str(path))
    if check_onnx:
        check_onnx_matches(spec)
    return spec


def _onnx_signature(onnx_path: Path) -> tuple[list[tuple[str, str, list[Any]]],
                                               list[tuple[str, str, list[Any]]]]:
    """(inputs, outputs) as (name, elem type name, dims with None/str for dynamic)."""
    try:
        import onnx  # light: parses the protobuf only

        m = onnx.load(str(onnx_path), load_external_data=False)

        def sig(vs: Any) -> list[tuple[str, str, list[Any]]]:
            out = []
            for v in vs:
                t = v.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                        for d in t.shape.dim]
                out.append((v.name, onnx.TensorProto.DataType.Name(t.elem_type).lower(), dims))
            return out

        inits = {i.name for i in m.graph.initializer}
        return sig([i for i in m.graph.input if i.name not in inits]), sig(m.graph.output)
    except ImportError:
        import onnxruntime as ort

        s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

        def sig2(vs: Any) -> list[tuple[str, str, list[Any]]]:
            return [(v.name, v.type.replace("tensor(", "").rstrip(")"),
                     [d if isinstance(d, int) else None for d in v.shape]) for v in vs]

        return sig2(s.get_inputs()), sig2(s.get_outputs())


def check_onnx_matches(spec: ModelSpec) -> None:
    """Verify model.onnx exists, matches the recorded sha256 and the promised I/O signature.

    Raises:
        SpecError: naming model.onnx and the first mismatch.
    """
    p = spec.onnx_path
    if not p.is_file():
        raise SpecError(f"{p}: not found")
    if spec.onnx_sha256 and sha256_file(p) != spec.onnx_sha256:
        raise SpecError(f"{p}: sha256 differs from model.json's onnx_sha256 (model.onnx was "
                        f"replaced or corrupted; re-export)")
    try:
        inputs, outputs = _onnx_signature(p)
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        raise SpecError(f"{p}: cannot parse ONNX ({type(e).__name__}: {str(e)[:120]})") from None
    s, k = spec.input_size, spec.num_landmarks
    if len(inputs) != 1:
        raise SpecError(f"{p}: expected 1 input, found {[i[0] for i in inputs]}")
    name, dtype, dims = inputs[0]
    if name != spec.input_name:
        raise SpecError(f"{p}: input is named {name!r}, model.json says {spec.input_name!r}")
    if dtype != "uint8" or len(dims) != 4 or dims[1:] != [s, s, 3]:
        raise SpecError(f"{p}: input {name!r} is {dtype}{dims}, model.json says "
                        f"uint8[B, {s}, {s}, 3]")
    onames = [o[0] for o in outputs]
    want = {spec.output_names[0]: [k, 2], spec.output_names[1]: [k]}
    for oname, tail in want.items():
        if oname not in onames:
            raise SpecError(f"{p}: no output {oname!r} (outputs: {onames})")
        _, odt, odims = outputs[onames.index(oname)]
        if odt != "float" or len(odims) != len(tail) + 1 or odims[1:] != tail:
            raise SpecError(f"{p}: output {oname!r} is {odt}{odims}, model.json implies "
                            f"float[B, {', '.join(map(str, tail))}]")
