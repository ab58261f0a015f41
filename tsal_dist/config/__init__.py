"""Typed, frozen configuration: the only place defaults live.

Three schemas share one machinery: the TSAL experiment (``experiment.py``), the distillation
that embeds it (``distill.py``) and the Tune sweep file (``sweep.py``). Every field carries its
unit and, for coefficients, the formula it enters. Three sources change a config, all through
:func:`with_overrides`: YAML files (flattened to dotted keys), ``--set a.b=value`` on any CLI,
and Ray Tune trial configs (whose search-space keys are the same dotted paths). Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` naming the key.

Nothing in a config is ever executed: YAML is read with ``yaml.safe_load`` and values are coerced
by the field's annotation only. This package does not build models or read data.
"""

from tsal_dist.config.distill import (ASMConfig, DistillConfig, KDConfig, StudentConfig,
                                      TeachersConfig)
from tsal_dist.config.experiment import (DataConfig, ExperimentConfig, LossConfig, ModelConfig,
                                         OptimConfig, RunConfig, ScalingConfig, SyntheticConfig,
                                         TeacherConfig, TrainConfig)
from tsal_dist.config.loading import (load_config, load_distill_config, load_sweep_config,
                                      load_yaml, naming_file, parse_set_args, run_name_for,
                                      save_config)
from tsal_dist.config.schema import ConfigError, flatten, from_dict, to_dict, with_overrides
from tsal_dist.config.sweep import SchedulerConfig, SweepConfig

__all__ = [
    "ASMConfig", "ConfigError", "DataConfig", "DistillConfig", "ExperimentConfig", "KDConfig",
    "LossConfig", "ModelConfig", "OptimConfig", "RunConfig", "ScalingConfig", "SchedulerConfig",
    "StudentConfig", "SweepConfig", "SyntheticConfig", "TeacherConfig", "TeachersConfig",
    "TrainConfig", "flatten", "from_dict", "load_config", "load_distill_config",
    "load_sweep_config", "load_yaml", "naming_file", "parse_set_args", "run_name_for",
    "save_config", "to_dict", "with_overrides",
]
