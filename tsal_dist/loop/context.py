"""What a loop knows about where it runs, and where its progress goes: the same in one process,
under torchrun and inside Ray Train workers (``tsal_dist.distributed`` fills both in).

What does not belong here: the loops themselves (``loop.py``, ``distill_loop.py``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from tsal_dist.config import ScalingConfig, TrainConfig

__all__ = ["WorkerContext", "Reporter", "local_context", "no_report", "torch_settings",
           "with_torch_settings"]

# (metrics of this report, checkpoint written at this step or None); every rank calls it the
# same number of times (Ray Train's report is a collective)
Reporter = Callable[[dict[str, Any], "Path | None"], None]


def no_report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """Reporter for one-process runs: metrics.jsonl already holds everything."""


CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"


@contextlib.contextmanager
def torch_settings(train: TrainConfig) -> Iterator[None]:
    """A run's process-wide torch settings for the length of the run, restored after it.

    ``train.torch_threads`` (intra-op threads; 0 = leave as is) and ``train.deterministic``
    (deterministic kernels, warn-only where torch has none; on CUDA also the cuBLAS workspace that
    deterministic matmuls need, ``CUBLAS_WORKSPACE_CONFIG``, unless the user set one: cuBLAS
    reads it when the first CUDA matmul creates its handle). In a worker process they die with
    it; called in-process (local runs, the benchmarks, a notebook), the caller gets its own
    thread count and determinism mode back, whatever the run ended with.
    """
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if train.torch_threads:
        torch.set_num_threads(train.torch_threads)
    cublas = os.environ.get(CUBLAS_WORKSPACE)
    if train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault(CUBLAS_WORKSPACE, ":4096:8")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        if cublas is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def with_torch_settings(train_of: Callable[[Any], TrainConfig]
                        ) -> Callable[[Callable], Callable]:
    """Decorate a loop: its first argument's ``train_of(config)`` section sets
    :func:`torch_settings` for the call."""
    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        first = next(iter(sig.parameters))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with torch_settings(train_of(sig.bind(*args, **kwargs).arguments[first])):
                return fn(*args, **kwargs)
        return wrapper
    return deco


@dataclass(frozen=True)
class WorkerContext:
    """This worker's place in the group and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    cpus: float = 0.0  # CPUs this worker may use (Ray's cpus_per_worker); 0 = the machine's

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()


def local_context(scaling: ScalingConfig) -> WorkerContext:
    """The one-process context of ``--local``: the current CUDA device when the config trains on
    GPUs (``scaling.use_gpu``), else the CPU.

    Raises:
        ConfigError: ``scaling.use_gpu`` where torch sees no CUDA device (the run would otherwise
            go on the CPU, fp16 autocast included).
    """
    if not scaling.use_gpu:
        return WorkerContext()
    if not torch.cuda.is_available():
        from tsal_dist.config import ConfigError

        raise ConfigError("scaling.use_gpu: true, but torch sees no CUDA device for --local "
                          "(set scaling.use_gpu=false to train on the CPU)")
    return WorkerContext(device=torch.device("cuda", torch.cuda.current_device()))
