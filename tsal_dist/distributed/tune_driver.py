"""Ray Tune sweeps over TSAL runs (Train V2 pattern) and their result files.

One trial = :func:`trial_fn`, a function trainable that builds the trial's config with
``with_overrides(base, trial_config)``, names the run after the trial (run folder
``<output>/runs/<trial name>``) and calls :func:`tsal_dist.distributed.launch.fit`, whose
TorchTrainer reports to Tune through ``TuneReportCallback``. ASHA stops weak trials early on the
teacher's validation NME (``val_nme``, reported at every checkpoint/validation step).

Files written under the sweep's ``output`` folder::

    sweep.yaml          the resolved sweep (base config overrides, space, settings)
    runs/<trial>/       one ordinary run folder per trial (config.yaml, metrics.jsonl, eval/, ...)
    results.csv/.md     one row per trial: swept keys, final val NME, teacher test NME, run folder
    nme_vs_keys.png     final val NME against each swept key
    best_config.yaml    overrides for ``python -m tsal_dist.train --config best_config.yaml``
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from tsal_dist.atomic import atomic_path, atomic_write_json, atomic_write_text
from tsal_dist.config import (ConfigError, ExperimentConfig, flatten, load_yaml, to_dict,
                              with_overrides)
from tsal_dist.distributed.search_space import num_trials, parse_space, validate_space

SWEEP_KEYS = ("name", "base", "set", "space", "num_samples", "max_concurrent_trials", "metric",
              "mode", "scheduler", "output", "seed")


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping: ``asha`` (ASHAScheduler on ``step``) or ``fifo`` (run every trial out).

    Attributes:
        kind: "asha" or "fifo".
        grace_period: steps every trial runs before it can be stopped.
        reduction_factor: ASHA keeps 1 / reduction_factor of the trials at each rung.
        max_t: steps of a full trial (0 = ``optim.steps`` of the base config).
    """

    kind: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int = 0


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file. ``base`` is the resolved base config, ``space`` the raw domains."""

    name: str
    base: ExperimentConfig
    base_overrides: dict[str, Any]
    space: dict[str, Any]
    num_samples: int = 1
    max_concurrent_trials: int = 1
    metric: str = "val_nme"
    mode: str = "min"
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    output: str = "runs/sweeps"
    seed: int = 0
    source: str = ""


def _base_overrides(raw: Any, sweep_path: Path) -> dict[str, Any]:
    """``base:`` as dotted overrides: a config file (relative to the sweep file, then to the
    working directory) or an inline mapping of (nested or dotted) overrides."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        p = Path(raw).expanduser()
        if not p.is_absolute():
            near = sweep_path.parent / p
            p = near if near.is_file() else p
        return flatten(load_yaml(p))
    if isinstance(raw, Mapping):
        return flatten(raw)
    raise ConfigError(f"{sweep_path}: base: expected a config file path or a mapping of "
                      f"overrides, got {raw!r}")


def load_sweep(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Sweep:
    """Read and fully validate a sweep file (including its space) before anything runs.

    Args:
        path: the sweep YAML.
        overrides: dotted base-config overrides (``--set``), applied after ``base:`` and ``set:``.

    Raises:
        ConfigError: naming the file and the key.
    """
    path = Path(path)
    raw = load_yaml(path)
    try:
        unknown = sorted(set(raw) - set(SWEEP_KEYS))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown sweep key (known: {list(SWEEP_KEYS)})")
        base_ov = _base_overrides(raw.get("base"), path)
        extra = raw.get("set") or {}
        if not isinstance(extra, Mapping):
            raise ConfigError("set: expected a mapping of dotted overrides")
        base_ov.update(flatten(extra))
        base_ov.update(dict(overrides or {}))
        base = with_overrides(ExperimentConfig(), base_ov)
        sched = _scheduler(raw.get("scheduler", "asha"))
        sweep = Sweep(
            name=str(raw.get("name") or path.stem), base=base, base_overrides=base_ov,
            space=dict(raw.get("space") or {}), num_samples=_int(raw, "num_samples", 1),
            max_concurrent_trials=_int(raw, "max_concurrent_trials", 1),
            metric=str(raw.get("metric", "val_nme")), mode=str(raw.get("mode", "min")),
            scheduler=sched, output=str(raw.get("output") or f"runs/sweeps/{path.stem}"),
            seed=_int(raw, "seed", 0, minimum=0), source=str(path))
        check_sweep(sweep)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return sweep


def _int(raw: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {v!r}")
    return v


def _scheduler(raw: Any) -> SchedulerSpec:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"scheduler: expected 'asha', 'fifo' or a mapping, got {raw!r}")
    known = {"type", "grace_period", "reduction_factor", "max_t"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"scheduler.{unknown[0]}: unknown key (known: {sorted(known)})")
    kind = str(raw.get("type", "asha"))
    if kind not in ("asha", "fifo"):
        raise ConfigError(f"scheduler.type: {kind!r} is not one of ['asha', 'fifo']")
    s = SchedulerSpec(kind=kind, grace_period=int(raw.get("grace_period", 1)),
                      reduction_factor=float(raw.get("reduction_factor", 2.0)),
                      max_t=int(raw.get("max_t", 0)))
    if s.grace_period < 1:
        raise ConfigError("scheduler.grace_period: must be >= 1 (steps)")
    if s.reduction_factor <= 1:
        raise ConfigError("scheduler.reduction_factor: must be > 1")
    if s.max_t < 0:
        raise ConfigError("scheduler.max_t: must be >= 0 (0 = optim.steps)")
    return s


def check_sweep(sweep: Sweep) -> None:
    """Everything that can be checked before a trial starts (raises ConfigError naming the key)."""
    validate_space(sweep.base, sweep.space, seed=sweep.seed)
    if sweep.mode not in ("min", "max"):
        raise ConfigError(f"mode: {sweep.mode!r} is not one of ['min', 'max']")
    if sweep.metric != "val_nme":
        raise ConfigError(f"metric: only 'val_nme' (the teacher's validation NME) is reported, "
                          f"got {sweep.metric!r}")
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


TRIAL_DRIVER_CPU = 0.01  # the trial function's own reservation (0 is refused by Tune)


def trial_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """Logical resources one running trial holds: its driver function plus its Train workers."""
    s = cfg.scaling
    res = {"CPU": TRIAL_DRIVER_CPU + s.num_workers * s.cpus_per_worker}
    if s.use_gpu:
        res["GPU"] = s.num_workers * s.gpus_per_worker
    return res


def ray_cluster_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def check_resources(sweep: Sweep, available: Mapping[str, float], *, autoscaling: bool) -> None:
    """Refuse a sweep whose single trial can never be placed (it would wait forever).

    On a fixed (local) cluster one trial must fit; ``max_concurrent_trials`` beyond what fits only
    queues, which Tune handles. An autoscaling cluster (RAY_ADDRESS set) may grow, so there a
    shortfall is printed, not raised.

    Raises:
        ConfigError: naming scaling.cpus_per_worker / scaling.gpus_per_worker.
    """
    need = trial_resources(sweep.base)
    for res, amount in need.items():
        have = available.get(res, 0.0)
        if amount > have + 1e-9:
            key = "scaling.cpus_per_worker" if res == "CPU" else "scaling.gpus_per_worker"
            msg = (f"{key}: one trial needs {amount:g} {res} ({sweep.base.scaling.num_workers} "
                   f"workers + {TRIAL_DRIVER_CPU} CPU for the trial function) but the cluster has "
                   f"{have:g}; lower {key} (logical units, e.g. 0.99) or scaling.num_workers")
            if autoscaling:
                print(f"warning: {msg}")
            else:
                raise ConfigError(msg)


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """Run-folder name of a trial; Tune's trial name and directory are set to the same string."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in sweep_name)
    return f"{safe}_{trial_id}"


def trial_cfg(base: Mapping[str, Any], trial_config: Mapping[str, Any], *, run_name: str,
              runs_dir: str) -> ExperimentConfig:
    """The config one trial trains with: base <- sampled values <- its run name and folder."""
    cfg = ExperimentConfig.from_dict(base)
    return with_overrides(cfg, {**dict(trial_config), "run.name": run_name,
                                "run.output": runs_dir})


def trial_fn(config: dict[str, Any], meta: dict[str, Any]) -> None:
    """Tune function trainable: one TSAL run on its own TorchTrainer (Train V2 pattern).

    Args:
        config: the sampled dotted keys (Tune's trial config).
        meta: {"base": base cfg dict, "runs_dir": absolute folder of run folders}, bound with
            ``tune.with_parameters``. Metrics reach Tune via TuneReportCallback.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from tsal_dist.distributed.launch import fit

    sampled = dict(config)
    name = tune.get_context().get_trial_name()
    cfg = trial_cfg(meta["base"], sampled, run_name=name, runs_dir=meta["runs_dir"])
    run_dir = Path(meta["runs_dir"]) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "trial.json",
                      {"trial_name": name, "trial_id": tune.get_context().get_trial_id(),
                       "sampled": sampled}, default=str, final_newline=False)
    summary = fit(cfg, run_callbacks=[TuneReportCallback()],
                  storage_path=str(Path(meta["runs_dir"]) / "_ray"))
    atomic_write_json(run_dir / "fit_summary.json",
                      {k: summary.get(k) for k in ("name", "run_dir", "error", "teacher_server")},
                      default=str, final_newline=False)
    if summary.get("error"):
        raise RuntimeError(f"trial {name} failed: {summary['error']}")


def run_sweep(sweep: Sweep, *, verbose: int = 1) -> dict[str, Any]:
    """Run the sweep on the current Ray cluster (starting a local one if needed); write results.

    Returns:
        {"rows": [...], "best": row or None, "files": {name: path}, "tune": {trial name:
        {"error", "config" (Tune's sampled values), "tune_metrics" (last report)}}}.
    """
    from ray import tune

    from tsal_dist.distributed.launch import ensure_ray
    from tsal_dist.distributed.search_space import to_tune

    out = Path(sweep.output).expanduser().resolve()
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_sweep_file(sweep, out / "sweep.yaml")
    ensure_ray()
    check_resources(sweep, ray_cluster_resources(), autoscaling=bool(os.environ.get("RAY_ADDRESS")))
    from tsal_dist.data.lists import resolve_data

    resolve_data(sweep.base)  # generate the synthetic data once, before trials race for it

    scheduler = None
    if sweep.scheduler.kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="step", max_t=sweep.scheduler.max_t
                                  or sweep.base.optim.steps,
                                  grace_period=sweep.scheduler.grace_period,
                                  reduction_factor=sweep.scheduler.reduction_factor)
    space = to_tune(sweep.space)
    meta = {"base": sweep.base.to_dict(), "runs_dir": str(runs_dir)}

    def name_of(trial: Any) -> str:
        return trial_run_name(sweep.name, trial.trial_id)

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial_fn, meta=meta), {"CPU": 0.01}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials, scheduler=scheduler,
            trial_name_creator=name_of, trial_dirname_creator=name_of),
        run_config=tune.RunConfig(name=sweep.name, storage_path=str(out / "_tune"),
                                  verbose=verbose),
    )
    grid = tuner.fit()
    tune_rows = {}
    for res in grid:
        trial_name = Path(res.path).name if res.path else ""
        tune_rows[trial_name] = {"error": repr(res.error) if res.error else "",
                                 "config": dict(res.config or {}),
                                 "tune_metrics": dict(res.metrics or {})}
    res = write_results(sweep, runs_dir, out, tune_rows=tune_rows)
    res["tune"] = tune_rows
    return res


# ----------------------------------------------------------------------------- results


def read_trial(run_dir: Path, keys: list[str]) -> dict[str, Any]:
    """One results row from a trial's run folder (independent of Tune's own bookkeeping).

    Columns: ``trial``, each swept key (from the run's config.yaml, i.e. what the run USED),
    ``val_nme`` (last validation NME in metrics.jsonl), ``val_step``, ``steps`` (last logged
    step), ``test_nme_teacher`` (mean inter-ocular NME over the eval lists, if evaluated) and
    ``run_dir``.
    """
    row: dict[str, Any] = {"trial": run_dir.name}
    cfg_path = run_dir / "config.yaml"
    flat = flatten(load_yaml(cfg_path)) if cfg_path.is_file() else {}
    for k in keys:
        row[k] = flat.get(k, "")
    val, val_step, steps = math.nan, 0, 0
    mp = run_dir / "metrics.jsonl"
    if mp.is_file():
        for line in mp.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            steps = max(steps, int(rec.get("step", 0)))
            if "val/nme_inter_ocular" in rec:
                val, val_step = float(rec["val/nme_inter_ocular"]), int(rec["step"])
    row.update(val_nme=val, val_step=val_step, steps=steps, test_nme_teacher=math.nan)
    sp = run_dir / "eval" / "summary.json"
    if sp.is_file():
        teacher = json.loads(sp.read_text()).get("teacher", {})
        vals = [r["nme_inter_ocular"] for r in teacher.values()
                if isinstance(r, dict) and "nme_inter_ocular" in r]
        if vals:
            row["test_nme_teacher"] = sum(vals) / len(vals)
    row["run_dir"] = str(run_dir)
    return row


def best_row(rows: list[dict[str, Any]], *, mode: str, full_steps: int) -> dict[str, Any] | None:
    """The best finite ``val_nme``, preferring trials that ran all ``full_steps`` steps."""
    finite = [r for r in rows if isinstance(r["val_nme"], float) and math.isfinite(r["val_nme"])]
    full = [r for r in finite if r["val_step"] >= full_steps]
    pool = full or finite
    if not pool:
        return None
    pick = min if mode == "min" else max
    return pick(pool, key=lambda r: r["val_nme"])


def best_overrides(base: ExperimentConfig, row: Mapping[str, Any], keys: list[str]
                   ) -> dict[str, Any]:
    """Nested overrides (vs the defaults) of base <- best row's swept values; no run.name."""
    cfg = with_overrides(base, {k: row[k] for k in keys})
    cfg = replace(cfg, run=replace(cfg.run, name=""))
    default = flatten(to_dict(ExperimentConfig()))
    diff = {k: v for k, v in flatten(to_dict(cfg)).items() if default.get(k) != v}
    nested: dict[str, Any] = {}
    for k, v in diff.items():
        d = nested
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return nested


def write_results(sweep: Sweep, runs_dir: Path, out: Path,
                  tune_rows: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Write results.csv, results.md, nme_vs_keys.png and best_config.yaml; return them."""
    import yaml

    keys = list(parse_space(sweep.space))
    names = sorted(tune_rows) if tune_rows else sorted(
        p.name for p in runs_dir.iterdir() if p.is_dir() and (p / "trial.json").is_file())
    rows = []
    for n in names:
        row = read_trial(runs_dir / n, keys)
        row["error"] = (tune_rows or {}).get(n, {}).get("error", "")
        rows.append(row)
    cols = ["trial", *keys, "val_nme", "val_step", "steps", "test_nme_teacher", "run_dir", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    files = {"csv": out / "results.csv", "md": out / "results.md",
             "plot": out / "nme_vs_keys.png", "best": out / "best_config.yaml"}
    atomic_write_text(files["csv"], buf.getvalue())
    best = best_row(rows, mode=sweep.mode, full_steps=sweep.base.optim.steps)
    atomic_write_text(files["md"], results_markdown(sweep, rows, keys, best))
    plot_nme_vs_keys(rows, keys, files["plot"], title=f"sweep {sweep.name}")
    if best is not None:
        text = (f"# Best trial of sweep {sweep.name!r}: {best['trial']} "
                f"(val NME {100 * best['val_nme']:.3f}%)\n"
                f"# python -m tsal_dist.train --config {files['best']}\n")
        text += yaml.safe_dump(best_overrides(sweep.base, best, keys), sort_keys=False)
        atomic_write_text(files["best"], text)
    else:
        files.pop("best")
    return {"rows": rows, "best": best, "files": {k: str(v) for k, v in files.items()}}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def results_markdown(sweep: Sweep, rows: list[dict[str, Any]], keys: list[str],
                     best: Mapping[str, Any] | None) -> str:
    """The results table as markdown (NMEs in percent of the inter-ocular distance)."""
    head = ["trial", *keys, "val NME %", "at step", "test NME % (teacher)", "run folder"]
    lines = [f"# Sweep `{sweep.name}`", "",
             f"{len(rows)} trials, metric {sweep.metric} ({sweep.mode}), scheduler "
             f"{sweep.scheduler.kind}, {sweep.base.optim.steps} steps per full trial.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " **(best)**" if best is not None and r["trial"] == best["trial"] else ""
        cells = [r["trial"] + mark, *[_fmt(r[k]) for k in keys], _fmt(100 * r["val_nme"]),
                 str(r["val_step"]), _fmt(100 * r["test_nme_teacher"]), r["run_dir"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_nme_vs_keys(rows: list[dict[str, Any]], keys: list[str], path: Path, *,
                     title: str = "") -> None:
    """One panel per swept key: final val NME (%) of each trial against the key's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[key], 100 * r["val_nme"]) for r in rows
               if isinstance(r["val_nme"], float) and math.isfinite(r["val_nme"])]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts)
        if numeric:
            ax.scatter([x for x, _ in pts], [y for _, y in pts])
        else:
            labels = sorted({str(x) for x, _ in pts})
            ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts])
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
        ax.set_ylabel("val NME (%)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def write_sweep_file(sweep: Sweep, path: Path) -> None:
    """The resolved sweep, for the record (base as dotted overrides)."""
    import yaml

    d = {"name": sweep.name, "source": sweep.source, "base": sweep.base_overrides,
         "space": sweep.space, "num_samples": sweep.num_samples,
         "max_concurrent_trials": sweep.max_concurrent_trials, "metric": sweep.metric,
         "mode": sweep.mode, "scheduler": {"type": sweep.scheduler.kind,
                                            "grace_period": sweep.scheduler.grace_period,
                                            "reduction_factor": sweep.scheduler.reduction_factor,
                                            "max_t": sweep.scheduler.max_t},
         "output": sweep.output, "seed": sweep.seed,
         "trials": num_trials(sweep.space, sweep.num_samples)}
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
