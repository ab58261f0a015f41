import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import K, SIZE, const_shape

from tsal_runtime.engines import auto_order, make_engine
from tsal_runtime.errors import EngineError
from tsal_runtime.spec import load_spec, sha256_file


def crops(n: int, value: int = 51) -> np.ndarray:
    return np.full((n, SIZE, SIZE, 3), value, np.uint8)


def test_onnxruntime_engine(const_model: Path) -> None:
    eng = make_engine("onnxruntime", load_spec(const_model), threads=1)
    assert eng.device == "cpu"
    lm, sc = eng.run(crops(3))
    assert lm.shape == (3, K, 2) and lm.dtype == np.float32 and sc.shape == (3, K)
    assert np.allclose(lm, const_shape()[None]) and np.allclose(sc, 51 / 255)
    lm0, sc0 = eng.run(crops(0))
    assert lm0.shape == (0, K, 2) and sc0.shape == (0, K)
    with pytest.raises(ValueError, match="uint8"):
        eng.run(crops(1).astype(np.float32))


def test_auto_on_cpu_is_onnxruntime(const_model: Path) -> None:
    eng = make_engine("auto", load_spec(const_model))
    assert auto_order()[-1] == "onnxruntime"
    if "torch" not in auto_order():  # no CUDA here
        assert eng.name == "onnxruntime"
    with pytest.raises(EngineError, match="unknown engine"):
        make_engine("tflite", load_spec(const_model))


def test_onnxruntime_runs_large_batches_on_their_own_session(const_model: Path) -> None:
    eng = make_engine("onnxruntime", load_spec(const_model), threads=1, batch_threads=2,
                      batch_from=2)
    assert eng.session_for(1) is not eng.session_for(2)
    assert eng.session_for(2) is eng.session_for(8)
    x = np.stack([crops(1, v)[0] for v in (10, 60, 200)])
    lm, sc = eng.run(x)  # the batch session
    for i in range(3):  # the one-face session, face by face: the same numbers
        lm1, sc1 = eng.run(x[i:i + 1])
        assert np.array_equal(lm1[0], lm[i]) and np.array_equal(sc1[0], sc[i])
    assert np.allclose(sc[:, 0], [10 / 255, 60 / 255, 200 / 255])
    one = make_engine("onnxruntime", load_spec(const_model), threads=2, batch_threads=2)
    assert one.session_for(1) is one.session_for(4)  # same threads: one session
    with pytest.raises(EngineError, match="batch_from"):
        make_engine("onnxruntime", load_spec(const_model), batch_from=0)


def test_auto_hands_each_engine_its_own_options(const_model: Path) -> None:
    if "torch" in auto_order():
        pytest.skip("CUDA here: auto picks another engine")
    # precision is torch's / tensorrt's, threads and batch_threads reach onnxruntime
    eng = make_engine("auto", load_spec(const_model), precision="fp16", threads=1,
                      batch_threads=2)
    assert (eng.name, eng.threads, eng.batch_threads) == ("onnxruntime", 1, 2)
    with pytest.raises(TypeError, match="no engine takes the option"):
        make_engine("auto", load_spec(const_model), thread=1)


def write_const_pt2(path: Path) -> None:
    import torch

    shape = torch.from_numpy(const_shape())

    class Const(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m = x.float().mean(dim=(1, 2, 3)) / 255.0
            return (m * 0)[:, None, None] + shape, m[:, None] + torch.zeros(K)

    ex = torch.zeros((2, SIZE, SIZE, 3), dtype=torch.uint8)
    ep = torch.export.export(Const(), (ex,),
                             dynamic_shapes=({0: torch.export.Dim("b", min=1, max=64)},))
    torch.export.save(ep, str(path))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_engine_matches_onnxruntime(const_model: Path) -> None:
    spec = load_spec(const_model)
    with pytest.raises(EngineError, match="model.pt2: not found"):
        make_engine("torch", spec)
    write_const_pt2(spec.pt2_path)
    spec = dataclasses.replace(spec, pt2_sha256=sha256_file(spec.pt2_path))  # as export pins it
    t = make_engine("torch", spec, device="cpu")
    o = make_engine("onnxruntime", spec)
    x = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    for a, b in zip(t.run(x), o.run(x)):
        assert np.allclose(a, b, atol=1e-6)


def test_batch_buckets() -> None:
    from tsal_runtime.engines.torch_engine import batch_buckets

    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64] and batch_buckets(6) == [1, 2, 4, 6]


def test_trt_cache_key_is_sensitive_to_every_field() -> None:
    from tsal_runtime.engines.trt_engine import engine_cache_key, trt_major

    base = dict(onnx_sha256="a" * 64, trt_version="10.13.0", cuda_version="12.8",
                gpu_name="NVIDIA H100", compute_capability=(9, 0), precision="fp16",
                profile=((1, 64, 64, 3), (4, 64, 64, 3), (64, 64, 64, 3)))
    k0 = engine_cache_key(**base)
    assert k0 == engine_cache_key(**base) and len(k0) == 24
    changes = dict(onnx_sha256="b" * 64, trt_version="11.4.0", cuda_version="13.0",
                   gpu_name="NVIDIA H200", compute_capability=(9, 1), precision="fp32",
                   profile=((1, 64, 64, 3), (8, 64, 64, 3), (64, 64, 64, 3)))
    for key, value in changes.items():
        assert engine_cache_key(**{**base, key: value}) != k0, key
    assert trt_major("10.13.0.35") == 10 and trt_major("11.4.0.106") == 11


class _Tensor:
    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype = name, dtype.lstrip("~")
        self.is_execution_tensor = not dtype.startswith("~")  # "~": a shape tensor


class _Layer:
    """A TensorRT ILayer's surface that keep_decode_fp32 reads and writes."""

    def __init__(self, kind: str, ins: list[str], outs: list[tuple[str, str]]) -> None:
        self.type, self.name = kind, outs[0][0]
        self._ins = [_Tensor(n, "float32") for n in ins]
        self._outs = [_Tensor(n, d) for n, d in outs]
        self.num_inputs, self.num_outputs = len(ins), len(outs)
        self.precision = None
        self.typed: dict[int, str] = {}

    def get_input(self, j: int) -> _Tensor:
        return self._ins[j]

    def get_output(self, j: int) -> _Tensor:
        return self._outs[j]

    def set_output_type(self, j: int, dtype: str) -> None:
        self.typed[j] = dtype


def test_tensorrt_fp16_keeps_every_layer_after_the_last_convolution_in_fp32() -> None:
    """The decode (downstream of the heatmap's convolution) and the constants it reads are
    constrained to FP32; the convolutions, what does not depend on the heatmap (a shape computed
    from the input, a constant the network reads), shape-tensor layers and integer outputs
    (TopK's indices) are left to the FP16 build."""
    import types

    from tsal_runtime.engines.trt_engine import downstream_of_last, keep_decode_fp32

    trt = types.SimpleNamespace(
        LayerType=types.SimpleNamespace(CONVOLUTION="conv", CONSTANT="constant"),
        float32="float32", float16="float16")
    layers = [_Layer("constant", [], [("w_net", "float32")]),
              _Layer("conv", ["x", "w_net"], [("h1", "float32")]),
              _Layer("conv", ["h1"], [("heat", "float32")]),
              _Layer("shape", ["x"], [("shape", "int64")]),
              _Layer("constant", [], [("eps", "float32")]),
              _Layer("softmax", ["heat"], [("p", "float32")]),
              _Layer("topk", ["p"], [("v", "float32"), ("idx", "int32")]),
              _Layer("cast", ["idx"], [("f", "float32")]),
              _Layer("elementwise", ["f", "eps"], [("landmarks", "float32")]),
              _Layer("elementwise", ["shape"], [("unrelated", "float32")]),
              _Layer("shuffle", ["p"], [("dims", "~float32")])]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert keep_decode_fp32(network, trt) == 5
    kept = {ly.name for ly in layers if ly.precision == "float32"}
    assert kept == {"p", "v", "f", "landmarks", "eps"}
    assert layers[6].typed == {0: "float32"}  # TopK's int32 indices keep their type
    assert layers[4].typed == {0: "float32"}  # the decode's constant is stored in FP32
    assert downstream_of_last([(["x"], ["y"])], []) == []  # no convolution: nothing to keep


def test_cuda_status_is_checked() -> None:
    """cuda-bindings reports failures in its results: every call's status is read."""
    import enum

    from tsal_runtime.engines.trt_engine import cuda_check

    class Err(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    assert cuda_check((Err.cudaSuccess, 1234), "cudaMalloc") == 1234
    assert cuda_check((Err.cudaSuccess,), "cudaMemcpy") is None
    assert cuda_check((Err.cudaSuccess, 1, 2), "x") == (1, 2)
    with pytest.raises(EngineError, match="CUDA cudaMalloc failed: cudaErrorMemoryAllocation"):
        cuda_check((Err.cudaErrorMemoryAllocation, 0), "cudaMalloc")


def _trt_import_error() -> str:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"tensorrt does not import here ({type(e).__name__}); TensorRT is not installable"
    try:
        import torch

        if not torch.cuda.is_available():
            return "tensorrt imports but there is no CUDA device"
    except ImportError:
        pass
    return ""


@pytest.mark.gpu
@pytest.mark.skipif(bool(_trt_import_error()), reason=_trt_import_error() or "n/a")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime(const_model: Path, tmp_path: Path, precision: str) -> None:
    spec = load_spec(const_model)
    trt_eng = make_engine("tensorrt", spec, precision=precision, cache_dir=tmp_path, max_batch=8)
    x = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    ref = make_engine("onnxruntime", spec).run(x)
    for a, b in zip(trt_eng.run(x), ref):
        assert np.allclose(a, b, atol=2e-3 if precision == "fp16" else 1e-5)
    assert list(tmp_path.glob("*.engine"))  # cached; a second load reads the cache
    again = make_engine("tensorrt", spec, precision=precision, cache_dir=tmp_path, max_batch=8)
    assert again.engine_path == trt_eng.engine_path


def test_tensorrt_unavailable_is_a_clear_error(const_model: Path) -> None:
    if not _trt_import_error().startswith("tensorrt does not import"):
        pytest.skip("tensorrt imports here")
    with pytest.raises(EngineError, match="tensorrt does not import"):
        make_engine("tensorrt", load_spec(const_model))


def test_tensorrt11_fp16_without_autocast_fails_loudly(const_model: Path, monkeypatch) -> None:
    """TensorRT 11 has no FP16 builder flag: without ModelOpt AutoCast an fp16 request must be an
    error, never a silent FP32 engine (checked with a stand-in module: no TensorRT here)."""
    import sys
    import types

    from tsal_runtime.engines.trt_engine import TensorRTEngine

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.0.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "modelopt", None)  # AutoCast not installed
    with pytest.raises(EngineError, match="fp16 on TensorRT 11.0.0 needs ModelOpt") as e:
        TensorRTEngine(load_spec(const_model), precision="fp16")
    assert "\n" not in str(e.value)


def test_onnxruntime_asked_for_cuda_never_runs_on_the_cpu_silently(const_model: Path,
                                                                    monkeypatch) -> None:
    """onnxruntime drops a CUDA provider that fails to load (cuDNN missing) without an error;
    an engine asked for CUDA must say so instead of running on the CPU."""
    import onnxruntime as ort

    from tsal_runtime.engines.ort_engine import OrtEngine

    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession",  # what onnxruntime does when CUDA fails to load
                        lambda path, sess_options, providers: real(
                            path, sess_options=sess_options, providers=["CPUExecutionProvider"]))
    with pytest.raises(EngineError, match="CUDAExecutionProvider did not load"):
        OrtEngine(load_spec(const_model), device="cuda")
    assert OrtEngine(load_spec(const_model), device="auto").device == "cpu"
