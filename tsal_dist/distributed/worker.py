"""What every Ray Train worker runs: rebuild the config, reach the teacher actor, run the loop."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

import ray.train
import torch

from tsal_dist.config import ExperimentConfig
from tsal_dist.distributed.teacher_actor import RayTeacherClient
from tsal_dist.loop.loop import WorkerContext, run


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"cfg": cfg.to_dict(), "run_dir": str, "run_name": str}``."""
    cfg = ExperimentConfig.from_dict(config["cfg"])
    ctx_ray = ray.train.get_context()
    rank, world = ctx_ray.get_world_rank(), ctx_ray.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    ctx = WorkerContext(rank=rank, world_size=world, device=device)
    client = RayTeacherClient(config["run_name"])
    run_dir = Path(config["run_dir"])

    # Resume point: Ray's restored checkpoint names our checkpoint file; else the run folder.
    resume: Any = "auto"
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            pointer = json.loads((Path(d) / "pointer.json").read_text())
        if Path(pointer["path"]).is_file():
            resume = Path(pointer["path"])

    def reporter(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        # Every rank must report the same number of times; only rank 0 attaches the checkpoint
        # (a tiny pointer: the weights already live in the run folder on shared storage).
        if checkpoint is not None and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "pointer.json").write_text(json.dumps(
                    {"path": str(checkpoint), "step": metrics["step"]}))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    run(cfg, run_dir=run_dir, ctx=ctx, teacher_client=client, reporter=reporter, resume=resume,
        progress=rank == 0, on_step=_fault_injector(rank))


def _fault_injector(rank: int) -> Callable[[int], None] | None:
    """Fault injection for the fault-tolerance tests (off unless the env vars are set).

    ``TSAL_FAULT_KILL_AT_STEP=N``, ``TSAL_FAULT_RANK=r`` and ``TSAL_FAULT_MARKER=path``: the first
    time rank r finishes step N it creates the marker and SIGKILLs its own process (a real crash:
    no cleanup, no exception), so the restarted group does not crash again.
    """
    at = os.environ.get("TSAL_FAULT_KILL_AT_STEP")
    marker = os.environ.get("TSAL_FAULT_MARKER")
    if not at or not marker or int(os.environ.get("TSAL_FAULT_RANK", "0")) != rank:
        return None

    def hook(step: int) -> None:
        if step == int(at) and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
