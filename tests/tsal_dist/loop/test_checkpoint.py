"""tsal_dist.loop.checkpoint, the one owner of checkpoints: every kind written there is rebuilt
by ``model_from_checkpoint`` from the checkpoint's own fields, and bad files fail naming them."""

from __future__ import annotations

import pytest
import torch

from tsal_dist.config import ConfigError, ExperimentConfig, load_distill_config, with_overrides
from tsal_dist.loop.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                                       model_from_checkpoint, save_student_checkpoint,
                                       save_teacher_checkpoint, save_training_checkpoint)
from tsal_dist.loop.distill_loop import build_student
from tsal_dist.loop.engines import build_engine
from tsal_dist.models import LandmarkDetector, MobileNetV2Regressor, build_model

CPU = torch.device("cpu")
X = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)


def _small() -> ExperimentConfig:
    return with_overrides(ExperimentConfig(), {"model.input_size": 64, "model.width": 0.25,
                                               "model.cpm_stages": 1})


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    with torch.no_grad():
        oa, ob = a.eval()(X), b.eval()(X)
    if isinstance(oa, dict):
        return torch.equal(oa["heatmaps"][-1], ob["heatmaps"][-1])
    return torch.equal(oa, ob)


def test_training_checkpoint_rebuilds_teacher_and_student(tmp_path):
    cfg = _small()
    torch.manual_seed(0)
    student = build_engine(build_model(cfg.model, 68), cfg.train, cfg.optim, CPU)
    teacher = build_engine(build_model(cfg.model, 68), cfg.train, cfg.optim, CPU)
    path = save_training_checkpoint(tmp_path, step=4, cfg=cfg, student=student, teacher=teacher,
                                    server={"version": 3}, metrics={"loss": 1.0}, rank=0,
                                    barrier=lambda: None)
    ck = load_checkpoint(path)
    assert ck["format"] == "tsal_dist.checkpoint/1" and ck["step"] == 4
    assert {"student_optim", "teacher_optim", "server", "rng"} <= set(ck)
    for which, eng in (("teacher", teacher), ("student", student)):
        got = model_from_checkpoint(path, which)
        assert got.head == "heatmap" and isinstance(got.model, LandmarkDetector)
        assert got.config == cfg and got.step == 4 and got.input_size == 64
        assert _same_output(got.model, eng.unwrapped())
    # overrides reach the config (and so the decode), not the weights
    got = model_from_checkpoint(path, "teacher", overrides={"model.decode": "window"})
    assert got.config.model.decode == "window"


@pytest.mark.parametrize("arch", ["regression", "heatmap"])
def test_distillation_checkpoint_rebuilds_its_student(tmp_path, arch):
    """The student comes back as the architecture the distillation built (its own width and
    input size), the Tough teacher as the experiment's detector."""
    dcfg = load_distill_config(None, {"experiment.model.input_size": 64,
                                      "experiment.model.width": 0.25, "student.width": 0.35,
                                      "student.arch": arch, "student.head_init": "glorot"})
    e = dcfg.experiment
    torch.manual_seed(0)
    student = build_engine(build_student(dcfg), e.train, e.optim, CPU)
    tough, tolerant = build_model(e.model, 68), build_model(e.model, 68)
    save_teacher_checkpoint(tmp_path / "t", step=2, role="tough", cfg=e,
                            teacher=build_engine(tough, e.train, e.optim, CPU), rank=0,
                            barrier=lambda: None)
    assert load_checkpoint(latest_checkpoint(tmp_path / "t"))["role"] == "tough"
    path = save_student_checkpoint(tmp_path, step=3, dcfg=dcfg, student=student, tough=tough,
                                   tolerant=tolerant, metrics={}, rank=0, barrier=lambda: None)
    ck = load_checkpoint(path)
    assert ck["student_arch"] == ("regressor" if arch == "regression" else "heatmap")
    assert (ck["student_width"], ck["student_input_size"]) == (0.35, 64)
    got = model_from_checkpoint(path, "student")
    kind = MobileNetV2Regressor if arch == "regression" else LandmarkDetector
    assert got.head == arch and type(got.model) is kind and got.input_size == 64
    assert _same_output(got.model, student.unwrapped())
    t = model_from_checkpoint(path, "teacher")
    assert t.head == "heatmap" and _same_output(t.model, tough)


def test_bad_checkpoints_fail_naming_the_file(tmp_path):
    cfg = _small()
    with pytest.raises(FileNotFoundError, match="none.pt: checkpoint not found"):
        model_from_checkpoint(tmp_path / "none.pt", "teacher")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        model_from_checkpoint(tmp_path / "junk.pt", "teacher")
    torch.save({"config": cfg.to_dict(), "teacher": {}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="c.pt: expected a dict with 'config' and 'student'"):
        model_from_checkpoint(tmp_path / "c.pt", "student")
    with pytest.raises(CheckpointError, match="c.pt: teacher weights do not fit"):
        model_from_checkpoint(tmp_path / "c.pt", "teacher")
    sd = MobileNetV2Regressor(68, 64, width=0.5).state_dict()
    torch.save({"config": cfg.to_dict(), "student": sd}, tmp_path / "guess.pt")
    with pytest.raises(CheckpointError, match="guess.pt: student weights do not fit"):
        model_from_checkpoint(tmp_path / "guess.pt", "student")  # never guessed from the keys
    torch.save({"config": cfg.to_dict(), "student": sd, "student_arch": "regressor"},
               tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="half.pt: student_arch 'regressor' without"):
        model_from_checkpoint(tmp_path / "half.pt", "student")
    torch.save({"config": {"nope": 1}, "teacher": {}}, tmp_path / "cfg.pt")
    with pytest.raises(ConfigError, match="cfg.pt: config: nope"):
        model_from_checkpoint(tmp_path / "cfg.pt", "teacher")
    # malformed fields are one line naming the file (they were ValueError / TypeError)
    base = {"config": cfg.to_dict(), "student": sd, "student_arch": "regressor",
            "student_width": 0.5, "student_input_size": 64}
    for over, match in [({"student_width": "abc"}, "student_width must be a number"),
                        ({"student_input_size": 64.5}, "a whole number, got 0.5 and 64.5"),
                        ({"student_input_size": 0}, "student: input_size must be >= 32"),
                        ({"student_arch": ["x"]}, "unknown student_arch"),
                        ({"step": "abc"}, "step must be a whole number")]:
        torch.save({**base, **over}, tmp_path / "f.pt")
        with pytest.raises(CheckpointError, match=f"f.pt: .*{match}"):
            model_from_checkpoint(tmp_path / "f.pt", "student")
    # a shape mismatch names what does not fit, not only torch's header line
    bad = {k: v for k, v in sd.items()}
    name = next(k for k, v in bad.items() if v.ndim == 4)
    bad[name] = torch.zeros(1, 1, 1, 1)
    torch.save({**base, "student": bad}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=f"size mismatch for {name}"):
        model_from_checkpoint(tmp_path / "shape.pt", "student")


def test_rng_state_carries_the_cuda_generator_once_cuda_is_in_use(tmp_path, monkeypatch):
    """A GPU run's dropout draws from the device's generator: a resume restores it too (faked
    CUDA: the calls and the checkpoint round trip are what a CPU can check)."""
    from tsal_dist.loop.checkpoint import rng_state, set_rng_state

    assert "cuda" not in rng_state()  # no CUDA here: nothing to save
    gen = {"state": torch.arange(16, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: gen["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: gen.update(state=s.clone()))
    torch.save({"rng": rng_state()}, tmp_path / "ck.pt")
    saved = torch.load(tmp_path / "ck.pt", weights_only=True)["rng"]
    gen["state"] = torch.zeros(16, dtype=torch.uint8)  # the generator moves on
    set_rng_state(saved)
    assert torch.equal(gen["state"], torch.arange(16, dtype=torch.uint8))
