"""The typed-dataclass machinery every config schema of tsal_dist uses: strict loading from nested
mappings, dotted overrides, flattening, and the error that names the key.

Values are coerced by the field's annotation only (strings are parsed by type, never evaluated).
What does not belong here: the schemas themselves (``experiment.py``, ``distill.py``,
``sweep.py``) and file reading (``loading.py``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Mapping

if TYPE_CHECKING:  # typing.Self is Python 3.11+; the annotations are never evaluated at run time
    from typing_extensions import Self


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
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
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
    if origin is dict:  # a free-form mapping (a sweep's ``space:``); its keys are not checked
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str) and value.strip().startswith("["):  # a YAML list: quotes kept
            value = _yaml_list(value, key)
        elif isinstance(value, str):  # a,b or one item
            value = [v for v in value.strip("() ").split(",") if v.strip()]
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
        try:
            if isinstance(value, (int, float)):
                out = float(value)
            elif isinstance(value, str):
                out = float(value)
        except ValueError:
            pass
        except OverflowError:  # an integer beyond float's range
            out = math.inf
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


def _yaml_list(text: str, key: str) -> list[Any]:
    """``[a.lst, 'b c.lst']`` as YAML reads it; anything else is the user's error."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list like [a, b], got {text!r}")
    return value


def from_dict(cls: type, d: Mapping[str, Any], prefix: str = "", *, kind: str = "config") -> Any:
    """Build dataclass ``cls`` from a nested mapping; unknown keys raise
    ``ConfigError("<key>: unknown <kind> key (known: ...)")``.

    A :class:`Schema` nested in another (``DistillConfig.experiment``) writes its checks' keys
    relative to itself (``data.flip``); built under a prefix, its errors get the prefix
    (``experiment.data.flip``), so every message names the key as the user writes it.
    """
    if prefix and isinstance(cls, type) and issubclass(cls, Schema):
        try:
            return _from_dict(cls, d, prefix, kind)
        except ConfigError as e:
            if str(e).startswith(prefix) or str(e).split(":", 1)[0] == prefix.rstrip("."):
                raise  # already named from the root (a type error, the section not a mapping)
            raise ConfigError(f"{prefix}{e}") from e
    return _from_dict(cls, d, prefix, kind)


def _from_dict(cls: type, d: Mapping[str, Any], prefix: str, kind: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {d!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown {kind} key (known: {sorted(names)})")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, key + ".", kind=kind)
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


_LATER = "tsal_dist.hash_when_default"


def later(default: Any = dataclasses.MISSING, *,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A field added after run folders were named by :func:`config_hash`: while it holds its
    default it is left out of the hash, so every config written before it keeps its hash (and
    its run folder, which a rerun resumes). Set to anything else, it counts like any field."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_LATER: False})


def _hash_view(obj: Any) -> Any:
    """``to_dict(obj)`` without the :func:`later` fields that hold their defaults."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get(_LATER) is False:
                default = f.default if f.default is not dataclasses.MISSING \
                    else f.default_factory()  # type: ignore[misc]
                if value == default:
                    continue
            out[f.name] = _hash_view(value)
        return out
    return to_dict(obj)


def config_hash(cfg: Any) -> str:
    """Short stable hash of a config: sha256 of its canonical JSON (sorted keys), leaving out
    the fields added later (:func:`later`) while they hold their defaults."""
    import hashlib
    import json

    blob = json.dumps(_hash_view(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Schema:
    """What every top-level config schema offers (``ExperimentConfig``, ``DistillConfig``): the
    plain-dict round trip and the hash. A plain base class: the fields and their checks stay in
    each frozen dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain nested dict (what Ray transports and checkpoints hold)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """The config of a nested mapping; unknown keys, wrong types, bad values raise."""
        return from_dict(cls, d)

    def hash(self) -> str:
        """Short stable hash of the resolved config (:func:`config_hash`)."""
        return config_hash(self)
