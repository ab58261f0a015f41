"""A sweep file made ready to run: its base experiment resolved, its space checked against it,
every check that can fail before a trial starts, and the resolved sweep written for the record.

The file's schema and defaults are :class:`tsal_dist.config.SweepConfig` (read strictly, like
every config). This module imports no Ray. What does not belong here: the trials and Tune
(``tune_driver.py``), the result files (``sweep_results.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tsal_dist.atomic import atomic_write_text
from tsal_dist.config import (ConfigError, ExperimentConfig, SchedulerConfig, flatten,
                              load_sweep_config, load_yaml, naming_file, to_dict, with_overrides)
from tsal_dist.distributed.search_space import num_trials, validate_space


@dataclass(frozen=True)
class Sweep:
    """A resolved sweep (every value from the file or its schema's defaults; none here).

    Attributes:
        name: the sweep's name (the file's stem unless it sets one).
        base: the resolved base experiment.
        base_overrides: the dotted overrides that made ``base`` from the defaults.
        space: the ``space:`` domains (checked against ``base``).
        output: the sweep's folder.
        source: the sweep file.
        num_samples, max_concurrent_trials, metric, mode, scheduler, seed: as in the file.
    """

    name: str
    base: ExperimentConfig
    base_overrides: dict[str, Any]
    space: dict[str, Any]
    num_samples: int
    max_concurrent_trials: int
    metric: str
    mode: str
    scheduler: SchedulerConfig
    output: str
    seed: int
    source: str


def load_sweep(path: str | Path, overrides: Mapping[str, Any] | None = None, *,
               settings: Mapping[str, Any] | None = None) -> Sweep:
    """Read and fully check a sweep file (including its space) before anything runs.

    Args:
        path: the sweep YAML.
        overrides: dotted base-config overrides (``--set``), applied after ``base:`` and ``set:``.
        settings: sweep keys replacing the file's (``--output``, ``--num-samples``, ...).

    Raises:
        ConfigError: ``<path>: <key>: <reason>``.
    """
    path = Path(path)
    with naming_file(path):
        spec = load_sweep_config(path, settings)
        base_ov = _base_overrides(spec.base, path)
        explicit = {**{f"set.{k}": k for k in flatten(spec.set)},
                    **{f"--set {k}": k for k in (overrides or {})}}
        for where, k in explicit.items():  # the trials' samples would replace it unsaid
            if k in spec.space:
                raise ConfigError(f"{where}: {k} is swept (space:); its trials sample it")
        # where each key came from, for its error line: the base file, the sweep's set:, --set
        origin = {k: _base_file(spec.base, path) or path for k in base_ov}
        origin.update({k: path for k in flatten(spec.set)})
        origin.update({k: "--set" for k in (overrides or {})})
        base_ov.update(flatten(spec.set))
        base_ov.update(dict(overrides or {}))
    try:
        base = with_overrides(ExperimentConfig(), base_ov)
    except ConfigError as e:
        where = origin.get(str(e).split(":", 1)[0], path)
        raise ConfigError(f"{where} {e}" if where == "--set" else f"{where}: {e}") from None
    with naming_file(path):
        sweep = Sweep(
            name=spec.name or path.stem, base=base,
            base_overrides=base_ov, space=dict(spec.space), num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials, metric=spec.metric,
            mode=spec.mode, scheduler=spec.scheduler,
            output=spec.output or f"runs/sweeps/{path.stem}", seed=spec.seed, source=str(path))
        check_sweep(sweep)
    return sweep


def _base_overrides(base: str | Mapping[str, Any] | None, sweep_path: Path) -> dict[str, Any]:
    """``base:`` as dotted overrides: a config file (relative to the sweep file, then to the
    working directory) or an inline mapping of (nested or dotted) overrides."""
    if base is None:
        return {}
    p = _base_file(base, sweep_path)
    if p is not None:
        return flatten(load_yaml(p))
    return flatten(base)  # type: ignore[arg-type]


def _base_file(base: str | Mapping[str, Any] | None, sweep_path: Path) -> Path | None:
    """The config file ``base:`` names, or None for an inline mapping (or no base)."""
    if not isinstance(base, str):
        return None
    p = Path(base).expanduser()
    if not p.is_absolute():
        near = sweep_path.parent / p
        p = near if near.is_file() else p
    return p


def check_sweep(sweep: Sweep) -> None:
    """The checks that need the resolved base config (raises ConfigError naming the key)."""
    validate_space(sweep.base, sweep.space, seed=sweep.seed)
    run = sweep.base.run
    # Tune requires the metric in EVERY report; the loop reports at checkpoint and validation
    # steps, so every checkpoint step must also be a validation step.
    if run.eval_every <= 0:
        raise ConfigError("run.eval_every: must be > 0 in a sweep (val_nme is the metric)")
    if run.checkpoint_every % run.eval_every:
        raise ConfigError(f"run.checkpoint_every: must be a multiple of run.eval_every "
                          f"({run.eval_every}) in a sweep, so every report carries val_nme")
    for key in sweep.space:
        if key.startswith(("run.eval_every", "run.checkpoint_every")):
            raise ConfigError(f"space.{key}: the report cadence cannot be swept")
    if sweep.scheduler.max_t > sweep.base.optim.steps:
        raise ConfigError(f"scheduler.max_t: {sweep.scheduler.max_t} > optim.steps "
                          f"({sweep.base.optim.steps})")
    max_t = sweep.scheduler.max_t or sweep.base.optim.steps
    if sweep.scheduler.kind == "asha" and sweep.scheduler.grace_period > max_t:
        raise ConfigError(f"scheduler.grace_period: {sweep.scheduler.grace_period} > the "
                          f"trials' {max_t} steps (ASHA needs grace_period <= max_t)")
    out = Path(sweep.output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output: {out} exists and is not a folder")
    for parent in out.parents:  # a file on the way: the folder could never be made
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"output: {parent} is a file, not a folder")
            break


def write_sweep_file(sweep: Sweep, path: Path) -> None:
    """The resolved sweep, for the record (base as dotted overrides) and for a rerun to check
    that it continues the same sweep (:func:`check_same_sweep`)."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(_record(sweep), sort_keys=False))


def _record(sweep: Sweep) -> dict[str, Any]:
    """What sweep.yaml holds (plain YAML types)."""
    return {"name": sweep.name, "source": sweep.source, "base": sweep.base_overrides,
            "space": sweep.space, "num_samples": sweep.num_samples,
            "max_concurrent_trials": sweep.max_concurrent_trials, "metric": sweep.metric,
            "mode": sweep.mode, "scheduler": to_dict(sweep.scheduler),
            "output": sweep.output, "seed": sweep.seed,
            "trials": num_trials(sweep.space, sweep.num_samples),
            "base_config_hash": sweep.base.hash()}


def experiment_folder(sweep: Sweep) -> Path:
    """Tune's own state of the sweep (a rerun that finds it continues the sweep)."""
    return Path(sweep.output).expanduser().resolve() / "_tune" / sweep.name


def can_continue(sweep: Sweep) -> bool:
    """Whether the output holds Tune's saved state of this sweep: its tuner and at least one
    saved experiment state (a driver that died before the first save left only the tuner, and
    Tune would restart that as a one-sample sweep: it starts afresh instead)."""
    exp = experiment_folder(sweep)
    return (exp / "tuner.pkl").is_file() and any(exp.glob("experiment_state-*.json"))


# what makes two sweeps the same sweep: its name (Tune's state is filed under it), its trials'
# configs, and how they are chosen, run and stopped (the file's path and the output's spelling
# may differ; the seed only seeds the space's check before anything runs)
_IDENTITY = ("name", "base_config_hash", "space", "num_samples", "max_concurrent_trials",
             "metric", "mode", "scheduler")


def check_same_sweep(sweep: Sweep) -> None:
    """Raise ConfigError unless the output is this sweep's or new: a rerun continues its own
    sweep's trials, and one output never holds two sweeps' trials and results."""
    import yaml

    path = Path(sweep.output).expanduser().resolve() / "sweep.yaml"
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if can_continue(sweep):
            raise ConfigError(f"{path.parent}: holds a Tune experiment but no sweep.yaml; give "
                              "another --output") from None
        return
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it ({type(e).__name__})") from None
    old = old if isinstance(old, dict) else {}
    if "base_config_hash" not in old:
        raise ConfigError(f"{path.parent}: holds a sweep written by an older tsal_dist, which "
                          "cannot be continued; give another --output")
    new = yaml.safe_load(yaml.safe_dump(_record(sweep)))  # as the file would hold it
    differ = [k for k in _IDENTITY if old.get(k) != new[k]]
    if differ:
        raise ConfigError(f"{path.parent}: holds another sweep (its {', '.join(differ)} "
                          f"differ{'s' if len(differ) == 1 else ''}); rerun it with its own "
                          f"settings to continue it, or give another --output")
