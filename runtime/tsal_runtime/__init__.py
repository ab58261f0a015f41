"""tsal_runtime: real-time facial landmarking with an exported tsal_dist model.

Imports only numpy, OpenCV and (per engine, lazily) onnxruntime, torch or tensorrt. It never
imports tsal_dist, ray or deepspeed: everything model-specific comes from ``model.json``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
