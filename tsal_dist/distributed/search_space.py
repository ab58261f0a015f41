"""Sweep search spaces written as dotted config keys, validated against the config up front.

A sweep file's ``space:`` maps dotted :class:`~tsal_dist.config.ExperimentConfig` keys to one
domain each::

    space:
      loss.unsup_weight:    {loguniform: [0.1, 10.0]}   # log-uniform on [low, high]
      teacher.blend:        {uniform: [0.4, 0.9]}       # uniform on [low, high]
      teacher.queue_length: {choice: [2, 4, 8]}         # one of the values, at random
      model.heatmap_sigma_px: {grid: [1.5, 2.5]}        # every value (x num_samples)
      optim.steps:          {randint: [20, 40]}         # integer in [low, high) (Tune's randint)

The same keys are what :func:`tsal_dist.config.with_overrides` takes, so a trial's sampled
``config`` IS a set of overrides. :func:`validate_space` applies one random sample of every domain,
each key's extremes and every pair of two keys' extremes to the base config before any trial
starts: a misspelled key, a wrong type, an out-of-range value or two swept values that cannot go
together raise :class:`~tsal_dist.config.ConfigError` naming the key(s).

This module is pure except :func:`to_tune`, which imports Ray Tune lazily.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Mapping

from tsal_dist.config import ConfigError, ExperimentConfig, with_overrides

KINDS = ("uniform", "loguniform", "choice", "grid", "randint")
# Keys a sweep may not set: the sweep gives every trial its own run name and output folder.
RESERVED_KEYS = ("run.name", "run.output")


@dataclass(frozen=True)
class ParamSpec:
    """One swept key.

    Attributes:
        key: dotted config key, e.g. ``"teacher.ema_decay"``.
        kind: one of :data:`KINDS`.
        values: ``(low, high)`` for uniform/loguniform/randint, the candidate values otherwise.
    """

    key: str
    kind: str
    values: tuple[Any, ...]


def _yaml_number(v: Any) -> Any:
    """A number YAML 1.1 leaves as a string (``1e-4``: PyYAML wants ``1.0e-4``), as a float;
    anything else as it is."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return f if math.isfinite(f) else v
    return v


def parse_space(space: Mapping[str, Any]) -> dict[str, ParamSpec]:
    """Check the shape of a ``space:`` mapping and return one :class:`ParamSpec` per key.

    Raises:
        ConfigError: naming ``space.<key>`` for an unknown domain, bad bounds or empty lists.
    """
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("space: expected a non-empty mapping of dotted config keys to domains")
    out: dict[str, ParamSpec] = {}
    for key, dom in space.items():
        where = f"space.{key}"
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: keys must be dotted config keys")
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where}: set by the sweep for every trial; cannot be swept")
        if not isinstance(dom, Mapping) or len(dom) != 1:
            raise ConfigError(f"{where}: expected exactly one of {list(KINDS)}, e.g. "
                              "{uniform: [0.1, 1.0]}, got " + repr(dom))
        kind, vals = next(iter(dom.items()))
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown domain {kind!r} (known: {list(KINDS)})")
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ConfigError(f"{where}: {kind} needs a non-empty list, got {vals!r}")
        vals = tuple(vals)
        if kind in ("uniform", "loguniform", "randint"):
            vals = tuple(_yaml_number(v) for v in vals)
            if len(vals) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         for v in vals):
                raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {list(vals)}")
            lo, hi = vals
            if not lo < hi:
                raise ConfigError(f"{where}: {kind} needs low < high, got {list(vals)}")
            if kind == "loguniform" and lo <= 0:
                raise ConfigError(f"{where}: loguniform needs low > 0, got {lo}")
            if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
                raise ConfigError(f"{where}: randint needs integer bounds, got {list(vals)}")
            if kind == "randint":
                vals = (int(lo), int(hi))
        out[key] = ParamSpec(key=key, kind=kind, values=vals)
    return out


def extremes(spec: ParamSpec) -> list[Any]:
    """Every value a domain can reach at its edges: both bounds, or every listed value.

    ``randint`` is Tune's half-open ``[low, high)``, so its largest value is ``high - 1``.
    """
    if spec.kind in ("uniform", "loguniform"):
        return [spec.values[0], spec.values[1]]
    if spec.kind == "randint":
        return [spec.values[0], spec.values[1] - 1]
    return list(spec.values)


def sample(spec: ParamSpec, rng: random.Random) -> Any:
    """One value of the domain, drawn with ``rng`` (the same distributions as Tune's)."""
    lo, hi = spec.values[0], spec.values[-1]
    if spec.kind == "uniform":
        return rng.uniform(lo, hi)
    if spec.kind == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if spec.kind == "randint":
        return rng.randrange(int(lo), int(hi))
    return rng.choice(list(spec.values))


def validate_space(base_cfg: ExperimentConfig, space: Mapping[str, Any], *, seed: int = 0
                   ) -> list[dict[str, Any]]:
    """Apply one random sample and the extremes of ``space`` to ``base_cfg``; raise if any fails.

    Checked, each on top of one random sample of every key: each key's extremes alone, and every
    pair of extremes of every two keys. So values that are only invalid in combination with the
    base (e.g. ``model.centroid_index`` vs ``data.num_points``) or with another swept key (e.g.
    ``data.num_points`` and ``loss.pseudo_max_turn`` both swept) are caught up front, as well as
    plain range errors. Combinations of three or more keys, and interior values of a range, are
    not enumerated; a trial whose config still fails is refused when it is built.

    Args:
        base_cfg: the sweep's base configuration.
        space: the raw ``space:`` mapping (see the module docstring).
        seed: seed of the random sample (the check is deterministic).

    Returns:
        The override dicts that were checked (the random sample first, then the single-key
        extremes, then the pairs), each once.

    Raises:
        ConfigError: ``space.<key>=<value>: <reason>`` for the first bad key/value, with
            ``(with space.<other>=<value>)`` when it fails only together with another swept
            value (a setting the point layout cannot serve included:
            ``data.schemes.layout_problems``, checked by ``ExperimentConfig``).
    """
    specs = parse_space(space)
    rng = random.Random(seed)
    base_sample = {k: sample(s, rng) for k, s in specs.items()}
    edges = {k: extremes(s) for k, s in specs.items()}
    keys = list(specs)
    candidates: list[dict[str, Any]] = [dict(base_sample)]
    candidates += [{**base_sample, k: v} for k in keys for v in edges[k]]
    candidates += [{**base_sample, a: va, b: vb}
                   for i, a in enumerate(keys) for b in keys[i + 1:]
                   for va in edges[a] for vb in edges[b]]
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for overrides in candidates:
        ident = repr(sorted(overrides.items()))
        if ident in seen:
            continue
        seen.add(ident)
        checked.append(overrides)
        try:
            with_overrides(base_cfg, overrides)
        except ConfigError as e:
            bad = str(e).split(":", 1)[0]
            moved = [f"space.{k}={v!r}" for k, v in overrides.items()
                     if k != bad and repr(v) != repr(base_sample[k])]
            if bad in overrides:
                head = f"space.{bad}={overrides[bad]!r}"
                head += f" (with {', '.join(moved)})" if moved else ""
            else:  # a base key refused because of the swept values: the ones moved, or the
                # random sample's when it is the sample itself that fails
                head = ", ".join(moved or [f"space.{k}={v!r}" for k, v in overrides.items()])
            raise ConfigError(f"{head}: {e}") from e
    return checked


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """The Ray Tune ``param_space`` of a (validated) space: same keys, Tune domains as values."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in parse_space(space).items():
        lo, hi = spec.values[0], spec.values[-1]
        if spec.kind == "uniform":
            out[key] = tune.uniform(lo, hi)
        elif spec.kind == "loguniform":
            out[key] = tune.loguniform(lo, hi)
        elif spec.kind == "randint":
            out[key] = tune.randint(int(lo), int(hi))
        elif spec.kind == "choice":
            out[key] = tune.choice(list(spec.values))
        else:
            out[key] = tune.grid_search(list(spec.values))
    return out


def num_trials(space: Mapping[str, Any], num_samples: int) -> int:
    """Trials Tune will run: ``num_samples`` times the product of the grid sizes."""
    n = num_samples
    for spec in parse_space(space).values():
        if spec.kind == "grid":
            n *= len(spec.values)
    return n
