"""``python -m tsal_dist.train``: the main job.

With no arguments it is the embedded default: a local Ray instance (or the cluster in RAY_ADDRESS),
the synthetic dataset generated once into the cache, a small model on CPU workers, evaluation of the
teacher and an exported ONNX model in the run folder (``run.export``: this entry point exports at
the end). The same command scales by config alone. Rerunning the same command resumes the run
from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tsal_dist.cli import add_config_args, exit_user_error, run_and_report, run_overrides
from tsal_dist.config import ConfigError, ExperimentConfig, load_config, run_name_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tsal_dist.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, config_help="YAML file of overrides (see configs/)",
                    set_help="dotted override, e.g. --set teacher.blend=0.8 (repeatable)")
    p.add_argument("--output", help="folder for run folders (= --set run.output=...)")
    p.add_argument("--name", help="run name (= --set run.name=...); same name resumes")
    p.add_argument("--local", action="store_true",
                   help="train in this process without Ray (one worker; debugging)")
    p.add_argument("--force", action="store_true",
                   help="continue an existing run folder even though its config differs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tsal_dist.loop.runs import check_run_config  # torch: not needed for --help

    try:
        cfg = load_config(args.config, run_overrides(args, section="run"))
        run_dir = Path(cfg.run.output).expanduser().resolve() / run_name_for(cfg)
        check_run_config(run_dir, cfg, force=args.force)
    except ConfigError as e:
        return exit_user_error(e)
    return run_and_report(lambda: train_and_export(cfg, run_dir, local=args.local),
                          deliverable="the teacher's export")


def train_and_export(cfg: ExperimentConfig, run_dir: Path, *, local: bool) -> dict[str, Any]:
    """Train (on Ray, or in this process with ``local``), then export the teacher when
    ``run.export``; the run summary. Raises ExportError when the export fails."""
    if local:
        from tsal_dist.loop.context import local_context
        from tsal_dist.loop.loop import run

        summary = run(cfg, run_dir=run_dir, ctx=local_context(cfg.scaling))
    else:
        from tsal_dist.distributed.launch import fit

        summary = fit(cfg)
    if cfg.run.export and not summary.get("error"):
        from tsal_dist.export import export_run

        exported = export_run(run_dir, "teacher")  # the network the runtime ships
        if exported is not None:
            summary["export"] = str(exported)
    return summary


if __name__ == "__main__":
    sys.exit(main())
