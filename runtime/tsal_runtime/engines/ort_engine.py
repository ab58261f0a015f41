"""ONNX Runtime engine: CUDA execution provider when onnxruntime-gpu provides it, else CPU."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tsal_runtime.engines import check_crops
from tsal_runtime.errors import EngineError
from tsal_runtime.spec import ModelSpec


def default_batch_threads() -> int:
    """``batch_threads`` of tsal-runtime's default: every core, at most 4 (past four cores a
    frame's few faces gain little from more threads)."""
    return min(os.cpu_count() or 1, 4)


class OrtEngine:
    """Runs model.onnx with onnxruntime.

    Args:
        spec: the model spec.
        device: "auto" (CUDA EP if present), "cpu" or "cuda".
        threads: intra-op threads (0 = onnxruntime's default: one per core).
        batch_threads: intra-op threads for batches of ``batch_from`` crops or more, run on a
            second session of the same model (0 = ``threads``: one session). On a CPU one face
            runs fastest on one thread (a second one costs more in hand-offs than it saves),
            while four and more faces a frame split well over the cores
            (benchmarks/results/runtime_fps.md, landmark model latency).
        batch_from: the batch size from which ``batch_threads`` apply.
        spin: let idle intra-op threads busy-wait for work (onnxruntime's default). Off here:
            spinning threads burn the cores that the asynchronous face detector and the frame
            loop need, for a gain of microseconds per call (benchmarks/results/runtime_fps.md).
    """

    name = "onnxruntime"

    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int = 0,
                 spin: bool = False, batch_threads: int = 0, batch_from: int = 2) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError("engine 'onnxruntime' needs: pip install onnxruntime "
                              "(or onnxruntime-gpu)") from None
        avail = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in avail:
            raise EngineError("onnxruntime has no CUDAExecutionProvider here "
                              "(install onnxruntime-gpu)")
        use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in avail
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        if threads < 0 or batch_threads < 0 or batch_from < 1:
            raise EngineError("onnxruntime: need threads >= 0, batch_threads >= 0, batch_from >= 1")

        def session(n_threads: int) -> "ort.InferenceSession":
            opts = ort.SessionOptions()
            if n_threads:
                opts.intra_op_num_threads = n_threads
                opts.inter_op_num_threads = 1
            if not spin:
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
            opts.log_severity_level = 3
            try:
                return ort.InferenceSession(str(spec.onnx_path), sess_options=opts,
                                            providers=providers)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise EngineError(f"{spec.onnx_path}: onnxruntime cannot load it "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None

        self._sess = session(threads)
        self.device = "cuda" if "CUDAExecutionProvider" in self._sess.get_providers() else "cpu"
        if device == "cuda" and self.device != "cuda":
            # onnxruntime drops a CUDA provider that cannot load (no cuDNN, a driver too old) with
            # no error and runs on the CPU: asked for CUDA, that is a failure, not a fallback
            raise EngineError(f"{spec.onnx_path}: onnxruntime's CUDAExecutionProvider did not "
                              "load (check the CUDA and cuDNN libraries onnxruntime-gpu needs; "
                              "device='auto' runs on the CPU instead)")
        # a second CPU session for large batches (on CUDA the threads do not matter)
        self._batch_sess = (session(batch_threads) if self.device == "cpu" and batch_threads
                            and batch_threads != threads else self._sess)
        self.threads, self.batch_threads, self.batch_from = threads, batch_threads, batch_from
        self.spec = spec
        self._outs = list(spec.output_names)

    def session_for(self, batch: int) -> Any:
        """The session a batch of ``batch`` crops runs on."""
        return self._batch_sess if batch >= self.batch_from else self._sess

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        crops = check_crops(crops, self.spec)
        k = self.spec.num_landmarks
        if len(crops) == 0:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        lm, sc = self.session_for(len(crops)).run(self._outs, {self.spec.input_name: crops})
        return np.asarray(lm, np.float32), np.asarray(sc, np.float32)
