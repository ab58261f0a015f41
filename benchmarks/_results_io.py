"""Atomic result writers shared by the benchmark scripts (temp file in the same folder, then
rename, so an interrupted benchmark never leaves a half-written table or plot)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def finite_or_none(doc: Any, default: Any = None) -> Any:
    """``doc`` with every NaN / infinite float replaced by None (JSON null), recursively through
    dicts, lists and tuples: what strict JSON readers (jq, JavaScript, pandas' default) accept.
    ``default``, as json.dumps takes it, turns any other object into one JSON can hold (numpy
    scalars: ``float``), and what it makes is checked too."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: finite_or_none(v, default) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [finite_or_none(v, default) for v in doc]
    if default is not None and not isinstance(doc, (str, int, type(None))):
        return finite_or_none(default(doc), default)
    return doc


def strict_json(doc: Any, indent: int | None = 1, default: Any = None) -> str:
    """``json.dumps(doc, indent=)`` as strict JSON: a value that is not a finite number (a mean
    over an empty bin, an open bin's upper bound) is null; ``default`` as in
    :func:`finite_or_none`."""
    return json.dumps(finite_or_none(doc, default), indent=indent, allow_nan=False)


def write_report(out: Path, stem: str, doc: Any, md: str, default: Any = None) -> None:
    """``out/<stem>.json`` (``doc`` as :func:`strict_json`, indent 1) and ``out/<stem>.md``
    (``md``), each atomically."""
    write_text(out / f"{stem}.json", strict_json(doc, 1, default))
    write_text(out / f"{stem}.md", md)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure to ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
