"""Launch a TSAL run on Ray Train: teacher actor + TorchTrainer of loop workers.

Starts a local Ray instance, or joins the cluster named by RAY_ADDRESS (what ``ray job submit``
sets). The run folder lives under ``run.output`` (a shared filesystem on multi-node clusters);
Ray's own bookkeeping goes to ``<run.output>/_ray``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from tsal_dist.config import ExperimentConfig, run_name_for
from tsal_dist.distributed.teacher_actor import start_teacher_actor
from tsal_dist.distributed.worker import train_loop_per_worker
from tsal_dist.loop.loop import resolve_data
from tsal_dist.teacher.server import versions_to_keep


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS's cluster if set, else start a local instance (no dashboard)."""
    if ray.is_initialized():
        return
    # Train V2 health checks every 2 s by default; shorter keeps report() cheap.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        # The dashboard hosts the State API that Train V2's PlacementGroupCleaner polls; without
        # it the cleaner cannot see a finished controller, and a finished trial's placement
        # group can linger and starve the next one (seen in sequential Tune sweeps).
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=True,
                 runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S":
                                           os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}})


def scaling_config(cfg: ExperimentConfig) -> ScalingConfig:
    s = cfg.scaling
    res: dict[str, float] = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        res["GPU"] = s.gpus_per_worker
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=res,
                         placement_strategy=s.placement_strategy)


def fit(cfg: ExperimentConfig, *, run_callbacks: list | None = None,
        storage_path: str | None = None, worker_env: dict[str, str] | None = None,
        train_fn: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train on Ray; return the run summary (evaluation of teacher and student, paths).

    Args:
        run_callbacks: Ray Train RunConfig callbacks (Tune's report callback).
        storage_path: Ray's bookkeeping folder (default ``run.storage_path``, else
            ``<run.output>/_ray``).
        worker_env: extra environment variables set in every training worker (debugging,
            fault injection).
        train_fn: the per-worker function (default ``train_loop_per_worker``; tests wrap it).
    """
    ensure_ray()
    name = run_name_for(cfg)
    out = Path(cfg.run.output).expanduser().resolve()
    run_dir = out / name
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    resolve_data(cfg)  # generate the synthetic dataset once, here, not in every worker
    # Keep the handle for the whole fit: a non-detached actor dies with its last handle.
    teacher = start_teacher_actor(run_name=name, mode=cfg.teacher.mode,
                        queue_length=cfg.teacher.queue_length, ema_decay=cfg.teacher.ema_decay,
                        keep_versions=versions_to_keep(cfg.teacher.max_staleness),
                        checkpoint_dir=str(run_dir / "checkpoints"))
    ray.get(teacher.ping.remote())  # fail here, clearly, if the actor cannot start
    trainer = TorchTrainer(
        train_fn or train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir), "run_name": name,
                           "env": dict(worker_env or {})},
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name, storage_path=storage_path or cfg.run.storage_path or str(out / "_ray"),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=run_callbacks or None),
    )
    result = trainer.fit()
    teacher_info = ray.get(teacher.info.remote())
    summary: dict[str, Any] = {"run_dir": str(run_dir), "name": name,
                               "metrics": result.metrics, "error": repr(result.error)
                               if result.error else None, "teacher_server": teacher_info}
    sp = run_dir / "eval" / "summary.json"
    if sp.is_file():
        summary["eval"] = json.loads(sp.read_text())
    return summary
