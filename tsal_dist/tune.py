"""``python -m tsal_dist.tune --config configs/sweeps/FILE.yaml``: a Ray Tune sweep of TSAL runs.

A sweep file names a base config (``base:`` file or inline overrides), a search space of dotted
config keys (``space:``), ``num_samples``, ``max_concurrent_trials``, the metric (``val_nme``, the
teacher's validation NME), ``mode`` and the ASHA ``scheduler``; see configs/sweeps/default.yaml.
The space is validated against the config before any trial starts. Results (CSV + markdown table,
NME-vs-key plot, best_config.yaml for ``python -m tsal_dist.train --config``) go to ``output``.
Runs on a local Ray instance, or on the cluster in RAY_ADDRESS (``ray job submit``). Rerunning
the same sweep with the same output continues it: finished trials are kept, interrupted or failed
ones continue from their runs' newest checkpoints; another sweep in that output is refused. An
interrupted sweep (Ctrl-C) exits 1 and says so.
"""

from __future__ import annotations

import argparse
import sys

from tsal_dist.cli import add_config_args, exit_user_error
from tsal_dist.config import ConfigError, parse_set_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tsal_dist.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, config_help="sweep YAML (see configs/sweeps/)", config_required=True,
                    set_help="dotted override of the BASE experiment config (repeatable)")
    p.add_argument("--output", help="sweep output folder (overrides the file's output:)")
    p.add_argument("--num-samples", type=int, help="overrides the file's num_samples")
    p.add_argument("--max-concurrent-trials", type=int,
                   help="overrides the file's max_concurrent_trials")
    p.add_argument("--check", action="store_true",
                   help="validate the sweep and its space, print the plan, start nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tsal_dist.distributed.search_space import num_trials
    from tsal_dist.distributed.sweep import can_continue, check_same_sweep, load_sweep

    # the flags replace the file's values and are checked like them
    settings = {"output": args.output or None, "num_samples": args.num_samples,
                "max_concurrent_trials": args.max_concurrent_trials}
    try:
        sweep = load_sweep(args.config, parse_set_args(args.set),
                           settings={k: v for k, v in settings.items() if v is not None})
        resume = can_continue(sweep)
        check_same_sweep(sweep)
    except ConfigError as e:
        return exit_user_error(e)
    n = num_trials(sweep.space, sweep.num_samples)
    if resume:
        print(f"continuing the sweep in {sweep.output}: finished trials are kept, the others "
              "continue from their runs' newest checkpoints")
    print(f"sweep {sweep.name}: {n} trials over {list(sweep.space)}, "
          f"{sweep.max_concurrent_trials} at a time, {sweep.base.optim.steps} steps each, "
          f"scheduler {sweep.scheduler.kind}; output {sweep.output}")
    if args.check:
        return 0
    from tsal_dist.distributed.tune_driver import run_sweep

    try:
        res = run_sweep(sweep)
    except ConfigError as e:  # what needs the cluster to know (resources)
        return exit_user_error(e)
    except OSError as e:  # the output folder cannot be made or written
        return exit_user_error(f"{e.filename or sweep.output}: {e.strerror or e}")
    for k, v in res["files"].items():
        print(f"{k:5s} {v}")
    if res["unfinished"]:
        print(f"error: the sweep stopped with {res['unfinished']} of {len(res['tune'])} trials "
              "unfinished; rerun the same command to continue it", file=sys.stderr)
        return 1
    best = res["best"]
    if best is None:
        print("error: no trial reported a finite val_nme", file=sys.stderr)
        return 1
    print(f"best trial {best['trial']}: val NME {100 * best['val_nme']:.3f}% "
          f"({', '.join(f'{k}={best[k]}' for k in sweep.space)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
