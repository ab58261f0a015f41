"""The KD-Loss ablation's statistics: seed-paired deltas vs plain L2 by hand, and its verdict."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from _scripts import load_script


def _module():
    return load_script("distill_ablation")


def _run(variant, seed, img, vid):
    ev = {"images": {"nme_io": img, "fr@0.08": 0.5, "auc@0.08": 0.1, "count": 10},
          "videos": {"nme_io": vid, "fr@0.08": 0.4, "auc@0.08": 0.1, "count": 10}}
    return {"variant": variant, "seed": seed, "eval": ev, "train_px_error_curve": []}


def test_paired_deltas_against_l2_by_hand_and_the_verdict_says_what_is_significant():
    mod = _module()
    l2 = [0.100, 0.120, 0.110]
    kd = [0.080, 0.095, 0.088]  # better on every seed
    l1 = [0.130, 0.100, 0.125]  # noisy: not significant
    runs = [_run("L2", s, v, v) for s, v in enumerate(l2)]
    runs += [_run("KD-Loss (code)", s, v, v + 0.001) for s, v in enumerate(kd)]
    runs += [_run("L1", s, v, v) for s, v in enumerate(l1)]
    runs += [_run("KD-Loss (paper)", 7, 0.05, 0.05)]  # a seed L2 never ran: no pair, no delta
    summary = mod.summarise(runs, ["images", "videos"])
    rows = {(r["variant"], r["test_set"]): r for r in summary}
    d = rows[("KD-Loss (code)", "images")]["delta_vs_l2"]
    diffs = [a - b for a, b in zip(kd, l2)]
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)  # t(0.975, df=2)
    assert d["mean"] == pytest.approx(statistics.fmean(diffs))
    assert d["ci95"] == pytest.approx([d["mean"] - half, d["mean"] + half])
    assert d["significant"] is True
    assert rows[("KD-Loss (code)", "images")]["rel_vs_l2"] == pytest.approx(
        statistics.fmean(diffs) / statistics.fmean(l2))
    assert rows[("L1", "images")]["delta_vs_l2"]["significant"] is False
    assert "delta_vs_l2" not in rows[("L2", "images")]
    assert "delta_vs_l2" not in rows[("KD-Loss (paper)", "images")]
    assert rows[("L2", "videos")]["nme_sd"] == pytest.approx(statistics.stdev(l2))
    text = mod.verdict(summary, ["images", "videos"])
    assert "KD-Loss (code) 8.77 % is significantly better than L2" in text
    assert "L1 11.83 % is not significantly different from L2" in text


def test_jobs_pair_losses_by_seed_init_and_batches_together():
    mod = _module()
    base = mod.base_config(10, 20, quick=True)
    a = mod.job_config(base, "L2", 2)
    b = mod.job_config(base, "KD-Loss (paper)", 2)
    s0 = base.experiment.train.seed
    assert a.experiment.train.seed == b.experiment.train.seed == a.student.seed == s0 + 2
    assert (a.kd.loss, b.kd.loss, b.kd.variant) == ("l2", "kd", "paper")
    assert a.teachers == b.teachers == base.teachers  # one pair of teachers for every student
    assert mod.run_name("KD-Loss (code)", 1) == "student_KD-Loss_code_s1"
    w = mod.job_config(mod.base_config(10, 30, quick=True), "KD-Loss (paper) after L2", 2)
    # the remedy: plain L2 for a third of the same steps, then the paper variant
    assert (w.kd.loss, w.kd.variant, w.kd.l2_warmup_steps) == ("kd", "paper", 10)
    assert w.experiment.optim.steps == 30 and w.student.seed == s0 + 2
    assert b.kd.l2_warmup_steps == 0


def test_schedule_reaches_the_students_and_only_them():
    mod = _module()
    const = mod.base_config(10, 20, quick=True)
    cos = mod.base_config(10, 20, quick=True, schedule="cosine")
    assert const.experiment.optim.schedule == "constant"  # KD's own optimizer: no schedule
    job = mod.job_config(cos, "L1", 1)
    assert job.experiment.optim.schedule == "cosine"
    assert job.teachers == const.teachers  # the teachers train the same either way
    assert cos.hash() != const.hash()  # a finished constant-rate student is never reused


def test_escape_step_and_its_rank_correlation_with_the_final_error():
    mod = _module()
    curve = [(50, 14.0), (100, 9.5), (150, 8.9), (200, 12.0), (250, 4.0)]
    assert mod.escape_step(curve) == 150  # the first one below 9 px, whatever follows
    assert mod.escape_step(curve, px=4.5) == 250 and mod.escape_step(curve, px=1) is None
    runs = []
    for seed, (esc, nme) in enumerate([(500, 0.09), (900, 0.11), (700, 0.12), (300, 0.10)]):
        r = _run("L2", seed, nme, nme)
        r["train_px_error_curve"] = [(esc - 50, 10.0), (esc, 8.0)]
        runs.append(r)
    never = _run("L1", 0, 0.2, 0.2)
    never["train_px_error_curve"] = [(100, 12.0), (200, 11.0)]
    t = mod.escape_table(runs + [never], "images")
    assert t["per_variant"] == {"L2": {0: 500, 1: 900, 2: 700, 3: 300}, "L1": {0: None}}
    # ranks of the steps (1, 3, 2, 0) against those of the errors (0, 2, 3, 1), by hand:
    # d = (1, 1, -1, -1), rho = 1 - 6 * 4 / (4 * 15) = 0.6
    assert t["students"] == 4 and t["spearman"] == pytest.approx(0.6)
    tied = mod.escape_table(runs[:3] + [{**runs[3], "eval": runs[0]["eval"]}], "images")
    # errors (0.09, 0.11, 0.12, 0.09): tied ranks share their mean, (0.5, 2, 3, 0.5); Pearson of
    # the ranks = 3.5 / sqrt(5 * 4.5)
    assert tied["spearman"] == pytest.approx(3.5 / math.sqrt(22.5))
    # the shared helper (benchmarks/_stats.py): no correlation of a constant side or two pairs
    assert mod.spearman([1, 2, 3], [5, 5, 5]) is None and mod.spearman([1, 2], [2, 1]) is None
    with pytest.raises(ValueError, match="3 values against 2"):
        mod.spearman([1, 2, 3], [1, 2])


def test_switch_shock_reads_the_curve_at_and_after_the_end_of_the_warm_up():
    mod = _module()
    r = _run("KD-Loss (code) after L2", 1, 0.1, 0.1)
    r["train_px_error_curve"] = [(950, 7.0), (1000, 6.4), (1050, 12.4), (1100, 11.2),
                                 (1150, 9.7), (1200, 30.0)]  # 1200: outside the window
    plain = _run("KD-Loss (code)", 1, 0.1, 0.1)
    plain["train_px_error_curve"] = r["train_px_error_curve"]
    assert mod.switch_shock([r, plain], 3000) == {"KD-Loss (code) after L2": {1: (6.4, 12.4)}}


def test_matched_switch_variants_configure_it_and_their_scale_is_read_from_the_log(tmp_path):
    import json

    mod = _module()
    base = mod.base_config(10, 30, quick=True)
    m = mod.job_config(base, "KD-Loss (paper) after L2, matched", 1)
    assert (m.kd.switch, m.kd.l2_warmup_steps, m.kd.variant) == ("matched", 10, "paper")
    h = mod.job_config(base, "KD-Loss (paper) after L2, half", 1)
    assert (h.kd.switch, h.kd.l2_warmup_steps) == ("abrupt", 15)
    rows = [{"student/l2": 0.1, "step": 5}, {"student/main": 0.2, "student/kd_scale": 0.02,
                                             "step": 15}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert mod._kd_scale(tmp_path) == {"kd_scale": 0.02}
    assert mod._kd_scale(tmp_path / "none") == {}
    # the verdict covers every variant, the new ones included
    runs = [_run("L2", s, 0.10 + s / 100, 0.1) for s in range(3)]
    runs += [_run("KD-Loss (paper) after L2, matched", s, 0.09 + s / 100, 0.1) for s in range(3)]
    text = mod.verdict(mod.summarise(runs, ["images"]), ["images"])
    assert "KD-Loss (paper) after L2, matched 10.00 % is significantly better than L2" in text


def test_the_switch_control_is_plain_l2_with_its_jump_at_the_switch():
    mod = _module()
    c = mod.job_config(mod.base_config(10, 30, quick=True), "L2, x35 at the switch", 0)
    assert (c.kd.loss, c.kd.jump_step, c.kd.jump_factor, c.kd.l2_warmup_steps) == (
        "l2", 10, 35.0, 0)


def test_switch_alternatives_are_also_paired_with_the_switch_they_change():
    mod = _module()
    a = [0.090, 0.095, 0.100]
    m = [0.097, 0.101, 0.108]
    runs = [_run("L2", s, 0.1, 0.1) for s in range(3)]
    runs += [_run("KD-Loss (paper) after L2", s, v, v) for s, v in enumerate(a)]
    runs += [_run("KD-Loss (paper) after L2, matched", s, v, v) for s, v in enumerate(m)]
    rows = {(r["variant"], r["test_set"]): r for r in mod.summarise(runs, ["images"])}
    got = rows[("KD-Loss (paper) after L2, matched", "images")]["against"]
    assert got["variant"] == "KD-Loss (paper) after L2"
    assert got["delta"]["mean"] == pytest.approx(statistics.fmean(x - y for x, y in zip(m, a)))
    assert "against" not in rows[("KD-Loss (paper) after L2", "images")]
    text = mod.verdict(mod.summarise(runs, ["images"]), ["images"])
    assert ("KD-Loss (paper) after L2, matched is significantly worse than KD-Loss (paper) after "
            "L2 (Δ +0.70" in text)


def test_lr_and_early_switch_variants_configure_the_switch_they_change():
    mod = _module()
    base = mod.base_config(10, 30, quick=True)
    lr3 = mod.job_config(base, "KD-Loss (paper) after L2, lr x3", 1)
    early = mod.job_config(base, "KD-Loss (paper) after L2, early", 1)
    assert (lr3.kd.loss, lr3.kd.variant, lr3.kd.l2_warmup_steps, lr3.kd.switch_lr_factor) == (
        "kd", "paper", 10, 3.0)
    assert (early.kd.l2_warmup_steps, early.kd.switch_lr_factor) == (5, 1.0)
    assert mod.AGAINST["KD-Loss (paper) after L2, lr x3"] == "KD-Loss (paper) after L2"
    assert mod.AGAINST["KD-Loss (paper) after L2, early"] == "KD-Loss (paper) after L2"


def test_reuse_recorded_takes_only_matching_runs_and_only_with_the_same_teachers(tmp_path):
    mod = _module()
    base = mod.base_config(10, 30, quick=True)
    teachers = {"Tough teacher": {"images": {"nme_io": 0.07}}}
    runs = []
    for v, s in (("L2", 0), ("L2", 1), ("KD-Loss (paper)", 0)):
        r = _run(v, s, 0.1, 0.1)
        runs.append({**r, "config_hash": mod.job_config(base, v, s).hash(), "reused": True})
    runs.append({**_run("L1", 0, 0.1, 0.1), "config_hash": "another config"})
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"teachers": teachers, "runs": runs}))
    work = tmp_path / "w"
    n = mod.reuse_recorded(rec, base, teachers, work, ["L2", "L1", "KD-Loss (paper)"], [0])
    assert n == 2  # L2 s1 is not asked for, L1's config is not this one
    got = json.loads((work / mod.run_name("L2", 0) / "result.json").read_text())
    assert got == {k: v for k, v in runs[0].items() if k != "reused"}
    assert not (work / mod.run_name("L1", 0)).exists()
    # ... and the runner takes such a folder as finished (no training)
    flat = mod._flat(base)
    assert mod.run_student(flat, "L2", 0, str(work))["reused"] is True
    other = {"Tough teacher": {"images": {"nme_io": 0.0701}}}
    with pytest.raises(SystemExit, match="rec.json: its teachers scored Tough teacher 7.0000 %"
                                         ".*here Tough teacher 7.0100 %"):
        mod.reuse_recorded(rec, base, other, tmp_path / "w2", ["L2"], [0])
    assert not (tmp_path / "w2").exists()
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="bad.json: not a results json"):
        mod.reuse_recorded(tmp_path / "bad.json", base, teachers, work, ["L2"], [0])
