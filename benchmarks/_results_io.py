"""Atomic result writers shared by the benchmark scripts (temp file in the same folder, then
rename, so an interrupted benchmark never leaves a half-written table or plot)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(out: Path, stem: str, doc: Any, md: str, default: Any = None) -> None:
    """``out/<stem>.json`` (``doc``, indent 1; ``default`` as json.dumps takes it) and
    ``out/<stem>.md`` (``md``), each atomically."""
    write_text(out / f"{stem}.json", json.dumps(doc, indent=1, default=default))
    write_text(out / f"{stem}.md", md)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure to ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
