"""Typed, frozen experiment configuration: the only place defaults live.

Every knob of a run is a field of one of the dataclasses below, with its unit and (for
coefficients) the formula it enters written next to it. Three sources change it, all through
:func:`with_overrides`: YAML files (flattened to dotted keys), ``--set a.b=value`` on any CLI, and
Ray Tune trial configs (whose search-space keys are the same dotted paths). Unknown keys, wrong
types and out-of-range values raise :class:`ConfigError` naming the key.

Nothing in a config is ever executed: YAML is read with ``yaml.safe_load`` and values are coerced by
the field's annotation only. This module does not build models or read data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from tsal_dist.atomic import atomic_write_text


class ConfigError(ValueError):
    """A config key, type or value is invalid. The message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic dataset generated when ``data.root`` is empty."""

    images: int = 800  # labeled training images (300W-style)
    test_images: int = 200  # held-out test images, never used in training
    videos: int = 16  # unlabeled training videos (300VW-style)
    test_videos: int = 4  # held-out labeled test videos
    frames: int = 60  # frames per video
    image_size: int = 256  # rendered frame side, pixels
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images", "test_images", "frames", "image_size"):
            _check(getattr(self, name) > 0, f"data.synthetic.{name}", "must be > 0")
        for name in ("videos", "test_videos"):
            _check(getattr(self, name) >= 0, f"data.synthetic.{name}", "must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how a training crop is made from it."""

    # Folder the list files are relative to. "" = generate the synthetic dataset into cache_dir.
    root: str = ""
    cache_dir: str = "~/.cache/tsal_dist"
    # SBR list files (`image annotation x1 y1 x2 y2 [face_size]`), relative to root. Empty = the
    # synthetic dataset's lists.
    labeled_lists: tuple[str, ...] = ()
    unlabeled_lists: tuple[str, ...] = ()  # video frame lists; consecutive lines of a video = clip
    eval_lists: tuple[str, ...] = ()
    num_points: int = 68
    labeled_limit: int = 0  # use only the first L labeled faces (0 = all); the SSL ablation knob
    pre_crop_expand: float = 0.2  # box grows by this fraction of its size on EACH side (SBR)
    clip_length: int = 3  # T consecutive frames per unlabeled clip (TSAL: 10)
    clip_stride: int = 1  # frame step inside a clip
    rotate_max_deg: float = 20.0  # augmentation: rotation ~ U(-r, r), one draw per clip
    scale_min: float = 0.9  # augmentation: scale ~ U(min, max)
    scale_max: float = 1.1
    shift_max_frac: float = 0.1  # crop centre jitter, fraction of the crop side (TSAL 30/256)
    flip: bool = False  # horizontal flip with landmark pair swap (TSAL: off)
    flow: Literal["dis", "farneback", "none"] = "dis"  # tracking source for unlabeled clips
    # per-frame view jitter of unlabeled clips on top of the clip's one transform (0 = none):
    # rotation ~ U(-r, r) deg, zoom ~ U(1 - s, 1 + s), shift ~ U(-f S, f S) px. Use with
    # loss.consistency_space=output (in image space the registration cancels the jitter).
    clip_jitter_rotate_deg: float = 0.0
    clip_jitter_scale: float = 0.0
    clip_jitter_shift_frac: float = 0.0
    strict: bool = False  # True: the first bad file is fatal; False: report, skip, count
    # DataLoader processes per training worker making the batches ahead of the step (decoding,
    # augmentation, clip flow); -1 = auto: the worker's CPUs beyond its own (cpus_per_worker - 1;
    # all cores but one with --local), at most 8. Batches are the same for any value.
    loader_workers: int = -1
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _check(self.num_points > 0, "data.num_points", "must be > 0")
        _check(self.labeled_limit >= 0, "data.labeled_limit", "must be >= 0")
        _check(0 <= self.pre_crop_expand <= 2, "data.pre_crop_expand", "must be in [0, 2]")
        _check(self.clip_length >= 2, "data.clip_length", "must be >= 2 (pairs of frames)")
        _check(self.clip_stride >= 1, "data.clip_stride", "must be >= 1")
        _check(0 <= self.rotate_max_deg <= 90, "data.rotate_max_deg", "must be in [0, 90]")
        _check(0 < self.scale_min <= self.scale_max, "data.scale_min", "need 0 < min <= max")
        _check(0 <= self.shift_max_frac < 0.5, "data.shift_max_frac", "must be in [0, 0.5)")
        _check(self.loader_workers >= -1, "data.loader_workers", "must be >= 0, or -1 (auto)")
        _check(0 <= self.clip_jitter_rotate_deg <= 90, "data.clip_jitter_rotate_deg",
               "must be in [0, 90]")
        _check(0 <= self.clip_jitter_scale < 1, "data.clip_jitter_scale", "must be in [0, 1)")
        _check(0 <= self.clip_jitter_shift_frac < 0.5, "data.clip_jitter_shift_frac",
               "must be in [0, 0.5)")


@dataclass(frozen=True)
class ModelConfig:
    """Detector architecture and the codec constants that belong to it."""

    backbone: Literal["cpm_vgg16", "resnet", "mobilenetv2"] = "mobilenetv2"
    input_size: int = 96  # square crop side fed to the network, pixels
    width: float = 0.5  # channel multiplier of the light backbones (ignored by cpm_vgg16)
    cpm_stages: int = 2  # heatmap refinement stages (TSAL hard-codes 3)
    heatmap_sigma_px: float = 3.0  # Gaussian sigma in crop pixels (TSAL: 6 at 256 px)
    decode_window: int = 4  # soft-argmax window radius in heatmap cells (SBR 4; TSAL 20)
    # inference decode (eval, validation, export): "dark" = Gaussian blur + log-Taylor refinement
    # (codec.decode_dark), "window" = the SBR windowed mean above. Training's consistency terms
    # always use the differentiable window mean.
    decode: Literal["window", "dark"] = "dark"
    decode_blur_cells: float = 2.5  # DARK smoothing sigma in cells (chosen on validation images)
    centroid_index: int = 30  # 0-based landmark used as the facial centroid (nose tip, as TSAL)
    centroid_topk: int = 32  # K centroid candidates decoded for the student's pseudo-label

    def __post_init__(self) -> None:
        _check(self.input_size >= 32 and self.input_size % 32 == 0, "model.input_size",
               "must be a multiple of 32, >= 32")
        _check(self.width > 0, "model.width", "must be > 0")
        _check(1 <= self.cpm_stages <= 6, "model.cpm_stages", "must be in [1, 6]")
        _check(self.heatmap_sigma_px > 0, "model.heatmap_sigma_px", "must be > 0")
        _check(self.decode_window >= 1, "model.decode_window", "must be >= 1")
        _check(0 <= self.decode_blur_cells <= 8, "model.decode_blur_cells", "must be in [0, 8]")
        _check(self.centroid_index >= 0, "model.centroid_index", "must be >= 0")
        _check(self.centroid_topk >= 1, "model.centroid_topk", "must be >= 1")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the named loss terms. Total = sum(weight * term); the only weighting place.

    student = heatmap + centroid_w*focal + offset_w*offset + structure_w*SIC
              + ramp(step) * unsup_w * multi_source_consistency
    teacher = same supervised terms + ramp(step) * unsup_w * single_source_consistency
    """

    heatmap_weight: float = 1.0
    centroid_weight: float = 1.0  # CenterNet focal loss on the centroid map
    offset_weight: float = 0.1  # smooth-L1 on landmark offsets from the centroid (cells)
    structure_weight: float = 0.01  # facial structure invariant constraint, per clip
    unsup_weight: float = 1.0  # consistency weight on unlabeled clips, times the ramp
    # extra factor on the STUDENT's consistency only. Its term is TSAL's per-coordinate MEAN of
    # squared cell errors, ~1/(2K) of a per-frame sum: at 1 (TSAL) it is ~0.3 % of the student's
    # loss on the default run. K (68) puts it in the heatmap loss's units (per-frame sum / 2).
    student_unsup_weight: float = 1.0
    fusion_mu: float = 0.5  # student target = mu * heatmap_locations + (1 - mu) * centroid_shape
    ramp_up_frac: float = 0.4  # ramp reaches 1 at this fraction of the schedule (TSAL 60/150)
    ramp_down_frac: float = 0.0  # ramp decays over the last fraction (TSAL 40/150; 0 = never)
    structure_descriptor: Literal["pairs", "centroid"] = "pairs"  # (j, j+34) pairs or |o_j|^2
    # Whose outputs on the warped frames make the student's multi-source target: its own (TSAL
    # code) or the teacher's (mean-teacher reading of "the student absorbs the teacher").
    pseudo_source: Literal["self", "teacher"] = "self"
    # Where frame t is carried into frame t+1 for the consistency target: "image" (TSAL: the
    # model runs on the flow-registered image) or "output" (the model runs on frame t's own view
    # and its heatmaps/points are carried through the tracking grid; with data.clip_jitter_* the
    # two frames are different views, so the term asks for equivariance).
    consistency_space: Literal["image", "output"] = "image"
    # The student's unsupervised term: "multi_source" (TSAL: fused heatmap + centroid coordinates,
    # soft-argmax MSE), "heatmap" (the teacher's single-source heatmap MSE, on the target
    # pseudo_source names; with pseudo_source=teacher this is the mean-teacher recipe) or
    # "pseudo_label" (that source's landmarks with peak >= pseudo_threshold, re-rendered as sharp
    # Gaussian targets with the supervised heatmap loss; the rest are masked out).
    student_consistency: Literal["multi_source", "heatmap", "pseudo_label"] = "multi_source"
    pseudo_threshold: float = 0.4  # heatmap peak a pseudo-label needs (scores are in [0, ~1])

    def __post_init__(self) -> None:
        for name in ("heatmap_weight", "centroid_weight", "offset_weight", "structure_weight",
                     "unsup_weight", "student_unsup_weight"):
            _check(getattr(self, name) >= 0, f"loss.{name}", "must be >= 0")
        _check(0 <= self.fusion_mu <= 1, "loss.fusion_mu", "must be in [0, 1]")
        _check(0 <= self.pseudo_threshold <= 1, "loss.pseudo_threshold", "must be in [0, 1]")
        _check(0 <= self.ramp_up_frac <= 1, "loss.ramp_up_frac", "must be in [0, 1]")
        _check(0 <= self.ramp_down_frac <= 1, "loss.ramp_down_frac", "must be in [0, 1]")
        _check(self.ramp_up_frac + self.ramp_down_frac <= 1, "loss.ramp_down_frac",
               "ramp_up_frac + ramp_down_frac must be <= 1")


@dataclass(frozen=True)
class TeacherConfig:
    """Recursive average filtering of the student into the teacher (the parameter server).

    The server keeps a filtered student F from the pushed snapshots:
      queue:  F = mean of the last `queue_length` pushed students (the paper's "students in queue")
      ema:    F <- ema_decay * F + (1 - ema_decay) * student, per push
      mutual: the original code's two-way lerp; F = student, and at a sync the worker also does
              student <- mutual_student_keep * student + (1 - mutual_student_keep) * teacher
    At each sync point every rank applies the same server version:
      teacher <- blend * teacher + (1 - blend) * F
    """

    mode: Literal["queue", "ema", "mutual"] = "queue"
    queue_length: int = 4  # N snapshots averaged in queue mode
    ema_decay: float = 0.9  # weight on the OLD F per push (ema mode), 0 < x < 1
    blend: float = 0.6  # weight on the OLD teacher at a sync, 0 < x < 1 (TSAL code: 0.6)
    mutual_student_keep: float = 0.6  # weight on the OLD student in mutual mode (TSAL: 0.6)
    sync_every: int = 10  # optimizer steps between rank-0 pushes / syncs
    max_staleness: int = 1  # sync intervals a used server version may lag its push (>= 1)
    average_buffers: bool = True  # BatchNorm running stats averaged (True) or kept (False)

    def __post_init__(self) -> None:
        _check(self.queue_length >= 1, "teacher.queue_length", "must be >= 1")
        for name in ("ema_decay", "blend", "mutual_student_keep"):
            _check(0 < getattr(self, name) < 1, f"teacher.{name}",
                   "is the weight on the OLD value and must be in (0, 1)")
        _check(self.sync_every >= 1, "teacher.sync_every", "must be >= 1")
        _check(self.max_staleness >= 1, "teacher.max_staleness", "must be >= 1")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule, shared by teacher and student (each has its own instance)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only (nesterov)
    batch_size: int = 8  # labeled faces per worker per step
    clips_per_batch: int = 1  # unlabeled clips per worker per step (0 = supervised only)
    steps: int = 1500  # optimizer steps of the whole run
    warmup_steps: int = 100
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: tuple[float, ...] = (0.6, 0.75, 0.9)  # multistep, as fractions of steps
    gamma: float = 0.5  # multistep decay factor
    grad_clip: float = 5.0  # max grad norm (0 = off)

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(self.batch_size >= 1, "optim.batch_size", "must be >= 1")
        _check(self.clips_per_batch >= 0, "optim.clips_per_batch", "must be >= 0")
        _check(self.steps >= 1, "optim.steps", "must be >= 1")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _check(all(0 < m < 1 for m in self.milestones), "optim.milestones",
               "must be fractions in (0, 1)")
        _check(0 < self.gamma <= 1, "optim.gamma", "must be in (0, 1]")
        _check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """How each worker trains: engine, precision, determinism."""

    engine: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 0  # DeepSpeed ZeRO stage (0-3)
    # Mixed precision, both engines: ddp = torch.autocast (+ a gradient scaler for fp16);
    # deepspeed = low-precision weights with fp32 masters. Losses and decoders run in fp32 either
    # way. bf16 runs on CPU too; fp16 only on GPUs.
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    seed: int = 0
    deterministic: bool = True  # deterministic kernels and seeded data order (exact resume)
    torch_threads: int = 1  # intra-op threads per CPU worker (0 = torch default)
    # NHWC ("channels_last") weights and activations for the ddp engine. The default MobileNetV2's
    # forward+backward is ~15 % faster on one CPU thread (oneDNN), but the whole default run only
    # 4 % (872 vs 911 s on 2 cores) and its different summation order gives another trajectory
    # (6.01 vs 5.89 % NME, seed-level noise); off by default. DeepSpeed ignores it.
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check(0 <= self.zero_stage <= 3, "train.zero_stage", "must be in [0, 3]")
        _check(self.torch_threads >= 0, "train.torch_threads", "must be >= 0")


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train worker group."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used only with use_gpu
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "scaling.num_workers", "must be >= 1")
        _check(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _check(self.gpus_per_worker > 0, "scaling.gpus_per_worker", "must be > 0")


@dataclass(frozen=True)
class RunConfig:
    """Where results go and how often things happen."""

    output: str = "runs"  # folder holding run folders; shared POSIX storage on clusters
    storage_path: str = ""  # Ray Train storage (pointer checkpoints); "" = <output>/_ray, or s3://...
    name: str = ""  # run folder name; "" = tsal-<config hash> (run_name_for). Same name = resume.
    log_every: int = 50  # steps between metrics.jsonl rows / progress reports
    checkpoint_every: int = 400  # steps between checkpoints (and the final step)
    keep_checkpoints: int = 2  # newest checkpoints kept
    eval_every: int = 400  # steps between validation NMEs of the teacher (0 = none)
    val_images: int = 64  # held-out images used for the periodic validation NME
    max_failures: int = 2  # Ray Train worker-group restarts before giving up
    export: bool = True  # write ONNX + model.json of the teacher at the end

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"run.{name}", "must be >= 1")
        _check(self.eval_every >= 0, "run.eval_every", "must be >= 0")
        _check(self.val_images >= 1, "run.val_images", "must be >= 1")
        _check(self.max_failures >= -1, "run.max_failures", "must be >= -1 (-1 = unlimited)")


@dataclass(frozen=True)
class ExperimentConfig:
    """One TSAL experiment, all sections."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check(self.model.centroid_index < self.data.num_points, "model.centroid_index",
               f"must be < data.num_points ({self.data.num_points})")
        # fp16 needs loss scaling on a GPU: CPU kernels and DeepSpeed's CPU accelerator have no
        # fp16 path worth running (bf16 runs on both).
        _check(self.train.precision != "fp16" or self.scaling.use_gpu, "train.precision",
               "fp16 needs GPU workers (scaling.use_gpu=true); use bf16 or fp32 on CPU")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        return from_dict(cls, d)

    def hash(self) -> str:
        """Short stable hash of the resolved config (sha256 of its canonical JSON)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def run_name_for(cfg: ExperimentConfig) -> str:
    """``run.name`` or a name derived from the config: rerunning the same command resumes."""
    if cfg.run.name:
        return cfg.run.name
    return "tsal-" + dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name="")).hash()[:10]


# ----------------------------------------------------------------------------- generic machinery


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict of JSON/YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(x) for x in obj]
    return obj


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to annotation ``tp``; strings are parsed by type, never evaluated."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        last: Exception | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{key}: cannot be None")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        elem = args[0] if args else Any
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, elem, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an int, got a bool")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got a bool")
        out: float | None = None
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                pass
        if out is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(out):  # inf / nan pass every range check written as a comparison
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def from_dict(cls: type, d: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping; unknown keys raise."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {d!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown config key (known: {sorted(names)})")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - guarded by the unknown-key check
        raise ConfigError(f"{prefix or '<root>'}: {e}") from e


def _set_path(d: dict[str, Any], parts: list[str], value: Any, full: str) -> None:
    head = parts[0]
    if len(parts) == 1:
        if isinstance(d.get(head), dict) and isinstance(value, Mapping):
            for k, v in value.items():
                _set_path(d[head], [k], v, f"{full}.{k}")
        else:
            d[head] = value
        return
    if head not in d:
        raise ConfigError(f"{full}: unknown config key {head!r} (known: {sorted(d)})")
    if not isinstance(d[head], dict):
        raise ConfigError(f"{full}: {head!r} is not a section")
    _set_path(d[head], parts[1:], value, full)


def with_overrides(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """Return ``cfg`` with dotted-key overrides applied, e.g. ``{"teacher.ema_decay": 0.995}``.

    Values may be typed or strings (parsed by the field's annotation). Unknown paths, wrong types and
    out-of-range values raise ConfigError naming the key. All overrides are applied before any
    check runs, so dependent fields (``data.num_points`` with ``model.centroid_index``) can change
    together.
    """
    d = to_dict(cfg)
    for key, value in overrides.items():
        _set_path(d, key.split("."), value, key)
    return from_dict(type(cfg), d)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_set_args(items: Sequence[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}``; a missing '=' raises."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely (no tags, nothing executed); errors name the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                base: Any = None) -> Any:
    """Defaults <- YAML file (overrides only) <- dotted overrides. Errors name file and key.

    ``base`` is the config object to start from (an ExperimentConfig by default; any frozen
    config dataclass works, e.g. the distillation's DistillConfig).
    """
    cfg = base if base is not None else ExperimentConfig()
    if path is not None:
        try:
            cfg = with_overrides(cfg, flatten(load_yaml(path)))
        except ConfigError as e:
            if str(e).startswith(str(path)):
                raise
            raise ConfigError(f"{path}: {e}") from e
    if overrides:
        cfg = with_overrides(cfg, overrides)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
