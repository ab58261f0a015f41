"""benchmarks/gpu_check.py on its CPU dry path (no GPU here): both training runs go through Ray
Train in bf16 and their figures are read back and written as json + markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_writes_both_runs(tmp_path):
    pytest.importorskip("ray")
    mod = _module()
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


def test_a_failing_step_is_reported_and_the_next_one_runs(tmp_path, monkeypatch):
    """A run that raises (Ray Train raises a worker's error from fit) is one line in the report,
    the next run still runs, the report is on disk after each step, and the exit code is 1."""
    mod = _module()
    seen = []

    def fake_run(name, overrides, out):
        seen.append(name)
        if name.startswith("ddp"):
            raise RuntimeError("NCCL error: unhandled system error\nmore lines")
        assert json.loads((tmp_path / "out" / "gpu_check_dry_run.json").read_text())[
            "training"][0]["error"] == "RuntimeError: NCCL error: unhandled system error"
        return {"name": name, "overrides": overrides, "error": None, "wall_s": 1.0, "steps": 2,
                "samples_per_sec": 5.0, "sec_per_step": 0.5, "data_wait_frac": 0.0,
                "loader_workers": 0, "peak_gpu_mib": 0.0, "teacher_nme": {}}

    monkeypatch.setattr(mod, "training_run", fake_run)
    rc = mod.main(["--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")])
    assert rc == 1 and seen == ["ddp-bf16-dry", "zero2-bf16-dry"]
    res = json.loads((tmp_path / "out" / "gpu_check_dry_run.json").read_text())
    assert [r["name"] for r in res["training"]] == seen
    assert res["training"][0]["overrides"]["run.max_failures"] == 0
    md = (tmp_path / "out" / "gpu_check_dry_run.md").read_text()
    assert "| ddp-bf16-dry | – |" in md and "error: RuntimeError: NCCL error" in md
    assert "| zero2-bf16-dry | 2 | 5.0 |" in md


def test_a_run_starts_from_an_empty_run_folder(tmp_path, monkeypatch):
    """An earlier check's run folder of the same name (its checkpoint at the last step would make
    the launcher resume and finish at once, reporting the old figures) is removed first."""
    import tsal_dist.distributed.launch as launch

    mod = _module()
    old = tmp_path / "ddp-bf16"
    (old / "checkpoints").mkdir(parents=True)
    (old / "metrics.jsonl").write_text(json.dumps({"step": 2, "samples_per_sec": 1e9}) + "\n")

    def fake_fit(cfg):
        run = Path(cfg.run.output) / cfg.run.name
        assert not run.exists()
        run.mkdir()
        rows = [{"step": 1, "samples_per_sec": 3.0}, {"step": 2, "samples_per_sec": 5.0}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {}

    monkeypatch.setattr(launch, "fit", fake_fit)
    r = mod.training_run("ddp-bf16", {"optim.steps": 2}, tmp_path)
    assert r["samples_per_sec"] == 5.0 and r["error"] is None


def test_gpu_branch_survives_a_pytest_timeout_and_a_failed_run(tmp_path, monkeypatch):
    """The GPU branch with its steps faked: `pytest -m gpu` running out of time is one line of
    the report (not an exception that loses it), the runs still go, and with the ddp run failed
    the runtime step is reported as skipped; the report never points at a runtime_fps_gpu.md it
    did not write; exit code 1."""
    import subprocess

    import torch

    mod = _module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mod, "_device_info", lambda gpu: {"device": "cuda", "gpu": "fake",
                                                          "cpus": 16, "torch": "x"})

    def slow_pytest(timeout_s):
        raise subprocess.TimeoutExpired(["pytest"], timeout_s)

    def run(name, overrides, out):
        if name == "ddp-bf16":
            raise RuntimeError("CUDA error: out of memory")
        return {"name": name, "overrides": overrides, "error": None, "wall_s": 1.0, "steps": 2,
                "samples_per_sec": 5.0, "sec_per_step": 0.5, "data_wait_frac": 0.0,
                "loader_workers": 1, "peak_gpu_mib": 10.0, "teacher_nme": {}}

    monkeypatch.setattr(mod, "run_pytest_gpu", slow_pytest)
    monkeypatch.setattr(mod, "training_run", run)
    monkeypatch.setattr(mod, "runtime_figures", lambda *a, **k: pytest.fail("no teacher"))
    rc = mod.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
                   "--pytest-timeout", "7"])
    assert rc == 1
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert res["pytest_gpu"]["returncode"] is None
    assert res["pytest_gpu"]["summary"].startswith("TimeoutExpired: Command '['pytest']' timed "
                                                   "out after 7 seconds")
    assert [r["name"] for r in res["training"]] == ["ddp-bf16", "zero2-bf16"]
    assert res["runtime"]["skipped"] is True
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "runtime_fps_gpu.md" not in md and "not measured, skipped" in md
    assert "error: RuntimeError: CUDA error: out of memory" in md
