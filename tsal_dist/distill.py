"""``python -m tsal_dist.distill``: KD-Loss distillation into a real-time student (METHOD.md §5).

ASM soft landmarks -> Tough teacher (hard landmarks; or ``--tough-from RUN``, the TSAL teacher of
a previous ``tsal_dist.train`` run) -> Tolerant teacher (soft landmarks) -> MobileNetV2 student
trained with KD-Loss, on Ray Train workers (the engines, checkpoints and FailureConfig of
``tsal_dist.train``) or in this process with ``--local``. With no arguments it distils on the
synthetic data on this machine. Rerunning the same command resumes. The student exports with
``python -m tsal_dist.export --checkpoint RUN/checkpoints/ckpt-*.pt --which student``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tsal_dist.config import ConfigError, parse_set_args
from tsal_dist.loop.distill_loop import DistillConfig, load_distill_config

__all__ = ["DistillConfig", "load_distill_config", "run_name_for", "fit", "main"]


def run_name_for(cfg: DistillConfig) -> str:
    """``experiment.run.name`` or ``distill-<config hash>``: the same command resumes."""
    if cfg.experiment.run.name:
        return cfg.experiment.run.name
    from tsal_dist.config import with_overrides

    return "distill-" + with_overrides(cfg, {"experiment.run.name": ""}).hash()[:10]


def _prepare(cfg: DistillConfig, run_dir: Path) -> None:
    """Driver side, once: synthetic data and the ASM, so workers do not race to make them."""
    from tsal_dist.loop.distill_loop import ensure_asm

    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_asm(cfg, run_dir)


def fit(cfg: DistillConfig) -> dict[str, Any]:
    """Distil on Ray Train; return the summary (evaluation of both teachers and the student)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from tsal_dist.distributed.distill_worker import distill_loop_per_worker
    from tsal_dist.distributed.launch import ensure_ray, scaling_config

    e = cfg.experiment
    name = run_name_for(cfg)
    out = Path(e.run.output).expanduser().resolve()
    run_dir = out / name
    _prepare(cfg, run_dir)
    ensure_ray()
    trainer = TorchTrainer(
        distill_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir)},
        scaling_config=scaling_config(e),
        run_config=RunConfig(
            name=name, storage_path=str(out / "_ray"),
            failure_config=FailureConfig(max_failures=e.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=e.run.keep_checkpoints)),
    )
    result = trainer.fit()
    summary: dict[str, Any] = {"run_dir": str(run_dir), "name": name, "metrics": result.metrics,
                               "error": repr(result.error) if result.error else None}
    sp = run_dir / "eval" / "summary.json"
    if sp.is_file():
        summary["eval"] = json.loads(sp.read_text())
    return summary


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
    try:
        if args.local:
            from tsal_dist.loop.distill_loop import run_distill

            run_dir = Path(cfg.experiment.run.output).expanduser().resolve() / run_name_for(cfg)
            summary = run_distill(cfg, run_dir=run_dir)
        else:
            summary = fit(cfg)
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


def print_summary(summary: dict) -> None:
    print(f"run folder: {summary.get('run_dir')}")
    for which, lists in (summary.get("eval") or {}).items():
        for name, r in lists.items():
            print(f"{which:8s} {name:32s} n={r['count']:5d} "
                  f"NME(io)={100 * r['nme_inter_ocular']:.2f}% AUC@0.08={r['auc@0.08']:.3f} "
                  f"FR@0.08={r['fr@0.08']:.3f}")
    if summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
