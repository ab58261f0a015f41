"""``python -m tsal_dist.distill``: KD-Loss distillation into a real-time student
(docs/method_notes.md §5).

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

from tsal_dist.cli import (add_config_args, exit_user_error, flag_override, run_and_report,
                           run_overrides)
from tsal_dist.config import ConfigError, DistillConfig, load_distill_config, run_name_for

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
    add_config_args(p, config_help="YAML of overrides (configs/distill.yaml is the default)",
                    set_help="dotted override, e.g. --set kd.variant=paper (repeatable)")
    p.add_argument("--tough-from", metavar="RUN",
                   help="run folder whose newest checkpoint's teacher is the Tough teacher")
    p.add_argument("--output", help="folder for run folders (= experiment.run.output)")
    p.add_argument("--name", help="run name (= experiment.run.name); same name resumes")
    p.add_argument("--local", action="store_true", help="run in this process without Ray")
    p.add_argument("--force", action="store_true",
                   help="continue an existing run folder even though its config differs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tsal_dist.loop.runs import check_run_config  # torch: not needed for --help

    try:
        overrides = run_overrides(args, section="experiment.run")
        flag_override(overrides, "teachers.tough_from", args.tough_from, "--tough-from")
        cfg = load_distill_config(args.config, overrides)
        run_dir = Path(cfg.experiment.run.output).expanduser().resolve() / run_name_for(cfg)
        check_run_config(run_dir, cfg, force=args.force)
    except ConfigError as e:
        return exit_user_error(e)
    # a bad --tough-from run or unreadable data is the user's error, named in its line
    return run_and_report(lambda: distill_and_export(cfg, run_dir, local=args.local),
                          deliverable="the student's export")


def distill_and_export(cfg: DistillConfig, run_dir: Path, *, local: bool) -> dict[str, Any]:
    """Distil (on Ray, or in this process with ``local``), then export the student when
    ``experiment.run.export``; the run summary. Raises ExportError when the export fails."""
    if local:
        from tsal_dist.loop.context import local_context

        return run_distill(cfg, run_dir=run_dir, ctx=local_context(cfg.experiment.scaling))
    from tsal_dist.distributed.launch import fit_distill

    summary = fit_distill(cfg)
    if cfg.experiment.run.export and not summary.get("error"):
        summary.update(export_student(cfg, run_dir))
    return summary


if __name__ == "__main__":
    sys.exit(main())
