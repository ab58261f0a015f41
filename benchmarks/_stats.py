"""Seed-paired differences with Student-t 95 % intervals, and rank correlation, shared by the
method benchmarks."""

from __future__ import annotations

import math
import statistics
from typing import Any

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    """Two-sided 95 % Student-t quantile (table; the nearest smaller df beyond it)."""
    return T975[max(k for k in T975 if k <= df)] if df >= 1 else float("nan")


def paired(values: dict[Any, float], base: dict[Any, float]) -> dict[str, Any] | None:
    """Mean of the seed-paired differences ``values - base`` with its 95 % t interval."""
    seeds = sorted(set(values) & set(base))
    if not seeds:
        return None
    d = [values[s] - base[s] for s in seeds]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return {"mean": mean, "ci95": None, "n": 1, "per_seed": d, "seeds": seeds}
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(d), "per_seed": d,
            "seeds": seeds, "significant": not (mean - half <= 0.0 <= mean + half)}


def format_delta(d: dict[str, Any] | None) -> str:
    """A paired difference in pp: ``+1.23 [-0.40, +2.86]*`` (* = the interval excludes 0)."""
    if not d:
        return ""
    ci = d.get("ci95")
    txt = f"{100 * d['mean']:+.2f}"
    if ci:
        txt += f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" + ("*" if d["significant"] else "")
    return txt


def ranks(x: list[float]) -> list[float]:
    """0-based ranks of ``x``; tied values share the mean of their ranks."""
    order = sorted(range(len(x)), key=x.__getitem__)
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            r[k] = (i + j) / 2
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson of the tie-averaged ranks); None when fewer than 3
    pairs or either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return statistics.correlation(ranks(x), ranks(y))
