"""Distillation end to end in one process on a tiny synthetic set: ASM, both teachers, a student
whose loss falls, checkpoints export can read, resume, and the strict config loader."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tsal_dist.config import ConfigError, DistillConfig, load_distill_config
from tsal_dist.data.asm import ShapeModel
from tsal_dist.distill import run_distill
from tsal_dist.loop.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from tsal_dist.loop.distill_loop import build_student
from tsal_dist.loop.engines import build_engine
from tsal_dist.losses.kd import KDLossParams

TINY = {
    "experiment.data.synthetic.images": 48, "experiment.data.synthetic.test_images": 12,
    "experiment.data.synthetic.videos": 2, "experiment.data.synthetic.test_videos": 1,
    "experiment.data.synthetic.frames": 12, "experiment.data.synthetic.image_size": 96,
    "experiment.model.backbone": "mobilenetv2", "experiment.model.input_size": 64,
    "experiment.model.heatmap_sigma_px": 2.0,
    "experiment.optim.batch_size": 8, "experiment.optim.steps": 40,
    "experiment.optim.warmup_steps": 0, "experiment.optim.lr": 3e-3,
    "experiment.run.log_every": 10, "experiment.run.checkpoint_every": 20,
    "experiment.run.val_images": 8, "experiment.run.export": False,
    "teachers.steps": 4, "student.dropout": 0.0,
}


def test_config_loader_is_strict_and_variants_resolve(tmp_path):
    cfg = load_distill_config(None, {"kd.variant": "paper", "kd.reflect": "true"})
    p = cfg.kd.params()
    assert (p.beta_frac, p.low_ramp, p.reflect, p.main_factor) == (0.4, True, True, 1.0)
    assert DistillConfig().kd.params() == KDLossParams.code()
    with pytest.raises(ConfigError, match="kd.nope"):
        load_distill_config(None, {"kd.nope": 1})
    with pytest.raises(ConfigError, match="asm.variance"):
        load_distill_config(None, {"asm.variance": 120})
    # the experiment's own checks name their keys as written in a distillation config: with the
    # section prefix, once (a section check, a cross-section check, a type error)
    for over, key in (({"experiment.optim.lr": 0}, "experiment.optim.lr"),
                      ({"experiment.model.centroid_index": 70}, "experiment.model.centroid_index"),
                      ({"experiment.optim.lr": "fast"}, "experiment.optim.lr"),
                      ({"experiment": 3}, "experiment")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
            load_distill_config(None, over)
    y = tmp_path / "d.yaml"
    y.write_text("experiment:\n  optim:\n    steps: 7\nstudent:\n  arch: heatmap\n")
    cfg = load_distill_config(y)
    assert cfg.experiment.optim.steps == 7 and cfg.student.arch == "heatmap"
    y.write_text("experiment:\n  optimm: {lr: 1}\n")
    with pytest.raises(ConfigError, match="d.yaml"):
        load_distill_config(y)


def test_student_defaults_start_at_crop_centre_without_decay_or_dropout():
    cfg = DistillConfig()
    assert (cfg.student.dropout, cfg.student.head_init, cfg.student.weight_decay) == (
        0.0, "zero", 0.0)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 64, 64)).float()
    small = {"experiment.model.input_size": 64}
    s = build_student(load_distill_config(None, small)).train()
    assert torch.equal(s(x), torch.full((3, 68, 2), 0.5))  # zero head: exactly the centre
    g = build_student(load_distill_config(None, {**small, "student.head_init": "glorot"}))
    assert (g.train()(x) - 0.5).abs().max() > 0.05  # Keras/Glorot head: random offsets
    # the student's optimizer takes student.weight_decay, the teachers' experiment.optim's
    e = cfg.experiment
    assert e.optim.weight_decay > 0
    eng = build_engine(s, e.train, e.optim, torch.device("cpu"), lr=1e-3, micro_batch=8,
                       weight_decay=0.0)
    assert eng.optimizer.param_groups[0]["weight_decay"] == 0.0
    eng = build_engine(s, e.train, e.optim, torch.device("cpu"), lr=1e-3, micro_batch=8)
    assert eng.optimizer.param_groups[0]["weight_decay"] == e.optim.weight_decay
    with pytest.raises(ConfigError, match="student.weight_decay"):
        load_distill_config(None, {"student.weight_decay": -1})
    with pytest.raises(ConfigError, match="student.head_init"):
        load_distill_config(None, {"student.head_init": "he"})


@pytest.mark.slow
def test_short_distillation_run_loss_falls_and_resumes(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = load_distill_config(None, {**TINY, "experiment.data.cache_dir": str(tmp_path / "c")})
    run_dir = tmp_path / "run"
    cache: dict = {}
    torch.use_deterministic_algorithms(False)
    # the final scoring runs on the worker's context (its device, its share of a sharded list),
    # never on a default one-process CPU context while the other ranks wait
    import tsal_dist.loop.distill_loop as dl

    seen: list = []
    real_eval = dl.evaluate_lists
    monkeypatch.setattr(dl, "evaluate_lists",
                        lambda *a, **k: seen.append(k.get("ctx")) or real_eval(*a, **k))
    ctx = dl.WorkerContext()
    summary = run_distill(cfg, run_dir=run_dir, progress=False, teacher_cache=cache, ctx=ctx)
    assert seen == [ctx]
    assert cfg.experiment.train.deterministic and not torch.are_deterministic_algorithms_enabled()
    assert len(cache) == 40  # one entry of both teachers' predictions per KD step
    assert {v[0].shape for v in cache.values()} == {(8, 68, 2)}
    assert ShapeModel.load(run_dir / "asm.npz").explained >= 0.9
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    s_rows = [r for r in rows if r["phase"] == "student"]
    assert [r["step"] for r in s_rows] == [10, 20, 30, 40]
    assert {"student/main", "student/aloss_tough", "student/aloss_tolerant"} <= set(s_rows[0])
    assert all(r["student/grad_norm"] > 0 for r in s_rows)  # before clipping (optim.grad_clip)
    assert s_rows[-1]["student/loss"] < s_rows[0]["student/loss"]
    assert s_rows[-1]["student/px_error"] < s_rows[0]["student/px_error"]
    assert {r["phase"] for r in rows} == {"tough", "tolerant", "student"}
    ck = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert ck["step"] == 40 and ck["student_arch"] == "regressor"
    assert {"config", "student", "teacher", "tolerant", "student_optim"} <= set(ck)
    assert set(summary["eval"]) == {"tough", "tolerant", "student"}
    for per_list in summary["eval"].values():
        for r in per_list.values():
            assert 0 < r["nme_inter_ocular"] < 10
    # a finished run resumes as finished: nothing retrained, same student
    again = run_distill(cfg, run_dir=run_dir, progress=False, final_eval=False)
    assert again["step"] == 40
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [20, 40]
    # the export path of the project reads the student
    from tsal_dist.export import load_export_module

    module, _, head, _ = load_export_module(latest_checkpoint(run_dir / "checkpoints"),
                                            "student")
    assert head == "regression"
    out = module(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))[0]
    assert out.shape == (2, 68, 2)
    # a student export that fails fails the run (it used to be a warning and a "success")
    import tsal_dist.export as exp

    def broken(*a, **k):
        raise exp.ExportError("model.onnx: onnxruntime differs from torch by 0.5 (> 0.0001)")

    monkeypatch.setattr(exp, "export", broken)
    with pytest.raises(exp.ExportError, match="differs from torch"):
        run_distill(cfg, run_dir=run_dir, progress=False, export=True)


def test_cli_refuses_what_the_layout_cannot_serve_before_any_work(tmp_path, capsys):
    """tsal-distill with a flip on 98 points (no mirror pairs): one line naming the key, exit 2,
    no run folder, before the ASM data, the teachers or Ray are touched."""
    from tsal_dist.distill import main

    out = tmp_path / "runs"
    rc = main(["--local", "--output", str(out), "--name", "d", "--set",
               "experiment.data.num_points=98", "--set", "experiment.data.flip=true"])
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "experiment.data.flip: the wflw98 layout (98 points)" in lines[0], \
        lines
    assert not out.exists()


def test_configs_distill_yaml_spells_out_the_defaults():
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "configs" / "distill.yaml"
    assert load_distill_config(path) == DistillConfig()


def test_student_seed_is_validated_and_build_student_does_not_reseed():
    small = {"experiment.model.input_size": 64, "student.head_init": "glorot"}
    torch.manual_seed(5)
    a = build_student(load_distill_config(None, small)).state_dict()
    torch.manual_seed(5)
    b = build_student(load_distill_config(None, {**small, "student.seed": 3})).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # build_student itself does not seed
    with pytest.raises(ConfigError, match="student.seed"):
        load_distill_config(None, {"student.seed": -2})


@pytest.mark.parametrize("arch", ["regression", "heatmap"])
def test_student_landmarks_come_from_the_model_interface_and_reach_every_parameter(arch):
    """The student step runs the engine's forward (DDP) and decodes with the model's own
    ``decode``: the same landmarks as ``predict``; the zero-weighted unused outputs keep every
    parameter in the graph (DDP waits for a gradient of each)."""
    from tsal_dist.loop.distill_loop import _unused_heads

    cfg = load_distill_config(None, {"experiment.model.input_size": 64, "student.arch": arch,
                                     "student.head_init": "glorot"})
    torch.manual_seed(0)
    s = build_student(cfg).eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    out = s(x)
    pred = s.decode(out).landmarks + _unused_heads(out)
    with torch.no_grad():
        assert torch.equal(pred, s.predict(x).landmarks)
    assert pred.shape == (2, 68, 2)
    pred.square().sum().backward()
    assert all(p.grad is not None for p in s.parameters())


def test_tough_from_gives_its_model_section_to_the_asm_and_the_teachers(tmp_path):
    """teachers.tough_from: the previous run's teacher, and its architecture and crop size for
    everything the teachers see (the driver fits the ASM with it, as the workers do)."""
    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.loop.checkpoint import save_teacher_checkpoint
    from tsal_dist.loop.distill_loop import ensure_asm, with_tough_from
    from tsal_dist.models import build_model

    cfg = load_distill_config(None, TINY)
    tough_cfg = with_overrides(cfg.experiment, {"model.input_size": 96, "model.width": 0.35})
    model = build_model(tough_cfg.model, tough_cfg.data.num_points)
    engine = build_engine(model, tough_cfg.train, tough_cfg.optim, torch.device("cpu"))
    save_teacher_checkpoint(tmp_path / "tough" / "checkpoints", step=3, role="tough",
                            cfg=tough_cfg, teacher=engine, rank=0, barrier=lambda: None)
    resolved, tough = with_tough_from(load_distill_config(
        None, {**TINY, "teachers.tough_from": str(tmp_path / "tough")}))
    assert resolved.experiment.model == tough_cfg.model and tough.input_size == 96
    assert all(torch.equal(a, b) for a, b in zip(tough.state_dict().values(),
                                                 model.state_dict().values()))
    assert ensure_asm(resolved, tmp_path / "run").input_size == 96  # hyperface centres at S / 2
    assert with_tough_from(cfg) == (cfg, None)
    bad = with_overrides(ExperimentConfig(), {"data.num_points": 19, "model.centroid_index": 10})
    save_teacher_checkpoint(tmp_path / "bad" / "checkpoints", step=1, role="tough", cfg=bad,
                            teacher=build_engine(build_model(bad.model, 19), bad.train,
                                                 bad.optim, torch.device("cpu")),
                            rank=0, barrier=lambda: None)
    with pytest.raises(Exception, match="teacher has 19 points, distillation uses 68"):
        with_tough_from(load_distill_config(None, {**TINY,
                                                   "teachers.tough_from": str(tmp_path / "bad")}))


def test_kd_l2_warmup_is_plain_l2_until_its_end_then_kd(tmp_path):
    """``kd.l2_warmup_steps = N``: the first N student steps are exactly a plain-L2 run's (same
    weights), the teachers are not even consulted, and KD-Loss's terms take over from step N + 1;
    a log window straddling the switch averages each term over its own steps."""
    base = {**TINY, "experiment.data.cache_dir": str(tmp_path / "c"),
            "experiment.run.log_every": 4, "experiment.run.checkpoint_every": 6}
    l2 = load_distill_config(None, {**base, "kd.loss": "l2", "experiment.optim.steps": 6})
    run_distill(l2, run_dir=tmp_path / "l2", progress=False, final_eval=False)
    warm = load_distill_config(None, {**base, "kd.l2_warmup_steps": 6,
                                      "experiment.optim.steps": 12})
    cache: dict = {}
    run_distill(warm, run_dir=tmp_path / "warm", progress=False, final_eval=False,
                teacher_cache=cache)
    assert sorted(k[-1] for k in cache) == list(range(6, 12))  # KD steps only
    a = load_checkpoint(latest_checkpoint(tmp_path / "l2" / "checkpoints"))["student"]
    b = load_checkpoint(dict(list_checkpoints(tmp_path / "warm" / "checkpoints"))[6])["student"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()
            if '"student"' in x]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert "student/l2" in rows[0] and "student/main" not in rows[0]
    assert {"student/l2", "student/main"} <= set(rows[1])  # steps 5-6 L2, 7-8 KD
    assert "student/l2" not in rows[2] and "student/aloss_tough" in rows[2]
    with pytest.raises(ConfigError, match="kd.l2_warmup_steps"):
        load_distill_config(None, {"kd.l2_warmup_steps": -1})


def test_kd_matched_switch_scales_kd_loss_and_resumes_with_its_scale(tmp_path):
    """``kd.switch: matched``: no scale during the L2 warm-up; from the first KD step on, the
    logged loss is the scale times KD-Loss's weighted terms; the scale is checkpointed, so a run
    resumed after the switch ends with the uninterrupted run's weights (recomputing the scale on
    the resumed batch would change them)."""
    import shutil

    base = {**TINY, "experiment.data.cache_dir": str(tmp_path / "c"),
            "experiment.run.log_every": 3, "experiment.run.checkpoint_every": 3,
            "experiment.run.keep_checkpoints": 10, "experiment.optim.steps": 12,
            "kd.l2_warmup_steps": 6, "kd.variant": "paper", "kd.switch": "matched"}
    cfg = load_distill_config(None, base)
    run_distill(cfg, run_dir=tmp_path / "a", progress=False, final_eval=False)
    cks = dict(list_checkpoints(tmp_path / "a" / "checkpoints"))
    assert "kd_scale" not in load_checkpoint(cks[6])
    scale = load_checkpoint(cks[9])["kd_scale"]
    assert 0 < scale < 1  # KD-Loss's gradient is larger than L2's
    assert load_checkpoint(cks[12])["kd_scale"] == scale  # set once, kept
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
            if '"student"' in x]
    assert "student/kd_scale" not in rows[1]  # steps 4-6: L2
    w = cfg.kd.params()
    for r in rows[2:]:
        assert r["student/kd_scale"] == pytest.approx(scale)
        terms = (w.w_main * r["student/main"] + w.w_tough * r["student/aloss_tough"]
                 + w.w_tol * r["student/aloss_tolerant"])
        assert r["student/loss"] == pytest.approx(scale * terms, rel=1e-5)
    # resumed from step 9: same end as the uninterrupted run
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "checkpoints" / cks[12].name).unlink()
    assert max(dict(list_checkpoints(tmp_path / "b" / "checkpoints"))) == 9
    run_distill(cfg, run_dir=tmp_path / "b", progress=False, final_eval=False)
    a = load_checkpoint(cks[12])["student"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "b" / "checkpoints"))["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="kd.switch"):
        load_distill_config(None, {"kd.loss": "l2", "kd.switch": "matched",
                                   "kd.l2_warmup_steps": 5})
    with pytest.raises(ConfigError, match="kd.switch.*l2_warmup_steps"):
        load_distill_config(None, {"kd.switch": "matched"})
    # the scale's norms are averaged over ranks before the check: a KD-Loss without gradient
    # fails the same way everywhere
    from tsal_dist.loop.distill_loop import _matched_scale

    p = torch.rand(2, 68, 2, requires_grad=True)
    with pytest.raises(FloatingPointError, match="no gradient"):
        _matched_scale(p, (p ** 2).mean(), 0 * p.sum(), torch.device("cpu"))
    assert _matched_scale(p, p.sum(), 4 * p.sum(), torch.device("cpu")) == pytest.approx(0.25)


def test_kd_reset_switch_restarts_the_optimizer_at_the_switch_and_resumes_exactly(tmp_path):
    """``kd.switch: reset``: the optimizer's state is cleared at the first KD-Loss step, so at the
    end Adam has counted only the KD-Loss steps (an abrupt switch counts them all) and the L2
    phase is the abrupt run's; resumed from the checkpoint AT the switch, the run resets again
    and ends with the uninterrupted run's weights."""
    import shutil

    base = {**TINY, "experiment.data.cache_dir": str(tmp_path / "c"),
            "experiment.run.log_every": 5, "experiment.run.checkpoint_every": 5,
            "experiment.run.keep_checkpoints": 10, "experiment.optim.steps": 10,
            "kd.l2_warmup_steps": 5, "kd.variant": "paper"}
    ends = {}
    for switch in ("abrupt", "reset"):
        cfg = load_distill_config(None, {**base, "kd.switch": switch})
        run_distill(cfg, run_dir=tmp_path / switch, progress=False, final_eval=False)
        cks = dict(list_checkpoints(tmp_path / switch / "checkpoints"))
        ends[switch] = {k: load_checkpoint(cks[k]) for k in (5, 10)}
    a, r = ends["abrupt"], ends["reset"]
    assert all(torch.equal(a[5]["student"][k], r[5]["student"][k]) for k in a[5]["student"])
    steps = {s: {float(v["step"]) for v in e[10]["student_optim"]["state"].values()}
             for s, e in ends.items()}
    assert steps == {"abrupt": {10.0}, "reset": {5.0}}
    assert any(not torch.equal(a[10]["student"][k], r[10]["student"][k]) for k in a[10]["student"])
    shutil.copytree(tmp_path / "reset", tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / cks[10].name).unlink()
    cfg = load_distill_config(None, {**base, "kd.switch": "reset"})
    run_distill(cfg, run_dir=tmp_path / "resumed", progress=False, final_eval=False)
    b = load_checkpoint(latest_checkpoint(tmp_path / "resumed" / "checkpoints"))
    assert all(torch.equal(r[10]["student"][k], b["student"][k]) for k in b["student"])
    with pytest.raises(ConfigError, match="kd.switch.*'reset' needs kd.l2_warmup_steps"):
        load_distill_config(None, {"kd.switch": "reset"})


def test_kd_jump_rescales_the_same_loss_from_its_step(tmp_path):
    """``kd.jump_step / jump_factor`` (the switch's control): plain L2 until the step, then the
    same L2 times the factor in the logged loss, the teachers never consulted."""
    base = {**TINY, "experiment.data.cache_dir": str(tmp_path / "c"),
            "experiment.run.log_every": 3, "experiment.optim.steps": 9, "kd.loss": "l2"}
    cfg = load_distill_config(None, {**base, "kd.jump_step": 3, "kd.jump_factor": 35.0})
    cache: dict = {}
    run_distill(cfg, run_dir=tmp_path / "j", progress=False, final_eval=False,
                teacher_cache=cache)
    assert cache == {}
    rows = [json.loads(x) for x in (tmp_path / "j" / "metrics.jsonl").read_text().splitlines()
            if '"student"' in x]
    assert rows[0]["student/loss"] == pytest.approx(rows[0]["student/l2"])
    for r in rows[1:]:
        assert r["student/loss"] == pytest.approx(35.0 * r["student/l2"])
    for bad in ({"kd.jump_step": -1}, {"kd.jump_step": 3, "kd.jump_factor": 0},
                {"kd.jump_factor": 2.0}):  # a factor without a step would do nothing
        with pytest.raises(ConfigError, match=list(bad)[-1]):
            load_distill_config(None, bad)


def test_kd_switch_lr_factor_scales_the_rate_from_the_switch_on(tmp_path):
    """``kd.switch_lr_factor``: the schedule's rate until the switch to KD-Loss, that rate times the
    factor after it: in the log and in what the optimizer was last given (its checkpoint)."""
    from tsal_dist.loop.schedules import lr_at

    base = {**TINY, "experiment.data.cache_dir": str(tmp_path / "c"),
            "experiment.run.log_every": 3, "experiment.run.checkpoint_every": 9,
            "experiment.optim.steps": 9, "experiment.optim.schedule": "cosine",
            "kd.l2_warmup_steps": 4, "kd.variant": "paper", "kd.switch_lr_factor": 3.0}
    cfg = load_distill_config(None, base)
    run_distill(cfg, run_dir=tmp_path / "r", progress=False, final_eval=False)
    o = cfg.experiment.optim
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
            if '"student"' in x]
    for r in rows:  # each row: the rate of its window's last step (index step - 1)
        k = r["step"] - 1
        plain = lr_at(k, base_lr=o.lr, total_steps=o.steps, warmup_steps=o.warmup_steps,
                      schedule="cosine")
        assert r["lr"] == pytest.approx(plain * (3.0 if k >= 4 else 1.0)), r["step"]
    assert "student/l2" in rows[0] and "student/main" in rows[-1]
    ck = load_checkpoint(latest_checkpoint(tmp_path / "r" / "checkpoints"))
    last = lr_at(8, base_lr=o.lr, total_steps=o.steps, warmup_steps=o.warmup_steps,
                 schedule="cosine")
    groups = ck["student_optim"]["param_groups"]
    assert groups and all(g["lr"] == pytest.approx(3.0 * last) for g in groups)
    for bad in ({"kd.switch_lr_factor": 0}, {"kd.switch_lr_factor": 2.0},  # no switch
                {"kd.loss": "l2", "kd.l2_warmup_steps": 4, "kd.switch_lr_factor": 2.0}):
        with pytest.raises(ConfigError, match="kd.switch_lr_factor"):
            load_distill_config(None, bad)
