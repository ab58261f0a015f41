"""What every Ray Train worker of a distillation runs: rebuild the config, run the KD loop.

Fault tolerance: every phase resumes from its newest checkpoint in the run folder (shared
storage), so a restarted worker group continues where the crashed one stopped; rank 0 attaches a
pointer to the student checkpoints it reports (the weights stay in the run folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import torch

from tsal_dist.distributed.worker import pointer_reporter
from tsal_dist.loop.distill_loop import DistillConfig, run_distill
from tsal_dist.loop.loop import WorkerContext


def distill_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"cfg": DistillConfig.to_dict(), "run_dir": str}``."""
    cfg = DistillConfig.from_dict(config["cfg"])
    ctx_ray = ray.train.get_context()
    rank, world = ctx_ray.get_world_rank(), ctx_ray.get_world_size()
    device = (ray.train.torch.get_device() if cfg.experiment.scaling.use_gpu
              else torch.device("cpu"))
    ctx = WorkerContext(rank=rank, world_size=world, device=device,
                        cpus=cfg.experiment.scaling.cpus_per_worker)

    run_distill(cfg, run_dir=Path(config["run_dir"]), ctx=ctx, reporter=pointer_reporter(rank),
                progress=rank == 0)
