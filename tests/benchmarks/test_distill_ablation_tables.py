"""The KD-Loss ablation's statistics: seed-paired deltas vs plain L2 by hand, and its verdict."""

from __future__ import annotations

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
