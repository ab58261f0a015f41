"""KD-Loss distillation (METHOD.md §5), one worker's loop: ASM -> teachers -> student.

Readable top to bottom like ``tsal_dist.loop.loop``: the same datasets, seeded batch order,
engines, atomic checkpoints and reporter; Ray never appears (tsal_dist.distributed.distill_worker
runs this inside Ray Train workers, ``python -m tsal_dist.distill --local`` in one process).

Phases, each resumable from its own checkpoints:

1. ASM: a PCA shape model fitted on augmented training shapes -> ``<run>/asm.npz``.
2. Tough teacher (hard landmarks) and Tolerant teacher (ASM soft landmarks): heatmap detectors
   (``build_model(experiment.model)``) trained with the heatmap L2 loss, checkpoints under
   ``<teacher_dir>/<role>/``. ``teachers.tough_from = RUN`` takes the TSAL teacher of a previous
   run instead of training a Tough one (its model section replaces ``experiment.model``).
3. Student: ``MobileNetV2Regressor`` (or a heatmap detector, ``student.arch = heatmap``) trained
   with KD-Loss (or plain L2 / L1, ``kd.loss``) against both frozen teachers' predictions on the
   SAME augmented batch. Checkpoints ``<run>/checkpoints/ckpt-*.pt`` hold ``config`` (the
   experiment), ``distill_config``, ``step``, ``student`` (+ ``student_arch``,
   ``student_input_size``, ``student_width``), ``teacher`` (the Tough teacher), ``tolerant``,
   ``student_optim``, ``rng``, ``metrics``; ``python -m tsal_dist.export --which student`` reads
   them.

All coordinates in losses are crop-normalised ``(px + 0.5) / S`` (CONTRACTS.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from tsal_dist.atomic import PLAIN, atomic_write_json
from tsal_dist.codec import HeatmapCodec
from tsal_dist.config import (ConfigError, ExperimentConfig, ModelConfig, OptimConfig,
                              RunConfig, from_dict, load_config, save_config, to_dict)
from tsal_dist.data.asm import ShapeModel, fit_shape_model
from tsal_dist.data.batches import StepBatches, resolve_loader_workers, step_loader, to_device
from tsal_dist.data.datasets import EvalImageDataset, LabeledImageDataset
from tsal_dist.data.formats import read_list
from tsal_dist.losses.heatmap import heatmap_loss
from tsal_dist.losses.kd import KDLossParams, kd_loss_terms, kd_total, l1_loss, l2_loss
from tsal_dist.loop.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                                       optimizer_state_of,
                                       rng_state, save_engine_checkpoint, set_rng_state)
from tsal_dist.loop.engines import build_engine
from tsal_dist.loop.loop import (DataLists, Reporter, WorkerContext, _sharded, eval_module,
                                 no_report, resolve_data, split_labeled)
from tsal_dist.loop.schedules import lr_at
from tsal_dist.models import MobileNetV2Regressor, build_model

__all__ = ["DistillConfig", "ASMConfig", "TeachersConfig", "StudentConfig", "KDConfig",
           "load_distill_config", "run_distill", "ensure_asm", "load_tough_from",
           "predict_normalized", "evaluate_model", "build_student"]


# ----------------------------------------------------------------------------- config


def _chk(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class ASMConfig:
    """Soft landmarks (METHOD.md §5.3)."""

    variance: float = 90.0  # percent of shape variance the kept PCA components explain
    normalization: Literal["center_scale", "hyperface"] = "center_scale"
    fit_augmentations: int = 2  # augmented copies of each training face the PCA is fitted on

    def __post_init__(self) -> None:
        _chk(0 < self.variance <= 100, "asm.variance", "must be a percentage in (0, 100]")
        _chk(self.fit_augmentations >= 1, "asm.fit_augmentations", "must be >= 1")


@dataclass(frozen=True)
class TeachersConfig:
    """Tough (hard landmarks) and Tolerant (soft landmarks) heatmap teachers."""

    tough_from: str = ""  # run folder of a TSAL run whose teacher is the Tough teacher ("" = train)
    steps: int = 300  # optimizer steps of each teacher trained here
    lr: float = 1e-3  # Adam, constant after optim.warmup_steps (KD: 1e-3)
    batch_size: int = 0  # faces per worker per step (0 = optim.batch_size)

    def __post_init__(self) -> None:
        _chk(self.steps >= 1, "teachers.steps", "must be >= 1")
        _chk(self.lr > 0, "teachers.lr", "must be > 0")
        _chk(self.batch_size >= 0, "teachers.batch_size", "must be >= 0")


@dataclass(frozen=True)
class StudentConfig:
    """The distilled network; optimised with ``experiment.optim`` (steps, lr, batch)."""

    arch: Literal["regression", "heatmap"] = "regression"  # MobileNetV2Regressor / detector
    width: float = 0.0  # MobileNetV2 width (0 = experiment.model.width, what export assumes)
    # Dropout before the regressor's linear layer. KD uses 0.5 for ~100s of epochs from
    # ImageNet weights; on a CPU budget of ~1000 steps from scratch 0.5 halves the useful
    # gradient and the student stays near the mean shape, so the default is 0 (set 0.5 for
    # KD's exact recipe on long runs).
    dropout: float = 0.0
    # Init of the regressor's linear layer O_L. "zero": the student starts by predicting the
    # crop centre (its outputs are 0.5 + offsets), the "hyperface" centring with a tiny init.
    # "glorot" (Keras' default, KD's code) starts with offsets of ~0.7 crop (train mode), and
    # the first ~200 of a short run's steps only undo that.
    head_init: Literal["zero", "glorot"] = "zero"
    # Adam's (coupled) L2 weight decay for the student. The regression loss in crop units is
    # ~1e-3, so decay 1e-4 pulls as hard as the data on the backbone's weights; KD's student
    # uses none. The teachers keep experiment.optim.weight_decay.
    weight_decay: float = 0.0
    # Seed of the student's initial weights only (-1 = experiment.train.seed). The batch order
    # and augmentation stay those of experiment.train.seed, so reruns that differ only here
    # measure init noise and can share the teachers' cached predictions (``teacher_cache``).
    seed: int = -1

    def __post_init__(self) -> None:
        _chk(self.width >= 0, "student.width", "must be >= 0")
        _chk(self.seed >= -1, "student.seed", "must be >= -1")
        _chk(0 <= self.dropout < 1, "student.dropout", "must be in [0, 1)")
        _chk(self.weight_decay >= 0, "student.weight_decay", "must be >= 0")


@dataclass(frozen=True)
class KDConfig:
    """Student loss. ``variant`` picks the preset; a non-null flag overrides it.

    kd = w_main * main + w_tough * aloss_tough + w_tol * aloss_tolerant (tsal_dist.losses.kd)
    """

    loss: Literal["kd", "l2", "l1"] = "kd"
    variant: Literal["code", "paper"] = "code"  # code: beta 0.15, reflect, factor 3; paper: 0.4..
    beta_frac: float | None = None
    low_ramp: bool | None = None
    reflect: bool | None = None
    main_factor: float | None = None
    alpha_tough: float = 1.9
    alpha_neg_tough: float = -0.45
    alpha_tol: float = 1.8
    alpha_neg_tol: float = -0.4
    w_main: float = 2.0
    w_tough: float = 1.0
    w_tol: float = 1.0

    def __post_init__(self) -> None:
        try:
            self.params()
        except ValueError as e:
            raise ConfigError(f"kd: {e}") from None

    def params(self) -> KDLossParams:
        base = KDLossParams.paper() if self.variant == "paper" else KDLossParams.code()
        over = {k: getattr(self, k) for k in ("beta_frac", "low_ramp", "reflect", "main_factor")
                if getattr(self, k) is not None}
        over.update({k: getattr(self, k) for k in ("alpha_tough", "alpha_neg_tough", "alpha_tol",
                                                    "alpha_neg_tol", "w_main", "w_tough",
                                                    "w_tol")})
        return dataclasses.replace(base, **over)


def _default_experiment() -> ExperimentConfig:
    # Teachers heavier than the student (ResNet-18-style heatmap detector vs MobileNetV2
    # regressor at width 0.5), KD's optimizer (Adam, no schedule), no TSAL video clips.
    # Student steps: direct regression from a global-average-pooled 3x3 map (96 px) sits at
    # the mean shape for ~600 steps of batch 8 before it localises (synthetic data, measured:
    # NME 32% at 600 steps, 18% at 1000, single process); 1000 steps x 2 workers (batch 16)
    # is ~3 min of the ~10 min default run on 2 CPU cores. 96 px (not KD's 224) keeps the
    # teachers' 0.5 s/step affordable; 128 px learned faster per step but cost 1.6x per step.
    return ExperimentConfig(
        model=ModelConfig(backbone="resnet", width=0.5),
    # Student lr 3e-3 (KD: 1e-3): at 1000 steps, two seeds, plain L2 reached NME 14.0 / 20.4%
    # with 3e-3 vs 17.7 / 23.2% with 1e-3 (measured at 96 px, zero head, no dropout / decay;
    # dropout 0.5: 28.4%, weight decay 1e-4: 22.3%, both seed 0 at 1e-3).
        optim=OptimConfig(lr=3e-3, steps=1000, warmup_steps=20, schedule="constant",
                          clips_per_batch=0, batch_size=8),
        run=RunConfig(log_every=25, checkpoint_every=100, eval_every=0, export=True))


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run: the experiment sections it shares with training, plus KD's own."""

    experiment: ExperimentConfig = field(default_factory=_default_experiment)
    asm: ASMConfig = field(default_factory=ASMConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    kd: KDConfig = field(default_factory=KDConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistillConfig":
        return from_dict(cls, d)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def load_distill_config(path: str | Path | None = None,
                        overrides: Mapping[str, Any] | None = None) -> DistillConfig:
    """Defaults <- YAML (overrides only; unknown keys raise) <- dotted overrides
    (``experiment.optim.steps=100``, ``kd.variant=paper``)."""
    return load_config(path, overrides, base=DistillConfig())


# ----------------------------------------------------------------------------- helpers


def _to_norm(px: Tensor, size: int) -> Tensor:
    return (px + 0.5) / float(size)


def predict_normalized(model: nn.Module, images: Tensor, codec: HeatmapCodec | None) -> Tensor:
    """(B, K, 2) crop-normalised coordinates of a regressor (codec None) or heatmap detector.

    For a detector the unused centroid outputs are added times 0 (see ``_unused_heads``)."""
    out = model(images)
    if codec is None:
        return out
    xy, _ = codec.locate(out["heatmaps"][-1][:, : codec.num_points])
    return _to_norm(xy, codec.input_size) + _unused_heads(out)


def _codec(model: nn.Module, m: ModelConfig, k: int) -> HeatmapCodec:
    return HeatmapCodec.for_model(m, stride=int(model.stride), num_points=k,
                                  input_size=int(model.input_size))


def build_student(dcfg: DistillConfig) -> nn.Module:
    """The student of ``dcfg``: MobileNetV2Regressor, or a MobileNetV2 heatmap detector."""
    e = dcfg.experiment
    width = dcfg.student.width or e.model.width
    if dcfg.student.arch == "regression":
        model = MobileNetV2Regressor(e.data.num_points, e.model.input_size, width=width,
                                     dropout=dcfg.student.dropout)
        if dcfg.student.head_init == "zero":  # predict the crop centre until the data says not
            nn.init.zeros_(model.fc.weight)
        return model
    return build_model(dataclasses.replace(e.model, backbone="mobilenetv2", width=width),
                       e.data.num_points)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _unused_heads(out: dict[str, Any]) -> Tensor:
    """0 * (centroid outputs and every heatmap stage): keeps every parameter in the graph so
    DDP's reducer does not wait for gradients of heads the distillation does not train (the
    centroid branch; the early stages of a heatmap student). Adds exactly 0."""
    total = out["center"].sum() + out["offsets"].sum()
    for h in out["heatmaps"]:
        total = total + h.sum()
    return 0.0 * total


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


def _datasets(dcfg: DistillConfig) -> tuple[DataLists, LabeledImageDataset, list]:
    e = dcfg.experiment
    d = e.data
    lists = resolve_data(e)
    entries = [x for p in lists.labeled for x in read_list(p)]
    train, val = split_labeled(entries, e.run.val_images, d.labeled_limit)
    ds = LabeledImageDataset(train, num_points=d.num_points, input_size=e.model.input_size,
                             pre_crop_expand=d.pre_crop_expand, augment=True,
                             rotate_max_deg=d.rotate_max_deg, scale_min=d.scale_min,
                             scale_max=d.scale_max, shift_max_frac=d.shift_max_frac,
                             flip=d.flip, strict=d.strict)
    return lists, ds, val


# ----------------------------------------------------------------------------- phase 1: ASM


def ensure_asm(dcfg: DistillConfig, run_dir: str | Path,
               dataset: LabeledImageDataset | None = None) -> ShapeModel:
    """Load ``<run>/asm.npz`` or fit it on ``fit_augmentations`` augmented copies of every
    training face (the shapes the teachers see) and save it atomically."""
    path = Path(run_dir) / "asm.npz"
    if path.is_file():
        return ShapeModel.load(path)
    if dataset is None:
        dataset = _datasets(dcfg)[1]
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


def load_tough_from(run: str | Path) -> tuple[dict[str, Tensor], ExperimentConfig, Path]:
    """The TSAL teacher of a previous run: (state dict, its experiment config, checkpoint)."""
    ckpt = latest_checkpoint(Path(run).expanduser() / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{run}: no checkpoints/ckpt-*.pt (teachers.tough_from)")
    state = load_checkpoint(ckpt)
    if "teacher" not in state:
        raise CheckpointError(f"{ckpt}: checkpoint has no 'teacher' (teachers.tough_from)")
    return state["teacher"], ExperimentConfig.from_dict(state["config"]), ckpt


def train_teacher(role: str, *, dcfg: DistillConfig, dataset: LabeledImageDataset,
                  asm: ShapeModel | None, ckpt_dir: Path, ctx: WorkerContext,
                  metrics_path: Path, reporter: Reporter, progress: bool) -> nn.Module:
    """Train (or resume, or just load when finished) one heatmap teacher on hard landmarks
    (``asm`` None, the Tough one) or ASM soft landmarks (the Tolerant one); return it frozen."""
    e, t = dcfg.experiment, dcfg.teachers
    k = e.data.num_points
    torch.manual_seed(e.train.seed + (1 if role == "tough" else 2))
    model = build_model(e.model, k)
    codec = _codec(model, e.model, k)
    batch = t.batch_size or e.optim.batch_size
    eng = build_engine(model, e.train, e.optim, ctx.device, lr=t.lr, micro_batch=batch)
    start = 0
    ck = latest_checkpoint(ckpt_dir)
    if ck is not None:
        st = load_checkpoint(ck)
        eng.load_full_state_dict(st["teacher"])
        start = int(st["step"])
        if start < t.steps:
            eng.load_optimizer_state(optimizer_state_of(st, "teacher", ck, ctx.rank))
            set_rng_state(st["rng"])
    seed = e.train.seed + (7 if role == "tough" else 13)
    sums, n, t0 = 0.0, 0, time.perf_counter()
    model.train()
    for step, b in zip(range(start, t.steps), _batches(dataset, start, t.steps, ctx, batch,
                                                       seed, e)):
        target_xy = b["landmarks"] if asm is None else _soft_targets(asm, b["landmarks"],
                                                                       b["visible"])
        target, mask = codec.encode(target_xy, b["visible"])
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
            save_engine_checkpoint(ckpt_dir, step=done, engines={"teacher": eng}, payload={
                "config": e.to_dict(), "step": done, "role": role, "rng": rng_state(),
                "format": "tsal_dist.distill_teacher/1"}, rank=ctx.rank, sharded=_sharded(e),
                keep=e.run.keep_checkpoints, barrier=ctx.barrier)
            reporter({"phase": role, "step": done}, None)
    return _freeze(eval_module(eng, e, ctx.device))  # fp32 weights whatever the training precision


# ----------------------------------------------------------------------------- evaluation


class _CoordsAsMaps(nn.Module):
    """Adapter so tsal_dist.eval.run.predict can run a regressor: 'heatmaps' = crop px coords."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_points = model.num_points
        self.input_size = model.input_size

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        return {"heatmaps": [self.model(images) * float(self.input_size) - 0.5]}


def evaluate_model(model: nn.Module, list_path: str | Path, *, e: ExperimentConfig,
                   name: str | None = None) -> dict[str, Any]:
    """Summary (NME inter-ocular / AUC / FR ...) of a heatmap detector or regressor on one list."""
    from tsal_dist.eval.run import evaluate_list, predict, score_predictions

    if not isinstance(model, MobileNetV2Regressor):
        return evaluate_list(model, list_path, input_size=e.model.input_size,
                             pre_crop_expand=e.data.pre_crop_expand, num_points=e.data.num_points,
                             sigma_px=e.model.heatmap_sigma_px, window=e.model.decode_window,
                             locate=e.model.decode, blur_cells=e.model.decode_blur_cells,
                             strict=e.data.strict, name=name).summary
    entries = [x for x in read_list(list_path) if x.annotation is not None]
    ds = EvalImageDataset(entries, num_points=e.data.num_points, input_size=e.model.input_size,
                          pre_crop_expand=e.data.pre_crop_expand, strict=e.data.strict)
    out = predict(_CoordsAsMaps(model), ds,
                  decode=lambda c: (c, torch.ones_like(c[..., 0])))
    summary, _ = score_predictions(out["preds"], out["gts"], out["visible"], out["face_size"],
                                   e.data.num_points)
    summary["list"] = str(list_path)
    return summary


# ----------------------------------------------------------------------------- the run


def run_distill(dcfg: DistillConfig, *, run_dir: str | Path, ctx: WorkerContext | None = None,
                reporter: Reporter = no_report, teacher_dir: str | Path | None = None,
                progress: bool = True, final_eval: bool = True,
                export: bool | None = None,
                teacher_cache: dict[tuple, tuple[Tensor, Tensor]] | None = None
                ) -> dict[str, Any]:
    """ASM -> teachers -> student; returns a summary (rank 0's is complete).

    Args:
        run_dir: run folder (config.yaml, distill.yaml, asm.npz, metrics.jsonl, checkpoints/,
            eval/, export/). Rerunning resumes each phase from its newest checkpoint.
        teacher_dir: where teacher checkpoints live (default ``<run>/checkpoints/teachers``);
            the ablation shares one pair of teachers between students this way.
        export: export the student (ONNX) at the end; None = ``experiment.run.export``.
        teacher_cache: optional dict reused across calls that share ``teacher_dir``: the two
            teachers' (B, K, 2) predictions per (teacher_dir, teacher steps, seed, rank, world,
            batch, step),
            so KD students with the same seed (same augmented batches) pay for the teachers'
            forwards once. Only valid while the teachers and the data are unchanged.
    """
    ctx = ctx or WorkerContext()
    run_dir = Path(run_dir)
    e = dcfg.experiment
    if e.train.torch_threads:
        torch.set_num_threads(e.train.torch_threads)
    if e.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt_dir = run_dir / "checkpoints"
    tdir = Path(teacher_dir) if teacher_dir else ckpt_dir / "teachers"
    metrics_path = run_dir / "metrics.jsonl"
    k, size = e.data.num_points, e.model.input_size

    # ---- Tough teacher from a previous run: its model section is the teachers' architecture
    tough_state = None
    if dcfg.teachers.tough_from:
        tough_state, tough_cfg, _ = load_tough_from(dcfg.teachers.tough_from)
        if tough_cfg.data.num_points != k:
            raise CheckpointError(f"{dcfg.teachers.tough_from}: teacher has "
                                  f"{tough_cfg.data.num_points} points, distillation uses {k}")
        e = dataclasses.replace(e, model=tough_cfg.model)
        dcfg = dataclasses.replace(dcfg, experiment=e)
        size = e.model.input_size

    # ---- data and the ASM (rank 0 fits; the driver has usually done it already)
    lists, ds, val_entries = _datasets(dcfg)
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
    if tough_state is not None:
        tough = build_model(e.model, k)
        tough.load_state_dict(tough_state)
        tough = _freeze(tough.to(ctx.device))
    else:
        tough = train_teacher("tough", asm=None, ckpt_dir=tdir / "tough", **common)
    tolerant = train_teacher("tolerant", asm=asm, ckpt_dir=tdir / "tolerant", **common)
    t_codec = _codec(tough, e.model, k)

    # ---- student
    o = e.optim
    torch.manual_seed(e.train.seed if dcfg.student.seed < 0 else dcfg.student.seed)
    student_model = build_student(dcfg)
    s_codec = None if dcfg.student.arch == "regression" else _codec(student_model, e.model, k)
    student = build_engine(student_model, e.train, e.optim, ctx.device,
                           weight_decay=dcfg.student.weight_decay)
    params = dcfg.kd.params()
    start = 0
    ck = latest_checkpoint(ckpt_dir)
    if ck is not None:
        st = load_checkpoint(ck)
        student.load_full_state_dict(st["student"])
        student.load_optimizer_state(optimizer_state_of(st, "student", ck, ctx.rank))
        set_rng_state(st["rng"])
        start = int(st["step"])
    ctx.barrier()
    student_model.train()
    sums: dict[str, float] = {}
    n, t0, last = 0, time.perf_counter(), {}
    for step, b in zip(range(start, o.steps), _batches(ds, start, o.steps, ctx, o.batch_size,
                                                       e.train.seed, e)):
        gt = _to_norm(b["landmarks"], size)
        vis = b["visible"]
        pred = predict_normalized(student.module, b["image"], s_codec)
        if dcfg.kd.loss == "kd":
            key = (str(tdir), dcfg.teachers.steps, e.train.seed, ctx.rank, ctx.world_size,
                   o.batch_size, step)
            if teacher_cache is not None and key in teacher_cache:
                t_tough, t_tol = teacher_cache[key]
            else:
                with torch.no_grad():  # both teachers on the same augmented batch (L2/L1 skip)
                    t_tough = predict_normalized(tough, b["image"], t_codec)
                    t_tol = predict_normalized(tolerant, b["image"], t_codec)
                if teacher_cache is not None:
                    teacher_cache[key] = (t_tough, t_tol)
            terms = kd_loss_terms(pred, gt, t_tough, t_tol, params, mask=vis)
            loss = kd_total(terms, params)
        elif dcfg.kd.loss == "l2":
            terms = {"l2": l2_loss(pred, gt, vis)}
            loss = terms["l2"]
        else:
            terms = {"l1": l1_loss(pred, gt, vis)}
            loss = terms["l1"]
        student.backward(loss)
        lr = lr_at(step, base_lr=o.lr, total_steps=o.steps, warmup_steps=o.warmup_steps,
                   schedule=o.schedule, milestones=o.milestones, gamma=o.gamma)
        student.step(lr)
        with torch.no_grad():  # the metric every variant shares: mean |error| in crop px
            err = float(((pred.detach() - gt) * size).norm(dim=-1).mul(vis).sum()
                        / vis.sum().clamp_min(1))
        for name, v in {"loss": float(loss.detach()), "px_error": err,
                        **{n_: float(v_.detach()) for n_, v_ in terms.items()}}.items():
            sums[f"student/{name}"] = sums.get(f"student/{name}", 0.0) + v
        n += 1
        done = step + 1
        if done % e.run.log_every == 0 or done == o.steps:
            last = {key: v / n for key, v in sums.items()}
            last.update(phase="student", step=done, lr=lr,
                        sec_per_step=(time.perf_counter() - t0) / n)
            sums, n, t0 = {}, 0, time.perf_counter()
            if ctx.is_main:
                _append_jsonl(metrics_path, last)
                if progress:
                    print(f"[student] step {done}/{o.steps} loss {last['student/loss']:.4f} "
                          f"err {last['student/px_error']:.2f}px", flush=True)
        if done % e.run.checkpoint_every == 0 or done == o.steps:
            path = save_engine_checkpoint(ckpt_dir, step=done, engines={"student": student},
                                          payload={
                "config": e.to_dict(), "distill_config": dcfg.to_dict(), "step": done,
                "student_arch": "regressor" if dcfg.student.arch == "regression" else "heatmap",
                "student_input_size": size,
                "student_width": dcfg.student.width or e.model.width,
                "teacher": {kk: v.detach().cpu().clone() for kk, v in tough.state_dict().items()},
                "tolerant": {kk: v.detach().cpu().clone()
                             for kk, v in tolerant.state_dict().items()},
                "rng": rng_state(), "metrics": last,
                "format": "tsal_dist.distill_checkpoint/1"}, rank=ctx.rank, sharded=_sharded(e),
                keep=e.run.keep_checkpoints, barrier=ctx.barrier)
            reporter({"phase": "student", "step": done,
                      **{kk: v for kk, v in last.items() if kk.startswith("student/")}}, path)

    summary: dict[str, Any] = {"run_dir": str(run_dir), "step": o.steps, "last": last}
    s_full = student.full_state_dict() if final_eval else None  # every rank (ZeRO collective)
    if not ctx.is_main or not final_eval:
        ctx.barrier()
        return summary

    # ---- final evaluation of all three models on every eval list, and export
    s_eval = build_student(dcfg)  # fp32 weights whatever the training precision
    s_eval.load_state_dict(s_full)
    s_eval.eval()
    results: dict[str, dict[str, Any]] = {}
    if lists.eval:
        from tsal_dist.eval.run import list_names

        names = list_names([str(p) for p in lists.eval])
        for which, model in (("tough", tough), ("tolerant", tolerant),
                             ("student", s_eval)):
            results[which] = {nm: evaluate_model(model, p, e=e, name=nm)
                              for nm, p in zip(names, lists.eval)}
        (run_dir / "eval").mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "eval" / "summary.json", results, default=float,
                          final_newline=False, mode=PLAIN)
        summary["eval"] = results
    if (e.run.export if export is None else export) and dcfg.student.arch == "regression":
        from tsal_dist.export import export as export_ckpt

        ck = latest_checkpoint(ckpt_dir)
        if ck is not None:
            # a failed export fails the run (ExportError naming the file); the checkpoints stay
            export_ckpt(ck, run_dir / "export", which="student")
            summary["export"] = str(run_dir / "export")
    ctx.barrier()
    return summary
