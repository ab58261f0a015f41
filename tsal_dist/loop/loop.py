"""The per-worker TSAL training loop: one readable function, the same in one process, under
torchrun and inside Ray Train workers.

Policy is visible here, section by section: data, models and engines, resume, then per step the
TSAL step, the teacher push/sync (recursive average filtering), logging, checkpoints, validation;
at the end evaluation. Ray never appears: the teacher server is reached through a
``TeacherClient`` and progress leaves through a ``Reporter`` (tsal_dist.distributed provides the
Ray versions; ``LocalTeacher`` and ``no_report`` run everything in one process). Exporting the
finished teacher is the entry point's (``tsal_dist.train``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from tsal_dist.codec import CentroidCodec
from tsal_dist.config import ExperimentConfig, TeacherConfig, save_config
from tsal_dist.data.batches import StepBatches, resolve_loader_workers, step_loader, to_device
from tsal_dist.data.build import build_run_data
from tsal_dist.loop.checkpoint import (load_checkpoint, restore_engines_,
                                       save_training_checkpoint, set_rng_state,
                                       torch_state_to_numpy)
from tsal_dist.loop.context import Reporter, WorkerContext, no_report, with_torch_settings
from tsal_dist.loop.engines import Engine, broadcast_flat_, build_engine
from tsal_dist.loop.evaluation import eval_module, finish_run, validation_nme
from tsal_dist.loop.runs import (newest_readable_checkpoint, remove_stale_temp_files,
                                 truncate_metrics)
from tsal_dist.loop.schedules import is_sync_step, lr_at, ramp_weight, version_to_apply
from tsal_dist.loop.step import LossWeights, consistency_weight, tsal_step
from tsal_dist.models import build_model
from tsal_dist.models.pretrained import load_init_weights_
from tsal_dist.teacher.averaging import lerp_state_, to_numpy_state
from tsal_dist.teacher.client import LocalTeacher, TeacherClient
from tsal_dist.teacher.server import versions_to_keep


# ----------------------------------------------------------------------------- the loop


@with_torch_settings(lambda cfg: cfg.train)
def run(cfg: ExperimentConfig, *, run_dir: str | Path, ctx: WorkerContext | None = None,
        teacher_client: TeacherClient | None = None, reporter: Reporter = no_report,
        resume: Path | str | None = "auto", stop_after: int | None = None,
        progress: bool = True, final_eval: bool = True,
        on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train student and teacher TSAL-style; return a summary dict (rank 0's is complete).

    Args:
        run_dir: run folder (config.yaml, metrics.jsonl, checkpoints/, eval/, export/).
        teacher_client: the parameter server; a LocalTeacher by default.
        resume: "auto" = newest checkpoint in run_dir/checkpoints (if any), a path, or None.
        stop_after: stop (without final eval) after this many steps of THIS call — used by tests
            to simulate an interrupted job; the checkpoint at that step is written first.
        on_step: called with the number of finished steps after each step's checkpoint/report.
    """
    ctx = ctx or WorkerContext()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    device = ctx.device
    teacher_client = teacher_client or LocalTeacher(**teacher_server_args(cfg.teacher))

    # ---- data
    d, m, o = cfg.data, cfg.model, cfg.optim
    data = build_run_data(cfg)
    lists, labeled_ds, clip_ds, val_ds = data.lists, data.labeled, data.clips, data.val

    # ---- models, codecs, engines (teacher starts as a copy of the student's init)
    torch.manual_seed(cfg.train.seed)
    student_model = build_model(m, d.num_points)
    if m.init_from:
        report = load_init_weights_(student_model, m.init_from)
        if ctx.is_main:
            print(report.line(), flush=True)
    teacher_model = build_model(m, d.num_points)
    teacher_model.load_state_dict(student_model.state_dict())
    hm_codec = student_model.codec
    ctr_codec = CentroidCodec(input_size=m.input_size, stride=student_model.stride,
                              num_points=d.num_points, centroid_index=m.centroid_index,
                              topk=m.centroid_topk)
    # (shape, dtype) of every state entry, taken before ZeRO-3 partitions the parameters
    state_shapes = {k: (tuple(v.shape), v.dtype) for k, v in student_model.state_dict().items()}
    student = build_engine(student_model, cfg.train, cfg.optim, device)
    teacher = build_engine(teacher_model, cfg.train, cfg.optim, device)
    buffer_keys = frozenset(k for k, _ in student.unwrapped().named_buffers())
    weights = LossWeights(heatmap=cfg.loss.heatmap_weight, centroid=cfg.loss.centroid_weight,
                          offset=cfg.loss.offset_weight, structure=cfg.loss.structure_weight,
                          unsup=cfg.loss.unsup_weight,
                          student_unsup=cfg.loss.student_unsup_weight)

    # ---- resume: weights, optimizers, server, RNG; the step restores schedule and data position
    start = 0
    if ctx.is_main:
        remove_stale_temp_files(ckpt_dir)  # writes killed half-way
    ctx.barrier()
    ckpt, state = None, None
    if resume == "auto":
        found = newest_readable_checkpoint(ckpt_dir, announce=ctx.is_main)
        if found is not None:
            ckpt, state = found
    elif resume:
        ckpt = Path(resume)
        state = load_checkpoint(ckpt)
    if ckpt is not None and state is not None:
        restore_engines_(state, ckpt, {"student": student, "teacher": teacher}, rank=ctx.rank)
        if ctx.is_main:
            teacher_client.load_state_dict(torch_state_to_numpy(state["server"]))
        set_rng_state(state["rng"])
        start = int(state["step"])
    ctx.barrier()

    total = o.steps
    end = total if stop_after is None else min(total, start + stop_after)
    metrics_path = run_dir / "metrics.jsonl"
    if ctx.is_main:
        save_config(cfg, run_dir / "config.yaml")
        truncate_metrics(metrics_path, start)  # the steps after the checkpoint are redone
    # the teacher version the last sync before ``start`` applied (logged from the first step)
    applied_version = _version_at(start, cfg.teacher.sync_every, cfg.teacher.max_staleness)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="tsal", dynamic_ncols=True, mininterval=2.0)

    last_logs: dict[str, float] = {}
    sums: dict[str, float] = {}
    n_sum = 0
    t_last = time.perf_counter()
    batches = StepBatches(labeled_ds, clip_ds, batch=o.batch_size,
                          clips_per_batch=o.clips_per_batch, rank=ctx.rank,
                          world=ctx.world_size, seed=cfg.train.seed)
    loader_workers = resolve_loader_workers(d.loader_workers, ctx.cpus or (os.cpu_count() or 1))
    loader = step_loader(batches, start, end, workers=loader_workers, device=device)
    # bad samples skipped so far, by reason (cumulative across resumes: the checkpoint's last row)
    prefix = "data/skipped_"
    skipped: dict[str, int] = {k[len(prefix):]: int(v) for k, v in
                               ((state or {}).get("metrics") or {}).items()
                               if k.startswith(prefix)}
    data_wait = 0.0
    try:
        for step in range(start, end):
            # ---- batch of this step: a pure function of (seed, step, rank), made ahead
            t_data = time.perf_counter()
            item = next(loader)
            data_wait += time.perf_counter() - t_data
            labeled = to_device(item["labeled"], device)
            clips = to_device(item["clips"], device) if item["clips"] is not None else None
            for reason, n in item["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n

            # ---- one TSAL step of both models
            lr = lr_at(step, base_lr=o.lr, total_steps=total, warmup_steps=o.warmup_steps,
                       schedule=o.schedule, milestones=o.milestones, gamma=o.gamma)
            ramp = ramp_weight(step, total, cfg.loss.ramp_up_frac, cfg.loss.ramp_down_frac)
            logs = tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips,
                             hm_codec=hm_codec, ctr_codec=ctr_codec, weights=weights, ramp=ramp,
                             lr=lr, fusion_mu=cfg.loss.fusion_mu,
                             structure_descriptor=cfg.loss.structure_descriptor,
                             pseudo_source=cfg.loss.pseudo_source,
                             consistency_space=cfg.loss.consistency_space,
                             student_term=cfg.loss.student_consistency,
                             pseudo_threshold=cfg.loss.pseudo_threshold,
                             structure_on=cfg.loss.structure_on,
                             optimize_teacher=cfg.teacher.optimize,
                             pseudo_max_turn=cfg.loss.pseudo_max_turn)

            # ---- recursive average filtering: push the student, blend a step-determined version
            t_sync = time.perf_counter()
            if cfg.teacher.mode == "mutual_step":
                mutual_step_(teacher=teacher, student=student,
                             student_keep=cfg.teacher.mutual_student_keep,
                             blend=cfg.teacher.blend, average_buffers=cfg.teacher.average_buffers,
                             buffer_keys=buffer_keys)
            if is_sync_step(step, cfg.teacher.sync_every):
                student.broadcast_buffers()
                teacher.broadcast_buffers()
            # mutual_step blends on the worker every step: nothing goes through the server
            if is_sync_step(step, cfg.teacher.sync_every) and cfg.teacher.mode != "mutual_step":
                if ctx.is_main or student.collective_state:  # ZeRO-3: every rank gathers
                    s_full = student.full_state_dict()
                if ctx.is_main:
                    teacher_client.push(to_numpy_state(s_full), step + 1)
                version = version_to_apply(step, cfg.teacher.sync_every, cfg.teacher.max_staleness)
                if version is not None:
                    filtered = pull_teacher(teacher_client, version, ctx, template=state_shapes)
                    apply_sync_(teacher=teacher, student=student, filtered=filtered,
                                mode=cfg.teacher.mode, blend=cfg.teacher.blend,
                                student_keep=cfg.teacher.mutual_student_keep,
                                average_buffers=cfg.teacher.average_buffers,
                                buffer_keys=buffer_keys)
                    applied_version = version
            # the effective coefficients, as used this step (provenance for sweeps and curves);
            # loss/unsup_weight is the student's (the teacher's is ramp * loss.unsup_weight)
            logs.update({"loss/unsup_weight": consistency_weight(weights, ramp, "student"),
                         "teacher/blend": cfg.teacher.blend,
                         "teacher/ema_decay": cfg.teacher.ema_decay})
            # sync cost of this step in ms (0 off sync steps: the logged mean is the per-step share)
            logs["teacher/sync_ms"] = 1000.0 * (time.perf_counter() - t_sync)
            staleness = step + 1 - applied_version if applied_version >= 0 else -1
            logs.update(lr=lr, ramp=ramp, **{"teacher/version": applied_version,
                                              "teacher/staleness_steps": staleness})
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_sum += 1

            # ---- logging
            done = step + 1
            if done % cfg.run.log_every == 0 or done == end:
                now = time.perf_counter()
                row = {k: v / n_sum for k, v in sums.items()}
                row.update(step=done, time=time.time(), sec_per_step=(now - t_last) / n_sum,
                           samples_per_sec=n_sum * o.batch_size * ctx.world_size / (now - t_last),
                           **{"data/wait_frac": data_wait / max(now - t_last, 1e-9),
                              "data/loader_workers": loader_workers},
                           **{f"data/skipped_{r}": n for r, n in skipped.items()})
                data_wait = 0.0
                row["teacher/version"] = applied_version
                row["mem/max_rss_mib"] = _max_rss_mib()
                if device.type == "cuda":
                    row["mem/max_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                row["lr"] = lr
                sums, n_sum, t_last = {}, 0, now
                last_logs = row
                if ctx.is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    if bar is not None:
                        bar.set_postfix(loss_s=f"{row.get('student/loss', 0):.3f}",
                                        loss_t=f"{row.get('teacher/loss', 0):.3f}")
            if bar is not None:
                bar.update(1)

            # ---- validation of the teacher (the model we ship)
            val = None
            if cfg.run.eval_every and (done % cfg.run.eval_every == 0 or done == total):
                t_eval = eval_module(teacher, cfg, device)  # collective under ZeRO
                val = validation_nme(t_eval, hm_codec, val_ds, device, ctx)  # sharded over ranks
                if ctx.is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps({"step": done, "val/nme_inter_ocular": val}) + "\n")

            # ---- checkpoint (complete or absent) and report; every rank reports
            if done % cfg.run.checkpoint_every == 0 or done == end or val is not None:
                path = None
                if done % cfg.run.checkpoint_every == 0 or done == end:
                    path = save_training_checkpoint(
                        ckpt_dir, step=done, cfg=cfg, student=student, teacher=teacher,
                        server=teacher_client.state_dict() if ctx.is_main else None,
                        metrics=last_logs, rank=ctx.rank, barrier=ctx.barrier)
                report = {"step": done, **{k: v for k, v in last_logs.items()
                                           if k.endswith("loss") or k == "teacher/version"}}
                if val is not None:
                    report["val_nme"] = val
                reporter(report, path)
            if on_step is not None:
                on_step(done)
    finally:  # the progress line ends before any error message
        if bar is not None:
            bar.close()
        loader.close()

    summary: dict[str, Any] = {"step": end, "run_dir": str(run_dir), "last": last_logs,
                               "skipped": skipped,
                               # per rank; equal on every rank (the replicas never diverge)
                               "teacher_sha256": state_digest(teacher.full_state_dict()),
                               "student_sha256": state_digest(student.full_state_dict())}
    if end < total or not final_eval:
        ctx.barrier()
        return summary

    # ---- final evaluation (every rank, sharded)
    t_final, s_final = eval_module(teacher, cfg, device), eval_module(student, cfg, device)
    summary.update(finish_run(cfg, run_dir=run_dir, teacher=t_final, student=s_final,
                              hm_codec=hm_codec, lists=lists, ctx=ctx))
    ctx.barrier()
    return summary


def teacher_server_args(t: TeacherConfig) -> dict[str, Any]:
    """The teacher server's arguments from ``cfg.teacher``, read here only: for the in-process
    server above and for the run's Ray actor (``tsal_dist.distributed.launch.fit``)."""
    return {"mode": t.mode, "queue_length": t.queue_length, "ema_decay": t.ema_decay,
            "keep_versions": versions_to_keep(t.max_staleness)}


def _max_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def state_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict (sorted by name)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _version_at(steps_done: int, sync_every: int, max_staleness: int) -> int:
    """Teacher version in force after ``steps_done`` steps (-1 before the first blend)."""
    k = steps_done // sync_every
    v = version_to_apply(k * sync_every - 1, sync_every, max_staleness) if k >= 1 else None
    return -1 if v is None else v


def pull_teacher(client: TeacherClient, version: int, ctx: WorkerContext, *,
                 template: dict[str, tuple[tuple[int, ...], torch.dtype]]
                 ) -> dict[str, Any]:
    """The filtered teacher of ``version``, on every rank: rank 0 pulls it from the server once
    and broadcasts it over the process group (one collective per dtype), so the server's load
    and the sync cost do not grow with the number of workers.

    A failure on rank 0 (server restarted, a failed push, a timeout) is raised there with its
    own message, and the other ranks stop with a line naming it instead of waiting forever.

    Args:
        template: {name: (shape, dtype)} of the model's state dict (floating entries travel as
            fp32, what the server holds).
    """
    if ctx.world_size == 1 or not dist.is_initialized():
        return client.get(version)
    state: dict[str, Any] | None = None
    status: list[Any] = [None]
    error: BaseException | None = None
    if ctx.is_main:
        try:
            state = client.get(version)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error, status = e, [f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(status, src=0)
    if status[0] is not None:
        if error is not None:
            raise error
        raise RuntimeError(f"rank 0 could not get teacher version {version}: {status[0]}")
    device = ctx.device
    tensors: dict[str, torch.Tensor] = {}
    for k, (shape, dtype) in template.items():
        dt = torch.float32 if dtype.is_floating_point else dtype
        if state is not None:
            tensors[k] = torch.as_tensor(state[k]).to(device, dt).reshape(shape).contiguous()
        else:
            tensors[k] = torch.empty(shape, dtype=dt, device=device)
    broadcast_flat_(list(tensors.values()), src=0)
    return tensors


def _student_toward_teacher_(student: Engine, teacher: Engine, keep: float,
                             average_buffers: bool, buffer_keys: frozenset[str]) -> None:
    """student <- keep*student + (1-keep)*teacher: the student half of the two-way lerp."""
    t_old = teacher.full_state_dict()
    student.modify_weights_(lambda sd: lerp_state_(
        sd, t_old, keep, average_buffers=average_buffers, buffer_keys=buffer_keys))


@torch.no_grad()
def mutual_step_(*, teacher: Engine, student: Engine, student_keep: float, blend: float,
                 average_buffers: bool, buffer_keys: frozenset[str]) -> None:
    """TSAL's per-iteration two-way lerp (docs/method_notes.md 1.8, ``update_Rma_variables``):
    student <- keep*student + (1-keep)*teacher, then teacher <- blend*teacher + (1-blend)*student
    with the student just updated. Every rank does it on its own copies, which DDP keeps equal
    (with ``average_buffers`` the BatchNorm statistics are first made rank 0's)."""
    if average_buffers:
        student.broadcast_buffers()
        teacher.broadcast_buffers()
    _student_toward_teacher_(student, teacher, student_keep, average_buffers, buffer_keys)
    s_new = student.full_state_dict()
    teacher.modify_weights_(lambda sd: lerp_state_(
        sd, s_new, blend, average_buffers=average_buffers, buffer_keys=buffer_keys))


@torch.no_grad()
def apply_sync_(*, teacher: Engine, student: Engine, filtered: dict[str, np.ndarray], mode: str,
                blend: float, student_keep: float, average_buffers: bool,
                buffer_keys: frozenset[str]) -> None:
    """teacher <- blend*teacher + (1-blend)*F (and, in mutual mode, first
    student <- keep*student + (1-keep)*teacher_old, as the original code's two-way lerp).

    Works on the full weights through ``Engine.modify_weights_`` (gathered under ZeRO-3, fp32
    master partitions refreshed under ZeRO 1-3), so the next optimizer step starts from them."""
    if mode == "mutual":
        _student_toward_teacher_(student, teacher, student_keep, average_buffers, buffer_keys)
    teacher.modify_weights_(lambda sd: lerp_state_(
        sd, filtered, blend, average_buffers=average_buffers, buffer_keys=buffer_keys))
