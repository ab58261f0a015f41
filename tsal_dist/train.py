"""``python -m tsal_dist.train``: the main job.

With no arguments it is the embedded default: a local Ray instance (or the cluster in RAY_ADDRESS),
the synthetic dataset generated once into the cache, a small model on CPU workers, evaluation of the
teacher and an exported ONNX model in the run folder (``run.export``: this entry point exports at
the end). The same command scales by config alone. Rerunning the same command resumes the run
from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tsal_dist.config import ConfigError, load_config, parse_set_args, run_name_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tsal_dist.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of overrides (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set teacher.blend=0.8 (repeatable)")
    p.add_argument("--output", help="folder for run folders (= --set run.output=...)")
    p.add_argument("--name", help="run name (= --set run.name=...); same name resumes")
    p.add_argument("--local", action="store_true",
                   help="train in this process without Ray (one worker; debugging)")
    p.add_argument("--force", action="store_true",
                   help="continue an existing run folder even though its config differs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = parse_set_args(args.set)
        if args.output:
            overrides["run.output"] = args.output
        if args.name:
            overrides["run.name"] = args.name
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tsal_dist.loop.runs import check_run_config

    run_dir = Path(cfg.run.output).expanduser().resolve() / run_name_for(cfg)
    try:
        check_run_config(run_dir, cfg, force=args.force)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.local:
            from tsal_dist.loop.loop import run

            summary = run(cfg, run_dir=run_dir)
        else:
            from tsal_dist.distributed.launch import fit

            summary = fit(cfg)
        if cfg.run.export and not summary.get("error"):
            from tsal_dist.export import export_run

            exported = export_run(run_dir, "teacher")  # the network the runtime ships
            if exported is not None:
                summary["export"] = str(exported)
    except Exception as e:  # noqa: BLE001 - sorted into the user's errors and the system's
        from tsal_dist.errors import named_error, user_error

        msg = user_error(e)
        if msg is not None:
            print(f"error: {msg}", file=sys.stderr)
            return 2
        msg = named_error(e, "ExportError")
        if msg is not None:  # the run trained; its deliverable could not be made
            print(f"error: the teacher's export failed: {msg}", file=sys.stderr)
            return 1
        raise
    print_summary(summary)
    return 0 if not summary.get("error") else 1


def print_summary(summary: dict) -> None:
    """The run folder, one line per (network, eval list), then the error or ``{"ok": true}``
    (``tsal_dist.distill`` prints its summary with it too)."""
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


if __name__ == "__main__":
    sys.exit(main())
