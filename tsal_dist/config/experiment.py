"""The TSAL experiment schema: typed, frozen sections, the only place training defaults live.

Every knob of a run is a field of one of the dataclasses below, with its unit and (for
coefficients) the formula it enters written next to it. Three sources change it, all through
:func:`tsal_dist.config.with_overrides`: YAML files (flattened to dotted keys), ``--set a.b=value``
on any CLI, and Ray Tune trial configs (whose search-space keys are the same dotted paths).
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key.

This module does not build models or read data; the distillation's sections are in
``distill.py``, reading and writing files in ``loading.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tsal_dist.config.schema import ConfigError, Schema, check, later
from tsal_dist.data.schemes import layout_problems  # standard library only


@dataclass(frozen=True)
class DomainConfig:
    """How wide the synthetic photos' distribution is; the defaults are the full (wide) one.

    Every knob narrows the renderer's draws by transforming them (scaling an angle, an amplitude,
    a probability), never by skipping or adding a draw: the defaults give byte-identical data,
    and a narrowed image keeps its seed's identity (and nearly always its background). Angles are
    scaled (drawn angle * max / wide max), so the distribution keeps its shape within the bound.

    The semi-supervised benchmark's labeled images come from ``NARROW_DOMAIN`` below (near-frontal,
    unoccluded, even light, mild expression, sharp); videos and test sets stay wide. In YAML:
    ``data.synthetic.labeled_domain: {yaw_max_deg: 15, pitch_max_deg: 10, roll_max_deg: 10,
    occluder_rate: 0, side_light: 0.25, expression: 0.3, blur_rate: 0}``.
    """

    yaw_max_deg: float = 55.0  # |yaw| bound: drawn yaw * yaw_max_deg / 55, in [0, 55]
    pitch_max_deg: float = 25.0  # |pitch| bound: drawn pitch * pitch_max_deg / 25, in [0, 25]
    roll_max_deg: float = 30.0  # |roll| bound: drawn roll * roll_max_deg / 30, in [0, 30]
    occluder_rate: float = 1.0  # occluder probability = 0.2 * occluder_rate, in [0, 1]
    # light direction's sideways/vertical parts * side_light (0 = frontal), and ambient
    # a ~ U(0.25, 0.6) -> a + (1 - side_light) * (0.6 - a) (0 = the evenest, 0.6); in [0, 1]
    side_light: float = 1.0
    expression: float = 1.0  # mouth, smile, brows, blinks and gaze * expression, in [0, 1]
    blur_rate: float = 1.0  # Gaussian / motion blur probability (0.3 / 0.15) * blur_rate, [0, 1]

    def __post_init__(self) -> None:
        for name, wide in (("yaw_max_deg", 55), ("pitch_max_deg", 25), ("roll_max_deg", 30),
                           ("occluder_rate", 1), ("side_light", 1), ("expression", 1),
                           ("blur_rate", 1)):
            check(0 <= getattr(self, name) <= wide, f"data.synthetic.labeled_domain.{name}",
                  f"must be in [0, {wide}] (the default {wide} is the wide domain)")


# The published semi-supervised shape's labeled domain (see DomainConfig, docs/data.md).
NARROW_DOMAIN = DomainConfig(yaw_max_deg=15.0, pitch_max_deg=10.0, roll_max_deg=10.0,
                             occluder_rate=0.0, side_light=0.25, expression=0.3, blur_rate=0.0)


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic dataset generated when ``data.root`` is empty, and the labeled
    images' domain (``DomainConfig``; ``NARROW_DOMAIN`` for the semi-supervised benchmark)."""

    images: int = 800  # labeled training images (300W-style)
    test_images: int = 200  # held-out test images, never used in training
    videos: int = 16  # unlabeled training videos (300VW-style)
    test_videos: int = 4  # held-out labeled test videos
    frames: int = 60  # frames per video
    image_size: int = 256  # rendered frame side, pixels
    seed: int = 0
    # domain of the labeled training images only; test images and all videos stay wide
    labeled_domain: DomainConfig = later(default_factory=DomainConfig)

    def __post_init__(self) -> None:
        for name in ("images", "test_images", "frames", "image_size"):
            check(getattr(self, name) > 0, f"data.synthetic.{name}", "must be > 0")
        for name in ("videos", "test_videos"):
            check(getattr(self, name) >= 0, f"data.synthetic.{name}", "must be >= 0")


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
        check(self.num_points > 0, "data.num_points", "must be > 0")
        check(self.labeled_limit >= 0, "data.labeled_limit", "must be >= 0")
        check(0 <= self.pre_crop_expand <= 2, "data.pre_crop_expand", "must be in [0, 2]")
        check(self.clip_length >= 2, "data.clip_length", "must be >= 2 (pairs of frames)")
        check(self.clip_stride >= 1, "data.clip_stride", "must be >= 1")
        check(0 <= self.rotate_max_deg <= 90, "data.rotate_max_deg", "must be in [0, 90]")
        check(0 < self.scale_min <= self.scale_max, "data.scale_min", "need 0 < min <= max")
        check(0 <= self.shift_max_frac < 0.5, "data.shift_max_frac", "must be in [0, 0.5)")
        check(self.loader_workers >= -1, "data.loader_workers", "must be >= 0, or -1 (auto)")
        check(0 <= self.clip_jitter_rotate_deg <= 90, "data.clip_jitter_rotate_deg",
               "must be in [0, 90]")
        check(0 <= self.clip_jitter_scale < 1, "data.clip_jitter_scale", "must be in [0, 1)")
        check(0 <= self.clip_jitter_shift_frac < 0.5, "data.clip_jitter_shift_frac",
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
    # Initial weights for teacher and student (both start from them): a state dict file (.pt or
    # .pth, read with weights_only) whose tensors are named as this model's (``backbone.*``, ...)
    # or as its backbone's (``features.0.weight``: torchvision's VGG-16 names for cpm_vgg16).
    # Every matching name must have the model's shape; names the model lacks are reported and
    # ignored (an ImageNet VGG-16's conv5 and classifier). "" = random init.
    init_from: str = later("")

    def __post_init__(self) -> None:
        check(self.input_size >= 32 and self.input_size % 32 == 0, "model.input_size",
               "must be a multiple of 32, >= 32")
        check(self.width > 0, "model.width", "must be > 0")
        check(1 <= self.cpm_stages <= 6, "model.cpm_stages", "must be in [1, 6]")
        check(self.heatmap_sigma_px > 0, "model.heatmap_sigma_px", "must be > 0")
        check(self.decode_window >= 1, "model.decode_window", "must be >= 1")
        check(0 <= self.decode_blur_cells <= 8, "model.decode_blur_cells", "must be in [0, 8]")
        check(self.centroid_index >= 0, "model.centroid_index", "must be >= 0")
        check(self.centroid_topk >= 1, "model.centroid_topk", "must be >= 1")


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
    # "pseudo_label" only: frames whose head turn, measured on the pseudo-label itself
    # (data.schemes.head_turn: nose tip vs eye corners, in inter-ocular distances; ~0.13 bounds
    # 95 % of faces within 15 deg of yaw, ~0.29 within 35 deg), exceeds this get no pseudo-label:
    # the source is trusted only on faces turned about as far as it has learned. 0 = no limit.
    pseudo_max_turn: float = later(0.0)
    # Where the structure invariant constraint applies: "clips" (this project's default: each
    # unlabeled clip's frames at their predicted centroid cell, differences within a clip) or
    # "labeled" (TSAL's code, docs/method_notes.md 1.6-1.7: the labeled faces at their ground-truth
    # centroid cell with the offset mask, differences over the whole batch).
    structure_on: Literal["clips", "labeled"] = later("clips")

    def __post_init__(self) -> None:
        for name in ("heatmap_weight", "centroid_weight", "offset_weight", "structure_weight",
                     "unsup_weight", "student_unsup_weight"):
            check(getattr(self, name) >= 0, f"loss.{name}", "must be >= 0")
        check(0 <= self.fusion_mu <= 1, "loss.fusion_mu", "must be in [0, 1]")
        check(0 <= self.pseudo_threshold <= 1, "loss.pseudo_threshold", "must be in [0, 1]")
        check(self.pseudo_max_turn >= 0, "loss.pseudo_max_turn", "must be >= 0 (0 = no limit)")
        check(self.pseudo_max_turn == 0 or self.student_consistency == "pseudo_label",
              "loss.pseudo_max_turn", "applies to loss.student_consistency=pseudo_label only")
        check(0 <= self.ramp_up_frac <= 1, "loss.ramp_up_frac", "must be in [0, 1]")
        check(0 <= self.ramp_down_frac <= 1, "loss.ramp_down_frac", "must be in [0, 1]")
        check(self.ramp_up_frac + self.ramp_down_frac <= 1, "loss.ramp_down_frac",
               "ramp_up_frac + ramp_down_frac must be <= 1")


@dataclass(frozen=True)
class TeacherConfig:
    """Recursive average filtering of the student into the teacher (the parameter server).

    The server keeps a filtered student F from the pushed snapshots:
      queue:  F = mean of the last `queue_length` pushed students (the paper's "students in queue")
      ema:    F <- ema_decay * F + (1 - ema_decay) * student, per push
      mutual: a two-way lerp through the server; F = student, and at a sync the worker also does
              student <- mutual_student_keep * student + (1 - mutual_student_keep) * teacher
    At each sync point every rank applies the same server version:
      teacher <- blend * teacher + (1 - blend) * F
    mutual_step: the original code's per-iteration two-way lerp, done by every rank on its own
      (identical) copies after every optimizer step, with no server version in between:
        student <- mutual_student_keep * student + (1 - mutual_student_keep) * teacher
        teacher <- blend * teacher + (1 - blend) * student_new
      (sync_every and max_staleness do not apply; nothing is pushed to the server.)
    In queue and ema modes the coupling is one way: the student never sees the teacher.
    """

    mode: Literal["queue", "ema", "mutual", "mutual_step"] = "queue"
    queue_length: int = 4  # N snapshots averaged in queue mode
    ema_decay: float = 0.9  # weight on the OLD F per push (ema mode), 0 < x < 1
    blend: float = 0.6  # weight on the OLD teacher at a sync, 0 < x < 1 (TSAL code: 0.6)
    mutual_student_keep: float = 0.6  # weight on the OLD student in mutual mode (TSAL: 0.6)
    sync_every: int = 10  # optimizer steps between rank-0 pushes / syncs
    max_staleness: int = 1  # sync intervals a used server version may lag its push (>= 1)
    average_buffers: bool = True  # BatchNorm running stats averaged (True) or kept (False)
    # False: the teacher never takes an optimizer step of its own and is only the average of
    # the student (the mean-teacher baseline); its forwards still make the targets it gives.
    optimize: bool = later(True)

    def __post_init__(self) -> None:
        check(self.queue_length >= 1, "teacher.queue_length", "must be >= 1")
        for name in ("ema_decay", "blend", "mutual_student_keep"):
            check(0 < getattr(self, name) < 1, f"teacher.{name}",
                   "is the weight on the OLD value and must be in (0, 1)")
        check(self.sync_every >= 1, "teacher.sync_every", "must be >= 1")
        check(self.max_staleness >= 1, "teacher.max_staleness", "must be >= 1")


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
    # Per-layer learning rates: "uniform" (every parameter at lr) or "tsal" (TSAL's groups:
    # backbone weights 1x, biases 2x; heatmap-stage weights 4x, biases 8x; the centroid branch,
    # which TSAL's code leaves out of its optimizer, 1x / 2x like the backbone).
    layer_lr: Literal["uniform", "tsal"] = later("uniform")
    bias_decay: bool = later(True)  # weight decay on biases and norm parameters too (TSAL: False)

    def __post_init__(self) -> None:
        check(self.lr > 0, "optim.lr", "must be > 0")
        check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        check(self.batch_size >= 1, "optim.batch_size", "must be >= 1")
        check(self.clips_per_batch >= 0, "optim.clips_per_batch", "must be >= 0")
        check(self.steps >= 1, "optim.steps", "must be >= 1")
        check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        check(all(0 < m < 1 for m in self.milestones), "optim.milestones",
               "must be fractions in (0, 1)")
        check(0 < self.gamma <= 1, "optim.gamma", "must be in (0, 1]")
        check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")


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
    # NHWC ("channels_last") weights and activations for the ddp engine; another summation order,
    # so another (not a worse) trajectory than the default's pinned one. Off by default; what it
    # gains: benchmarks/results/README.md. DeepSpeed ignores it.
    channels_last: bool = False

    def __post_init__(self) -> None:
        check(0 <= self.zero_stage <= 3, "train.zero_stage", "must be in [0, 3]")
        check(self.torch_threads >= 0, "train.torch_threads", "must be >= 0")


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train worker group."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # used only with use_gpu; a fraction (workers sharing a GPU) only for one worker: NCCL refuses
    # two ranks on one GPU
    gpus_per_worker: float = 1.0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "scaling.num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        check(self.gpus_per_worker > 0, "scaling.gpus_per_worker", "must be > 0")
        if self.use_gpu and self.num_workers > 1:
            check(self.gpus_per_worker >= 1 and float(self.gpus_per_worker).is_integer(),
                  "scaling.gpus_per_worker",
                  f"must be a whole number >= 1 with {self.num_workers} GPU workers (NCCL needs "
                  f"a GPU of its own for each), got {self.gpus_per_worker}")


@dataclass(frozen=True)
class RunConfig:
    """Where results go and how often things happen."""

    output: str = "runs"  # folder holding run folders; shared POSIX storage on clusters
    # Ray Train storage (pointer checkpoints); "" = <output>/_ray, or s3://...
    storage_path: str = ""
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
            check(getattr(self, name) >= 1, f"run.{name}", "must be >= 1")
        check(self.eval_every >= 0, "run.eval_every", "must be >= 0")
        check(self.val_images >= 1, "run.val_images", "must be >= 1")
        check(self.max_failures >= -1, "run.max_failures", "must be >= -1 (-1 = unlimited)")
        # one folder name inside run.output: never a path that leaves it or names it
        one_folder = ("/" not in self.name and "\\" not in self.name
                      and self.name not in (".", "..") and not self.name.startswith("~"))
        check(self.name == "" or one_folder, "run.name",
              f"must be one folder name (no '/', not '.' or '..'), got {self.name!r}")


@dataclass(frozen=True)
class ExperimentConfig(Schema):
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
        check(self.model.centroid_index < self.data.num_points, "model.centroid_index",
               f"must be < data.num_points ({self.data.num_points})")
        # what the point layout cannot serve, refused here so that every entry point (training,
        # distillation, sweeps, benchmarks) stops before any work rather than at the dataset
        problems = layout_problems(self.data.num_points, flip=self.data.flip,
                                   head_turn=self.loss.pseudo_max_turn > 0)
        if problems:
            raise ConfigError(problems[0])
        # fp16 needs loss scaling on a GPU: CPU kernels and DeepSpeed's CPU accelerator have no
        # fp16 path worth running (bf16 runs on both).
        check(self.train.precision != "fp16" or self.scaling.use_gpu, "train.precision",
               "fp16 needs GPU workers (scaling.use_gpu=true); use bf16 or fp32 on CPU")
