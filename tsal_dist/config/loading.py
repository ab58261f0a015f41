"""Configs from and to files and names: YAML (read safely, nothing executed), ``--set`` items,
the resolved config written beside a run, and the run folder name a config gets.

What does not belong here: the schemas (``experiment.py``, ``distill.py``, ``sweep.py``) and the
override machinery they share (``schema.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tsal_dist.atomic import atomic_write_text
from tsal_dist.config.distill import DistillConfig
from tsal_dist.config.experiment import ExperimentConfig
from tsal_dist.config.schema import ConfigError, flatten, from_dict, to_dict, with_overrides
from tsal_dist.config.sweep import SweepConfig


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
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a config file")
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_strict_loader())  # noqa: S506
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (a YAML config expected)") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    if _cyclic(data):
        raise ConfigError(f"{p}: invalid YAML: an alias refers to the mapping or list it is in")
    return data


def _cyclic(value: Any, inside: frozenset[int] = frozenset()) -> bool:
    """Whether a loaded document contains itself (``a: &x {b: *x}``)."""
    if not isinstance(value, (dict, list)):
        return False
    if id(value) in inside:
        return True
    inside = inside | {id(value)}
    items = value.values() if isinstance(value, dict) else value
    return any(_cyclic(v, inside) for v in items)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                base: Any = None) -> Any:
    """Defaults <- YAML file (overrides only) <- dotted overrides, applied as ONE set of changes
    (a file's value checked against another field is checked against the override of that
    field). Errors name the key, and the file when the key is the file's.

    ``base`` is the config object to start from (an ExperimentConfig by default; any frozen
    config dataclass works, e.g. the distillation's DistillConfig).
    """
    cfg = base if base is not None else ExperimentConfig()
    from_file: dict[str, Any] = {}
    if path is not None:
        with naming_file(path):
            from_file = flatten(load_yaml(path))
    given = dict(overrides or {})
    try:
        return with_overrides(cfg, {**from_file, **given})
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if path is not None and key in from_file and key not in given:
            raise ConfigError(f"{path}: {e}") from e
        raise


@functools.lru_cache(maxsize=1)
def _strict_loader() -> type:
    """PyYAML's safe loader, refusing a key given twice in one mapping (the safe loader keeps the
    last silently, so ``optim:`` written twice dropped the first one's keys). Keys brought in by
    a ``<<`` merge may be overridden, as YAML specifies."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the base class names that problem
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


@contextmanager
def naming_file(path: str | Path) -> Iterator[None]:
    """A ConfigError raised inside names ``path`` first (once): ``<path>: <key>: <reason>``."""
    try:
        yield
    except ConfigError as e:
        if str(e).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {e}") from e


def load_sweep_config(path: str | Path, settings: Mapping[str, Any] | None = None
                      ) -> SweepConfig:
    """A sweep file, read strictly into its schema (``base:`` and ``space:`` as written).

    Args:
        settings: top-level sweep keys replacing the file's (``{"num_samples": 4}``: the tune
            CLI's flags), checked like the file's.

    Raises:
        ConfigError: ``<path>: <key>: <reason>`` for an unknown key (``unknown sweep key``), a
            wrong type or an out-of-range value.
    """
    with naming_file(path):
        raw = load_yaml(path)
        if isinstance(raw.get("scheduler"), str):  # ``scheduler: fifo`` = ``{type: fifo}``
            raw = {**raw, "scheduler": {"type": raw["scheduler"]}}
        cfg = from_dict(SweepConfig, raw, kind="sweep")
        if settings:
            cfg = with_overrides(cfg, settings)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_distill_config(path: str | Path | None = None,
                        overrides: Mapping[str, Any] | None = None) -> DistillConfig:
    """Defaults <- YAML (overrides only; unknown keys raise) <- dotted overrides
    (``experiment.optim.steps=100``, ``kd.variant=paper``)."""
    return load_config(path, overrides, base=DistillConfig())


def run_name_for(cfg: ExperimentConfig | DistillConfig) -> str:
    """The run folder's name: ``run.name`` (``experiment.run.name`` of a distillation), else
    ``tsal-`` / ``distill-`` and a hash of the config without its name, so that rerunning the
    same command finds the same folder and resumes."""
    if isinstance(cfg, DistillConfig):
        e = cfg.experiment
        unnamed: Any = dataclasses.replace(cfg, experiment=_unnamed(e))
        prefix = "distill"
    else:
        e, unnamed, prefix = cfg, _unnamed(cfg), "tsal"
    return e.run.name or f"{prefix}-{unnamed.hash()[:10]}"


def _unnamed(e: ExperimentConfig) -> ExperimentConfig:
    """The config a run name hashes: no name, and the output folder spelled one way (``runs``,
    ``./runs`` and ``runs/`` are one folder, so one run)."""
    out = os.path.normpath(e.run.output) if e.run.output else e.run.output
    return dataclasses.replace(e, run=dataclasses.replace(e.run, name="", output=out))
