"""bf16 training through Ray Train on CPU workers: the ddp engine (torch.autocast) and DeepSpeed at
ZeRO 0 and 3 (bf16 weights, fp32 masters, DeepSpeed's CPU accelerator), 2 workers each.

fp16 is not run here: it needs GPU workers (config load refuses it without ``scaling.use_gpu``);
its DDP path (gradient scaler) is unit-tested in tests/tsal_dist/loop/test_train_engines.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tsal_dist.config import with_overrides
from tsal_dist.loop.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# ZeRO 1 and 2 (the BF16 and ZeRO optimizers' partitioned masters) are checked at the engine level
# with 2 processes in tests/integration/test_deepspeed.py; here the loop end to end.
CASES = [("ddp", 0), ("deepspeed", 0), ("deepspeed", 3)]
_RUNS: dict[tuple[str, int], Path] = {}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    yield ray
    ray.shutdown()


def _cfg(smoke_cfg, out: Path, engine: str, stage: int, name: str):
    return with_overrides(smoke_cfg, {
        "run.output": str(out), "run.name": name, "run.export": False, "run.eval_every": 6,
        "optim.steps": 6, "run.checkpoint_every": 3, "run.log_every": 3,
        "train.engine": engine, "train.zero_stage": stage, "train.precision": "bf16"})


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("engine,stage", CASES)
def test_bf16_trains_on_ray_workers(ray_local, smoke_cfg, tmp_path, engine, stage):
    from tsal_dist.distributed.launch import fit

    summary = fit(_cfg(smoke_cfg, tmp_path, engine, stage, f"bf16-{engine}{stage}"))
    assert summary["error"] is None
    run_dir = Path(summary["run_dir"])
    rows = _rows(run_dir)
    train = [r for r in rows if "student/loss" in r]
    assert [r["step"] for r in train] == [3, 6]
    for r in train:
        for k, v in r.items():
            if k.endswith(("/loss", "/heatmap", "/centroid", "/consistency")):
                assert math.isfinite(v), (k, v)
    assert max(r["teacher/version"] for r in train) > 0  # the teacher was blended
    val = [r["val/nme_inter_ocular"] for r in rows if "val/nme_inter_ocular" in r]
    assert val and all(math.isfinite(v) for v in val)
    ck = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    # checkpoints hold the full-precision (fp32 master) weights, whatever the training dtype
    for role in ("student", "teacher"):
        assert all(v.dtype == torch.float32 for k, v in ck[role].items()
                   if v.is_floating_point()), role
    assert any(not torch.equal(ck["student"][k], ck["teacher"][k]) for k in ck["student"])
    _RUNS[(engine, stage)] = run_dir


@pytest.mark.parametrize("engine,stage", [("deepspeed", 0)])
def test_bf16_resume_after_a_kill_is_bitwise_exact(ray_local, smoke_cfg, tmp_path, engine, stage):
    """Rank 1 SIGKILLed after step 4: the group restarts from ckpt-3 and ends bitwise equal to
    the uninterrupted run above (fp32 masters, optimizer state and RNG all restored)."""
    from tsal_dist.distributed.launch import fit

    if (engine, stage) not in _RUNS:  # run on its own (-k): make the uninterrupted run here
        ref_run = fit(_cfg(smoke_cfg, tmp_path, engine, stage, f"bf16-{engine}{stage}"))
        assert ref_run["error"] is None
        _RUNS[(engine, stage)] = Path(ref_run["run_dir"])
    marker = tmp_path / "fault.json"
    summary = fit(_cfg(smoke_cfg, tmp_path, engine, stage, f"bf16-kill-{engine}{stage}"),
                  worker_env={"TSAL_FAULT_KILL_AT_STEP": "4", "TSAL_FAULT_RANK": "1",
                              "TSAL_FAULT_MARKER": str(marker)})
    assert summary["error"] is None
    assert json.loads(marker.read_text())["step"] == 4
    got = load_checkpoint(latest_checkpoint(Path(summary["run_dir"]) / "checkpoints"))
    ref = load_checkpoint(latest_checkpoint(_RUNS[(engine, stage)] / "checkpoints"))
    assert got["step"] == ref["step"] == 6
    for role in ("student", "teacher"):
        for k in ref[role]:
            assert torch.equal(got[role][k], ref[role][k]), (role, k)
