"""Ray Train workers running the TSAL loop: 2 CPU workers (gloo), the teacher actor, a complete run
folder, and teacher replicas that are bitwise equal across ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tsal_dist.config import with_overrides  # noqa: E402
from tsal_dist.loop.checkpoint import (latest_checkpoint, list_checkpoints,  # noqa: E402
                                       load_checkpoint)
from tsal_dist.loop.loop import state_digest  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    # The test-only train function below must reach the workers by value (tests/ is no package).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def train_and_gather_digests(config: dict) -> None:
    """Run the real worker, then all_gather every rank's teacher/student digests to rank 0."""
    import os

    import torch.distributed as dist

    from tsal_dist.distributed.worker import run_worker

    summary = run_worker(config)
    mine = {"teacher": summary["teacher_sha256"], "student": summary["student_sha256"],
            "cwd": os.getcwd()}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        (Path(config["run_dir"]) / "rank_digests.json").write_text(json.dumps(gathered))


def test_two_workers_finish_with_identical_teachers(ray_local, smoke_cfg, tmp_path,
                                                    monkeypatch):
    from tsal_dist.distributed.launch import fit

    # the workers work in the driver's folder (Ray Train starts them in session folders), so
    # that a relative data.root / tough_from / init_from means the same to them as to --local
    monkeypatch.chdir(tmp_path)

    # 6 steps, a checkpoint and a row every 3, validation at 6 (the teacher syncs every 3)
    cfg = with_overrides(smoke_cfg, {"run.output": str(tmp_path), "run.name": "w2",
                                     "run.export": False, "scaling.num_workers": 2,
                                     "run.eval_every": 6, "optim.steps": 6,
                                     "run.checkpoint_every": 3})
    summary = fit(cfg, train_fn=train_and_gather_digests)
    assert summary["error"] is None
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "config.yaml").is_file()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "student/loss" in r] == [3, 6]
    assert any("val/nme_inter_ocular" in r for r in rows)
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [3, 6]
    ev = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(ev) == {"teacher", "student"}
    ck = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert ck["step"] == 6 and ck["engine"] == "ddp"
    assert summary["teacher_server"]["latest_version"] > 0
    assert rows[-1].get("teacher/version", max(r.get("teacher/version", -1) for r in rows)) != -1
    assert max(r.get("teacher/version", -1) for r in rows) > 0
    # every rank's teacher (and student) replica is bitwise the checkpointed one
    digests = json.loads((run_dir / "rank_digests.json").read_text())
    assert len(digests) == 2
    assert [d.pop("cwd") for d in digests] == [str(tmp_path)] * 2
    assert digests[0] == digests[1]
    assert digests[0]["teacher"] == state_digest(ck["teacher"])
    assert digests[0]["student"] == state_digest(ck["student"])
    assert digests[0]["teacher"] != digests[0]["student"]  # the teacher was blended, not copied


def test_distillation_runs_on_the_same_launch(ray_local, tmp_path):
    """``fit_distill`` goes through the one launcher: 2 workers, all three phases, the eval of
    every network, and Ray's bookkeeping under ``run.storage_path`` like a training run's."""
    from tsal_dist.config import load_distill_config, run_name_for
    from tsal_dist.distributed.launch import fit_distill

    cfg = load_distill_config(None, {
        "experiment.data.synthetic.images": 48, "experiment.data.synthetic.test_images": 12,
        "experiment.data.synthetic.videos": 2, "experiment.data.synthetic.test_videos": 1,
        "experiment.data.synthetic.frames": 12, "experiment.data.synthetic.image_size": 96,
        "experiment.data.loader_workers": 0,
        "experiment.model.backbone": "mobilenetv2", "experiment.model.input_size": 64,
        "experiment.optim.batch_size": 4, "experiment.optim.steps": 6,
        "experiment.run.log_every": 3, "experiment.run.checkpoint_every": 3,
        "experiment.run.val_images": 8, "experiment.run.export": False,
        "experiment.run.output": str(tmp_path / "runs"),
        "experiment.run.storage_path": str(tmp_path / "ray_store"),
        "experiment.scaling.num_workers": 2, "teachers.steps": 2})
    summary = fit_distill(cfg)
    assert summary["error"] is None
    run_dir = Path(summary["run_dir"])
    assert run_dir.name == run_name_for(cfg) and summary["name"] == run_dir.name
    assert set(summary["eval"]) == {"tough", "tolerant", "student"}
    ck = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert ck["step"] == 6 and ck["format"] == "tsal_dist.distill_checkpoint/1"
    assert (tmp_path / "ray_store" / run_dir.name).is_dir()  # run.storage_path is honoured
    assert not (tmp_path / "runs" / "_ray").exists()
