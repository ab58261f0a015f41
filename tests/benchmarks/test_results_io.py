"""The benchmarks' result writer: strict JSON (what jq, JavaScript and pandas read), atomic."""

from __future__ import annotations

import json
import math

import numpy as np
from _scripts import load_script


def _strict(text: str):
    def refuse(const: str):
        raise ValueError(f"non-standard JSON constant {const}")
    return json.loads(text, parse_constant=refuse)


def test_report_json_is_strict_and_keeps_every_finite_value(tmp_path):
    io = load_script("_results_io")
    doc = {"bins": [{"lo": 0.4, "hi": math.inf, "nme": 0.0913}, {"lo": -math.inf, "hi": 0.1}],
           "empty_mean": float("nan"), "runs": ({"seed": 3, "ok": True, "name": "L2"},),
           "nested": {"v": [1.5, float("nan"), 2]}, "none": None}
    io.write_report(tmp_path, "r", doc, "# table\n")
    got = _strict((tmp_path / "r.json").read_text())
    assert got == {"bins": [{"lo": 0.4, "hi": None, "nme": 0.0913}, {"lo": None, "hi": 0.1}],
                   "empty_mean": None, "runs": [{"seed": 3, "ok": True, "name": "L2"}],
                   "nested": {"v": [1.5, None, 2]}, "none": None}
    assert (tmp_path / "r.md").read_text() == "# table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]  # no temp file left


def test_report_json_converts_what_default_makes_of_an_object(tmp_path):
    """distill_ablation passes numpy scalars with ``default=float``: a numpy NaN is null too."""
    io = load_script("_results_io")
    io.write_report(tmp_path, "r", {"a": np.float32(0.25), "b": np.float64("nan"),
                                    "c": [np.float32("inf")]}, "", default=float)
    assert _strict((tmp_path / "r.json").read_text()) == {"a": 0.25, "b": None, "c": [None]}
