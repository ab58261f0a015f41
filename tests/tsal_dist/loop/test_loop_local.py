"""The worker loop end to end in one process (no Ray), on the smoke config."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tsal_dist.config import TrainConfig, load_config, with_overrides
from tsal_dist.loop.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from tsal_dist.loop.context import torch_settings
from tsal_dist.loop.loop import run


def _cfg(smoke_cfg, tmp_path, **over):
    return with_overrides(smoke_cfg, {"run.output": str(tmp_path), "run.export": False, **over})


def _states_equal(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0) for k in a)


def test_torch_settings_hold_for_the_run_and_are_restored_after_it_even_on_error():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    with torch_settings(TrainConfig(torch_threads=1, deterministic=True)):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the caller's own mode, warn_only=False, comes back
    with pytest.raises(RuntimeError, match="boom"), \
            torch_settings(TrainConfig(torch_threads=0, deterministic=False)):
        assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled()
        raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)


def test_deterministic_runs_give_cublas_its_workspace_unless_the_user_chose_one(monkeypatch):
    """Without CUBLAS_WORKSPACE_CONFIG, deterministic mode only warns on CUDA matmuls and the
    run is not reproducible on a GPU."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with torch_settings(TrainConfig(deterministic=True)):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with torch_settings(TrainConfig(deterministic=False)):
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with torch_settings(TrainConfig(deterministic=True)):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_run_writes_a_complete_run_folder(smoke_cfg, tmp_path):
    cfg = _cfg(smoke_cfg, tmp_path, **{"run.eval_every": 6})
    assert cfg.train.deterministic and cfg.train.torch_threads == 1
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    summary = run(cfg, run_dir=tmp_path / "r", progress=False)
    # the run's thread count and deterministic kernels did not outlive it in this process
    assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    r = tmp_path / "r"
    assert load_config(r / "config.yaml") == cfg
    rows = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
    train_rows = [x for x in rows if "student/loss" in x]
    assert [x["step"] for x in train_rows] == [3, 6, 9, 12]
    for key in ("student/heatmap", "student/centroid", "student/offset", "student/structure",
                "student/consistency", "teacher/consistency", "ramp", "lr", "teacher/version"):
        assert key in train_rows[-1], key
    assert any("val/nme_inter_ocular" in x for x in rows)
    steps = [s for s, _ in list_checkpoints(r / "checkpoints")]
    assert steps == [6, 12]
    ck = load_checkpoint(latest_checkpoint(r / "checkpoints"))
    assert ck["step"] == 12 and set(ck) >= {"student", "teacher", "student_optim",
                                              "teacher_optim", "server", "rng", "config"}
    ev = json.loads((r / "eval" / "summary.json").read_text())
    assert set(ev) == {"teacher", "student"}
    assert summary["step"] == 12


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(smoke_cfg, tmp_path):
    cfg = _cfg(smoke_cfg, tmp_path)
    run(cfg, run_dir=tmp_path / "full", progress=False, final_eval=False)
    run(cfg, run_dir=tmp_path / "cut", progress=False, stop_after=6)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [6]
    run(cfg, run_dir=tmp_path / "cut", progress=False, final_eval=False)  # resumes at step 6
    a = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"))
    assert a["step"] == b["step"] == 12
    assert _states_equal(a["student"], b["student"])
    assert _states_equal(a["teacher"], b["teacher"])
    assert a["server"].keys() == b["server"].keys()


@pytest.mark.slow
def test_teacher_modes_follow_their_formulas(smoke_cfg, tmp_path):
    """After a run, the teacher differs from the student (it was blended, not copied)."""
    for mode in ("queue", "ema", "mutual"):
        cfg = _cfg(smoke_cfg, tmp_path, **{"teacher.mode": mode})
        run(cfg, run_dir=tmp_path / mode, progress=False, final_eval=False)
        ck = load_checkpoint(latest_checkpoint(tmp_path / mode / "checkpoints"))
        diff = max(float((ck["teacher"][k].float() - ck["student"][k].float()).abs().max())
                   for k in ck["student"] if ck["student"][k].is_floating_point())
        assert diff > 0


def test_channels_last_engine_keeps_optimizer_params_and_outputs():
    # the ddp engine converts the model to NHWC in place: the optimizer must still hold the very
    # same Parameter objects, and the network must compute the same function as an NCHW copy
    import torch

    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.loop.engines import build_engine
    from tsal_dist.models import build_model

    torch.manual_seed(0)
    cfg = with_overrides(ExperimentConfig(), {"model.input_size": 64, "train.channels_last": True})
    model = build_model(cfg.model, 68)
    params = list(model.parameters())
    engine = build_engine(model, cfg.train, cfg.optim, torch.device("cpu"))
    assert all(a is b for a, b in zip(params, engine.optimizer.param_groups[0]["params"]))
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = build_model(cfg.model, 68)
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x)["heatmaps"][-1], plain(x)["heatmaps"][-1],
                               atol=1e-5, rtol=1e-5)
    off = build_model(cfg.model, 68)
    build_engine(off, with_overrides(cfg, {"train.channels_last": False}).train, cfg.optim,
                 torch.device("cpu"))
    assert next(p for p in off.parameters() if p.dim() == 4).is_contiguous()
