"""What a loop knows about where it runs, and where its progress goes: the same in one process,
under torchrun and inside Ray Train workers (``tsal_dist.distributed`` fills both in).

What does not belong here: the loops themselves (``loop.py``, ``distill_loop.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

__all__ = ["WorkerContext", "Reporter", "no_report"]

# (metrics of this report, checkpoint written at this step or None); every rank calls it the
# same number of times (Ray Train's report is a collective)
Reporter = Callable[[dict[str, Any], "Path | None"], None]


def no_report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """Reporter for one-process runs: metrics.jsonl already holds everything."""


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
