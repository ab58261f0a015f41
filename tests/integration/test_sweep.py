"""The 2-trial smoke sweep: what a trial samples is what its teacher actor and its loss use.

One real Tune sweep (configs/sweeps/smoke.yaml: teacher.ema_decay, teacher.blend and
loss.unsup_weight over 2 trials of the smoke config, 2 Ray Train workers each) and then, per trial,
independent checks against files the RUN wrote (not Tune's bookkeeping):
- Tune's sampled values == the run folder's config.yaml == the checkpoint's config;
- the teacher actor's server state in the checkpoint has the sampled ``ema_decay``, and its
  stored versions obey F_6 = d * F_3 + (1 - d) * student_6 for exactly that d (trials of 6 steps);
- every metrics.jsonl row's student and teacher loss equal the weighted sum of the logged terms
  with the sampled ``unsup_weight`` (and not with the other trial's).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "configs" / "sweeps" / "smoke.yaml"
KEYS = ("teacher.ema_decay", "teacher.blend", "loss.unsup_weight")
# Each trial trains 6 steps instead of the sweep file's 12 (a --set on the base config, as the
# sweep CLI's): still two teacher pushes (3 and 6) for the EMA check F_6 = d * F_3 + (1 - d) *
# student_6, six loss rows per trial, a validation and a checkpoint at the end (every 6).
BASE_OVERRIDES = {"optim.steps": 6}

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep_result(tmp_path_factory):
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    import ray

    from tsal_dist.distributed.sweep import load_sweep
    from tsal_dist.distributed.tune_driver import run_sweep

    out = tmp_path_factory.mktemp("sweep")
    sweep = replace(load_sweep(SWEEP, BASE_OVERRIDES), output=str(out))
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    try:
        res = run_sweep(sweep, verbose=0)
    finally:
        ray.shutdown()
    return sweep, out, res


def _flat(d, prefix=""):
    from tsal_dist.config import flatten

    return flatten(d, prefix)


def _latest_ckpt(run_dir: Path) -> dict:
    import torch

    from tsal_dist.loop.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None, f"no checkpoint in {run_dir}"
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def test_two_trials_ran_to_completion(sweep_result):
    sweep, out, res = sweep_result
    assert len(res["tune"]) == 2 and len(res["rows"]) == 2
    for name, t in res["tune"].items():
        assert t["error"] == "", t["error"]
        assert t["tune_metrics"]["step"] == sweep.base.optim.steps
        assert math.isfinite(t["tune_metrics"]["val_nme"])
    grid = sorted(t["config"]["loss.unsup_weight"] for t in res["tune"].values())
    assert grid == [0.5, 3.0]


def test_sampled_values_reach_config_and_checkpoint(sweep_result):
    sweep, out, res = sweep_result
    for name, t in res["tune"].items():
        run_dir = out / "runs" / name  # trial name == run folder name
        assert run_dir.is_dir()
        sampled = t["config"]
        assert json.loads((run_dir / "trial.json").read_text())["sampled"] == sampled
        used = _flat(yaml.safe_load((run_dir / "config.yaml").read_text()))
        ck = _latest_ckpt(run_dir)
        in_ckpt = _flat(ck["config"])
        assert used["run.name"] == name
        for k in KEYS:
            assert used[k] == pytest.approx(sampled[k], rel=0, abs=0), k
            assert in_ckpt[k] == pytest.approx(sampled[k], rel=0, abs=0), k
        # The results table reads the same values back from the run folder.
        row = next(r for r in res["rows"] if r["trial"] == name)
        for k in KEYS:
            assert row[k] == sampled[k]


def test_teacher_actor_used_the_sampled_ema_decay(sweep_result):
    sweep, out, res = sweep_result
    for name, t in res["tune"].items():
        d = t["config"]["teacher.ema_decay"]
        ck = _latest_ckpt(out / "runs" / name)
        server = ck["server"]
        assert server["mode"] == "ema"
        assert server["ema_decay"] == d
        info = json.loads((out / "runs" / name / "fit_summary.json").read_text())
        assert info["teacher_server"]["pushes"] == sweep.base.optim.steps // \
            sweep.base.teacher.sync_every
        # The newest version F_s was made from F_{s - sync} and the student pushed at s, which is
        # the checkpoint's student (ema mode leaves the student untouched at a sync).
        versions = {int(v): st for v, st in server["versions"]}
        s = ck["step"]
        prev = s - sweep.base.teacher.sync_every
        assert s in versions and prev in versions
        f_new, f_old, student = versions[s], versions[prev], ck["student"]
        checked = 0
        for k, v in f_new.items():
            if not v.is_floating_point():
                continue
            expect = d * f_old[k].double() + (1 - d) * student[k].double()
            np.testing.assert_allclose(v.double().numpy(), expect.numpy(), rtol=1e-5,
                                       atol=1e-6, err_msg=f"{name}: {k}")
            checked += 1
        assert checked > 10


def _loss_residual(row: dict, role: str, w: dict, unsup: float) -> float:
    total = (w["loss.heatmap_weight"] * row[f"{role}/heatmap"]
             + w["loss.centroid_weight"] * row[f"{role}/centroid"]
             + w["loss.offset_weight"] * row[f"{role}/offset"]
             + w["loss.structure_weight"] * row[f"{role}/structure"]
             + row["ramp"] * unsup * row[f"{role}/consistency"])
    return abs(row[f"{role}/loss"] - total)


def test_loss_used_the_sampled_unsup_weight(sweep_result):
    sweep, out, res = sweep_result
    assert sweep.base.run.log_every == 1  # one row per step: the loss is a single step's
    weights = sorted(t["config"]["loss.unsup_weight"] for t in res["tune"].values())
    for name, t in res["tune"].items():
        run_dir = out / "runs" / name
        w = _flat(yaml.safe_load((run_dir / "config.yaml").read_text()))
        unsup = t["config"]["loss.unsup_weight"]
        other = weights[1] if unsup == weights[0] else weights[0]
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                if x.strip()]
        rows = [r for r in rows if "student/loss" in r]
        assert len(rows) == sweep.base.optim.steps
        discriminating = 0
        for r in rows:
            for role in ("student", "teacher"):
                tol = 1e-5 * max(1.0, abs(r[f"{role}/loss"]))
                assert _loss_residual(r, role, w, unsup) <= tol, (name, role, r["step"])
                if _loss_residual(r, role, w, other) > 100 * tol:
                    discriminating += 1
        assert discriminating > 0, f"{name}: no row tells unsup_weight {unsup} from {other}"


def test_result_files(sweep_result):
    from tsal_dist.config import load_config

    sweep, out, res = sweep_result
    files = {k: Path(v) for k, v in res["files"].items()}
    assert set(files) == {"csv", "md", "plot", "best"}
    for p in files.values():
        assert p.is_file() and p.stat().st_size > 0
    import csv

    with open(files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert {"trial", *KEYS, "val_nme", "test_nme_teacher", "run_dir"} <= set(rows[0])
    best = res["best"]
    cfg = load_config(files["best"])
    for k in KEYS:
        assert _flat(cfg.to_dict())[k] == best[k]
    assert cfg.run.name == ""
    assert best["val_nme"] == min(r["val_nme"] for r in res["rows"])
