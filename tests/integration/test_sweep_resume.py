"""Rerunning a sweep continues it: a real 2-trial Tune sweep whose first trial's worker is
SIGKILLed after its step-3 checkpoint (no retries: the trial errors), then the same sweep run
again in the same output. The finished trial is kept untouched, the failed one continues from its
run's step-3 checkpoint under the same trial name (steps 4-6 only), and a third run changes
nothing. Another sweep pointed at that output is refused before anything is written."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "configs" / "sweeps" / "smoke.yaml"
BASE = {"optim.steps": 6, "run.checkpoint_every": 3, "run.eval_every": 3, "run.log_every": 1,
        "run.max_failures": 0, "scaling.num_workers": 1}

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _sweep(out: Path, **base: object):
    from tsal_dist.distributed.sweep import load_sweep

    return replace(load_sweep(SWEEP, {**BASE, **base}), output=str(out), max_concurrent_trials=1)


def _run(sweep, env: dict[str, str]) -> dict:
    import ray

    from tsal_dist.distributed.tune_driver import run_sweep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", **env}})
    try:
        return run_sweep(sweep, verbose=0)
    finally:
        ray.shutdown()


def _steps(run_dir: Path) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "student/loss" in r]


def _snapshot(runs: Path) -> dict[str, bytes]:
    return {p.name: (p / "metrics.jsonl").read_bytes() for p in sorted(runs.iterdir())
            if (p / "metrics.jsonl").is_file()}


def test_a_rerun_keeps_finished_trials_and_continues_the_failed_one(tmp_path):
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    from tsal_dist.config import ConfigError
    from tsal_dist.distributed.tune_driver import run_sweep
    from tsal_dist.loop.checkpoint import latest_checkpoint, load_checkpoint

    out = tmp_path / "sweep"
    marker = tmp_path / "fault.json"
    sweep = _sweep(out)
    first = _run(sweep, {"TSAL_FAULT_KILL_AT_STEP": "3", "TSAL_FAULT_RANK": "0",
                         "TSAL_FAULT_MARKER": str(marker)})
    assert marker.is_file()
    failed = [n for n, t in first["tune"].items() if t["error"]]
    done = [n for n, t in first["tune"].items() if not t["error"]]
    assert len(failed) == 1 and len(done) == 1, first["tune"]
    assert first["unfinished"] == 0  # one failed, one finished: nothing left running
    runs = out / "runs"
    assert _steps(runs / failed[0]) == [1, 2, 3]
    before = _snapshot(runs)

    second = _run(sweep, {})  # the marker is gone from the env: no fault this time
    assert sorted(second["tune"]) == sorted(first["tune"])  # the same trials, no new ones
    assert all(t["error"] == "" for t in second["tune"].values()), second["tune"]
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith("_")) == \
        sorted(first["tune"])
    after = _snapshot(runs)
    assert after[done[0]] == before[done[0]]  # the finished trial did not run again
    assert after[failed[0]].startswith(before[failed[0]])  # continued, not started over
    assert _steps(runs / failed[0]) == [1, 2, 3, 4, 5, 6]
    ck = load_checkpoint(latest_checkpoint(runs / failed[0] / "checkpoints"))
    assert ck["step"] == 6
    assert len(second["rows"]) == 2 and second["best"] is not None
    assert second["unfinished"] == 0

    third = _run(sweep, {})
    assert sorted(third["tune"]) == sorted(first["tune"])
    assert _snapshot(runs) == after

    # another sweep (other base steps) in this output: refused before Ray or any file is touched
    sweep_yaml = (out / "sweep.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"holds another sweep \(its base_config_hash differs\)"):
        run_sweep(_sweep(out, **{"optim.steps": 9}), verbose=0)
    assert (out / "sweep.yaml").read_bytes() == sweep_yaml
