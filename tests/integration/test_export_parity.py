"""Export (tsal_dist.export) <-> runtime (tsal_runtime) agreement: the one test importing both.

- the runtime's crop geometry equals tsal_dist.data.transforms.crop_matrix;
- model.json written by export is read by tsal_runtime.spec with every field intact;
- ONNX Runtime output equals the torch model's decoded output (heatmap teacher -- the trained
  smoke teacher exported once per session, conftest.py -- and regression student) on random
  crops within 1e-4, and the runtime's torch engine (model.pt2) agrees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))

from tsal_dist.config import ExperimentConfig  # noqa: E402
from tsal_dist.data.transforms import crop_matrix as train_crop_matrix  # noqa: E402
from tsal_dist.export import ExportError, export, load_export_module  # noqa: E402
from tsal_dist.models import MobileNetV2Regressor, build_model  # noqa: E402
from tsal_runtime.engines import make_engine  # noqa: E402
from tsal_runtime.geometry import crop_matrix as runtime_crop_matrix  # noqa: E402
from tsal_runtime.spec import load_spec  # noqa: E402

SIZE = 64


@pytest.mark.parametrize("box, size, expand", [((10, 20, 110, 140), 64, 0.2),
                                               ((-5.5, 3.25, 40, 90), 128, 0.0),
                                               ((0, 0, 1, 1), 32, 1.5)])
def test_crop_convention_matches_training(box: tuple, size: int, expand: float) -> None:
    assert np.allclose(runtime_crop_matrix(box, size, expand),
                       train_crop_matrix(box, size, expand), atol=1e-12)


@pytest.mark.parametrize("box", [(10.0, 20.0, 110.0, 140.0),  # 1.9x shrink: plain bilinear
                                 (-30.0, 150.0, 200.0, 330.0),  # 4x shrink + out of frame
                                 (5.5, 7.25, 250.0, 160.0)])
def test_crop_pixels_match_training(box: tuple) -> None:
    """Runtime crops == tsal_dist.data.transforms.warp_image (border fill and antialias)."""
    from tsal_dist.data.transforms import IMAGENET_MEAN_RGB, warp_image
    from tsal_runtime.geometry import extract_crops
    from tsal_runtime.spec import IMAGENET_MEAN_RGB as RUNTIME_MEAN

    assert RUNTIME_MEAN == IMAGENET_MEAN_RGB
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frame = np.ascontiguousarray(np.repeat(np.repeat(frame[::4, ::4], 4, 0), 4, 1))
    want = warp_image(frame, train_crop_matrix(box, 48, 0.2), 48)
    got, _ = extract_crops(frame, np.array([box]), 48, 0.2, RUNTIME_MEAN, antialias=True)
    assert np.array_equal(got[0], want)


def make_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    cfg = ExperimentConfig.from_dict({"model": {"input_size": SIZE, "width": 0.5,
                                                "cpm_stages": 1}})
    teacher = build_model(cfg.model, cfg.data.num_points)
    student = MobileNetV2Regressor(cfg.data.num_points, SIZE, width=0.5)
    # a distillation-style student: the checkpoint names its architecture (never guessed)
    torch.save({"config": cfg.to_dict(), "teacher": teacher.state_dict(),
                "student": student.state_dict(), "student_arch": "regressor",
                "student_width": 0.5, "student_input_size": SIZE, "step": 7}, path)


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="checkpoint not found"):
        load_export_module(tmp_path / "none.pt")
    torch.save({"config": {}, "teacher": {}}, tmp_path / "c.pt")
    with pytest.raises(ExportError, match="expected a dict with 'config' and 'student'"):
        load_export_module(tmp_path / "c.pt", "student")


def _assert_fp16_builds_keep_the_decode_fp32(onnx_path: Path, head: str) -> None:
    """What a TensorRT FP16 build keeps in FP32 (the nodes downstream of the last Conv) is the
    decode: both outputs' producers and, for a heatmap, its log and argmax, and none of the
    network's own nodes (by the exporter's record of the module each node came from)."""
    import ast

    import onnx

    from tsal_runtime.engines.trt_engine import onnx_decode_nodes

    model = onnx.load(str(onnx_path))
    keep = set(onnx_decode_nodes(model))
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert {producers[o.name] for o in model.graph.output} <= keep
    first_conv = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Conv")
    assert not keep & {n.name for n in model.graph.node[:first_conv]}  # input Cast, scaling
    if head == "heatmap":
        ops = {n.op_type for n in model.graph.node if n.name in keep}
        assert {"Log", "ArgMax"} <= ops and "Conv" not in ops
        for n in model.graph.node:
            meta = {p.key: p.value for p in n.metadata_props}
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
            if any(sc.startswith(("model.backbone", "model.heatmap_head")) for sc in scopes):
                assert n.name not in keep, n.name


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ck") / "ckpt-00000007.pt"
    make_checkpoint(p)
    return p


@pytest.mark.slow
@pytest.mark.parametrize("which, head", [("teacher", "heatmap"), ("student", "regression")])
def test_export_parity(request: pytest.FixtureRequest, ckpt: Path, tmp_path: Path, which: str,
                       head: str) -> None:
    torch.set_num_threads(1)
    if which == "teacher":
        # the heatmap teacher: the smoke config's (64 px, DARK decode), trained and exported at
        # opset 18 once per session (conftest.py; test_runtime_nme scores the same export)
        ckpt, out, meta = request.getfixturevalue("smoke_teacher_export")
    else:
        out = tmp_path / "export"
        out.mkdir()  # an earlier export there is replaced, every file together
        for name in ("model.json", "model.onnx", "model.pt2"):
            (out / name).write_text(f"an earlier {name}")
        meta = export(ckpt, out, which=which, opset=18)
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "model.pt2"]
    # writer <-> reader: every field written is read back unchanged
    spec = load_spec(out)
    read = spec.to_json_dict()
    written = json.loads((out / "model.json").read_text())
    for key in read:
        want = written.get(key)
        if key == "decode" and want is None:
            want = {"stride": 0, "window": 0, "sigma_px": 0.0, "method": "window",
                    "blur_cells": 0.0}
        assert read[key] == want, key
    assert spec.head == head and spec.which == which and spec.input_size == SIZE
    assert meta["step"] == step > 0 and written["step"] == step
    # TensorRT can build what we export: the uint8 input goes straight into a Cast, no Mod, ...
    assert written["tensorrt_problems"] == []
    assert spec.num_landmarks == 68 and spec.landmark_scheme == "ibug68"
    assert spec.eye_corners == (36, 45) and len(spec.flip_pairs) == 29
    if head == "heatmap":
        assert spec.decode.stride == 4 and spec.decode.window == 4
    _assert_fp16_builds_keep_the_decode_fp32(out / "model.onnx", head)
    # parity: onnxruntime vs the torch model + codec on random crops (several batch sizes)
    module, _, _, _ = load_export_module(ckpt, which)
    ort_eng = make_engine("onnxruntime", spec, threads=1)
    rng = np.random.default_rng(1)
    for b in (1, 3):
        crops = rng.integers(0, 256, (b, SIZE, SIZE, 3), dtype=np.uint8)
        with torch.no_grad():
            ref_lm, ref_sc = (t.numpy() for t in module(torch.from_numpy(crops)))
        lm, sc = ort_eng.run(crops)
        assert lm.shape == (b, 68, 2) and sc.shape == (b, 68)
        assert np.abs(lm - ref_lm).max() < 1e-4 and np.abs(sc - ref_sc).max() < 1e-4
        if head == "regression":
            assert np.all(sc == 1.0)
    # the runtime's torch engine runs model.pt2 without tsal_dist
    t_lm, t_sc = make_engine("torch", spec, device="cpu").run(crops)
    assert np.abs(t_lm - lm).max() < 1e-4 and np.abs(t_sc - sc).max() < 1e-4


def test_a_failed_export_leaves_the_earlier_export_whole(ckpt: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-export that fails at its parity check (or anywhere else) used to have replaced
    model.onnx and model.pt2 already: a folder whose model.json no longer pinned its files. (The
    ONNX writer is a stand-in here; test_export_parity replaces an earlier export for real.)"""
    import tsal_dist.export as exp

    out = tmp_path / "export"
    out.mkdir()
    old = {n: f"old {n}".encode() for n in ("model.json", "model.onnx", "model.pt2")}
    for n, b in old.items():
        (out / n).write_bytes(b)

    def parity_fails(*a: object, **k: object) -> float:
        raise ExportError("model.onnx: onnxruntime differs from torch by 0.5 (> 0.0001)")

    monkeypatch.setattr(exp, "write_onnx", lambda module, path, opset: Path(path).write_bytes(b"x"))
    monkeypatch.setattr(exp, "_onnx_opset", lambda path: 18, raising=False)
    monkeypatch.setattr(exp, "tensorrt_problems", lambda path: [])
    monkeypatch.setattr(exp, "check_parity", parity_fails)
    with pytest.raises(ExportError, match="differs from torch"):
        export(ckpt, out, which="student")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging folder left
    # refused before any work: an opset the exporter does not write, a model file that is a
    # folder (the rename at the end would fail)
    monkeypatch.setattr(exp, "load_export_module", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ExportError, match="opset 17 is not supported"):
        export(ckpt, tmp_path / "o17", which="student", opset=17)
    (out / "model.pt2").unlink()
    (out / "model.pt2").mkdir()
    with pytest.raises(ExportError, match="model.pt2: output exists and is not a file"):
        export(ckpt, out, which="student")


def test_export_cli_without_the_runtime_extra_is_one_line(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    import tsal_dist.export as exp

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    rc = exp.main(["--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs onnxscript: pip install -e '.[runtime]'" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        exp.main(["--checkpoint", "c.pt", "--out", "o", "--opset", "5"])
    assert e.value.code == 2


def distill_checkpoint(path: Path, arch: str, width: float, size: int,
                       decode: str = "dark") -> torch.nn.Module:
    """A distillation-style checkpoint: the experiment is a resnet teacher at 64 px, the student
    is described by student_arch / student_width / student_input_size (distill_loop.py);
    ``decode`` is the experiment's model.decode (a heatmap student decodes with it)."""
    import dataclasses

    torch.manual_seed(1)
    cfg = ExperimentConfig.from_dict({"model": {"backbone": "resnet", "input_size": 64,
                                                "width": 0.25, "cpm_stages": 1,
                                                "decode": decode}})
    teacher = build_model(cfg.model, cfg.data.num_points)
    if arch == "regressor":
        student: torch.nn.Module = MobileNetV2Regressor(cfg.data.num_points, size, width=width)
    else:
        student = build_model(dataclasses.replace(cfg.model, backbone="mobilenetv2", width=width,
                                                  input_size=size), cfg.data.num_points)
    torch.save({"config": cfg.to_dict(), "teacher": teacher.state_dict(),
                "student": student.state_dict(), "student_arch": arch, "student_width": width,
                "student_input_size": size, "step": 3}, path)
    return student.eval()


@pytest.mark.parametrize("arch, head", [("heatmap", "heatmap"), ("regressor", "regression")])
def test_distill_student_architecture(tmp_path: Path, arch: str, head: str) -> None:
    """--which student rebuilds the distilled student (MobileNetV2 detector / regressor) at the
    checkpoint's width and input size, not the experiment's teacher architecture."""
    student = distill_checkpoint(tmp_path / "ckpt-00000003.pt", arch, width=0.35, size=96)
    module, _, got_head, _ = load_export_module(tmp_path / "ckpt-00000003.pt", "student")
    assert got_head == head and module.input_size == 96
    assert type(module.model) is type(student)
    # same weights -> same raw output as the model the distillation loop built
    x = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad():
        a, b = module.model(x), student(x)
    if head == "heatmap":
        assert torch.equal(a["heatmaps"][-1], b["heatmaps"][-1])
        assert module.model.codec.input_size == 96  # the detector decodes at its own size
    else:
        assert torch.equal(a, b)
    # a wrong arch tag is a clear error naming the file
    bad = torch.load(tmp_path / "ckpt-00000003.pt", weights_only=True)
    bad["student_arch"] = "transformer"
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ExportError, match="bad.pt: unknown student_arch 'transformer'"):
        load_export_module(tmp_path / "bad.pt", "student")


@pytest.mark.parametrize("arch", ["heatmap", "regressor"])
def test_export_program_is_the_models_predict(tmp_path: Path, arch: str) -> None:
    """The exported program is the model's own ``predict`` on NHWC uint8 crops, bit for bit:
    no decode or unit conversion of its own."""
    from tsal_dist.export import CropToLandmarks

    model = distill_checkpoint(tmp_path / "c.pt", arch, width=0.35, size=SIZE)
    crops = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.no_grad():
        lm, sc = CropToLandmarks(model).eval()(crops)
        want = model.predict(crops.permute(0, 3, 1, 2))
    assert torch.equal(lm, want.landmarks) and torch.equal(sc, want.scores)
    assert lm.shape == (2, 68, 2) and sc.shape == (2, 68)


@pytest.mark.slow
def test_export_heatmap_student_cli(tmp_path: Path) -> None:
    """``python -m tsal_dist.export --which student`` on a heatmap student: model.json + ONNX.

    The experiment decodes with the window decode: its export is ~4x quicker than DARK's
    (blur + log-Taylor ops); DARK export and parity are test_export_parity[teacher-heatmap]'s,
    and nothing of the student path depends on the decode."""
    from tsal_dist.export import main

    torch.set_num_threads(1)
    distill_checkpoint(tmp_path / "ckpt-00000003.pt", "heatmap", width=0.35, size=64,
                       decode="window")
    assert main(["--checkpoint", str(tmp_path / "ckpt-00000003.pt"), "--out",
                 str(tmp_path / "exp"), "--which", "student"]) == 0
    spec = load_spec(tmp_path / "exp")
    assert spec.head == "heatmap" and spec.which == "student" and spec.input_size == 64
    # the experiment's decode, carried to model.json (the spec's default is window too)
    assert json.loads((tmp_path / "exp" / "model.json").read_text())["decode"]["method"] == "window"
    lm, sc = make_engine("onnxruntime", spec, threads=1).run(
        np.zeros((2, 64, 64, 3), np.uint8))
    assert lm.shape == (2, 68, 2) and sc.shape == (2, 68)


@pytest.mark.slow
def test_short_runs_export_and_real_differences_still_fail(tmp_path: Path) -> None:
    """A 2-step model's nearly flat heatmaps are full of numerical ties, where ONNX Runtime and
    torch pick different cells: the parity check passes them (it used to fail the run after all
    its work), yet a real change of the exported graph is still an ExportError."""
    import onnx
    from onnx import numpy_helper

    from tsal_dist.config import load_config, with_overrides
    from tsal_dist.export import check_parity
    from tsal_dist.loop.checkpoint import latest_checkpoint
    from tsal_dist.loop.loop import run

    cfg = with_overrides(load_config(ROOT / "configs" / "smoke.yaml"), {
        "optim.steps": 2, "run.export": False, "run.eval_every": 0,
        "train.precision": "bf16",  # bf16 autocast: the weights (and export) stay fp32
        "model.decode": "window"})  # the other decode (test_export_parity exports DARK)
    run(cfg, run_dir=tmp_path / "r", progress=False, final_eval=False)
    ck = latest_checkpoint(tmp_path / "r" / "checkpoints")
    meta = export(ck, tmp_path / "export", which="teacher")  # parity checked: must not raise
    assert meta["decode"]["method"] == "window" and meta["tensorrt_problems"] == []
    model = onnx.load(str(tmp_path / "export" / "model.onnx"))
    # a real difference: the first convolution's weights scaled
    init = max(model.graph.initializer, key=lambda t: len(t.dims) == 4 and t.dims[1] == 3)
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(w * 3.0, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    module, _, _, _ = load_export_module(ck, "teacher")
    with pytest.raises(ExportError, match="onnxruntime differs from torch"):
        check_parity(module, bad, cfg.model.input_size)


def test_tensorrt_check_finds_what_tensorrt_rejects(tmp_path: Path) -> None:
    """The static check fails where TensorRT would: a uint8 input into a Transpose, an 8-bit
    tensor inside the network, an op its ONNX parser lacks (Mod)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tsal_dist.export import tensorrt_problems

    nodes = [helper.make_node("Transpose", ["crops"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMax", ["f"], ["m"], keepdims=0),
             helper.make_node("Cast", ["m"], ["i"], to=TensorProto.INT64),
             helper.make_node("Mod", ["i", "seven"], ["r"]),
             helper.make_node("Cast", ["r"], ["landmarks"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("crops", TensorProto.UINT8, [1, 4, 4, 3])],
        [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(7, np.int64), "seven")])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    problems = tensorrt_problems(path)
    assert any("op Mod" in p for p in problems)
    assert any("uint8 input feeds a Transpose" in p for p in problems)
    assert any("tensor t is 8-bit" in p for p in problems)


def _no_tensorrt_gpu() -> str:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"tensorrt does not import ({type(e).__name__}); TensorRT is not installable here"
    return "" if torch.cuda.is_available() else "tensorrt imports but there is no CUDA device"


@pytest.mark.gpu
@pytest.mark.skipif(bool(_no_tensorrt_gpu()), reason=_no_tensorrt_gpu() or "n/a")
@pytest.mark.parametrize("which, decode", [("teacher", "dark"), ("teacher", "window"),
                                           ("student", "regression")])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_builds_the_exported_model(tmp_path: Path, which: str, decode: str,
                                            precision: str, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    """TensorRT builds what export writes (heatmap teacher with DARK and with window decode,
    regression student) and agrees with ONNX Runtime on it; an FP16 build on TensorRT 10 keeps
    the decode's layers in FP32."""
    import logging
    import re

    import tensorrt as trt

    caplog.set_level(logging.INFO, logger="tsal_runtime")
    p = tmp_path / "ckpt.pt"
    make_checkpoint(p)
    if decode == "window":
        ck = torch.load(p, weights_only=True)
        ck["config"]["model"]["decode"] = "window"
        torch.save(ck, p)
    out = tmp_path / "export"
    export(p, out, which=which)
    spec = load_spec(out)
    trt_eng = make_engine("tensorrt", spec, precision=precision, cache_dir=tmp_path / "trt",
                          max_batch=16)
    if precision == "fp16" and int(trt.__version__.split(".")[0]) < 11:
        kept = re.search(r"TensorRT FP16: (\d+) decode layer\(s\) kept in FP32", caplog.text)
        assert kept and int(kept.group(1)) > 0, caplog.text[-2000:]
    x = np.random.default_rng(0).integers(0, 256, (7, SIZE, SIZE, 3), dtype=np.uint8)
    lm, sc = trt_eng.run(x)
    ref_lm, ref_sc = make_engine("onnxruntime", spec, device="cpu").run(x)
    tol = 2e-2 if precision == "fp16" else 1e-3  # normalised crop coordinates
    assert lm.shape == ref_lm.shape and np.isfinite(lm).all() and np.isfinite(sc).all()
    # a random-init model's flat heatmaps hold near-ties, where another summation order may pick
    # another cell: nearly every point must agree, not every one
    err = np.abs(lm - ref_lm).max(axis=-1)
    assert np.mean(err < tol) >= 0.95 and np.median(err) < tol / 4, (np.mean(err < tol),
                                                                       np.median(err))


def _tensors_off(module: torch.nn.Module, device: str) -> list[str]:
    """Every tensor the module holds (parameters, buffers and plain tensor attributes such as
    torch.export's lifted constants) that is not on ``device``."""
    off = []
    for name, mod in module.named_modules():
        held = [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False),
                *((k, v) for k, v in vars(mod).items() if isinstance(v, torch.Tensor))]
        off += [f"{name}.{k}" for k, v in held if v.device.type != device]
    return off


@pytest.mark.slow
def test_torch_program_runs_wholly_on_another_device(smoke_teacher_export, monkeypatch) -> None:
    """The torch engine's CUDA path without a GPU: the exported DARK teacher prepared for the
    'meta' device holds no tensor anywhere else (its lifted constant ``tensor([-1, 0, 1])`` is
    neither a parameter nor a buffer, and the blur operator's ``.to(device=cpu)`` is baked into
    the graph) and runs there; also where torch has no ``move_to_device_pass``."""
    from tsal_runtime.engines.torch_engine import prepare_program

    _, out, _ = smoke_teacher_export
    x = torch.zeros((3, SIZE, SIZE, 3), dtype=torch.uint8, device="meta")
    naive = torch.export.load(str(out / "model.pt2")).module().to("meta")
    assert _tensors_off(naive, "meta")  # what .to() alone leaves behind
    for fallback in (False, True):
        if fallback:  # `from torch.export.passes import ...` raises ImportError
            monkeypatch.setitem(sys.modules, "torch.export.passes", None)
        module = prepare_program(torch.export.load(str(out / "model.pt2")), "meta",
                                 autocast=False)
        assert _tensors_off(module, "meta") == [], fallback
        lm, sc = module(x)
        assert lm.device.type == "meta" and tuple(lm.shape) == (3, 68, 2), fallback
        assert tuple(sc.shape) == (3, 68)


@pytest.mark.slow
def test_torch_program_under_fp16_autocast_matches_fp32(smoke_teacher_export) -> None:
    """The torch engine's CUDA fp16 path on the CPU's autocast: the exported teacher runs under
    it (export's float32 dtype checks removed) and its landmarks on real face crops are the fp32
    program's to a small fraction of a pixel, in float32, never NaN."""
    from tsal_runtime.engines.torch_engine import prepare_program
    from tsal_runtime.geometry import extract_crops

    from tsal_dist.data.formats import read_list
    from tsal_dist.data.lists import resolve_data

    ckpt, out, _ = smoke_teacher_export
    spec = load_spec(out)
    cfg = ExperimentConfig.from_dict(torch.load(ckpt, weights_only=True)["config"])
    crops = []
    for e in read_list(resolve_data(cfg).eval[0])[:48]:
        import cv2

        img = cv2.cvtColor(cv2.imread(e.image), cv2.COLOR_BGR2RGB)
        c, _ = extract_crops(img, np.array([e.box]), spec.input_size, spec.crop_expand,
                             spec.border_value, spec.antialias)
        crops.append(c[0])
    x = torch.from_numpy(np.stack(crops))
    ref, _ = prepare_program(torch.export.load(str(out / "model.pt2")), "cpu", False)(x)
    plain = torch.export.load(str(out / "model.pt2")).module()
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(RuntimeError,
                                                                    match="dtype mismatch"):
        plain(x)  # what the engine ran before: export's checks reject autocast's fp16
    module = prepare_program(torch.export.load(str(out / "model.pt2")), "cpu", autocast=True)
    with torch.autocast("cpu", dtype=torch.float16):
        lm, sc = module(x)
    assert lm.dtype == torch.float32 and torch.isfinite(lm).all() and torch.isfinite(sc).all()
    err = (lm - ref).abs().amax(-1) * spec.input_size  # crop px
    assert err.median() < 0.05 and torch.quantile(err, 0.99) < 0.5, (err.median(), err.max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_engine_on_cuda_matches_onnxruntime(tmp_path: Path, precision: str) -> None:
    """The torch engine on CUDA (the program moved to the GPU, fp16 autocast, CUDA graphs per
    batch bucket, and the eager path past the largest bucket) agrees with ONNX Runtime on the
    exported DARK teacher."""
    p = tmp_path / "ckpt.pt"
    make_checkpoint(p)
    out = tmp_path / "export"
    export(p, out, which="teacher")
    spec = load_spec(out)
    eng = make_engine("torch", spec, device="cuda", precision=precision, max_batch=8)
    assert eng.precision == precision and eng.device == "cuda"
    ref = make_engine("onnxruntime", spec, device="cpu")
    rng = np.random.default_rng(0)
    tol = 2e-2 if precision == "fp16" else 1e-3  # normalised crop coordinates
    for n in (3, 3, 8, 13):  # a bucket captured, replayed, the largest bucket, eager
        x = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
        lm, sc = eng.run(x)
        ref_lm, ref_sc = ref.run(x)
        assert lm.dtype == np.float32 and lm.shape == ref_lm.shape and np.isfinite(lm).all()
        # near-ties of a random-init model's flat heatmaps (see the TensorRT test)
        err = np.abs(lm - ref_lm).max(axis=-1)
        assert np.mean(err < tol) >= 0.95 and np.median(err) < tol / 4, (n, np.mean(err < tol))
        assert np.abs(sc - ref_sc).max() < 10 * tol
