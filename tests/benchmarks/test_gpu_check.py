"""benchmarks/gpu_check.py on its CPU dry path (no GPU here): both training runs go through Ray
Train in bf16 and their figures are read back and written as json + markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_dry_run_writes_both_runs(tmp_path):
    pytest.importorskip("ray")
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        # 2 steps (the dry run's default is 4): a row per step, the second one the steady figures
        rc = mod.main(["--dry-run", "--steps", "2", "--out", str(tmp_path / "out"),
                       "--work", str(tmp_path / "w")])
    finally:
        import ray

        ray.shutdown()
    assert rc == 0
    res = json.loads((tmp_path / "out" / "gpu_check_dry_run.json").read_text())
    assert res["dry_run"] is True and res["machine"]["device"] == "cpu"
    names = [r["name"] for r in res["training"]]
    assert names == ["ddp-bf16-dry", "zero2-bf16-dry"]
    for r in res["training"]:
        assert r["error"] is None and r["samples_per_sec"] > 0 and 0 <= r["data_wait_frac"] < 1
        assert r["overrides"]["train.precision"] == "bf16"
    md = (tmp_path / "out" / "gpu_check_dry_run.md").read_text()
    assert "NOT GPU figures" in md and "| zero2-bf16-dry | 2 |" in md
