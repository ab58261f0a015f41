"""torch engine: runs ``model.pt2``, the ``torch.export`` ExportedProgram written by
``tsal_dist.export`` next to model.onnx (the same uint8 NHWC crop -> landmarks program the ONNX
was exported from). It needs torch but not tsal_dist: the program is self-contained.

On CUDA it runs under fp16 autocast (``precision="fp16"``, default; "fp32" to disable) and replays
CUDA graphs captured per batch bucket (1, 2, 4, ..., max_batch; batches are zero-padded up to the
bucket). On CPU it runs the program as is in fp32.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tsal_runtime.engines import check_crops
from tsal_runtime.errors import EngineError, SpecError
from tsal_runtime.spec import ModelSpec, check_pt2_pinned

log = logging.getLogger("tsal_runtime")


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two up to and including ``max_batch`` (which is appended if not a power)."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(max_batch)
    return out


def _graphs(module: Any) -> list[Any]:
    return [m for m in module.modules() if getattr(m, "graph", None) is not None]


def _retarget_device(module: Any, device: Any) -> Any:
    """Rewrite the nodes that torch.export baked to the export device so the program runs on
    ``device``: tensor-creating calls (``torch.arange(..., device=cpu)``: a ``device`` keyword)
    and ``aten.to.device`` (``x.to(device=cpu)``: the device is its second positional argument).
    ``move_to_device_pass`` does the same on torch versions that have it; this covers the rest."""
    import torch

    to_device = torch.ops.aten.to.device
    for gm in _graphs(module):
        changed = False
        for node in gm.graph.nodes:
            dev = node.kwargs.get("device") if node.kwargs else None
            if dev is not None and str(dev) != str(device):
                node.update_kwarg("device", device)
                changed = True
            if (node.op == "call_function" and node.target is to_device and len(node.args) > 1
                    and str(node.args[1]) != str(device)):
                node.update_arg(1, device)
                changed = True
        if changed:
            gm.recompile()
    return module


def _drop_dtype_asserts(module: Any) -> Any:
    """Remove the ``aten._assert_tensor_metadata`` checks torch.export puts before every
    ``.to()``: they pin the dtypes seen at export (float32), which autocast changes on purpose
    (torch's own ``_RemoveRuntimeAssertionsPass`` removes them the same way)."""
    import torch

    target = torch.ops.aten._assert_tensor_metadata.default
    for gm in _graphs(module):
        dead = [n for n in gm.graph.nodes
                if n.op == "call_function" and n.target is target and not n.users]
        for n in dead:
            gm.graph.erase_node(n)
        if dead:
            gm.recompile()
    return module


def prepare_program(ep: Any, device: str, autocast: bool) -> Any:
    """The callable module of ExportedProgram ``ep`` on ``device``, every tensor of it there:
    parameters and buffers, the lifted constants (``torch.tensor([-1, 0, 1])`` in the DARK
    decode is neither) and the devices baked into the graph (:func:`_retarget_device`); with
    ``autocast``, without export's dtype checks (:func:`_drop_dtype_asserts`)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # export's device checks compare exactly
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cpu":
        try:
            from torch.export.passes import move_to_device_pass
        except ImportError:  # older torch: the constants are moved one by one below
            move_to_device_pass = None
        if move_to_device_pass is not None:
            ep = move_to_device_pass(ep, str(dev))
    module = ep.module()
    if dev.type != "cpu":
        module = _retarget_device(module.to(dev), dev)
        for gm in module.modules():  # lifted constants are plain attributes: .to() skips them
            for name, value in list(vars(gm).items()):
                if isinstance(value, torch.Tensor) and value.device != dev:
                    setattr(gm, name, value.to(dev))
    if autocast:
        module = _drop_dtype_asserts(module)
    return module


class TorchEngine:
    """Args:
        spec: model spec (reads ``spec.pt2_path``).
        device: "auto" (CUDA if available), "cpu" or "cuda".
        precision: "fp16" or "fp32" (CUDA only; CPU is always fp32).
        cuda_graphs: capture/replay CUDA graphs on CUDA.
        max_batch: largest batch a CUDA graph is captured for; larger batches run eagerly.
        threads: torch CPU threads (0 = leave as is).
    """

    name = "torch"

    def __init__(self, spec: ModelSpec, device: str = "auto", precision: str = "fp16",
                 cuda_graphs: bool = True, max_batch: int = 64, threads: int = 0) -> None:
        try:
            import torch
        except ImportError:
            raise EngineError("engine 'torch' needs torch: pip install torch") from None
        if not spec.pt2_path.is_file():
            raise EngineError(f"{spec.pt2_path}: not found (the torch engine runs the "
                              f"ExportedProgram written by tsal_dist.export)")
        if precision not in ("fp16", "fp32"):
            raise EngineError(f"precision must be fp16 or fp32, got {precision!r}")
        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("engine 'torch' on cuda: torch sees no CUDA device")
        try:
            check_pt2_pinned(spec)  # before anything opens the file
        except SpecError as e:
            raise EngineError(str(e)) from None
        self.precision = precision if device == "cuda" else "fp32"
        try:
            ep = torch.export.load(str(spec.pt2_path))
            module = prepare_program(ep, device, autocast=self.precision == "fp16")
        except Exception as e:  # noqa: BLE001
            raise EngineError(f"{spec.pt2_path}: torch cannot load it "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        self._torch = torch
        self.spec, self.device = spec, device
        self._module = module
        self._graphs: dict[int, tuple[Any, Any, Any, Any]] = {}
        self._use_graphs = cuda_graphs and device == "cuda"
        self._buckets = batch_buckets(max_batch)

    def _forward(self, x: Any) -> tuple[Any, Any]:
        torch = self._torch
        if self.device == "cuda" and self.precision == "fp16":
            with torch.autocast("cuda", dtype=torch.float16):
                lm, sc = self._module(x)
            return lm.float(), sc.float()
        return self._module(x)

    def _graph_for(self, b: int) -> tuple[Any, Any, Any, Any]:
        torch = self._torch
        if b not in self._graphs:
            s = self.spec.input_size
            static_in = torch.zeros((b, s, s, 3), dtype=torch.uint8, device="cuda")
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):  # warm-up outside the capture (cudnn autotune, allocations)
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out_lm, out_sc = self._forward(static_in)
            self._graphs[b] = (graph, static_in, out_lm, out_sc)
        return self._graphs[b]

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        crops = check_crops(crops, self.spec)
        n, k = len(crops), self.spec.num_landmarks
        if n == 0:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        x = torch.from_numpy(crops)
        if self._use_graphs and n <= self._buckets[-1]:
            b = next(bb for bb in self._buckets if bb >= n)
            graph, static_in, out_lm, out_sc = self._graph_for(b)
            static_in[:n].copy_(x, non_blocking=True)
            if n < b:
                static_in[n:].zero_()
            graph.replay()
            lm, sc = out_lm[:n], out_sc[:n]
        else:
            with torch.no_grad():
                lm, sc = self._forward(x.to(self.device))
        return (lm.detach().float().cpu().numpy().astype(np.float32, copy=False),
                sc.detach().float().cpu().numpy().astype(np.float32, copy=False))
