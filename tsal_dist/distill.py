"""``python -m tsal_dist.distill``: KD-Loss distillation into a real-time student (METHOD.md §5).

ASM soft landmarks -> Tough teacher (hard landmarks; or ``--tough-from RUN``, the TSAL teacher of
a previous ``tsal_dist.train`` run) -> Tolerant teacher (soft landmarks) -> MobileNetV2 student
trained with KD-Loss, on Ray Train workers (the launch, engines, checkpoints and FailureConfig of
``tsal_dist.train``) or in this process with ``--local``. With no arguments it distils on the
synthetic data on this machine. Rerunning the same command resumes. At the end the regression
student is exported to ``RUN/export`` (``experiment.run.export``); by hand:
``python -m tsal_dist.export --checkpoint RUN/checkpoints/ckpt-*.pt --out DIR --which student``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tsal_dist.config import (ConfigError, DistillConfig, load_distill_config, parse_set_args,
                              run_name_for)
from tsal_dist.train import print_summary

__all__ = ["DistillConfig", "load_distill_config", "run_distill", "export_student", "main"]


def run_distill(cfg: DistillConfig, *, run_dir: str | Path, export: bool | None = None,
                final_eval: bool = True, **loop_args: Any) -> dict[str, Any]:
    """Distil in this process (``--local``): ``tsal_dist.loop.distill_loop.distill``, then the
    student's export.

    Args:
        export: export the student at the end; None = ``experiment.run.export``.
        loop_args: ``distill``'s other arguments (ctx, teacher_dir, progress, teacher_cache...).
    Raises:
        ExportError: the export failed (the run's checkpoints stay).
    """
    from tsal_dist.loop.distill_loop import distill

    summary = distill(cfg, run_dir=run_dir, final_eval=final_eval, **loop_args)
    if final_eval and (cfg.experiment.run.export if export is None else export):
        summary.update(export_student(cfg, Path(run_dir)))
    return summary


def export_student(cfg: DistillConfig, run_dir: Path) -> dict[str, Any]:
    """Export a finished run's student to ``<run>/export`` (regression students; a heatmap
    student exports by hand with ``python -m tsal_dist.export --which student``).

    Returns:
        {"export": folder} when it exported, else {}.
    """
    if cfg.student.arch != "regression":
        return {}
    from tsal_dist.export import export_run

    # a failed export fails the run (ExportError naming the file); the checkpoints stay
    out = export_run(run_dir, "student")
    return {} if out is None else {"export": str(out)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tsal_dist.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML of overrides (configs/distill.yaml is the default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set kd.variant=paper (repeatable)")
    p.add_argument("--tough-from", metavar="RUN",
                   help="run folder whose newest checkpoint's teacher is the Tough teacher")
    p.add_argument("--output", help="folder for run folders (= experiment.run.output)")
    p.add_argument("--name", help="run name (= experiment.run.name); same name resumes")
    p.add_argument("--local", action="store_true", help="run in this process without Ray")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides: dict[str, Any] = parse_set_args(args.set)
        if args.tough_from:
            overrides["teachers.tough_from"] = args.tough_from
        if args.output:
            overrides["experiment.run.output"] = args.output
        if args.name:
            overrides["experiment.run.name"] = args.name
        cfg = load_distill_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.experiment.run.output).expanduser().resolve() / run_name_for(cfg)
    try:
        if args.local:
            summary = run_distill(cfg, run_dir=run_dir)
        else:
            from tsal_dist.distributed.launch import fit_distill

            summary = fit_distill(cfg)
            if cfg.experiment.run.export and not summary.get("error"):
                summary.update(export_student(cfg, run_dir))
    except Exception as e:  # noqa: BLE001 - sorted into the user's errors and the system's
        from tsal_dist.errors import named_error, user_error

        msg = user_error(e)  # bad --tough-from run, unreadable data: named in the message
        if msg is not None:
            print(f"error: {msg}", file=sys.stderr)
            return 2
        msg = named_error(e, "ExportError")
        if msg is not None:  # the run trained; its deliverable could not be made
            print(f"error: the student's export failed: {msg}", file=sys.stderr)
            return 1
        raise
    print_summary(summary)
    return 0 if not summary.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
