"""tsal_dist.eval.plots: files are written, valid images, atomically, errors name the file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tsal_dist.eval import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_ced_writes_png_and_no_temp_files(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "sub" / "ced.png"
    got = plots.plot_ced({"teacher": rng.uniform(0, 0.1, 50),
                          "student": np.array([0.02, np.nan, 0.05])}, out, threshold=0.08)
    assert got == out and out.is_file()
    w, h = _png_size(out)
    assert w > 100 and h > 100
    assert sorted(os.listdir(out.parent)) == ["ced.png"]


def test_plot_ced_legend_has_nme_and_auc(tmp_path, monkeypatch):
    labels = []
    from matplotlib.axes import Axes

    orig = Axes.plot

    def spy(self, *a, **k):
        labels.append(k.get("label"))
        return orig(self, *a, **k)

    monkeypatch.setattr(Axes, "plot", spy)
    plots.plot_ced({"a": np.array([0.01, 0.03]), "dead": np.array([np.nan])}, tmp_path / "c.svg")
    a = plots.auc(np.array([0.01, 0.03]))
    assert labels[0] == f"a: NME 2.00%, AUC@0.08 {a * 100:.2f}%"
    assert labels[1] == "dead: NME n/a, AUC@0.08 n/a"
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


def test_plot_ced_empty_raises(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_ced({}, tmp_path / "x.png")


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "ced.png"
    out.write_bytes(b"old")
    from matplotlib.figure import Figure

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        plots.plot_ced({"a": np.array([0.01])}, out)
    assert out.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ced.png"]


def test_plot_training_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss/student": 1.0 / (s + 1), "val/nme": None if s % 2 else 0.05}
            for s in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + '{"step": 10, "loss/stu')
    out = plots.plot_training_curves(path, tmp_path / "curves.png",
                                     ["loss/student", "val/nme", "absent"])
    _png_size(out)
    with pytest.raises(ValueError, match="metrics.jsonl"):
        plots.plot_training_curves(path, tmp_path / "x.png", ["absent"])


def test_read_metrics_jsonl_errors_name_file(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        plots.read_metrics_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        plots.read_metrics_jsonl(tmp_path / "nope.jsonl")
    arr = tmp_path / "a.jsonl"
    arr.write_text("[1, 2]\n{}\n")
    with pytest.raises(ValueError, match="JSON object"):
        plots.read_metrics_jsonl(arr)
