"""The typed-dataclass machinery every config schema of tsal_dist uses: strict loading from nested
mappings, dotted overrides, flattening, and the error that names the key.

Values are coerced by the field's annotation only (strings are parsed by type, never evaluated).
What does not belong here: the schemas themselves (``experiment.py``, ``distill.py``) and file
reading (``loading.py``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping


class ConfigError(ValueError):
    """A config key, type or value is invalid. The message names the key."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ``ConfigError("<key>: <msg>")`` unless ``cond`` (range checks in ``__post_init__``)."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


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
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
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

    Values may be typed or strings (parsed by the field's annotation). Unknown paths, wrong types
    and out-of-range values raise ConfigError naming the key. All overrides are applied before any
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

