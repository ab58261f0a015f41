"""What every Ray Train worker runs: rebuild the config, find its place in the group, run its loop
(TSAL training, reaching the teacher actor; or distillation), reporting through Ray Train.

Both jobs are launched by ``tsal_dist.distributed.launch.launch`` with
``train_loop_config = {"cfg": <config dict>, "run_dir": str, "run_name": str, "env": {...}}``.
Fault tolerance: every loop resumes from the newest checkpoint in the run folder (shared storage),
so a restarted worker group continues where the crashed one stopped.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ray.train
import torch

from tsal_dist.atomic import PLAIN, atomic_write_json
from tsal_dist.config import DistillConfig, ExperimentConfig, ScalingConfig
from tsal_dist.distributed.teacher_actor import RayTeacherClient
from tsal_dist.loop.context import WorkerContext
from tsal_dist.loop.distill_loop import distill
from tsal_dist.loop.loop import run


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry of a TSAL run: ``config["cfg"]`` is an ``ExperimentConfig`` dict;
    ``"env"``: extra environment variables for this worker (e.g. fault injection)."""
    run_worker(config)


def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Body of :func:`train_loop_per_worker`; returns this rank's loop summary."""
    _apply_env(config)
    cfg = ExperimentConfig.from_dict(config["cfg"])
    ctx = worker_context(cfg.scaling)
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

    return run(cfg, run_dir=run_dir, ctx=ctx, teacher_client=client,
               reporter=pointer_reporter(ctx.rank), resume=resume, progress=ctx.is_main,
               on_step=_fault_injector(ctx.rank, config["run_name"]))


def distill_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry of a distillation: ``config["cfg"]`` is a ``DistillConfig`` dict. Every
    phase resumes from its newest checkpoint in the run folder."""
    _apply_env(config)
    cfg = DistillConfig.from_dict(config["cfg"])
    ctx = worker_context(cfg.experiment.scaling)
    distill(cfg, run_dir=Path(config["run_dir"]), ctx=ctx, reporter=pointer_reporter(ctx.rank),
            progress=ctx.is_main)


def worker_context(scaling: ScalingConfig) -> WorkerContext:
    """This worker's rank, group size, device and CPUs, from Ray Train."""
    ctx_ray = ray.train.get_context()
    device = ray.train.torch.get_device() if scaling.use_gpu else torch.device("cpu")
    return WorkerContext(rank=ctx_ray.get_world_rank(), world_size=ctx_ray.get_world_size(),
                         device=device, cpus=scaling.cpus_per_worker)


def _apply_env(config: dict[str, Any]) -> None:
    """The worker's environment variables, and its folder: the driver's (``config["cwd"]``)
    where this node has it, so that relative paths of the config (``data.root``,
    ``teachers.tough_from``, ``model.init_from``, a cache) mean what they mean to the driver and
    to ``--local``; Ray Train otherwise starts every worker in a session folder of its own. On
    a node without that folder the config's paths must be absolute (the cluster files' are)."""
    os.environ.update({str(k): str(v) for k, v in (config.get("env") or {}).items()})
    enter_driver_folder(config.get("cwd"))


def enter_driver_folder(cwd: str | None) -> None:
    """Work in the driver's folder ``cwd`` where this node has it (see :func:`_apply_env`)."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def _fault_injector(rank: int, run_name: str) -> Callable[[int], None] | None:
    """Fault injection for the fault-tolerance tests (off unless the env vars are set).

    ``TSAL_FAULT_KILL_AT_STEP=N``, ``TSAL_FAULT_RANK=r`` and ``TSAL_FAULT_MARKER=path``: the first
    time rank r finishes step N (its checkpoint written) it creates the marker (JSON: pid, node
    id) and does ``TSAL_FAULT_ACTION``:

    - ``kill`` (default): SIGKILL its own process (a real crash: no cleanup, no exception);
    - ``kill_teacher``: ``ray.kill`` the run's teacher actor with restart allowed, then go on;
    - ``hang``: block (up to 600 s) so that the test can take the node away under it.

    The marker makes it happen once: the restarted group does not crash again.
    """
    at = os.environ.get("TSAL_FAULT_KILL_AT_STEP")
    marker = os.environ.get("TSAL_FAULT_MARKER")
    action = os.environ.get("TSAL_FAULT_ACTION", "kill")
    if not at or not marker or int(os.environ.get("TSAL_FAULT_RANK", "0")) != rank:
        return None
    if action not in ("kill", "kill_teacher", "hang"):
        raise ValueError(f"TSAL_FAULT_ACTION={action!r}: expected kill, kill_teacher or hang")

    def hook(step: int) -> None:
        if step != int(at) or os.path.exists(marker):
            return
        info = {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "step": step, "action": action}
        atomic_write_json(marker, info, indent=None, final_newline=False, mode=PLAIN)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "kill_teacher":
            from tsal_dist.distributed.teacher_actor import NAMESPACE, actor_name

            ray.kill(ray.get_actor(actor_name(run_name), namespace=NAMESPACE), no_restart=False)
        else:
            time.sleep(600)

    return hook


def pointer_reporter(rank: int) -> Callable[[dict[str, Any], Path | None], None]:
    """The loop's reporter inside a Ray Train worker.

    Every rank must report the same number of times; only rank 0 attaches the checkpoint, as a
    tiny pointer (the weights already live in the run folder on shared storage).
    """

    def reporter(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if checkpoint is not None and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "pointer.json").write_text(json.dumps(
                    {"path": str(checkpoint), "step": metrics["step"]}))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    return reporter
