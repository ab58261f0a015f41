"""Inference engines: one interface ``engine.run(crops) -> (landmarks, scores)``.

``crops`` uint8 (B, S, S, 3) RGB; ``landmarks`` float32 (B, K, 2) crop-normalised in [0, 1];
``scores`` float32 (B, K). ``make_engine("auto", spec)`` picks the fastest engine present:
TensorRT (GPU) > torch CUDA > ONNX Runtime CUDA > ONNX Runtime CPU, and logs which.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import Protocol

import numpy as np

from tsal_runtime.errors import EngineError
from tsal_runtime.spec import ModelSpec

log = logging.getLogger("tsal_runtime")

ENGINES = ("tensorrt", "onnxruntime", "torch")


class Engine(Protocol):
    """A loaded landmark model."""

    name: str
    device: str

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) -> (landmarks float32 (B, K, 2) normalised, scores (B, K))."""
        ...


def check_crops(crops: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Validate a crop batch against the spec; returns it C-contiguous."""
    s = spec.input_size
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
        raise ValueError(f"crops must be uint8 (B, {s}, {s}, 3), got {crops.dtype}{crops.shape}")
    return np.ascontiguousarray(crops)


def _cuda_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def auto_order() -> list[str]:
    """Engine names in the order ``auto`` tries them on this machine."""
    order = []
    if importlib.util.find_spec("tensorrt") is not None and _cuda_torch():
        order.append("tensorrt")
    if _cuda_torch():
        order.append("torch")
    order.append("onnxruntime")
    return order


def engine_class(name: str) -> type:
    """The class of engine ``name`` (imports its module, not its libraries).

    Raises:
        EngineError: unknown engine.
    """
    if name == "onnxruntime":
        from tsal_runtime.engines.ort_engine import OrtEngine

        return OrtEngine
    if name == "torch":
        from tsal_runtime.engines.torch_engine import TorchEngine

        return TorchEngine
    if name == "tensorrt":
        from tsal_runtime.engines.trt_engine import TensorRTEngine

        return TensorRTEngine
    raise EngineError(f"unknown engine {name!r} (choose auto, {', '.join(ENGINES)})")


def _options_for(name: str, options: dict[str, object]) -> dict[str, object]:
    """The options engine ``name`` takes (``auto`` hands each candidate its own: ``threads`` to
    onnxruntime and torch, ``precision`` to tensorrt and torch, ...)."""
    params = inspect.signature(engine_class(name).__init__).parameters
    return {k: v for k, v in options.items() if k in params}


def make_engine(name: str, spec: ModelSpec, **kwargs: object) -> Engine:
    """Load the model on engine ``name`` (auto | tensorrt | onnxruntime | torch).

    For ``auto`` every option goes to the candidates that take it (an option none of them takes
    is an error); a named engine takes exactly its own options.

    Raises:
        EngineError: unknown or unavailable engine (for auto: none loads).
        TypeError: an option no engine (or not the named one) takes.
    """
    if name == "auto":
        unknown = set(kwargs) - {k for c in ENGINES for k in _options_for(c, kwargs)}
        if unknown:
            raise TypeError(f"no engine takes the option(s) {', '.join(sorted(unknown))}")
        errors = []
        for cand in auto_order():
            try:
                eng = make_engine(cand, spec, **_options_for(cand, kwargs))
            except EngineError as e:
                errors.append(str(e))
                log.info("engine %s not usable: %s", cand, e)
                continue
            log.info("engine auto -> %s (%s)", eng.name, eng.device)
            return eng
        raise EngineError("no engine could load the model: " + "; ".join(errors))
    return engine_class(name)(spec, **kwargs)  # type: ignore[no-any-return]
