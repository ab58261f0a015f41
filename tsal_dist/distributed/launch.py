"""Launch a job on Ray Train: :func:`launch` is the one TorchTrainer of every job, used by
:func:`fit` (a TSAL run: teacher actor + loop workers; Tune trials too) and :func:`fit_distill`.

Starts a local Ray instance, or joins the cluster named by RAY_ADDRESS (what ``ray job submit``
sets). The run folder ``<run.output>/<run name>`` lives on a shared filesystem on multi-node
clusters; Ray's own bookkeeping goes to ``run.storage_path`` (default ``<run.output>/_ray``).
Exporting the finished network is the entry points' (``tsal_dist.train``, ``tsal_dist.distill``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from tsal_dist.config import DistillConfig, ExperimentConfig, run_name_for
from tsal_dist.data.lists import resolve_data
from tsal_dist.distributed.teacher_actor import start_teacher_actor
from tsal_dist.distributed.worker import distill_loop_per_worker, train_loop_per_worker
from tsal_dist.loop.distill_loop import ensure_asm, with_tough_from
from tsal_dist.loop.loop import teacher_server_args


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


def launch(train_fn: Callable[[dict[str, Any]], None], *, cfg: ExperimentConfig, name: str,
           run_dir: Path, loop_config: dict[str, Any], run_callbacks: list | None = None,
           storage_path: str | None = None) -> dict[str, Any]:
    """Run ``train_fn`` on a Ray Train worker group of ``cfg.scaling``, with ``cfg.run``'s
    failure and checkpoint policy; return the run summary (paths, Ray's last metrics and error,
    and ``<run>/eval/summary.json`` when the job wrote one).

    Args:
        loop_config: what every worker receives (``train_loop_config``).
        run_callbacks: Ray Train RunConfig callbacks (Tune's report callback).
        storage_path: Ray's bookkeeping folder (default ``run.storage_path``, else
            ``<run.output>/_ray``).
    """
    out = Path(cfg.run.output).expanduser().resolve()
    storage = storage_path or cfg.run.storage_path or str(out / "_ray")
    if "://" not in storage:  # Ray takes a local folder only as an absolute path
        storage = str(Path(storage).expanduser().resolve())
    trainer = TorchTrainer(
        train_fn, train_loop_config=loop_config, scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=run_callbacks or None),
    )
    result = trainer.fit()
    summary: dict[str, Any] = {"run_dir": str(run_dir), "name": name,
                               "metrics": result.metrics, "error": repr(result.error)
                               if result.error else None}
    sp = run_dir / "eval" / "summary.json"
    if sp.is_file():
        summary["eval"] = json.loads(sp.read_text())
    return summary


def fit(cfg: ExperimentConfig, *, run_callbacks: list | None = None,
        storage_path: str | None = None, worker_env: dict[str, str] | None = None,
        train_fn: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train on Ray; return the run summary (evaluation of teacher and student, paths).

    Args:
        run_callbacks, storage_path: see :func:`launch`.
        worker_env: extra environment variables set in every training worker (debugging,
            fault injection).
        train_fn: the per-worker function (default ``train_loop_per_worker``; tests wrap it).
    """
    ensure_ray()
    name = run_name_for(cfg)
    run_dir = Path(cfg.run.output).expanduser().resolve() / name
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    resolve_data(cfg)  # generate the synthetic dataset once, here, not in every worker
    # Keep the handle for the whole fit: a non-detached actor dies with its last handle.
    teacher = start_teacher_actor(run_name=name, checkpoint_dir=str(run_dir / "checkpoints"),
                                  **teacher_server_args(cfg.teacher))
    ray.get(teacher.ping.remote())  # fail here, clearly, if the actor cannot start
    summary = launch(train_fn or train_loop_per_worker, cfg=cfg, name=name, run_dir=run_dir,
                     loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir),
                                  "run_name": name, "env": dict(worker_env or {}),
                                  "cwd": os.getcwd()},
                     run_callbacks=run_callbacks, storage_path=storage_path)
    summary["teacher_server"] = ray.get(teacher.info.remote())
    return summary


def fit_distill(cfg: DistillConfig, *, run_callbacks: list | None = None,
                storage_path: str | None = None,
                worker_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Distil on Ray; return the run summary (evaluation of both teachers and the student).

    Args: as :func:`fit`.
    """
    e = cfg.experiment
    name = run_name_for(cfg)
    run_dir = Path(e.run.output).expanduser().resolve() / name
    # here, once: the synthetic data and the ASM, so that the workers do not race to make them
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_asm(with_tough_from(cfg)[0], run_dir)  # at the crop size the teachers use
    ensure_ray()
    return launch(distill_loop_per_worker, cfg=e, name=name, run_dir=run_dir,
                  loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir), "run_name": name,
                               "env": dict(worker_env or {}), "cwd": os.getcwd()},
                  run_callbacks=run_callbacks, storage_path=storage_path)
