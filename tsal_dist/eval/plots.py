"""CED and training-curve plots, written atomically as image files.

What belongs here: turning per-image NMEs or a run's ``metrics.jsonl`` into figures.
What does not: computing metrics (``metrics.py``) or running models (``run.py``).

matplotlib is imported inside the functions and only its object API (``Figure`` + Agg canvas) is
used, so nothing touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tsal_dist.atomic import atomic_path
from tsal_dist.eval.metrics import auc, ced, mean_nme


def _save_atomic(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib Figure to ``path`` atomically, in the format its extension names
    (PNG without one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    p = Path(path)
    FigureCanvasAgg(fig)
    fmt = (p.suffix or ".png").lstrip(".").lower()
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return p


def plot_ced(curves: Mapping[str, np.ndarray], path: str | Path, threshold: float = 0.08,
             title: str = "Cumulative error distribution", steps: int = 2000,
             xlabel: str = "NME (inter-ocular)") -> Path:
    """Plot the CED of one or more sets of per-image NMEs.

    Args:
        curves: {label: (N,) per-image NMEs as fractions}; NaNs (degenerate images) are ignored.
        path: output image file (.png, .pdf, .svg); folders are created.
        threshold: right end of the x axis (fraction); also the AUC threshold in the legend.
        title: figure title.
        steps: CED resolution (as :func:`tsal_dist.eval.metrics.ced`).
        xlabel: x-axis label (name the normaliser).

    Returns:
        The written path. The legend shows, per curve, the mean NME (%) and AUC@threshold (%).
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_ced: no curves given")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for label, nmes in curves.items():
        ts, fr = ced(np.asarray(nmes, dtype=np.float64), threshold, steps)
        m, a = mean_nme(nmes), auc(nmes, threshold, steps)
        ax.plot(ts * 100.0, fr * 100.0,
                label=f"{label}: NME {_pct(m)}, AUC@{threshold:g} {_pct(a)}")
    ax.set_xlim(0, threshold * 100.0)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"{xlabel} (%)")
    ax.set_ylabel("Images with NME < x (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _save_atomic(fig, path)


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%" if math.isfinite(x) else "n/a"


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` (one JSON object per line); blank lines are skipped.

    Raises:
        FileNotFoundError / ValueError naming the file (and line) if missing or malformed.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: metrics file not found") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            # a crash mid-write can truncate the final line; anything earlier is corruption
            if i == len(text.splitlines()):
                break
            raise ValueError(f"{p}:{i}: not valid JSON: {e}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{p}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def plot_training_curves(metrics_jsonl_path: str | Path, out_png: str | Path,
                         keys: Sequence[str], step_key: str = "step") -> Path:
    """One panel per key: value vs step from a run's ``metrics.jsonl``.

    Rows without a key (or with a non-numeric value) are skipped for that key; a row without
    ``step_key`` uses its row number. Keys that never appear are left out of the figure.

    Args:
        metrics_jsonl_path: JSON-lines file, one object per logged step.
        out_png: output image file.
        keys: metric names to plot, e.g. ``["loss/student", "val/nme"]``.
        step_key: name of the x-axis field.

    Returns:
        The written path.
    Raises:
        ValueError: none of ``keys`` occurs in the file (the message names the file).
    """
    from matplotlib.figure import Figure

    rows = read_metrics_jsonl(metrics_jsonl_path)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for key in keys:
        xs, ys = [], []
        for i, row in enumerate(rows):
            v = row.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            x = row.get(step_key, i)
            xs.append(float(x) if isinstance(x, (int, float)) else float(i))
            ys.append(float(v))
        if xs:
            series[key] = (xs, ys)
    if not series:
        raise ValueError(f"{metrics_jsonl_path}: none of the keys {list(keys)} has a numeric value")
    n = len(series)
    fig = Figure(figsize=(6, 2.6 * n))
    for i, (key, (xs, ys)) in enumerate(series.items(), 1):
        ax = fig.add_subplot(n, 1, i)
        ax.plot(xs, ys, lw=1.2)
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        if i == n:
            ax.set_xlabel(step_key)
    fig.tight_layout()
    return _save_atomic(fig, out_png)
