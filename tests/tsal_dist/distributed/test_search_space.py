"""Search spaces, sweep files and result files, without Ray (seconds)."""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tsal_dist.config import ConfigError, ExperimentConfig, load_config, with_overrides
from tsal_dist.distributed.search_space import (ParamSpec, extremes, num_trials, parse_space,
                                                sample, validate_space)
from tsal_dist.distributed.sweep import load_sweep
from tsal_dist.distributed.sweep_results import best_overrides, best_row, write_results
from tsal_dist.distributed.tune_driver import trial_cfg, trial_run_name

REPO = Path(__file__).resolve().parents[3]
BASE = ExperimentConfig()


def test_parse_space_kinds():
    specs = parse_space({"loss.unsup_weight": {"loguniform": [0.1, 10]},
                         "teacher.queue_length": {"choice": [2, 4]},
                         "optim.steps": {"randint": [10.0, 20.0]}})
    assert specs["loss.unsup_weight"] == ParamSpec("loss.unsup_weight", "loguniform", (0.1, 10))
    assert specs["optim.steps"].values == (10, 20)
    assert extremes(specs["optim.steps"]) == [10, 19]  # half-open like tune.randint
    assert extremes(specs["teacher.queue_length"]) == [2, 4]


@pytest.mark.parametrize("dom, msg", [
    ({"normal": [0, 1]}, "unknown domain"),
    ({"uniform": [1, 0]}, "low < high"),
    ({"loguniform": [0, 1]}, "low > 0"),
    ({"uniform": [0, 1, 2]}, "[low, high]"),
    ({"choice": []}, "non-empty list"),
    ({"uniform": [0.1, 0.5], "choice": [1]}, "exactly one"),
    (0.5, "exactly one"),
])
def test_parse_space_bad_domains_name_the_key(dom, msg):
    with pytest.raises(ConfigError, match=r"space\.teacher\.blend: .*" + msg.replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_space({"teacher.blend": dom})


def test_reserved_keys_cannot_be_swept():
    with pytest.raises(ConfigError, match=r"space\.run\.name"):
        parse_space({"run.name": {"choice": ["a", "b"]}})


def test_sample_distributions():
    rng = random.Random(3)
    u = [sample(ParamSpec("k", "uniform", (0.2, 0.4)), rng) for _ in range(500)]
    assert min(u) >= 0.2 and max(u) <= 0.4
    lg = [sample(ParamSpec("k", "loguniform", (0.01, 100.0)), rng) for _ in range(2000)]
    # log-uniform: half the mass below the geometric mean (1.0)
    assert 0.45 < sum(x < 1.0 for x in lg) / len(lg) < 0.55
    ri = {sample(ParamSpec("k", "randint", (2, 5)), rng) for _ in range(300)}
    assert ri == {2, 3, 4}
    ch = {sample(ParamSpec("k", "choice", ("a", "b")), rng) for _ in range(100)}
    assert ch == {"a", "b"}


def test_validate_space_accepts_good_space_and_checks_every_extreme():
    space = {"teacher.blend": {"uniform": [0.4, 0.9]}, "loss.unsup_weight": {"grid": [0.5, 2]}}
    checked = validate_space(BASE, space)
    b, u = checked[0]["teacher.blend"], checked[0]["loss.unsup_weight"]
    assert 0.4 < b < 0.9 and u in (0.5, 2)
    got = [(c["teacher.blend"], c["loss.unsup_weight"]) for c in checked]
    # the random sample first, then each extreme on top of it, then every pair of extremes; each
    # combination once (the grid value the sample drew is not checked twice)
    want = {(b, u), (0.4, u), (0.9, u), (b, 0.5), (b, 2),
            (0.4, 0.5), (0.4, 2), (0.9, 0.5), (0.9, 2)}
    assert got[0] == (b, u) and len(got) == len(set(got)) == 6 and set(got) == want


def test_validate_space_misspelled_key():
    with pytest.raises(ConfigError, match=r"space\.teacher\.ema_decy"):
        validate_space(BASE, {"teacher.ema_decy": {"uniform": [0.5, 0.9]}})


def test_validate_space_out_of_range_extreme():
    # 0.99 is fine, the upper bound 1.0 is not (ema_decay must be < 1): caught up front.
    with pytest.raises(ConfigError, match=r"space\.teacher\.ema_decay=1\.0: teacher\.ema_decay"):
        validate_space(BASE, {"teacher.ema_decay": {"uniform": [0.9, 1.0]}})
    with pytest.raises(ConfigError, match=r"space\.model\.backbone='vgg'"):
        validate_space(BASE, {"model.backbone": {"choice": ["resnet", "vgg"]}})
    with pytest.raises(ConfigError, match=r"space\.teacher\.queue_length"):
        validate_space(BASE, {"teacher.queue_length": {"choice": [4, "many"]}})


def test_validate_space_refuses_what_the_layout_cannot_serve():
    """A turn limit on a 19-point layout (no nose tip) is refused before any trial starts, at the
    base and at a swept extreme alike."""
    base = with_overrides(BASE, {"data.num_points": 19, "model.centroid_index": 10,
                                 "loss.student_consistency": "pseudo_label"})
    space = {"loss.pseudo_max_turn": {"choice": [0.0, 0.25]}}
    with pytest.raises(ConfigError, match=r"space\.loss\.pseudo_max_turn=0\.25: loss\."
                       r"pseudo_max_turn: .*aflw19 layout \(19 points\)"):
        validate_space(base, space)
    assert len(validate_space(with_overrides(base, {"data.num_points": 68}), space)) == 2
    # the random sample itself refused on a key that is not swept: the sample's values are named
    with pytest.raises(ConfigError, match=r"^space\.data\.num_points=19: model\.centroid_index: "):
        validate_space(BASE, {"data.num_points": {"choice": [19]}})


def test_validate_space_refuses_two_swept_values_that_fail_only_together():
    """Sweeping the layout and the turn limit: 19 points with a turn limit fails (no nose tip),
    though each value passes with the other key's sampled value; refused up front, naming both."""
    base = with_overrides(BASE, {"model.centroid_index": 10,
                                 "loss.student_consistency": "pseudo_label"})
    space = {"data.num_points": {"choice": [68, 19]},
             "loss.pseudo_max_turn": {"choice": [0.0, 0.25]}}
    specs = list(parse_space(space).values())
    # a seed whose random sample is (68, 0.0): each key's extremes alone pass on top of it
    seed = next(s for s in range(100)
                if [sample(p, r) for r in [random.Random(s)] for p in specs] == [68, 0.0])
    for single in ({"data.num_points": 19, "loss.pseudo_max_turn": 0.0},
                   {"data.num_points": 68, "loss.pseudo_max_turn": 0.25}):
        with_overrides(base, single)  # each swept value alone is fine
    with pytest.raises(ConfigError, match=r"space\.loss\.pseudo_max_turn=0\.25 \(with space\.data\."
                       r"num_points=19\): loss\.pseudo_max_turn: .*aflw19"):
        validate_space(base, space, seed=seed)
    ok = {"data.num_points": {"choice": [68, 98]}, "loss.pseudo_max_turn": {"choice": [0.0, 0.25]}}
    assert {tuple(c.values()) for c in validate_space(base, ok, seed=seed)} == {
        (68, 0.0), (98, 0.0), (68, 0.25), (98, 0.25)}


def test_num_trials():
    space = {"a.b": {"grid": [1, 2, 3]}, "c.d": {"grid": [1, 2]}, "e.f": {"uniform": [0, 1]}}
    assert num_trials(space, 2) == 12


def test_every_sweep_file_loads_and_validates():
    files = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert {p.name for p in files} >= {"default.yaml", "smoke.yaml"}
    for p in files:
        sweep = load_sweep(p)
        assert sweep.metric == "val_nme" and sweep.max_concurrent_trials >= 1
        assert sweep.base.run.checkpoint_every % sweep.base.run.eval_every == 0


def test_default_sweep_is_small_enough_for_two_cores():
    sweep = load_sweep(REPO / "configs" / "sweeps" / "default.yaml")
    assert sweep.max_concurrent_trials == 1
    assert sweep.base.scaling.num_workers <= 2
    assert sweep.base.model.input_size <= 64
    assert num_trials(sweep.space, sweep.num_samples) * sweep.base.optim.steps <= 400
    assert sweep.scheduler.kind == "asha"


def _write(tmp: Path, name: str, d: dict) -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(d))
    return p


def test_load_sweep_base_file_inline_and_set(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {steps: 30}\nrun: {eval_every: 10, "
                                        "checkpoint_every: 10}\n")
    p = _write(tmp_path, "s.yaml", {"base": "base.yaml", "set": {"model.width": 0.25},
                                    "space": {"teacher.blend": {"uniform": [0.4, 0.8]}}})
    sw = load_sweep(p, {"optim.lr": "0.01"})
    assert sw.base.optim.steps == 30 and sw.base.model.width == 0.25 and sw.base.optim.lr == 0.01
    assert sw.name == "s" and sw.scheduler.kind == "asha"
    p2 = _write(tmp_path, "i.yaml", {"base": {"run": {"eval_every": 5, "checkpoint_every": 10}},
                                     "space": {"loss.fusion_mu": {"grid": [0.0, 1.0]}},
                                     "scheduler": "fifo"})
    assert load_sweep(p2).base.run.eval_every == 5


@pytest.mark.parametrize("bad, msg", [
    ({"space": {"teacher.blend": {"uniform": [0.0, 0.5]}}}, r"space\.teacher\.blend=0\.0"),
    ({"spaces": {}}, "spaces: unknown sweep key"),
    ({"base": {"optim": {"stepz": 3}}}, r"optim\.stepz"),
    ({"scheduler": {"type": "pbt"}}, "scheduler.type"),
    ({"scheduler": {"type": "asha", "max_t": 10 ** 6}}, "scheduler.max_t"),
    ({"metric": "loss"}, "metric"),
    ({"base": {"run": {"eval_every": 0}}}, "run.eval_every"),
    ({"base": {"run": {"eval_every": 300, "checkpoint_every": 400}}}, "run.checkpoint_every"),
    ({"num_samples": 0}, "num_samples"),
])
def test_load_sweep_errors_name_file_and_key(tmp_path, bad, msg):
    d = {"space": {"teacher.blend": {"uniform": [0.4, 0.8]}}, **bad}
    p = _write(tmp_path, "bad.yaml", d)
    with pytest.raises(ConfigError, match=msg) as e:
        load_sweep(p)
    assert str(e.value).startswith(str(p))


def test_trial_cfg_applies_sample_name_and_folder():
    cfg = trial_cfg(BASE.to_dict(), {"teacher.ema_decay": 0.75, "loss.unsup_weight": 2.5},
                    run_name=trial_run_name("my sweep", "ab12_00001"), runs_dir="/tmp/r")
    assert cfg.teacher.ema_decay == 0.75 and cfg.loss.unsup_weight == 2.5
    assert cfg.run.name == "my-sweep_ab12_00001" and cfg.run.output == "/tmp/r"


def _fake_trial(runs: Path, name: str, cfg: ExperimentConfig, vals: list[float],
                test_nme: float | None) -> None:
    from tsal_dist.config import save_config

    d = runs / name
    d.mkdir(parents=True)
    save_config(cfg, d / "config.yaml")
    (d / "trial.json").write_text("{}")
    lines = [{"step": 6 * (i + 1), "student/loss": 1.0} for i in range(len(vals))]
    lines += [{"step": 6 * (i + 1), "val/nme_inter_ocular": v} for i, v in enumerate(vals)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if test_nme is not None:
        (d / "eval").mkdir()
        (d / "eval" / "summary.json").write_text(json.dumps(
            {"teacher": {"a": {"nme_inter_ocular": test_nme},
                         "b": {"nme_inter_ocular": test_nme + 0.02}},
             "student": {"a": {"nme_inter_ocular": 0.5}}}))


def test_write_results_table_plot_and_best_config(tmp_path):
    sweep = load_sweep(REPO / "configs" / "sweeps" / "smoke.yaml")
    sweep = replace(sweep, output=str(tmp_path))
    runs = tmp_path / "runs"
    base = sweep.base

    def mk(d: float, u: float) -> ExperimentConfig:
        return trial_cfg(base.to_dict(), {"teacher.ema_decay": d, "teacher.blend": 0.5,
                                          "loss.unsup_weight": u}, run_name="x",
                         runs_dir=str(runs))

    _fake_trial(runs, "smoke_a", mk(0.5, 0.5), [0.30, 0.20], 0.21)  # full 12 steps
    _fake_trial(runs, "smoke_b", mk(0.8, 3.0), [0.10], None)        # stopped at step 6
    _fake_trial(runs, "smoke_c", mk(0.8, 0.5), [0.40, 0.25], 0.3)
    res = write_results(sweep, runs, tmp_path)
    rows = {r["trial"]: r for r in res["rows"]}
    assert rows["smoke_a"]["val_nme"] == 0.20 and rows["smoke_a"]["val_step"] == 12
    assert rows["smoke_a"]["test_nme_teacher"] == pytest.approx(0.22)  # mean over lists a, b
    assert math.isnan(rows["smoke_b"]["test_nme_teacher"])
    assert rows["smoke_b"]["loss.unsup_weight"] == 3.0
    # b has the lowest NME but was stopped early: the best full-length trial wins
    assert res["best"]["trial"] == "smoke_a"
    with open(res["files"]["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == ["smoke_a", "smoke_b", "smoke_c"]
    assert float(table[0]["val_nme"]) == 0.20
    md = Path(res["files"]["md"]).read_text()
    assert "smoke_a **(best)**" in md and "| 20 |" in md
    png = Path(res["files"]["plot"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.png"))
    # best_config.yaml is an ordinary --config file for tsal_dist.train
    cfg = load_config(res["files"]["best"])
    assert cfg.teacher.ema_decay == 0.5 and cfg.loss.unsup_weight == 0.5
    assert cfg.teacher.mode == "ema" and cfg.optim.steps == base.optim.steps
    assert cfg.run.name == "" and cfg.run.output == base.run.output
    assert cfg == replace(with_best(base, 0.5, 0.5), run=replace(base.run, name=""))
    # a later sweep into this folder without a finite trial leaves no best_config.yaml of ours
    import shutil

    shutil.rmtree(runs)
    _fake_trial(runs, "smoke_d", mk(0.5, 0.5), [float("nan")], None)
    res = write_results(sweep, runs, tmp_path)
    assert res["best"] is None and "best" not in res["files"]
    assert not (tmp_path / "best_config.yaml").exists()


def with_best(base: ExperimentConfig, d: float, u: float) -> ExperimentConfig:
    from tsal_dist.config import with_overrides

    return with_overrides(base, {"teacher.ema_decay": d, "teacher.blend": 0.5,
                                 "loss.unsup_weight": u})


def test_best_row_and_overrides():
    rows = [{"trial": "a", "val_nme": math.nan, "val_step": 12},
            {"trial": "b", "val_nme": 0.3, "val_step": 12},
            {"trial": "c", "val_nme": 0.2, "val_step": 12}]
    assert best_row(rows, mode="min", full_steps=12)["trial"] == "c"
    assert best_row(rows, mode="max", full_steps=12)["trial"] == "b"
    assert best_row(rows[:1], mode="min", full_steps=12) is None
    ov = best_overrides(BASE, {"teacher.blend": 0.7}, ["teacher.blend"])
    assert ov == {"teacher": {"blend": 0.7}}  # only what differs from the defaults


def test_check_resources_refuses_a_trial_that_cannot_fit(capsys):
    from tsal_dist.distributed.tune_driver import check_resources, trial_resources

    sweep = load_sweep(REPO / "configs" / "sweeps" / "smoke.yaml")
    assert trial_resources(sweep.base) == {"CPU": pytest.approx(0.01 + 2 * 0.99)}
    check_resources(sweep, {"CPU": 2.0}, autoscaling=False)  # the 2-core machine: fits
    full = replace(sweep, base=replace(sweep.base, scaling=replace(sweep.base.scaling,
                                                                   cpus_per_worker=1.0)))
    with pytest.raises(ConfigError, match=r"scaling\.cpus_per_worker: one trial needs 2\.01 CPU"):
        check_resources(full, {"CPU": 2.0}, autoscaling=False)
    check_resources(full, {"CPU": 2.0}, autoscaling=True)  # may scale up: warn only
    assert "warning: scaling.cpus_per_worker" in capsys.readouterr().out
    gpu = load_sweep(REPO / "configs" / "sweeps" / "gpu.yaml")
    with pytest.raises(ConfigError, match=r"scaling\.gpus_per_worker"):
        check_resources(gpu, {"CPU": 64.0}, autoscaling=False)


def test_yaml_exponents_without_a_dot_are_numbers():
    """PyYAML reads ``1e-4`` as the string "1e-4" (YAML 1.1 wants 1.0e-4): a sweep file's
    ``loguniform: [1e-4, 1e-2]`` was refused as "needs [low, high] numbers"."""
    import yaml

    space = yaml.safe_load("optim.lr: {loguniform: [1e-4, 1e-2]}\n")
    assert space["optim.lr"]["loguniform"] == ["1e-4", "1e-2"]  # what PyYAML gives
    spec = parse_space(space)["optim.lr"]
    assert spec.values == (1e-4, 1e-2)
    with pytest.raises(ConfigError, match="needs \\[low, high\\] numbers"):
        parse_space({"optim.lr": {"uniform": ["low", 1.0]}})
