"""Resume rules: the same run or a refusal naming the keys, the newest readable checkpoint, each
step once in metrics.jsonl, stale temporary files removed, the teacher version logged from the
first resumed step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tsal_dist.config import save_config, with_overrides
from tsal_dist.loop.checkpoint import checkpoint_path, list_checkpoints
from tsal_dist.loop.loop import _version_at, run
from tsal_dist.loop.runs import (RunConfigChanged, check_run_config, newest_readable_checkpoint,
                                 remove_stale_temp_files, truncate_metrics)

REPO = Path(__file__).resolve().parents[3]


def test_changed_config_is_refused_with_the_keys(smoke_cfg, tmp_path):
    save_config(smoke_cfg, tmp_path / "config.yaml")
    check_run_config(tmp_path, smoke_cfg)  # same config: fine
    check_run_config(tmp_path, with_overrides(smoke_cfg, {"run.output": "/elsewhere"}))
    other = with_overrides(smoke_cfg, {"teacher.blend": 0.5, "optim.lr": 0.01})
    with pytest.raises(RunConfigChanged) as err:
        check_run_config(tmp_path, other)
    msg = str(err.value)
    assert "optim.lr" in msg and "teacher.blend: 0.6 -> 0.5" in msg and "--force" in msg
    check_run_config(tmp_path, other, force=True)


def test_cli_refuses_a_changed_config_in_one_line(smoke_cfg, tmp_path):
    out = tmp_path / "runs"
    (out / "r").mkdir(parents=True)
    save_config(with_overrides(smoke_cfg, {"run.name": "r", "run.output": str(out)}),
                out / "r" / "config.yaml")
    proc = subprocess.run([sys.executable, "-m", "tsal_dist.train", "--local", "--config",
                           str(REPO / "configs" / "smoke.yaml"), "--output", str(out), "--name",
                           "r", "--set", "optim.steps=99"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.steps: 12 -> 99" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_refuses_what_the_layout_cannot_serve_before_any_work(tmp_path):
    """A turn limit with 19 points (no nose tip): one line naming the key, exit 2, no run folder,
    before the data or Ray are touched."""
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "tsal_dist.train", "--local", "--config",
                           str(REPO / "configs" / "smoke.yaml"), "--output", str(out), "--name",
                           "r", "--set", "data.num_points=19", "--set", "model.centroid_index=10",
                           "--set", "loss.student_consistency=pseudo_label", "--set",
                           "loss.pseudo_max_turn=0.25"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "loss.pseudo_max_turn: " in lines[0], proc.stderr
    assert "aflw19 layout (19 points)" in lines[0]
    assert not out.exists()


def test_truncate_metrics_keeps_each_step_once(tmp_path):
    p = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "x": s} for s in (3, 6, 9)] + [{"step": 6, "val": 1}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 12, "x"')  # torn line
    assert truncate_metrics(p, 6) == 2  # step 9 and the torn line
    assert [json.loads(x) for x in p.read_text().splitlines()] == [rows[0], rows[1], rows[3]]
    assert truncate_metrics(p, 6) == 0


def test_stale_temp_files_and_unreadable_newest_checkpoint(tmp_path, capsys):
    torch.save({"config": {}, "step": 3}, checkpoint_path(tmp_path, 3))
    checkpoint_path(tmp_path, 6).write_bytes(b"torn")  # corrupt newest
    (tmp_path / ".ckpt-00000009.pt.abc.tmp").write_bytes(b"half")
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [".ckpt-00000009.pt.abc.tmp"]
    path, state = newest_readable_checkpoint(tmp_path)
    assert path.name == "ckpt-00000003.pt" and state["step"] == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ckpt-00000006.pt" in err[0] and "older checkpoint" in err[0]
    assert newest_readable_checkpoint(tmp_path / "none") is None


def test_version_in_force_after_a_resume():
    # sync every 3 steps, staleness 1: the sync after step 6 applies the push of step 3
    assert [_version_at(s, 3, 1) for s in (0, 3, 5, 6, 9)] == [-1, -1, -1, 3, 6]


@pytest.mark.slow
def test_resume_after_a_corrupt_checkpoint_and_a_kill_holds_each_step_once(smoke_cfg, tmp_path):
    cfg = with_overrides(smoke_cfg, {"run.output": str(tmp_path), "run.export": False,
                                     "run.checkpoint_every": 3, "run.keep_checkpoints": 5})
    run_dir = tmp_path / "r"
    run(cfg, run_dir=run_dir, progress=False, stop_after=9, final_eval=False)
    ckdir = run_dir / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckdir)] == [3, 6, 9]
    checkpoint_path(ckdir, 9).write_bytes(b"\x80 torn by a full disk")
    with open(run_dir / "metrics.jsonl", "a") as f:  # rows a killed attempt logged past step 6
        f.write(json.dumps({"step": 12, "student/loss": 1.0}) + "\n")
    run(cfg, run_dir=run_dir, progress=False, final_eval=False)  # falls back to ckpt 6
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "student/loss" in r]
    assert steps == [3, 6, 9, 12]
    by = {r["step"]: r for r in rows if "student/loss" in r}
    assert by[9]["teacher/version"] == 6  # in force from the first resumed step, not -1
