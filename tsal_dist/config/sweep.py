"""The schema of a sweep file (``python -m tsal_dist.tune --config configs/sweeps/FILE.yaml``):
the only place the sweep's defaults live.

A sweep file is read by the same strict machinery as experiment configs
(:func:`tsal_dist.config.schema.from_dict`): an unknown key, a wrong type or an out-of-range value
raises :class:`ConfigError` naming the key, and the loader (``loading.load_sweep_config``) adds the
file. What does not belong here: resolving ``base:`` into an ``ExperimentConfig`` and checking
``space:`` against it (``tsal_dist.distributed.sweep``), running the trials
(``tsal_dist.distributed.tune_driver``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tsal_dist.config.schema import check


@dataclass(frozen=True)
class SchedulerConfig:
    """Early stopping of weak trials. In a sweep file ``scheduler: fifo`` is short for
    ``scheduler: {type: fifo}``."""

    # asha: Tune's ASHAScheduler on ``step`` stops weak trials; fifo: every trial runs out
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1  # steps every trial runs before it can be stopped
    reduction_factor: float = 2.0  # ASHA keeps 1 / reduction_factor of the trials at each rung
    max_t: int = 0  # steps of a full trial; 0 = the base config's optim.steps

    def __post_init__(self) -> None:
        check(self.grace_period >= 1, "scheduler.grace_period", "must be >= 1 (steps)")
        check(self.reduction_factor > 1, "scheduler.reduction_factor", "must be > 1")
        check(self.max_t >= 0, "scheduler.max_t", "must be >= 0 (0 = optim.steps)")

    @property
    def kind(self) -> str:
        """The scheduler's name (``type`` in the file)."""
        return self.type


@dataclass(frozen=True)
class SweepConfig:
    """One sweep file, as written (``base:`` not yet resolved, ``space:`` not yet checked)."""

    name: str = ""  # the sweep's name (trial and run folder prefix); "" = the file's stem
    # the base experiment: a config file (relative to the sweep file, else to the working
    # directory) or inline overrides (nested or dotted); None = the defaults
    base: str | dict[str, Any] | None = None
    set: dict[str, Any] = field(default_factory=dict)  # dotted overrides applied after base
    # dotted config key -> one domain, e.g. {loguniform: [0.1, 10.0]} (distributed/search_space.py)
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1  # samples of the space (each grid value is run num_samples times)
    max_concurrent_trials: int = 1  # trials running at once
    metric: str = "val_nme"  # the teacher's validation NME: the only metric every report has
    mode: Literal["min", "max"] = "min"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    output: str = ""  # the sweep's folder (runs, results, best config); "" = runs/sweeps/<stem>
    seed: int = 0  # seed of the up-front space check's random sample

    def __post_init__(self) -> None:
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(self.max_concurrent_trials >= 1, "max_concurrent_trials", "must be >= 1")
        check(self.seed >= 0, "seed", "must be >= 0")
        check(self.metric == "val_nme", "metric",
              f"only 'val_nme' (the teacher's validation NME) is reported, got {self.metric!r}")
