"""A sweep's result files, read from the trials' run folders (not from Tune's bookkeeping).

Under the sweep's ``output`` folder::

    results.csv/.md     one row per trial: swept keys, final val NME, teacher test NME, run folder
    nme_vs_keys.png     final val NME against each swept key
    best_config.yaml    overrides for ``python -m tsal_dist.train --config best_config.yaml``

This module imports no Ray. What does not belong here: reading the sweep file (``sweep.py``),
running the trials (``tune_driver.py``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from tsal_dist.atomic import atomic_path, atomic_write_text
from tsal_dist.config import ExperimentConfig, flatten, load_yaml, to_dict, with_overrides
from tsal_dist.distributed.search_space import parse_space
from tsal_dist.distributed.sweep import Sweep


def read_trial(run_dir: Path, keys: list[str]) -> dict[str, Any]:
    """One results row from a trial's run folder (independent of Tune's own bookkeeping).

    Columns: ``trial``, each swept key (from the run's config.yaml, i.e. what the run USED),
    ``val_nme`` (last validation NME in metrics.jsonl), ``val_step``, ``steps`` (last logged
    step), ``test_nme_teacher`` (mean inter-ocular NME over the eval lists, if evaluated) and
    ``run_dir``.
    """
    row: dict[str, Any] = {"trial": run_dir.name}
    cfg_path = run_dir / "config.yaml"
    flat = flatten(load_yaml(cfg_path)) if cfg_path.is_file() else {}
    for k in keys:
        row[k] = flat.get(k, "")
    val, val_step, steps = math.nan, 0, 0
    mp = run_dir / "metrics.jsonl"
    if mp.is_file():
        for line in mp.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            steps = max(steps, int(rec.get("step", 0)))
            if "val/nme_inter_ocular" in rec:
                val, val_step = float(rec["val/nme_inter_ocular"]), int(rec["step"])
    row.update(val_nme=val, val_step=val_step, steps=steps, test_nme_teacher=math.nan)
    sp = run_dir / "eval" / "summary.json"
    if sp.is_file():
        teacher = json.loads(sp.read_text()).get("teacher", {})
        vals = [r["nme_inter_ocular"] for r in teacher.values()
                if isinstance(r, dict) and "nme_inter_ocular" in r]
        if vals:
            row["test_nme_teacher"] = sum(vals) / len(vals)
    row["run_dir"] = str(run_dir)
    return row


def best_row(rows: list[dict[str, Any]], *, mode: str, full_steps: int) -> dict[str, Any] | None:
    """The best finite ``val_nme``, preferring trials that ran all ``full_steps`` steps."""
    finite = [r for r in rows if isinstance(r["val_nme"], float) and math.isfinite(r["val_nme"])]
    full = [r for r in finite if r["val_step"] >= full_steps]
    pool = full or finite
    if not pool:
        return None
    pick = min if mode == "min" else max
    return pick(pool, key=lambda r: r["val_nme"])


def best_overrides(base: ExperimentConfig, row: Mapping[str, Any], keys: list[str]
                   ) -> dict[str, Any]:
    """Nested overrides (vs the defaults) of base <- best row's swept values; no run.name."""
    cfg = with_overrides(base, {k: row[k] for k in keys})
    cfg = replace(cfg, run=replace(cfg.run, name=""))
    default = flatten(to_dict(ExperimentConfig()))
    diff = {k: v for k, v in flatten(to_dict(cfg)).items() if default.get(k) != v}
    nested: dict[str, Any] = {}
    for k, v in diff.items():
        d = nested
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return nested


def write_results(sweep: Sweep, runs_dir: Path, out: Path,
                  tune_rows: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Write results.csv, results.md, nme_vs_keys.png and best_config.yaml; return them."""
    import yaml

    keys = list(parse_space(sweep.space))
    names = sorted(tune_rows) if tune_rows else sorted(
        p.name for p in runs_dir.iterdir() if p.is_dir() and (p / "trial.json").is_file())
    rows = []
    for n in names:
        row = read_trial(runs_dir / n, keys)
        row["error"] = (tune_rows or {}).get(n, {}).get("error", "")
        rows.append(row)
    cols = ["trial", *keys, "val_nme", "val_step", "steps", "test_nme_teacher", "run_dir", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    files = {"csv": out / "results.csv", "md": out / "results.md",
             "plot": out / "nme_vs_keys.png", "best": out / "best_config.yaml"}
    atomic_write_text(files["csv"], buf.getvalue())
    best = best_row(rows, mode=sweep.mode, full_steps=sweep.base.optim.steps)
    atomic_write_text(files["md"], results_markdown(sweep, rows, keys, best))
    plot_nme_vs_keys(rows, keys, files["plot"], title=f"sweep {sweep.name}")
    if best is not None:
        text = (f"# Best trial of sweep {sweep.name!r}: {best['trial']} "
                f"(val NME {100 * best['val_nme']:.3f}%)\n"
                f"# python -m tsal_dist.train --config {files['best']}\n")
        text += yaml.safe_dump(best_overrides(sweep.base, best, keys), sort_keys=False)
        atomic_write_text(files["best"], text)
    else:  # no best: an earlier sweep's best_config.yaml in this folder is not this one's
        files.pop("best").unlink(missing_ok=True)
    return {"rows": rows, "best": best, "files": {k: str(v) for k, v in files.items()}}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def results_markdown(sweep: Sweep, rows: list[dict[str, Any]], keys: list[str],
                     best: Mapping[str, Any] | None) -> str:
    """The results table as markdown (NMEs in percent of the inter-ocular distance)."""
    head = ["trial", *keys, "val NME %", "at step", "test NME % (teacher)", "run folder"]
    lines = [f"# Sweep `{sweep.name}`", "",
             f"{len(rows)} trials, metric {sweep.metric} ({sweep.mode}), scheduler "
             f"{sweep.scheduler.kind}, {sweep.base.optim.steps} steps per full trial.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " **(best)**" if best is not None and r["trial"] == best["trial"] else ""
        cells = [r["trial"] + mark, *[_fmt(r[k]) for k in keys], _fmt(100 * r["val_nme"]),
                 str(r["val_step"]), _fmt(100 * r["test_nme_teacher"]), r["run_dir"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_nme_vs_keys(rows: list[dict[str, Any]], keys: list[str], path: Path, *,
                     title: str = "") -> None:
    """One panel per swept key: final val NME (%) of each trial against the key's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[key], 100 * r["val_nme"]) for r in rows
               if isinstance(r["val_nme"], float) and math.isfinite(r["val_nme"])]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts)
        if numeric:
            ax.scatter([x for x, _ in pts], [y for _, y in pts])
        else:
            labels = sorted({str(x) for x, _ in pts})
            ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts])
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
        ax.set_ylabel("val NME (%)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
