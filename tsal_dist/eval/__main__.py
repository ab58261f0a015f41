"""``python -m tsal_dist.eval``: score a checkpoint's teacher (or student) on SBR list files.

The network is rebuilt by ``tsal_dist.loop.checkpoint.model_from_checkpoint`` from the
checkpoint's own fields: a TSAL teacher or student, a distillation's Tough teacher, or a distilled
student (MobileNetV2 regressor or heatmap detector) are scored alike.

Example::

    python -m tsal_dist.eval --checkpoint runs/x/checkpoints/ckpt-00001200.pt \\
        --list data/300W/300W.test-common.lst --list data/300VW/300VW.test-3.lst \\
        --json runs/x/eval.json --plot runs/x/ced.png

Prints one row per list (NMEs in %), optionally writes a JSON file (fractions, per list, with
per-video breakdowns for video lists) and a CED plot. Exit status: 0 ok, 2 bad input (checkpoint,
list, a list without one face to score, config override, device), with a one-line message on
stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence


class UsageError(Exception):
    """A user input problem; main() prints it on one line and exits with status 2."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tsal_dist.eval",
                                 description="Evaluate a tsal_dist checkpoint on SBR list files.")
    ap.add_argument("--checkpoint", required=True, help="checkpoint file (.pt) written by training")
    ap.add_argument("--list", dest="lists", action="append", default=[], metavar="FILE",
                    help="SBR list file (repeatable); default: the config's data.eval_lists")
    ap.add_argument("--json", metavar="OUT", help="write the per-list results here (JSON)")
    ap.add_argument("--which", choices=("teacher", "student"), default="teacher",
                    help="which network of the checkpoint to evaluate (default: teacher)")
    ap.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ap.add_argument("--plot", metavar="CED.png", help="write a CED plot (primary NME) here")
    ap.add_argument("--batch-size", type=int, default=32, help="crops per forward pass")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set model.decode=window (repeatable)")
    return ap


def resolve_lists(lists: Sequence[str], eval_lists: Sequence[str], root: str) -> list[str]:
    """--list files as given, else the config's eval lists resolved against data.root."""
    if lists:
        return list(lists)
    if not eval_lists:
        raise UsageError("no --list given and the checkpoint's config has no data.eval_lists")
    base = Path(root).expanduser() if root else Path(".")
    return [str(base / p) for p in eval_lists]


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Fixed-width table, NMEs / AUC / FR in %."""
    head = (f"{'list':<32} {'count':>7} {'NME':>7} {'NME-IP':>7} {'AUC@.08':>8} {'FR@.08':>7} "
            f"{'degen':>6}")
    rows = [head, "-" * len(head)]
    for name, s in results.items():
        rows.append(f"{name[-32:]:<32} {s['count']:>7d} {_pct(s.get('nme')):>7} "
                    f"{_pct(s.get('nme_inter_pupil')):>7} {_pct(s.get('auc@0.08')):>8} "
                    f"{_pct(s.get('fr@0.08')):>7} {s['n_degenerate']:>6d}")
    return "\n".join(rows)


def _pct(x: Any) -> str:
    return f"{100 * x:.2f}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Do the evaluation; raises UsageError for bad input. Returns the JSON document."""
    import torch

    from tsal_dist.atomic import atomic_write_json
    from tsal_dist.config import ConfigError, parse_set_args
    from tsal_dist.data.formats import AnnotationError, read_list
    from tsal_dist.eval.plots import plot_ced
    from tsal_dist.eval.run import evaluate_list, list_names
    from tsal_dist.loop.checkpoint import CheckpointError, model_from_checkpoint
    from tsal_dist.loop.evaluation import list_eval_args

    try:
        loaded = model_from_checkpoint(args.checkpoint, args.which,
                                       overrides=parse_set_args(args.overrides))
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    cfg, model = loaded.config, loaded.model
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    _check_device(args.device)
    if cfg.train.torch_threads > 0:
        torch.set_num_threads(cfg.train.torch_threads)
    lists = resolve_lists(args.lists, cfg.data.eval_lists, cfg.data.root)
    _check_outputs({"--json": args.json, "--plot": args.plot}, [args.checkpoint, *lists])
    for path in lists:  # before any list is scored: a list with nothing to score is refused
        try:
            entries = read_list(path)
        except AnnotationError as e:
            raise UsageError(_naming(path, e)) from None
        if not entries:
            raise UsageError(f"{path}: the list has no entries; nothing to evaluate")
        if all(e.annotation is None for e in entries):
            raise UsageError(f"{path}: none of its {len(entries)} entries has an annotation; "
                             "nothing to evaluate")
    results = []
    for name, path in zip(list_names(lists), lists):
        try:
            results.append(evaluate_list(
                model, path, **list_eval_args(cfg, input_size=loaded.input_size),
                batch_size=args.batch_size, device=args.device, name=name))
        except (AnnotationError, FileNotFoundError) as e:
            raise UsageError(_naming(path, e)) from None
        if results[-1].summary["count"] == 0:  # every face skipped (a sharded corner case)
            raise UsageError(f"{path}: no face of its {results[-1].summary['n_entries']} "
                             "entries could be scored; nothing to evaluate")
    summaries = {r.name: r.summary for r in results}
    print(format_table(summaries))
    doc = {"checkpoint": str(args.checkpoint), "step": loaded.step, "which": args.which,
           "head": loaded.head, "config_hash": cfg.hash(), "units": "fractions (x100 for %)",
           "lists": summaries}
    try:
        if args.json:
            atomic_write_json(args.json, doc, allow_nan=False)  # strict JSON: no NaN/Infinity
        if args.plot:
            primary = results[0].summary["norm"] if results else "inter_ocular"
            plot_ced({r.name: r.primary_nmes for r in results}, args.plot,
                     title=f"CED: {args.which} @ step {doc['step']}",
                     xlabel=f"NME ({primary.replace('_', '-')})")
    except OSError as e:  # what the checks before the work could not foresee (a full disk)
        raise UsageError(f"{e.filename or args.json or args.plot}: cannot write it "
                         f"({e.strerror or e})") from None
    return doc


def _naming(list_path: str, e: Exception) -> str:
    """The error's line, naming the list it came from (once: a message about the list itself
    already starts with it)."""
    msg = str(e)
    return msg if msg.startswith(str(Path(list_path))) else f"{list_path}: {msg}"


def _check_device(device: str) -> None:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N`` of a GPU this machine has."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a torch device (cpu, cuda, cuda:N)") from None
    if d.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: evaluation runs on cpu or cuda")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s)")


def _check_outputs(outputs: dict[str, str | None], inputs: Sequence[str]) -> None:
    """Before the work: every output can be written, none is an input (the checkpoint, a
    list) or given to both flags, and the plot's format is one matplotlib writes."""
    ins = {Path(p).resolve() for p in inputs}
    seen: dict[Path, str] = {}
    for flag, out in outputs.items():
        if not out:
            continue
        path = Path(out)
        _check_writable(path)
        r = path.resolve()
        if r in ins:
            raise UsageError(f"{path}: {flag} would overwrite an input of this evaluation")
        if r in seen:
            raise UsageError(f"{path}: given to both {seen[r]} and {flag}")
        seen[r] = flag
    if outputs.get("--plot"):
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        ext = Path(str(outputs["--plot"])).suffix.lower().lstrip(".")
        if ext not in formats:
            raise UsageError(f"{outputs['--plot']}: --plot writes {', '.join(sorted(formats))}, "
                             f"not {ext or 'a file without an extension'}")


def _check_writable(path: Path) -> None:
    """Fail now, naming ``path``, if a result file cannot be written there."""
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path}: exists and is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{path}: cannot write here ({e.strerror or type(e).__name__}: "
                         f"{e.filename})") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{path}: cannot write here (folder not writable)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
