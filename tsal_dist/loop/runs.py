"""A run folder across restarts: the same run or a refusal, the newest readable checkpoint, metrics
that hold each step once, no stale temporary files.

What belongs here: the rules a resume follows (one place, used by ``--local`` and Ray workers
alike). What does not: writing checkpoints (checkpoint.py), the loop itself (loop.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tsal_dist.atomic import PLAIN, atomic_write_text, is_temp_name
from tsal_dist.config import (ConfigError, DistillConfig, ExperimentConfig, flatten, load_config,
                              load_distill_config)
from tsal_dist.loop.checkpoint import CheckpointError, list_checkpoints, load_checkpoint


class RunConfigChanged(ConfigError):
    """The run folder was made by another config; resuming it would mix two experiments."""


def config_differences(old: ExperimentConfig | DistillConfig,
                       new: ExperimentConfig | DistillConfig) -> list[str]:
    """Dotted keys whose values differ (``run.output`` and ``run.name`` excluded, also under a
    distillation's ``experiment.``: where the folder lives is not part of what it holds)."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    skip = {f"{p}run.{k}" for p in ("", "experiment.") for k in ("output", "name", "storage_path")}
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def check_run_config(run_dir: str | Path, cfg: ExperimentConfig | DistillConfig, *,
                     force: bool = False) -> None:
    """Refuse to continue ``run_dir`` with a config other than the one it was started with
    (``config.yaml`` of a training run, ``distill.yaml`` of a distillation).

    Raises:
        RunConfigChanged: naming the folder and the differing keys (old -> new), unless
            ``force`` (then the run continues under the new config, which is saved).
    """
    distill = isinstance(cfg, DistillConfig)
    saved = Path(run_dir) / ("distill.yaml" if distill else "config.yaml")
    if force or not saved.is_file():
        return
    try:
        old = load_distill_config(saved) if distill else load_config(saved)
    except ConfigError as e:
        raise RunConfigChanged(f"{saved}: cannot read the run's config ({e}); pass --force to "
                               "continue with the new one, or choose another --name") from None
    diff = config_differences(old, cfg)
    if diff:
        a, b = flatten(old.to_dict()), flatten(cfg.to_dict())
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise RunConfigChanged(f"{saved.parent}: this run was started with another config "
                               f"({shown}{more}); use another --name for a new run, or --force "
                               "to continue this one with the new config")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes that never finished (``.<name>.*.tmp``: the names
    that ``tsal_dist.atomic`` gives them)."""
    p = Path(folder)
    gone = []
    if p.is_dir():
        for f in p.iterdir():
            if is_temp_name(f.name) and f.is_file():
                f.unlink(missing_ok=True)
                gone.append(f)
    return gone


def newest_readable_checkpoint(folder: str | Path, *, announce: bool = True
                               ) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, and its contents; unreadable newer ones are named on
    stderr (one line each) and passed over. None when there is none."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            if announce:
                print(f"tsal_dist: warning: {e}; resuming from an older checkpoint",
                      file=sys.stderr)
    return None


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the rows of steps after ``step`` from a metrics.jsonl (atomically): a resumed run
    redoes them, and the file then holds each step once. Returns the number of rows dropped.
    A torn last line (the process died mid-write) is dropped too."""
    p = Path(path)
    if not p.is_file():
        return 0
    keep, dropped = [], 0
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if int(row.get("step", 0)) > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        atomic_write_text(p, "".join(x + "\n" for x in keep), mode=PLAIN)
    return dropped
