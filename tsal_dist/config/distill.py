"""The distillation schema (KD-Loss, docs/distillation.md): the experiment sections it shares with
training, plus its own ASM, teachers, student and loss sections; defaults live only here.

Loaded and overridden like the experiment (``load_distill_config``, ``--set kd.variant=paper``),
written beside the run as ``distill.yaml`` and into every student checkpoint. What does not belong
here: the distillation loop (``tsal_dist.loop.distill_loop``) and the loss math
(``tsal_dist.losses.kd``, whose ``KDLossParams`` :meth:`KDConfig.params` resolves to).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tsal_dist.config.experiment import ExperimentConfig, ModelConfig, OptimConfig, RunConfig
from tsal_dist.config.schema import ConfigError, Schema, check, later

if TYPE_CHECKING:
    from tsal_dist.losses.kd import KDLossParams


@dataclass(frozen=True)
class ASMConfig:
    """Soft landmarks (docs/method_notes.md §5.3)."""

    variance: float = 90.0  # percent of shape variance the kept PCA components explain
    normalization: Literal["center_scale", "hyperface"] = "center_scale"
    fit_augmentations: int = 2  # augmented copies of each training face the PCA is fitted on

    def __post_init__(self) -> None:
        check(0 < self.variance <= 100, "asm.variance", "must be a percentage in (0, 100]")
        check(self.fit_augmentations >= 1, "asm.fit_augmentations", "must be >= 1")


@dataclass(frozen=True)
class TeachersConfig:
    """Tough (hard landmarks) and Tolerant (soft landmarks) heatmap teachers."""

    tough_from: str = ""  # run folder of a TSAL run whose teacher is the Tough teacher ("" = train)
    steps: int = 300  # optimizer steps of each teacher trained here
    lr: float = 1e-3  # Adam, constant after optim.warmup_steps (KD: 1e-3)
    batch_size: int = 0  # faces per worker per step (0 = optim.batch_size)

    def __post_init__(self) -> None:
        check(self.steps >= 1, "teachers.steps", "must be >= 1")
        check(self.lr > 0, "teachers.lr", "must be > 0")
        check(self.batch_size >= 0, "teachers.batch_size", "must be >= 0")


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
        check(self.width >= 0, "student.width", "must be >= 0")
        check(self.seed >= -1, "student.seed", "must be >= -1")
        check(0 <= self.dropout < 1, "student.dropout", "must be in [0, 1)")
        check(self.weight_decay >= 0, "student.weight_decay", "must be >= 0")


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
    # Steps of plain L2 before KD-Loss takes over (loss "kd" only; 0 = KD-Loss from the first
    # step, as published). KD-Loss students leave the mean shape later than L2 students, and the
    # later a student leaves it, the worse it ends; with 1000 of 3000 steps of L2 first, KD-Loss
    # (paper) beats plain L2 on every seed (benchmarks/results/distill_ablation_warmup.md).
    l2_warmup_steps: int = 0
    # How KD-Loss takes over after the warm-up. "abrupt": as it is; its gradient is about a
    # hundred times plain L2's, which the optimizer's running moments and the clip norm were
    # tuned to, and the training error jumps for a few hundred steps. "matched": KD-Loss is scaled
    # by ||dL2/dpred|| / ||dKD/dpred|| measured on the first KD batch (mean over ranks), kept for
    # the rest of the run (checkpointed), so the gradient the optimizer sees does not jump. On the
    # benchmark "matched" ends significantly worse than "abrupt"
    # (benchmarks/results/distill_ablation_warmup.md). "reset": KD-Loss as it is, but the
    # optimizer's state (Adam's moments and step count) is cleared at the switch, so that its
    # second moment restarts at KD-Loss's scale instead of lagging behind it for ~1000 steps;
    # a smaller jump, and the best student of the benchmark (distill_ablation_reset.md).
    switch: Literal["abrupt", "matched", "reset"] = later("abrupt")
    # A control for the switch (benchmarks/distill_ablation.py): from step ``jump_step`` on
    # (0 = never) the student's loss, whichever it is, is multiplied by ``jump_factor``, so the
    # optimizer sees a switch's jump in gradient scale without any change of loss.
    jump_step: int = later(0)
    jump_factor: float = later(1.0)
    # The learning rate from the switch to KD-Loss on, as a multiple of the schedule's (1 = the
    # schedule as it is). KD-Loss's gain after the warm-up comes with the optimizer's large steps
    # right after the switch (a matched switch, without them, ends worse), so this asks whether
    # larger steps throughout the KD-Loss phase gain more (benchmarks/distill_ablation.py).
    switch_lr_factor: float = later(1.0)

    def __post_init__(self) -> None:
        check(self.l2_warmup_steps >= 0, "kd.l2_warmup_steps", "must be >= 0")
        check(self.jump_step >= 0, "kd.jump_step", "must be >= 0")
        check(self.jump_factor > 0, "kd.jump_factor", "must be > 0")
        check(self.jump_factor == 1.0 or self.jump_step > 0, "kd.jump_factor",
              "needs kd.jump_step > 0 (the step from which the loss is multiplied)")
        check(self.switch_lr_factor > 0, "kd.switch_lr_factor", "must be > 0")
        check(self.switch_lr_factor == 1.0 or (self.loss == "kd" and self.l2_warmup_steps > 0),
              "kd.switch_lr_factor", "needs kd.loss 'kd' and kd.l2_warmup_steps > 0 (it scales "
              "the learning rate from the switch to KD-Loss on)")
        check(self.switch == "abrupt" or self.l2_warmup_steps > 0, "kd.switch",
              f"'{self.switch}' needs kd.l2_warmup_steps > 0 (it acts at the switch from L2 to "
              "KD-Loss)")
        check(self.switch == "abrupt" or self.loss == "kd", "kd.switch",
              f"'{self.switch}' needs kd.loss 'kd' (there is no switch with '{self.loss}')")
        try:
            self.params()
        except ValueError as e:
            raise ConfigError(f"kd: {e}") from None

    def params(self) -> KDLossParams:
        """The loss constants: the ``variant`` preset with every set field applied."""
        # imported here: the constants live with the loss, and config imports no torch
        from tsal_dist.losses.kd import KDLossParams

        base = KDLossParams.paper() if self.variant == "paper" else KDLossParams.code()
        over = {k: getattr(self, k) for k in ("beta_frac", "low_ramp", "reflect", "main_factor")
                if getattr(self, k) is not None}
        over.update({k: getattr(self, k) for k in ("alpha_tough", "alpha_neg_tough", "alpha_tol",
                                                    "alpha_neg_tol", "w_main", "w_tough",
                                                    "w_tol")})
        return dataclasses.replace(base, **over)


def _default_experiment() -> ExperimentConfig:
    # Teachers heavier than the student (ResNet-18-style heatmap detector vs MobileNetV2
    # regressor at width 0.5), KD's optimizer (Adam, no schedule), no TSAL video clips. The
    # student recipe for a CPU budget (96 px, 1000 steps, lr 3e-3 where KD uses 1e-3, no dropout
    # or decay) and why: docs/distillation.md, "Student recipe on a CPU budget".
    return ExperimentConfig(
        model=ModelConfig(backbone="resnet", width=0.5),
        optim=OptimConfig(lr=3e-3, steps=1000, warmup_steps=20, schedule="constant",
                          clips_per_batch=0, batch_size=8),
        run=RunConfig(log_every=25, checkpoint_every=100, eval_every=0, export=True))


@dataclass(frozen=True)
class DistillConfig(Schema):
    """One distillation run: the experiment sections it shares with training, plus KD's own."""

    experiment: ExperimentConfig = field(default_factory=_default_experiment)
    asm: ASMConfig = field(default_factory=ASMConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    kd: KDConfig = field(default_factory=KDConfig)

    def student_width(self) -> float:
        """The student's MobileNetV2 width: ``student.width``, or the experiment's when 0."""
        return self.student.width or self.experiment.model.width

