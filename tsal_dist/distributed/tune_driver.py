"""Ray Tune sweeps over TSAL runs (Train V2 pattern): the trials and the Tuner.

One trial = :func:`trial_fn`, a function trainable that builds the trial's config with
``with_overrides(base, trial_config)``, names the run after the trial (run folder
``<output>/runs/<trial name>``) and calls :func:`tsal_dist.distributed.launch.fit`, whose
TorchTrainer reports to Tune through ``TuneReportCallback``. ASHA stops weak trials early on the
teacher's validation NME (``val_nme``, reported at every checkpoint/validation step).

Files written under the sweep's ``output`` folder::

    sweep.yaml          the resolved sweep (base config overrides, space, settings)
    runs/<trial>/       one ordinary run folder per trial (config.yaml, metrics.jsonl, eval/, ...)
    results.*, nme_vs_keys.png, best_config.yaml   see ``sweep_results.py``

What does not belong here: reading and checking the sweep file (``sweep.py``), the search space
(``search_space.py``), the result files (``sweep_results.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from tsal_dist.atomic import atomic_write_json
from tsal_dist.config import ConfigError, ExperimentConfig, with_overrides
from tsal_dist.distributed.sweep import (Sweep, can_continue, check_same_sweep,
                                        experiment_folder, write_sweep_file)
from tsal_dist.distributed.sweep_results import write_results

log = logging.getLogger(__name__)

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


def check_trusted_folder(folder: Path, *, up_to: Path) -> None:
    """Tune's experiment state is pickled, and restoring it runs code: continue a sweep only from
    a folder (its entries, and its parents up to ``up_to``) that this user owns and that no one
    else can write (ConfigError otherwise). A group-writable one passes only where the group is
    the user's own private group (umask 002 systems)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    parents = [p for p in folder.parents if p == up_to or up_to in p.parents]
    for p in [*folder.iterdir(), folder, *parents]:
        st = p.lstat()
        if p.is_symlink():
            raise ConfigError(f"{p}: is a symbolic link; a sweep continues only from its own "
                              "files (Tune's state is a pickle)")
        if uid is not None and st.st_uid != uid:
            raise ConfigError(f"{p}: belongs to another user; a sweep continues only from its "
                              "own user's folder (Tune's state is a pickle)")
        if st.st_mode & 0o002 or (st.st_mode & 0o020 and not _private_group(st.st_gid)):
            raise ConfigError(f"{p}: others can write it; a sweep continues only from a folder "
                              "no one else can write (Tune's state is a pickle; chmod -R go-w)")


def _private_group(gid: int) -> bool:
    """The user's own group: their primary group, named after them, with no other members."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(os.getuid())
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return gid == user.pw_gid and group.gr_name == user.pw_name and not group.gr_mem


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

    from tsal_dist.distributed.worker import enter_driver_folder

    # Tune starts a trial in a folder of its own: relative paths of the sweep's config mean what
    # they mean to the sweep's driver, as for training workers
    enter_driver_folder(meta.get("cwd"))
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
        {"error", "config" (Tune's sampled values), "tune_metrics" (last report)}},
        "unfinished": trials neither finished nor failed (an interrupted sweep)}.
    """
    from ray import tune

    from tsal_dist.distributed.launch import ensure_ray
    from tsal_dist.distributed.search_space import to_tune

    out = Path(sweep.output).expanduser().resolve()
    experiment = experiment_folder(sweep)
    resume = can_continue(sweep)
    check_same_sweep(sweep)  # before anything is written there
    if resume:
        check_trusted_folder(experiment, up_to=out)
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
    meta = {"base": sweep.base.to_dict(), "runs_dir": str(runs_dir), "cwd": os.getcwd()}

    def name_of(trial: Any) -> str:
        return trial_run_name(sweep.name, trial.trial_id)

    trainable = tune.with_resources(tune.with_parameters(trial_fn, meta=meta),
                                    {"CPU": TRIAL_DRIVER_CPU})
    if resume:
        # finished trials are kept; interrupted and failed ones start again, and their runs
        # continue from their newest checkpoints (the trial names, hence run folders, are kept)
        log.info("sweep %s: continuing the sweep in %s", sweep.name, out)
        check_trusted_folder(experiment, up_to=out)  # again, just before Tune reads it
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=space)
        return _collect(tuner.fit(), sweep, runs_dir, out)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials, scheduler=scheduler,
            trial_name_creator=name_of, trial_dirname_creator=name_of),
        run_config=tune.RunConfig(name=sweep.name, storage_path=str(out / "_tune"),
                                  verbose=verbose),
    )
    return _collect(tuner.fit(), sweep, runs_dir, out)


def _collect(grid: Any, sweep: Sweep, runs_dir: Path, out: Path) -> dict[str, Any]:
    """Tune's results per trial, and the result files written from the run folders."""
    tune_rows = {}
    for res in grid:
        trial_name = Path(res.path).name if res.path else ""
        tune_rows[trial_name] = {"error": repr(res.error) if res.error else "",
                                 "config": dict(res.config or {}),
                                 "tune_metrics": dict(res.metrics or {})}
    res = write_results(sweep, runs_dir, out, tune_rows=tune_rows)
    res["tune"] = tune_rows
    # Tune returns normally after a Ctrl-C: the trials it did not finish are still to run
    res["unfinished"] = len(grid) - grid.num_terminated - grid.num_errors
    return res
