"""TensorRT engine (imported lazily; NOT verified here -- TensorRT cannot be installed on our
machines, see docs/runtime.md; its tests skip with the reason where ``tensorrt`` does not
import).

- Builds a serialized engine from model.onnx with one optimisation profile for the batch range
  [1, max_batch] (opt = ``opt_batch``) in FP32 or FP16, and caches it on disk under
  ``cache_dir/<key>.engine`` where key = sha256 of (onnx sha256, TensorRT version, CUDA version,
  GPU name, compute capability, precision, profile shapes). A timing cache sits next to it.
- TensorRT 10: FP16 through ``BuilderFlag.FP16``. TensorRT 11 removed weak typing (no FP16 flag):
  FP16 goes through ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``,
  fp16 with fp32 I/O kept) and a strongly typed build; without ModelOpt ``fp16`` is refused.
- FP16 is for the network, not for the decode: every layer downstream of the last convolution
  (the heatmap's softmax/log/DARK or window decode, a regressor's head) stays FP32 (TensorRT 10:
  layer precision constraints; TensorRT 11: those ONNX nodes excluded from AutoCast), since the
  decode's small epsilons and pixel-scale sums are below FP16's resolution.
- Name-based I/O (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) on a CUDA
  stream of the engine's own (TensorRT synchronises extra on the legacy default stream); device
  buffers are torch CUDA tensors when torch has CUDA, else cuda-bindings allocations, with every
  CUDA call's status checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tsal_runtime.engines import check_crops
from tsal_runtime.errors import EngineError
from tsal_runtime.spec import ModelSpec, sha256_file

log = logging.getLogger("tsal_runtime")


def default_cache_dir() -> Path:
    return Path(os.environ.get("TSAL_RUNTIME_CACHE", "~/.cache/tsal_runtime")).expanduser() / "trt"


def engine_cache_key(onnx_sha256: str, trt_version: str, cuda_version: str, gpu_name: str,
                     compute_capability: tuple[int, int], precision: str,
                     profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]) -> str:
    """Stable cache key of one built engine (pure function; 24 hex chars).

    Every input that makes a serialized engine non-portable is part of the key (a plan built
    by one TensorRT version, CUDA version or GPU model is not valid on another).
    """
    blob = json.dumps({"onnx": onnx_sha256, "trt": trt_version, "cuda": cuda_version,
                       "gpu": gpu_name, "cc": list(compute_capability), "precision": precision,
                       "profile": [list(p) for p in profile]}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def trt_major(version: str) -> int:
    """Major version number from ``trt.__version__`` ("10.13.0.35" -> 10)."""
    return int(version.split(".")[0])


def downstream_of_last(nodes: Sequence[tuple[Sequence[str], Sequence[str]]],
                       anchors: Sequence[int]) -> list[int]:
    """Indices of the nodes that depend on the last anchor's outputs (the anchor excluded).

    Args:
        nodes: (input names, output names) per node, in topological order (as ONNX graphs and
            TensorRT networks keep them).
        anchors: indices of the anchor nodes (convolutions); none: nothing is downstream.
    """
    if not anchors:
        return []
    last = max(anchors)
    live = set(nodes[last][1])
    out = []
    for i in range(last + 1, len(nodes)):
        ins, outs = nodes[i]
        if live.intersection(ins):
            out.append(i)
            live.update(outs)
    return out


def onnx_decode_nodes(model: Any) -> list[str]:
    """Names of an ONNX graph's nodes downstream of its last Conv: the decode (pure function of
    the ModelProto; the nodes that AutoCast must leave in FP32)."""
    nodes = list(model.graph.node)
    idx = downstream_of_last([(list(n.input), list(n.output)) for n in nodes],
                             [i for i, n in enumerate(nodes) if n.op_type == "Conv"])
    return [nodes[i].name for i in idx]


def keep_decode_fp32(network: Any, trt: Any) -> int:
    """TensorRT 10 with ``BuilderFlag.FP16``: constrain every layer downstream of the network's
    last convolution to FP32 (float outputs typed FP32; integer and bool outputs untouched).
    Returns the number of layers constrained."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]

    def names(tensors: Any) -> list[str]:
        return [t.name for t in tensors if t is not None]

    graph = [(names(ly.get_input(j) for j in range(ly.num_inputs)),
              names(ly.get_output(j) for j in range(ly.num_outputs))) for ly in layers]
    conv = [i for i, ly in enumerate(layers) if ly.type == trt.LayerType.CONVOLUTION]
    floats = (trt.float32, trt.float16)

    def float_outputs(ly: Any) -> list[int]:
        """Its float outputs; none where an output is a shape tensor (as Polygraphy leaves
        those layers alone: constraining them only draws warnings)."""
        outs = [ly.get_output(j) for j in range(ly.num_outputs)]
        if not all(getattr(t, "is_execution_tensor", True) for t in outs):
            return []
        return [j for j, t in enumerate(outs) if t.dtype in floats]

    chosen = [i for i in downstream_of_last(graph, conv) if float_outputs(layers[i])]
    # the constants the decode reads (its epsilons, pixel grids): weakly typed, they would be
    # stored in FP16 even where the layer reading them runs in FP32
    read = {name for i in chosen for name in graph[i][0]}
    chosen += [i for i, ly in enumerate(layers)
               if ly.type == trt.LayerType.CONSTANT and set(graph[i][1]) & read
               and float_outputs(ly)]
    for i in chosen:
        ly = layers[i]
        ly.precision = trt.float32
        for j in float_outputs(ly):
            ly.set_output_type(j, trt.float32)
    return len(chosen)


def cuda_check(result: Any, what: str) -> Any:
    """A cuda-bindings call's ``(status, *values)``: its value(s), or EngineError naming the call
    and the status (the calls report errors in their results, never by raising)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA {what} failed: {getattr(err, 'name', int(err))}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class TensorRTEngine:
    """Args:
        spec: model spec.
        precision: "fp16" or "fp32".
        max_batch / opt_batch: optimisation profile (min batch is 1).
        cache_dir: engine cache folder (default ``$TSAL_RUNTIME_CACHE/trt`` or ~/.cache/...).
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, spec: ModelSpec, precision: str = "fp16", max_batch: int = 64,
                 opt_batch: int = 4, cache_dir: str | os.PathLike[str] | None = None) -> None:
        try:
            import tensorrt as trt
        except Exception as e:  # noqa: BLE001 - a broken install raises OSError/ImportError
            raise EngineError(f"engine 'tensorrt' unavailable: tensorrt does not import "
                              f"({type(e).__name__}: {str(e)[:100]})") from None
        if precision not in ("fp16", "fp32"):
            raise EngineError(f"precision must be fp16 or fp32, got {precision!r}")
        self._trt, self.spec, self.precision = trt, spec, precision
        if precision == "fp16" and trt_major(trt.__version__) >= 11 and not self._has_autocast():
            # never build FP32 silently when FP16 was asked for: the user would measure the
            # wrong engine. TensorRT 11 networks are strongly typed (no FP16 builder flag); the
            # FP16 types must come from the ONNX graph, which ModelOpt AutoCast rewrites.
            raise EngineError(f"--precision fp16 on TensorRT {trt.__version__} needs ModelOpt "
                              "AutoCast to make the graph FP16 (pip install "
                              "'nvidia-modelopt[onnx]>=0.33'); or pass --precision fp32")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._torch = self._torch_cuda()
        gpu_name, cc, cuda_ver = self._gpu_info()
        s = spec.input_size
        profile = ((1, s, s, 3), (min(opt_batch, max_batch), s, s, 3), (max_batch, s, s, 3))
        self.max_batch = max_batch
        key = engine_cache_key(sha256_file(spec.onnx_path), trt.__version__, cuda_ver, gpu_name,
                               cc, self.precision, profile)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        self.engine_path = cache / f"{key}.engine"
        if self.engine_path.is_file():
            log.info("TensorRT engine from cache %s", self.engine_path)
            data = self.engine_path.read_bytes()
        else:
            log.info("building TensorRT %s engine (%s), cached at %s", self.precision,
                     trt.__version__, self.engine_path)
            # keyed like the engines: a timing cache is only valid for one TensorRT and GPU
            tkey = engine_cache_key("timing", trt.__version__, cuda_ver, gpu_name, cc,
                                    "any", ((0,), (0,), (0,)))
            data = self._build(profile, cache / f"timing-{tkey}.cache")
            _atomic_write(self.engine_path, data)
        runtime = trt.Runtime(self._logger)
        self._engine = runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise EngineError(f"{self.engine_path}: TensorRT cannot deserialize the engine")
        self._ctx = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names
                        if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names
                         if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if self._inputs != [spec.input_name]:
            raise EngineError(f"engine inputs {self._inputs} != [{spec.input_name!r}]")
        wrong = [n for n in self._outputs if self._engine.get_tensor_dtype(n) != trt.float32]
        if wrong:  # the output buffers are float32
            raise EngineError(f"{self.engine_path}: outputs {wrong} are not float32")
        # a stream of its own: on the legacy default stream enqueueV3 synchronises extra
        if self._torch is not None:
            self._stream = self._torch.cuda.Stream()
        else:
            from cuda.bindings import runtime as cudart

            self._stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    # -- environment -----------------------------------------------------------------------
    @staticmethod
    def _torch_cuda() -> Any:
        try:
            import torch
        except ImportError:
            return None
        return torch if torch.cuda.is_available() else None

    def _gpu_info(self) -> tuple[str, tuple[int, int], str]:
        """(name, compute capability, CUDA version) of the device the engine runs on (the
        current one: CUDA_VISIBLE_DEVICES chooses it), for the cache keys."""
        if self._torch is not None:
            t = self._torch
            dev = t.cuda.current_device()
            return (t.cuda.get_device_name(dev), tuple(t.cuda.get_device_capability(dev)),
                    str(t.version.cuda))
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise EngineError("engine 'tensorrt' needs device buffers: torch with CUDA or "
                              "cuda-bindings of TensorRT's CUDA major version (pip install "
                              "'cuda-bindings>=12,<13' beside tensorrt-cu12)") from None
        dev = cuda_check(cudart.cudaGetDevice(), "cudaGetDevice (no CUDA device?)")
        prop = cuda_check(cudart.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
        ver = cuda_check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip("\x00"), (prop.major, prop.minor), str(ver)

    @staticmethod
    def _has_autocast() -> bool:
        try:
            from modelopt.onnx.autocast import convert_to_mixed_precision  # noqa: F401
        except Exception:  # noqa: BLE001
            return False
        return True

    # -- build -----------------------------------------------------------------------------
    def _onnx_bytes(self) -> bytes:
        trt = self._trt
        if self.precision == "fp16" and trt_major(trt.__version__) >= 11:
            import onnx
            from modelopt.onnx.autocast import convert_to_mixed_precision

            graph = onnx.load(str(self.spec.onnx_path))
            for i, node in enumerate(graph.graph.node):  # AutoCast renames unnamed nodes:
                node.name = node.name or f"tsal_node_{i}"  # name them so they can be excluded
            keep = onnx_decode_nodes(graph)
            with tempfile.TemporaryDirectory() as tmp:
                named = Path(tmp) / "model.onnx"
                onnx.save(graph, str(named))
                model = convert_to_mixed_precision(
                    onnx_path=str(named), low_precision_type="fp16", keep_io_types=True,
                    nodes_to_exclude=[f"^{re.escape(n)}$" for n in keep])
            return model.SerializeToString()
        return self.spec.onnx_path.read_bytes()

    def _build(self, profile: tuple[tuple[int, ...], ...], timing_path: Path) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 0
        strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if trt_major(trt.__version__) >= 11 and strongly is not None:
            flags |= 1 << int(strongly)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(self._onnx_bytes(), path=str(self.spec.onnx_path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{self.spec.onnx_path}: TensorRT ONNX parser failed: {errs[:300]}")
        config = builder.create_builder_config()
        if self.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default: fp32 means FP32
        if self.precision == "fp16" and trt_major(trt.__version__) < 11:
            config.set_flag(trt.BuilderFlag.FP16)
            kept = keep_decode_fp32(network, trt)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            log.info("TensorRT FP16: %d decode layer(s) kept in FP32", kept)
        prof = builder.create_optimization_profile()
        prof.set_shape(self.spec.input_name, *profile)
        config.add_optimization_profile(prof)
        cache_bytes = timing_path.read_bytes() if timing_path.is_file() else b""
        timing = config.create_timing_cache(cache_bytes)
        if timing is None or not config.set_timing_cache(timing, ignore_mismatch=False):
            # a damaged or foreign cache: build without it (slower), and replace it afterwards
            log.warning("%s: TensorRT rejected this timing cache; building without it",
                        timing_path)
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, ignore_mismatch=True)
        data = builder.build_serialized_network(network, config)
        if data is None:
            raise EngineError(f"{self.spec.onnx_path}: TensorRT engine build failed")
        _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(data)

    # -- run -------------------------------------------------------------------------------
    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        crops = check_crops(crops, self.spec)
        n, k = len(crops), self.spec.num_landmarks
        if n == 0:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        if n > self.max_batch:  # outside the profile: split
            parts = [self.run(crops[i:i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        self._ctx.set_input_shape(self.spec.input_name, crops.shape)
        if self._torch is not None:
            return self._run_torch(crops)
        return self._run_cudart(crops)

    def _run_torch(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.cuda.stream(self._stream):  # the copies and the engine on one stream
            inp = torch.from_numpy(crops).cuda(non_blocking=True)
            self._ctx.set_tensor_address(self.spec.input_name, inp.data_ptr())
            outs = {}
            for name in self._outputs:
                shape = tuple(self._ctx.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
                self._ctx.set_tensor_address(name, outs[name].data_ptr())
            if not self._ctx.execute_async_v3(self._stream.cuda_stream):
                raise EngineError("TensorRT execute_async_v3 failed")
            self._stream.synchronize()
            lm, sc = self.spec.output_names
            return outs[lm].cpu().numpy(), outs[sc].cpu().numpy()

    def _run_cudart(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from cuda.bindings import runtime as cudart

        h2d, d2h = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        ptrs: list[int] = []
        try:
            dinp = cuda_check(cudart.cudaMalloc(crops.nbytes), "cudaMalloc")
            ptrs.append(dinp)
            cuda_check(cudart.cudaMemcpy(dinp, crops.ctypes.data, crops.nbytes, h2d),
                       "cudaMemcpy (input)")
            self._ctx.set_tensor_address(self.spec.input_name, int(dinp))
            host = {}
            for name in self._outputs:
                arr = np.empty(tuple(self._ctx.get_tensor_shape(name)), dtype=np.float32)
                d = cuda_check(cudart.cudaMalloc(arr.nbytes), "cudaMalloc")
                ptrs.append(d)
                host[name] = (arr, d)
                self._ctx.set_tensor_address(name, int(d))
            if not self._ctx.execute_async_v3(int(self._stream)):
                raise EngineError("TensorRT execute_async_v3 failed")
            cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            for arr, d in host.values():
                cuda_check(cudart.cudaMemcpy(arr.ctypes.data, d, arr.nbytes, d2h),
                           "cudaMemcpy (output)")
        finally:
            for p in ptrs:
                cudart.cudaFree(p)  # its status cannot change the result any more
        lm, sc = self.spec.output_names
        return host[lm][0], host[sc][0]
