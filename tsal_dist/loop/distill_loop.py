"""KD-Loss distillation (docs/method_notes.md §5), one worker's loop: ASM -> teachers -> student.

A peer of the training loop (``tsal_dist.loop.loop``): the same datasets (``build_run_data``),
seeded batch order, engines, checkpoints (``tsal_dist.loop.checkpoint``), worker context and
reporter; only the steps differ. Ray never appears (``tsal_dist.distributed.worker`` runs this
inside Ray Train workers, ``python -m tsal_dist.distill --local`` in one process), and exporting
the student is the entry point's (``tsal_dist.distill``).

Phases, each resumable from its own checkpoints:

1. ASM: a PCA shape model fitted on augmented training shapes -> ``<run>/asm.npz``.
2. Tough teacher (hard landmarks) and Tolerant teacher (ASM soft landmarks): heatmap detectors
   (``build_model(experiment.model)``) trained with the heatmap L2 loss, checkpoints under
   ``<teacher_dir>/<role>/``. ``teachers.tough_from = RUN`` takes the TSAL teacher of a previous
   run instead of training a Tough one (its model section replaces ``experiment.model``).
3. Student: ``MobileNetV2Regressor`` (or a heatmap detector, ``student.arch = heatmap``) trained
   with KD-Loss (after ``kd.l2_warmup_steps`` of plain L2; or plain L2 / L1, ``kd.loss``)
   against both frozen teachers' predictions on the SAME augmented batch. Checkpoints
   ``<run>/checkpoints/ckpt-*.pt`` (kind ``tsal_dist.distill_checkpoint/1``, see
   ``tsal_dist.loop.checkpoint``) describe the student by their own fields, so eval and export
   rebuild it with ``model_from_checkpoint``.

All coordinates in losses are crop-normalised ``(px + 0.5) / S`` (CONTRACTS.md). The schema
(``DistillConfig``) is in ``tsal_dist.config``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from tsal_dist.codec import px_to_norm
from tsal_dist.config import DistillConfig, ExperimentConfig, save_config
from tsal_dist.data.asm import ShapeModel, fit_shape_model
from tsal_dist.data.batches import StepBatches, resolve_loader_workers, step_loader, to_device
from tsal_dist.data.build import build_run_data
from tsal_dist.data.datasets import LabeledImageDataset
from tsal_dist.losses.heatmap import heatmap_loss
from tsal_dist.losses.kd import gradient_norms, kd_loss_terms, kd_total, l1_loss, l2_loss
from tsal_dist.loop.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                                       model_from_checkpoint, restore_engines_,
                                       save_student_checkpoint, save_teacher_checkpoint,
                                       set_rng_state)
from tsal_dist.loop.context import Reporter, WorkerContext, no_report, with_torch_settings
from tsal_dist.loop.engines import build_engine
from tsal_dist.loop.evaluation import eval_module, evaluate_lists, write_eval_summary
from tsal_dist.loop.schedules import lr_at
from tsal_dist.models import LandmarkModel, build_model, build_student_model

__all__ = ["distill", "ensure_asm", "load_tough_from", "with_tough_from", "build_student",
           "train_teacher"]


# ----------------------------------------------------------------------------- helpers


def build_student(dcfg: DistillConfig) -> LandmarkModel:
    """The student of ``dcfg``: MobileNetV2Regressor, or a MobileNetV2 heatmap detector."""
    e = dcfg.experiment
    model = build_student_model(dcfg.student.arch, e.model, e.data.num_points,
                                width=dcfg.student_width(), input_size=e.model.input_size,
                                dropout=dcfg.student.dropout)
    if dcfg.student.arch == "regression" and dcfg.student.head_init == "zero":
        nn.init.zeros_(model.fc.weight)  # predict the crop centre until the data says not
    return model


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _unused_heads(out: Any) -> Tensor:
    """0 * (every tensor a forward pass returned): keeps every parameter in the graph so DDP's
    reducer does not wait for gradients of heads the distillation does not train (a detector's
    centroid branch; the early stages of a heatmap student). Adds exactly 0."""
    return 0.0 * sum(t.sum() for t in _tensors(out))


def _tensors(out: Any) -> list[Tensor]:
    """The tensors of a model output: a tensor, or dicts / lists / tuples of them."""
    if isinstance(out, Tensor):
        return [out]
    parts = out.values() if isinstance(out, dict) else out
    return [t for part in parts for t in _tensors(part)]


def _mean_over_ranks(x: list[float], device: torch.device) -> list[float]:
    """``x`` averaged element-wise over the ranks of the process group (``x`` itself in one
    process); NCCL reduces on this rank's ``device``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(x)
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(x, dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def _matched_scale(pred: Tensor, reference: Tensor, loss: Tensor, device: torch.device) -> float:
    """``kd.switch: matched``: the factor that gives ``loss`` the gradient norm of ``reference``
    at the predictions, both norms averaged over the ranks first (every rank gets the same factor,
    or the same error).

    Raises:
        FloatingPointError: ``loss`` has no gradient at the predictions on any rank.
    """
    ref, own = _mean_over_ranks(list(gradient_norms(pred, reference, loss)), device)
    if not own > 0:
        raise FloatingPointError("kd.switch matched: KD-Loss has no gradient at the predictions "
                                 "on the first KD batch; nothing to match")
    return ref / own


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _batches(ds: LabeledImageDataset, start: int, end: int, ctx: WorkerContext, batch: int,
             seed: int, e: ExperimentConfig) -> Iterator[dict[str, Any]]:
    """Labeled batches of steps ``start .. end - 1``, made by the same loader as training's."""
    batches = StepBatches(ds, None, batch=batch, clips_per_batch=0, rank=ctx.rank,
                          world=ctx.world_size, seed=seed)
    workers = resolve_loader_workers(e.data.loader_workers, ctx.cpus or (os.cpu_count() or 1))
    for item in step_loader(batches, start, end, workers=workers, device=ctx.device):
        yield to_device(item["labeled"], ctx.device)


# ----------------------------------------------------------------------------- phase 1: ASM


def ensure_asm(dcfg: DistillConfig, run_dir: str | Path,
               dataset: LabeledImageDataset | None = None) -> ShapeModel:
    """Load ``<run>/asm.npz`` or fit it on ``fit_augmentations`` augmented copies of every
    training face (the shapes the teachers see) and save it atomically."""
    path = Path(run_dir) / "asm.npz"
    if path.is_file():
        return ShapeModel.load(path)
    if dataset is None:
        dataset = build_run_data(dcfg.experiment, clips=False).labeled
    shapes, vis = [], []
    for r in range(dcfg.asm.fit_augmentations):
        for i in range(len(dataset)):
            seed = int(np.random.SeedSequence((dcfg.experiment.train.seed, 104729, r, i))
                       .generate_state(1)[0])
            it = dataset.get(i, seed)
            shapes.append(it["landmarks"].numpy())
            vis.append(it["visible"].numpy())
    model = fit_shape_model(np.stack(shapes), variance=dcfg.asm.variance,
                            normalization=dcfg.asm.normalization,
                            input_size=dcfg.experiment.model.input_size, visible=np.stack(vis))
    model.save(path)
    return model


def _soft_targets(asm: ShapeModel, landmarks: Tensor, visible: Tensor) -> Tensor:
    soft = asm.soft_landmarks(landmarks.detach().cpu().numpy(), visible.cpu().numpy())
    return torch.from_numpy(soft.astype(np.float32)).to(landmarks.device)



# ----------------------------------------------------------------------------- phase 2: teachers


def with_tough_from(dcfg: DistillConfig) -> tuple[DistillConfig, nn.Module | None]:
    """With ``teachers.tough_from``: the config whose experiment takes the tough run's model
    section (architecture, input size: what the teachers, the ASM and the crops use) and that
    run's teacher; otherwise ``(dcfg, None)``. The driver and the workers both call it."""
    if not dcfg.teachers.tough_from:
        return dcfg, None
    tough, tough_cfg, _ = load_tough_from(dcfg.teachers.tough_from)
    k = dcfg.experiment.data.num_points
    if tough_cfg.data.num_points != k:
        raise CheckpointError(f"{dcfg.teachers.tough_from}: teacher has "
                              f"{tough_cfg.data.num_points} points, distillation uses {k}")
    e = dataclasses.replace(dcfg.experiment, model=tough_cfg.model)
    return dataclasses.replace(dcfg, experiment=e), tough


def load_tough_from(run: str | Path) -> tuple[nn.Module, ExperimentConfig, Path]:
    """The TSAL teacher of a previous run, rebuilt from its newest checkpoint: (model in eval
    mode on the CPU, its experiment config, the checkpoint)."""
    ckpt = latest_checkpoint(Path(run).expanduser() / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{run}: no checkpoints/ckpt-*.pt (teachers.tough_from)")
    try:
        loaded = model_from_checkpoint(ckpt, "teacher")
    except CheckpointError as e:
        raise CheckpointError(f"{e} (teachers.tough_from)") from None
    return loaded.model, loaded.config, ckpt


def train_teacher(role: str, *, dcfg: DistillConfig, dataset: LabeledImageDataset,
                  asm: ShapeModel | None, ckpt_dir: Path, ctx: WorkerContext,
                  metrics_path: Path, reporter: Reporter, progress: bool) -> nn.Module:
    """Train (or resume, or just load when finished) one heatmap teacher on hard landmarks
    (``asm`` None, the Tough one) or ASM soft landmarks (the Tolerant one); return it frozen."""
    e, t = dcfg.experiment, dcfg.teachers
    k = e.data.num_points
    torch.manual_seed(e.train.seed + (1 if role == "tough" else 2))
    model = build_model(e.model, k)
    batch = t.batch_size or e.optim.batch_size
    eng = build_engine(model, e.train, e.optim, ctx.device, lr=t.lr, micro_batch=batch)
    start = 0
    ck = latest_checkpoint(ckpt_dir)
    if ck is not None:
        st = load_checkpoint(ck)
        start = int(st["step"])
        # a finished teacher is only loaded: its optimizer and RNG are of no further use
        restore_engines_(st, ck, {"teacher": eng}, rank=ctx.rank, optimizers=start < t.steps)
        if start < t.steps:
            set_rng_state(st["rng"])
    seed = e.train.seed + (7 if role == "tough" else 13)
    sums, n, t0 = 0.0, 0, time.perf_counter()
    model.train()
    for step, b in zip(range(start, t.steps), _batches(dataset, start, t.steps, ctx, batch,
                                                       seed, e)):
        target_xy = b["landmarks"] if asm is None else _soft_targets(asm, b["landmarks"],
                                                                       b["visible"])
        target, mask = model.codec.encode(target_xy, b["visible"])
        out = eng.module(b["image"])
        loss = heatmap_loss(out["heatmaps"], target, mask)
        eng.backward(loss + _unused_heads(out))
        lr = lr_at(step, base_lr=t.lr, total_steps=t.steps, warmup_steps=e.optim.warmup_steps,
                   schedule="constant")
        eng.step(lr)
        sums += float(loss.detach())
        n += 1
        done = step + 1
        if done % e.run.log_every == 0 or done == t.steps:
            row = {"phase": role, "step": done, f"{role}/loss": sums / n,
                   "sec_per_step": (time.perf_counter() - t0) / n}
            sums, n, t0 = 0.0, 0, time.perf_counter()
            if ctx.is_main:
                _append_jsonl(metrics_path, row)
                if progress:
                    print(f"[{role}] step {done}/{t.steps} loss {row[f'{role}/loss']:.4f}",
                          flush=True)
        if done % e.run.checkpoint_every == 0 or done == t.steps:
            save_teacher_checkpoint(ckpt_dir, step=done, role=role, cfg=e, teacher=eng,
                                    rank=ctx.rank, barrier=ctx.barrier)
            reporter({"phase": role, "step": done}, None)
    return _freeze(eval_module(eng, e, ctx.device))  # fp32 weights whatever the training precision


# ----------------------------------------------------------------------------- the run


@with_torch_settings(lambda dcfg: dcfg.experiment.train)
def distill(dcfg: DistillConfig, *, run_dir: str | Path, ctx: WorkerContext | None = None,
            reporter: Reporter = no_report, teacher_dir: str | Path | None = None,
            progress: bool = True, final_eval: bool = True,
            teacher_cache: dict[tuple, tuple[Tensor, Tensor]] | None = None) -> dict[str, Any]:
    """ASM -> teachers -> student; returns a summary (rank 0's is complete).

    Args:
        run_dir: run folder (config.yaml, distill.yaml, asm.npz, metrics.jsonl, checkpoints/,
            eval/). Rerunning resumes each phase from its newest checkpoint.
        teacher_dir: where teacher checkpoints live (default ``<run>/checkpoints/teachers``);
            the ablation shares one pair of teachers between students this way.
        teacher_cache: optional dict reused across calls that share ``teacher_dir``: the two
            teachers' (B, K, 2) predictions per (teacher_dir, teacher steps, seed, rank, world,
            batch, step), so KD students with the same seed (same augmented batches) pay for the
            teachers' forwards once. Only valid while the teachers and the data are unchanged.
    """
    ctx = ctx or WorkerContext()
    run_dir = Path(run_dir)
    e = dcfg.experiment
    ckpt_dir = run_dir / "checkpoints"
    tdir = Path(teacher_dir) if teacher_dir else ckpt_dir / "teachers"
    metrics_path = run_dir / "metrics.jsonl"

    # ---- Tough teacher from a previous run: its model section is the teachers' architecture
    dcfg, tough_from = with_tough_from(dcfg)
    e = dcfg.experiment
    size = e.model.input_size

    # ---- data and the ASM (rank 0 fits; the driver has usually done it already)
    data = build_run_data(e, clips=False)
    lists, ds = data.lists, data.labeled
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(e, run_dir / "config.yaml")
        save_config(dcfg, run_dir / "distill.yaml")
        asm = ensure_asm(dcfg, run_dir, ds)
    ctx.barrier()
    if not ctx.is_main:
        asm = ShapeModel.load(run_dir / "asm.npz")

    # ---- teachers (frozen from here on)
    common = dict(dcfg=dcfg, dataset=ds, ctx=ctx, metrics_path=metrics_path, reporter=reporter,
                  progress=progress)
    if tough_from is not None:
        tough = _freeze(tough_from.to(ctx.device))
    else:
        tough = train_teacher("tough", asm=None, ckpt_dir=tdir / "tough", **common)
    tolerant = train_teacher("tolerant", asm=asm, ckpt_dir=tdir / "tolerant", **common)

    # ---- student
    o = e.optim
    torch.manual_seed(e.train.seed if dcfg.student.seed < 0 else dcfg.student.seed)
    student_model = build_student(dcfg)
    student = build_engine(student_model, e.train, e.optim, ctx.device,
                           weight_decay=dcfg.student.weight_decay)
    params = dcfg.kd.params()
    start = 0
    kd_scale: float | None = None  # kd.switch "matched": set on the first KD-Loss step
    ck = latest_checkpoint(ckpt_dir)
    if ck is not None:
        st = load_checkpoint(ck)
        restore_engines_(st, ck, {"student": student}, rank=ctx.rank)
        set_rng_state(st["rng"])
        start = int(st["step"])
        kd_scale = st.get("kd_scale")
    ctx.barrier()
    student_model.train()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # per term: a window can straddle the end of the L2 warm-up
    n, t0, last = 0, time.perf_counter(), {}
    for step, b in zip(range(start, o.steps), _batches(ds, start, o.steps, ctx, o.batch_size,
                                                       e.train.seed, e)):
        gt = px_to_norm(b["landmarks"], size)
        vis = b["visible"]
        # through the engine's forward (DDP), decoded by the model: the one model interface
        out = student.module(b["image"])
        pred = student_model.decode(out).landmarks + _unused_heads(out)
        kd_phase = dcfg.kd.loss == "kd" and step >= dcfg.kd.l2_warmup_steps
        if kd_phase and step == dcfg.kd.l2_warmup_steps and dcfg.kd.switch == "reset":
            # the first KD-Loss step (a run resumed at the switch resets here too: its
            # checkpoint holds the L2 phase's state)
            student.reset_optimizer_state()
        if kd_phase:
            key = (str(tdir), dcfg.teachers.steps, e.train.seed, ctx.rank, ctx.world_size,
                   o.batch_size, step)
            if teacher_cache is not None and key in teacher_cache:
                t_tough, t_tol = teacher_cache[key]
            else:
                with torch.no_grad():  # both teachers on the same augmented batch (L2/L1 skip)
                    t_tough = tough.predict(b["image"]).landmarks
                    t_tol = tolerant.predict(b["image"]).landmarks
                if teacher_cache is not None:
                    teacher_cache[key] = (t_tough, t_tol)
            terms = kd_loss_terms(pred, gt, t_tough, t_tol, params, mask=vis)
            loss = kd_total(terms, params)
            if dcfg.kd.switch == "matched":
                if kd_scale is None:
                    kd_scale = _matched_scale(pred, l2_loss(pred, gt, vis), loss, ctx.device)
                loss = kd_scale * loss
        elif dcfg.kd.loss in ("l2", "kd"):  # "kd" here: its L2 warm-up
            terms = {"l2": l2_loss(pred, gt, vis)}
            loss = terms["l2"]
        else:
            terms = {"l1": l1_loss(pred, gt, vis)}
            loss = terms["l1"]
        if 0 < dcfg.kd.jump_step <= step:  # the switch's control: the same loss, rescaled
            loss = dcfg.kd.jump_factor * loss
        student.backward(loss)
        lr = lr_at(step, base_lr=o.lr, total_steps=o.steps, warmup_steps=o.warmup_steps,
                   schedule=o.schedule, milestones=o.milestones, gamma=o.gamma)
        if kd_phase:
            lr *= dcfg.kd.switch_lr_factor  # 1 unless the KD-Loss phase has its own rate
        grad_norm = student.step(lr)  # before clipping (0: unknown, e.g. no clipping)
        with torch.no_grad():  # the metric every variant shares: mean |error| in crop px
            err = float(((pred.detach() - gt) * size).norm(dim=-1).mul(vis).sum()
                        / vis.sum().clamp_min(1))
        logged = {"loss": float(loss.detach()), "px_error": err,
                  **{n_: float(v_.detach()) for n_, v_ in terms.items()}}
        if grad_norm > 0:  # 0: unknown (no clipping in a DDP engine)
            logged["grad_norm"] = grad_norm
        if kd_scale is not None:
            logged["kd_scale"] = kd_scale
        for name, v in logged.items():
            sums[f"student/{name}"] = sums.get(f"student/{name}", 0.0) + v
            counts[f"student/{name}"] = counts.get(f"student/{name}", 0) + 1
        n += 1
        done = step + 1
        if done % e.run.log_every == 0 or done == o.steps:
            last = {key: v / counts[key] for key, v in sums.items()}
            last.update(phase="student", step=done, lr=lr,
                        sec_per_step=(time.perf_counter() - t0) / n)
            sums, counts, n, t0 = {}, {}, 0, time.perf_counter()
            if ctx.is_main:
                _append_jsonl(metrics_path, last)
                if progress:
                    print(f"[student] step {done}/{o.steps} loss {last['student/loss']:.4f} "
                          f"err {last['student/px_error']:.2f}px", flush=True)
        if done % e.run.checkpoint_every == 0 or done == o.steps:
            path = save_student_checkpoint(ckpt_dir, step=done, dcfg=dcfg, student=student,
                                           tough=tough, tolerant=tolerant, metrics=last,
                                           rank=ctx.rank, barrier=ctx.barrier,
                                           kd_scale=kd_scale)
            reporter({"phase": "student", "step": done,
                      **{kk: v for kk, v in last.items() if kk.startswith("student/")}}, path)

    summary: dict[str, Any] = {"run_dir": str(run_dir), "step": o.steps, "last": last}
    s_full = student.full_state_dict() if final_eval else None  # every rank (ZeRO collective)
    if not final_eval or not lists.eval:
        ctx.barrier()
        return summary

    # ---- final evaluation of all three models on every eval list, sharded over the ranks
    # (each predicts its share on its own device, rank 0 gathers and writes), as training's
    s_eval = build_student(dcfg)  # fp32 weights whatever the training precision
    s_eval.load_state_dict(s_full)
    s_eval.eval()
    scored = evaluate_lists({"tough": tough, "tolerant": tolerant, "student": s_eval}, e,
                            lists.eval, ctx=ctx)
    if scored is not None:  # rank 0
        write_eval_summary(run_dir, scored[0])
        summary["eval"] = scored[0]
    ctx.barrier()
    return summary
