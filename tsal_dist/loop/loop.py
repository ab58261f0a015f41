"""The per-worker TSAL training loop: one readable function, the same in one process, under
torchrun and inside Ray Train workers.

Policy is visible here, section by section: data, models and engines, resume, then per step the
TSAL step, the teacher push/sync (recursive average filtering), logging, checkpoints, validation;
at the end evaluation and export. Ray never appears: the teacher server is reached through a
``TeacherClient`` and progress leaves through a ``Reporter`` (tsal_dist.distributed provides the
Ray versions; ``LocalTeacher`` and ``JsonReporter`` run everything in one process).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist

from tsal_dist.atomic import PLAIN, atomic_write_json
from tsal_dist.codec import CentroidCodec, HeatmapCodec
from tsal_dist.config import ConfigError, ExperimentConfig, save_config
from tsal_dist.data.batches import StepBatches, resolve_loader_workers, step_loader, to_device
from tsal_dist.data.datasets import ClipDataset, EvalImageDataset, LabeledImageDataset
from tsal_dist.data.formats import ListEntry, read_list
from tsal_dist.losses.consistency import ramp_weight
from tsal_dist.loop.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                                       numpy_state_to_torch,
                                       optimizer_state_of, rng_state, save_engine_checkpoint,
                                       set_rng_state, torch_state_to_numpy)
from tsal_dist.loop.engines import Engine, broadcast_flat_, build_engine
from tsal_dist.loop.runs import (newest_readable_checkpoint, remove_stale_temp_files,
                                 truncate_metrics)
from tsal_dist.loop.schedules import is_sync_step, lr_at, version_to_apply
from tsal_dist.loop.step import LossWeights, consistency_weight, tsal_step
from tsal_dist.models import build_model
from tsal_dist.teacher.averaging import lerp_state_, to_numpy_state
from tsal_dist.teacher.server import TeacherServer, versions_to_keep


# ----------------------------------------------------------------------------- interfaces


class TeacherClient(Protocol):
    """How a worker reaches the teacher server (in process, or a Ray actor)."""

    def push(self, state: dict[str, np.ndarray], step: int) -> None: ...

    def get(self, version: int) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


class LocalTeacher:
    """TeacherServer in this process (single-process runs and tests)."""

    def __init__(self, *, mode: str, queue_length: int, ema_decay: float, keep_versions: int = 8):
        self.server = TeacherServer(mode=mode, queue_length=queue_length, ema_decay=ema_decay,
                                    keep_versions=keep_versions)

    def push(self, state: dict[str, np.ndarray], step: int) -> None:
        self.server.push(state, step)

    def get(self, version: int) -> dict[str, np.ndarray]:
        st = self.server.get(version)
        if st is None:
            raise RuntimeError(f"teacher server has no version {version} yet")
        return st

    def state_dict(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.server.load_state_dict(sd)


Reporter = Callable[[dict[str, Any], "Path | None"], None]


def no_report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """Reporter for one-process runs: metrics.jsonl already holds everything."""


@dataclass(frozen=True)
class WorkerContext:
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


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataLists:
    labeled: tuple[Path, ...]
    unlabeled: tuple[Path, ...]
    eval: tuple[Path, ...]


def resolve_data(cfg: ExperimentConfig) -> DataLists:
    """List files of the run; generates the synthetic dataset once when no data is configured."""
    d = cfg.data
    if d.root:
        root = Path(d.root).expanduser()
        lab = tuple(root / p for p in d.labeled_lists)
        unl = tuple(root / p for p in d.unlabeled_lists)
        ev = tuple(root / p for p in d.eval_lists)
        if not lab:
            raise ConfigError("data.labeled_lists: is empty but data.root is set; name the "
                              "labeled list files under data.root")
        return DataLists(lab, unl, ev)
    from tsal_dist.data.synthetic import dataset_lists, ensure_synthetic

    s = d.synthetic
    root = ensure_synthetic(Path(d.cache_dir).expanduser(), images=s.images,
                            test_images=s.test_images, videos=s.videos,
                            test_videos=s.test_videos, frames=s.frames,
                            image_size=s.image_size, seed=s.seed)
    lists = dataset_lists(root)
    pick = lambda names, default: tuple(lists[n] for n in names) if names else default  # noqa: E731
    lab = tuple(Path(root) / p for p in d.labeled_lists) or (lists["train"],)
    unl = tuple(Path(root) / p for p in d.unlabeled_lists) or (
        (lists["videos_train_unlabeled"],) if s.videos > 0 else ())
    ev = tuple(Path(root) / p for p in d.eval_lists) or pick(
        (), (lists["test"],) + ((lists["videos_test"],) if s.test_videos > 0 else ()))
    return DataLists(lab, unl, ev)


def split_labeled(entries: list[ListEntry], val_images: int, limit: int
                  ) -> tuple[list[ListEntry], list[ListEntry]]:
    """Hold out the last ``val_images`` faces for validation, then keep the first ``limit``."""
    n_val = min(val_images, max(0, len(entries) - 1))
    train, val = entries[: len(entries) - n_val], entries[len(entries) - n_val:]
    if limit:
        train = train[:limit]
    return train, val


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_nme(model: torch.nn.Module, codec: HeatmapCodec, dataset: EvalImageDataset,
                   device: torch.device, ctx: WorkerContext | None = None,
                   batch_size: int = 32) -> float:
    """Mean inter-ocular NME (fraction) of ``model`` on ``dataset``, in image pixels.

    Every rank of ``ctx`` calls it and predicts its share on ``device``; every rank returns the
    same number (rank 0 scores, then broadcasts).
    """
    from tsal_dist.eval.metrics import nme
    from tsal_dist.eval.run import Shard, merge_predictions, predict

    ctx = ctx or WorkerContext()
    shard = Shard(ctx.rank, ctx.world_size)
    out = predict(model, shard.view(dataset), batch_size=batch_size, device=str(device),
                  decode=codec.locate)
    parts = shard.gather(out)
    value = math.nan
    if parts is not None:
        m = merge_predictions(parts)
        value = float(np.nanmean(nme(m["preds"], m["gts"], norm="inter_ocular",
                                     visible=m["visible"])))
    if ctx.world_size > 1 and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


# ----------------------------------------------------------------------------- the loop


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
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    teacher_client = teacher_client or LocalTeacher(
        mode=cfg.teacher.mode, queue_length=cfg.teacher.queue_length,
        ema_decay=cfg.teacher.ema_decay,
        keep_versions=versions_to_keep(cfg.teacher.max_staleness))

    # ---- data
    d, m, o = cfg.data, cfg.model, cfg.optim
    lists = resolve_data(cfg)
    labeled_entries = [e for p in lists.labeled for e in read_list(p)]
    train_entries, val_entries = split_labeled(labeled_entries, cfg.run.val_images,
                                               d.labeled_limit)
    aug = dict(rotate_max_deg=d.rotate_max_deg, scale_min=d.scale_min, scale_max=d.scale_max,
               shift_max_frac=d.shift_max_frac, flip=d.flip)
    labeled_ds = LabeledImageDataset(train_entries, num_points=d.num_points,
                                     input_size=m.input_size, pre_crop_expand=d.pre_crop_expand,
                                     augment=True, strict=d.strict, **aug)
    clip_ds = None
    if lists.unlabeled and o.clips_per_batch > 0:
        unl = [e for p in lists.unlabeled for e in read_list(p)]
        clip_ds = ClipDataset(unl, num_points=d.num_points, clip_length=d.clip_length,
                              clip_stride=d.clip_stride, input_size=m.input_size,
                              pre_crop_expand=d.pre_crop_expand, augment=True, flow=d.flow,
                              strict=d.strict, jitter_rotate_deg=d.clip_jitter_rotate_deg,
                              jitter_scale=d.clip_jitter_scale,
                              jitter_shift_frac=d.clip_jitter_shift_frac, **aug)
    val_ds = EvalImageDataset(val_entries, num_points=d.num_points, input_size=m.input_size,
                              pre_crop_expand=d.pre_crop_expand, strict=d.strict)

    # ---- models, codecs, engines (teacher starts as a copy of the student's init)
    torch.manual_seed(cfg.train.seed)
    student_model = build_model(m, d.num_points)
    teacher_model = build_model(m, d.num_points)
    teacher_model.load_state_dict(student_model.state_dict())
    hm_codec = HeatmapCodec.for_model(m, stride=student_model.stride, num_points=d.num_points)
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
        try:
            student.load_full_state_dict(state["student"])
            teacher.load_full_state_dict(state["teacher"])
        except (RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{ckpt}: its weights do not fit this model ({first}); "
                                  "resume it with the config it was trained with") from None
        student.load_optimizer_state(optimizer_state_of(state, "student", ckpt, ctx.rank))
        teacher.load_optimizer_state(optimizer_state_of(state, "teacher", ckpt, ctx.rank))
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
                             pseudo_threshold=cfg.loss.pseudo_threshold)

            # ---- recursive average filtering: push the student, blend a step-determined version
            t_sync = time.perf_counter()
            if is_sync_step(step, cfg.teacher.sync_every):
                student.broadcast_buffers()
                teacher.broadcast_buffers()
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
                        teacher_client=teacher_client, ctx=ctx, metrics=last_logs)
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

    # ---- final evaluation (every rank, sharded) and export (rank 0)
    t_final, s_final = eval_module(teacher, cfg, device), eval_module(student, cfg, device)
    summary.update(finish_run(cfg, run_dir=run_dir, teacher=t_final, student=s_final,
                              hm_codec=hm_codec, lists=lists, ctx=ctx))
    ctx.barrier()
    return summary


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


@torch.no_grad()
def apply_sync_(*, teacher: Engine, student: Engine, filtered: dict[str, np.ndarray], mode: str,
                blend: float, student_keep: float, average_buffers: bool,
                buffer_keys: frozenset[str]) -> None:
    """teacher <- blend*teacher + (1-blend)*F (and, in mutual mode, first
    student <- keep*student + (1-keep)*teacher_old, as the original code's two-way lerp).

    Works on the full weights through ``Engine.modify_weights_`` (gathered under ZeRO-3, fp32
    master partitions refreshed under ZeRO 1-3), so the next optimizer step starts from them."""
    if mode == "mutual":
        t_old = teacher.full_state_dict()
        student.modify_weights_(lambda sd: lerp_state_(
            sd, t_old, student_keep, average_buffers=average_buffers, buffer_keys=buffer_keys))
    teacher.modify_weights_(lambda sd: lerp_state_(
        sd, filtered, blend, average_buffers=average_buffers, buffer_keys=buffer_keys))


def eval_module(engine: Engine, cfg: ExperimentConfig,
                device: torch.device | None = None) -> torch.nn.Module:
    """A plain module with the engine's full weights for rank-0-only evaluation. Under ZeRO-3 the
    parameters are partitioned (a forward on one rank would wait for the others), and under
    DeepSpeed fp16/bf16 the module holds rounded weights, so this builds an fp32 copy from the
    full state: call it on EVERY rank. Otherwise the unwrapped module."""
    if engine.collective_state or engine.low_precision_weights:
        sd = engine.full_state_dict()
        model = build_model(cfg.model, cfg.data.num_points)
        model.load_state_dict(sd)
        return model.to(device or torch.device("cpu"))
    return engine.unwrapped()


def save_training_checkpoint(ckpt_dir: Path, *, step: int, cfg: ExperimentConfig,
                             student: Engine, teacher: Engine, teacher_client: TeacherClient,
                             ctx: WorkerContext, metrics: dict) -> Path | None:
    """ckpt-<step>.pt of both models, the teacher server, RNG and metrics (every rank calls)."""
    payload: dict[str, Any] = {"config": cfg.to_dict(), "step": step, "rng": rng_state(),
                               "metrics": metrics, "format": "tsal_dist.checkpoint/1",
                               "engine": cfg.train.engine}
    if ctx.is_main:
        payload["server"] = numpy_state_to_torch(teacher_client.state_dict())
    return save_engine_checkpoint(ckpt_dir, step=step, engines={"student": student,
                                                                "teacher": teacher},
                                  payload=payload, rank=ctx.rank, sharded=_sharded(cfg),
                                  keep=cfg.run.keep_checkpoints, barrier=ctx.barrier)


def _sharded(cfg: ExperimentConfig) -> bool:
    return cfg.train.engine == "deepspeed" and cfg.train.zero_stage > 0


def finish_run(cfg: ExperimentConfig, *, run_dir: Path, teacher: torch.nn.Module,
               student: torch.nn.Module, hm_codec: HeatmapCodec, lists: DataLists,
               ctx: WorkerContext | None = None) -> dict[str, Any]:
    """Evaluate teacher and student on the eval lists, plot CED + curves, export the teacher.

    Every rank calls it: the evaluation is sharded over the ranks (each predicts its share on
    its own device); rank 0 gathers, writes and exports, and returns the results ({} elsewhere).
    """
    ctx = ctx or WorkerContext()
    out: dict[str, Any] = {}
    eval_dir = run_dir / "eval"
    if lists.eval:
        from tsal_dist.eval.plots import plot_ced
        from tsal_dist.eval.run import Shard, evaluate_list, list_names

        results: dict[str, dict[str, Any]] = {}
        curves: dict[str, np.ndarray] = {}
        names = list_names([str(p) for p in lists.eval])
        shard = Shard(ctx.rank, ctx.world_size) if ctx.world_size > 1 else None
        for which, model in (("teacher", teacher), ("student", student)):
            model.eval()
            results[which] = {}
            for name, path in zip(names, lists.eval):
                r = evaluate_list(model, path, input_size=cfg.model.input_size,
                                  pre_crop_expand=cfg.data.pre_crop_expand,
                                  num_points=cfg.data.num_points,
                                  sigma_px=cfg.model.heatmap_sigma_px,
                                  window=cfg.model.decode_window, locate=cfg.model.decode,
                                  blur_cells=cfg.model.decode_blur_cells, batch_size=32,
                                  device=ctx.device, strict=cfg.data.strict, name=name,
                                  shard=shard)
                if r is not None:
                    results[which][name] = r.summary
                    curves[f"{which} {name}"] = r.primary_nmes
        if not ctx.is_main:
            return out
        eval_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(eval_dir / "summary.json", results, default=float, final_newline=False,
                          mode=PLAIN)
        plot_ced(curves, eval_dir / "ced.png", title="CED, teacher vs student")
        out["eval"] = results
    if not ctx.is_main:
        return out
    try:
        from tsal_dist.eval.plots import plot_training_curves

        plot_training_curves(run_dir / "metrics.jsonl", run_dir / "training_curves.png",
                             keys=["student/loss", "teacher/loss", "student/consistency",
                                   "teacher/consistency"])
    except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
        print(f"warning: training curve plot failed: {e}")
    if cfg.run.export:
        from tsal_dist.export import export

        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is not None:
            export(ckpt, run_dir / "export", which="teacher")
            out["export"] = str(run_dir / "export")
    return out
