"""What the command-line entry points share: the ``--config`` / ``--set`` flags, the overrides
that ``--output`` / ``--name`` stand for, and the exit status and summary of a run.

Exit status: 0 ok; 2 the user's error (a bad config, data file, checkpoint or path: one line on
stderr, sorted by ``tsal_dist.errors``); 1 the run ended with an error, or it trained but its
deliverable (the export) could not be made. Any other exception propagates with its traceback.
Importing this module imports neither torch nor Ray. What does not belong here: the entry points'
own flags and work (``train.py``, ``tune.py``, ``distill.py``, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any, Callable

from tsal_dist.config import ConfigError, parse_set_args


RAY_SHUTDOWN_WAIT_S = 10.0  # how long a failed run waits for Ray to stop before its error line


def add_config_args(p: argparse.ArgumentParser, *, config_help: str, set_help: str,
                    config_required: bool = False) -> None:
    """``--config FILE`` and the repeatable ``--set KEY=VALUE`` (``args.config``, ``args.set``)."""
    p.add_argument("--config", required=config_required, help=config_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def run_overrides(args: argparse.Namespace, *, section: str) -> dict[str, str]:
    """The ``--set`` items, plus ``--output`` / ``--name`` as ``<section>.output`` /
    ``<section>.name`` (``run`` for training, ``experiment.run`` for a distillation)."""
    overrides = parse_set_args(args.set)
    flag_override(overrides, f"{section}.output", args.output, "--output")
    flag_override(overrides, f"{section}.name", args.name, "--name")
    return overrides


def flag_override(overrides: dict[str, str], key: str, value: str | None, flag: str) -> None:
    """Add a flag that stands for ``--set key=value`` to ``overrides``; a flag and a ``--set`` of
    the same key with another value raise ConfigError (neither silently wins)."""
    if not value:
        return
    if key in overrides and overrides[key] != value:
        raise ConfigError(f"{flag} {value} and --set {key}={overrides[key]} disagree: "
                          "give one of them")
    overrides[key] = value


def exit_user_error(message: object) -> int:
    """Print ``error: <message>`` on stderr; the exit status of a user's error (2)."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_and_report(job: Callable[[], dict[str, Any]], *, deliverable: str) -> int:
    """Run ``job`` (training or distillation, then its export), print its summary, and return
    the exit status.

    Args:
        job: returns the run summary (``run_dir``, ``eval``, ``error``).
        deliverable: what the export makes, for its error line (``"the teacher's export"``).
    """
    try:
        summary = job()
    except Exception as e:  # noqa: BLE001 - sorted into the user's errors and the system's
        from tsal_dist.errors import named_error, user_error

        _stop_ray()
        msg = user_error(e)
        if msg is not None:
            return exit_user_error(msg)
        msg = named_error(e, "ExportError")
        if msg is not None:  # the run trained; its deliverable could not be made
            print(f"error: {deliverable} failed: {msg}", file=sys.stderr)
            return 1
        raise
    if summary.get("error"):
        _stop_ray()
    print_summary(summary)
    return 0 if not summary.get("error") else 1


def _stop_ray() -> None:
    """Shut down the Ray this process started or joined before its last line is printed: Ray
    streams its workers' output to this stderr a moment late, and a worker's traceback arriving
    after the error line would bury it. Nothing is lost: the workers' logs stay in the session's
    log folder."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return

    def shutdown() -> None:
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - the run's own error is what the user must see
            pass

    # a cluster that died with the run can make the shutdown wait: the line comes regardless
    t = threading.Thread(target=shutdown, name="ray-shutdown", daemon=True)
    t.start()
    t.join(timeout=RAY_SHUTDOWN_WAIT_S)


def print_summary(summary: dict[str, Any]) -> None:
    """The run folder, one line per (network, eval list), then the error or ``{"ok": true}``."""
    print(f"run folder: {summary.get('run_dir')}")
    ev = summary.get("eval") or {}
    for which, lists in ev.items():
        for name, r in lists.items():
            if isinstance(r, dict) and "nme_inter_ocular" in r:
                print(f"{which:8s} {name:40s} n={r['count']:5d} "
                      f"NME(io)={100 * r['nme_inter_ocular']:.2f}% "
                      f"NME(ip)={100 * r['nme_inter_pupil']:.2f}% "
                      f"AUC@0.08={r['auc@0.08']:.3f} FR@0.08={r['fr@0.08']:.3f}")
    if summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)
    else:
        print(json.dumps({"ok": True, "run_dir": summary.get("run_dir")}))
