"""Integration fixtures shared across modules (each one is costly to make twice).

``smoke_teacher_export``: the smoke configuration trained in one process, its teacher exported
once (``tsal_dist.export.export``: torch.export + dynamo ONNX export, minutes on 2 CPU cores).
test_runtime_nme scores it against evaluation, test_export_parity checks its model.json and its
ONNX / model.pt2 parity -- the same export, made once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Smoke-config training steps of the shared teacher. Enough for a model whose landmarks follow
# the face in the crop (test_runtime_nme's per-frame comparison must be able to see a crop-geometry
# difference; a nearly untrained model predicts almost the same points whatever the crop).
NME_STEPS = int(os.environ.get("TSAL_NME_STEPS", "150"))


def train_smoke_checkpoint(run_dir: Path, steps: int) -> Path:
    """Train the smoke configuration for ``steps`` steps (tsal_dist.loop.loop.run)."""
    from tsal_dist.config import ExperimentConfig, load_config
    from tsal_dist.loop.loop import run

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    d = cfg.to_dict()
    d["optim"]["steps"] = steps
    d["run"]["checkpoint_every"] = steps
    d["run"]["log_every"] = steps
    cfg = ExperimentConfig.from_dict(d)
    run(cfg, run_dir=run_dir, progress=False, final_eval=False)
    return sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1]


@pytest.fixture(scope="session")
def smoke_teacher_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(checkpoint, export folder, model.json dict as ``export`` returned it) of the smoke
    teacher trained for ``NME_STEPS`` steps; export at opset 18 with its own parity check."""
    import torch

    from tsal_dist.export import export

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work = tmp_path_factory.mktemp("smoke_teacher")
        ckpt = train_smoke_checkpoint(work / "run", NME_STEPS)
        meta = export(ckpt, work / "model", which="teacher", opset=18)
    finally:
        torch.set_num_threads(n)
    return ckpt, work / "model", meta
