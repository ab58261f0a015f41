"""The semi-supervised benchmark: its statistics by hand, its configs, and a tiny run end to end."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from _scripts import load_script


def _module():
    return load_script("semi_supervised")


def _row(method, seed, nme, model="teacher", es="test.lst", nmj=None, labeled=50):
    return {"table": "compare", "method": method, "labeled": labeled, "seed": seed,
            "model": model, "eval_set": es, "count": 10, "nme": nme, "fr@0.08": 0.2, "nmj": nmj}


def test_paired_deltas_with_t_intervals_by_hand():
    mod = _module()
    sup = {0: 0.10, 1: 0.12, 2: 0.09, 3: 0.11}
    tsal = {0: 0.08, 1: 0.10, 2: 0.085, 3: 0.09}
    rows = [_row("supervised", s, v, nmj=0.02) for s, v in sup.items()]
    rows += [_row("tsal-published-queue", s, v, nmj=0.01 + 0.001 * s) for s, v in tsal.items()]
    rows += [_row("tsal-published-queue", 0, 0.5, model="student")]  # no supervised pair
    rows += [_row("tsal-published-queue", 0, 0.07, labeled=200)]  # other budget, no pair
    out = {(r["method"], r["model"], r["labeled"]): r for r in mod.aggregate(rows)}
    t = out[("tsal-published-queue", "teacher", 50)]
    d = [tsal[s] - sup[s] for s in range(4)]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    half = 3.182 * sd / math.sqrt(4)  # t(0.975, df=3)
    assert t["nme"] == pytest.approx(statistics.fmean(tsal.values()))
    assert t["nme_delta"]["mean"] == pytest.approx(mean)
    assert t["nme_delta"]["ci95"] == pytest.approx([mean - half, mean + half])
    assert t["nme_delta"]["significant"] is (mean + half < 0)
    assert t["nme_rel"] == pytest.approx(mean / statistics.fmean(sup.values()))
    assert (t["role"], t["test_set"], t["seeds"]) == ("teacher", "test.lst", [0, 1, 2, 3])
    assert t["nme_inter_ocular_mean"] == t["nme"]
    assert t["delta_vs_supervised_mean"] == pytest.approx(mean)
    assert (t["delta_ci95_low"], t["delta_ci95_high"]) == pytest.approx((mean - half, mean + half))
    assert t["nmj_delta"]["per_seed"] == pytest.approx([0.01 + 0.001 * s - 0.02 for s in range(4)])
    assert "nme_delta" not in out[("supervised", "teacher", 50)]
    assert "nme_delta" not in out[("tsal-published-queue", "student", 50)]
    assert "nme_delta" not in out[("tsal-published-queue", "teacher", 200)]
    md = mod.markdown(mod.aggregate(rows), {"machine": "m", "commands": ["c"]})
    lo, hi = 100 * (mean - half), 100 * (mean + half)
    assert f"| tsal-published-queue | 50 | teacher | test.lst | 10 | 4 | 8.88 ± 0.85 | " \
           f"{100 * mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" in md


def test_head_to_head_pairs_every_method_with_the_baseline_by_seed(tmp_path):
    mod = _module()
    mt = {0: 0.150, 1: 0.140, 2: 0.145}
    tsal = {0: 0.140, 1: 0.138, 2: 0.141, 3: 0.2}  # seed 3 has no baseline run: left out
    rows = [_row("supervised", s, 0.139) for s in range(3)]
    rows += [_row("mean-teacher-w0.1", s, v, nmj=0.02) for s, v in mt.items()]
    rows += [_row("tsal-published-queue", s, v, nmj=0.01) for s, v in tsal.items()]
    rows += [_row("tsal-published-queue", 0, 0.1, labeled=200)]  # no baseline at L = 200
    (h,) = mod.head_to_head(rows, "mean-teacher-w0.1")
    d = [tsal[s] - mt[s] for s in range(3)]
    mean, half = statistics.fmean(d), 4.303 * statistics.stdev(d) / math.sqrt(3)  # t(.975, 2)
    assert (h["method"], h["against"], h["labeled"]) == ("tsal-published-queue",
                                                         "mean-teacher-w0.1", 50)
    assert h["nme_delta"]["seeds"] == [0, 1, 2]
    assert h["nme_delta"]["ci95"] == pytest.approx([mean - half, mean + half])
    assert h["nme_delta"]["significant"] is (mean + half < 0)
    assert h["nmj_delta"]["mean"] == pytest.approx(-0.01)
    # kept in the JSON's meta: the tables rebuilt from the JSON keep the section
    doc = {"version": 2, "meta": {"machine": "m", "commands": ["c"]}, "rows": rows}
    (tmp_path / "semi_supervised.json").write_text(json.dumps(doc))
    assert mod.main(["tables", "--results", str(tmp_path), "--vs", "mean-teacher-w0.1"]) == 0
    assert mod.main(["tables", "--results", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "semi_supervised.json").read_text())
    assert saved["meta"]["vs"] == "mean-teacher-w0.1" and len(saved["vs"]) == 1
    md = (tmp_path / "semi_supervised_table.md").read_text()
    assert "## Against mean-teacher-w0.1 (paired by seed)" in md
    assert f"| tsal-published-queue | 50 | teacher | test.lst | 3 | {100 * mean:+.2f} [" in md
    with pytest.raises(SystemExit):  # a misspelt baseline is refused, not an empty section
        mod.main(["tables", "--results", str(tmp_path), "--vs", "mean-teacher-w01"])


def test_t_quantiles():
    mod = _module()
    assert mod.t975(4) == pytest.approx(2.776)
    assert mod.t975(2) == pytest.approx(4.303)
    assert mod.t975(11) == pytest.approx(2.228)  # the nearest smaller df in the table


def test_every_method_is_a_valid_config_and_the_published_rows_are_published():
    mod = _module()
    for table in (mod.METHODS, mod.CURVE, mod.DIAGNOSIS):
        for name in table:
            cfg = mod.config_for(name, 50, 0, 100, "/tmp/x", False, table)  # raises if invalid
            assert cfg.data.synthetic.labeled_domain.yaw_max_deg == {
                "supervised-wide-labels": 55.0, "bound-labels-wide-pose": 55.0,
                "bound-labels-yaw35": 35.0}.get(name, 15.0), name
    for mode in ("queue", "ema", "mutual"):
        cfg = mod.config_for(f"tsal-published-{mode}", 50, 0, 100, "/tmp/x", False, mod.METHODS)
        assert cfg.loss.structure_on == "labeled" and cfg.teacher.average_buffers is False
        assert cfg.teacher.mode == {"mutual": "mutual_step"}.get(mode, mode)
    mt = mod.config_for("mean-teacher", 50, 0, 100, "/tmp/x", False, mod.METHODS)
    assert mt.teacher.optimize is False and mt.loss.pseudo_source == "teacher"
    # a diagnosis row is the published queue recipe with ONE change; its supervised-only row is
    # the comparison's very run (same config hash: reused, never retrained)
    pub = mod.config_for("tsal-published-queue", 50, 0, 100, "/tmp/x", False, mod.METHODS)
    for name in mod.DIAGNOSIS:
        d = mod.config_for(name, 50, 0, 100, "/tmp/x", False, mod.DIAGNOSIS)
        if name == "supervised":
            assert d.hash() == mod.config_for(name, 50, 0, 100, "/tmp/x", False,
                                              mod.METHODS).hash()
            continue
        if name.startswith("bound-"):
            # a bound: supervised-only whose labels differ only in their pose bounds
            sup = mod.config_for("supervised", 50, 0, 100, "/tmp/x", False, mod.METHODS)
            dom, narrow = d.data.synthetic.labeled_domain, sup.data.synthetic.labeled_domain
            assert d.optim == sup.optim and d.loss == sup.loss and d.model == sup.model, name
            assert {k for k in vars(dom) if getattr(dom, k) != getattr(narrow, k)} <= {
                "yaw_max_deg", "pitch_max_deg", "roll_max_deg"}, name
            continue
        changed = {k for k in ("student_unsup_weight", "pseudo_source", "student_consistency")
                   if getattr(d.loss, k) != getattr(pub.loss, k)}
        assert d.data.synthetic.labeled_domain == pub.data.synthetic.labeled_domain, name
        assert changed and d.teacher == pub.teacher and d.loss.structure_on == "labeled", name


def test_baseline_tuning_changes_only_the_mean_teachers_consistency_weight():
    mod = _module()
    tune = mod.BASELINE_TUNING
    assert {"supervised", "mean-teacher"} < set(tune) and len(tune) >= 4
    for name in ("supervised", "mean-teacher"):  # the comparison's very runs: reused
        assert (mod.config_for(name, 50, 0, 100, "/tmp/x", False, tune).hash()
                == mod.config_for(name, 50, 0, 100, "/tmp/x", False, mod.METHODS).hash())
    # the tuned weight in the comparison is the tuning's very run (same name and hash)
    assert (mod.config_for("mean-teacher-w0.1", 50, 0, 100, "/tmp/x", False, tune).hash()
            == mod.config_for("mean-teacher-w0.1", 50, 0, 100, "/tmp/x", False,
                              mod.METHODS).hash())
    mt = mod.config_for("mean-teacher", 50, 0, 100, "/tmp/x", False, tune).to_dict()
    weights = set()
    for name in tune:
        if not name.startswith("mean-teacher-w"):
            continue
        d = mod.config_for(name, 50, 0, 100, "/tmp/x", False, tune).to_dict()
        weights.add(d["loss"]["unsup_weight"])
        assert d["loss"]["unsup_weight"] == float(name.removeprefix("mean-teacher-w"))
        d["loss"]["unsup_weight"] = mt["loss"]["unsup_weight"]
        d["run"]["name"] = mt["run"]["name"]
        assert d == mt, name  # nothing else differs
    assert len(weights) == len(tune) - 2 and 1.0 not in weights


@pytest.mark.slow
def test_quick_compare_runs_end_to_end_and_resumes(tmp_path):
    mod = load_script("semi_supervised", importable=True)  # its workers are spawned
    # this process already runs a loader forkserver, as after any earlier run in it: the compare
    # workers must not inherit it (forked workers failed with "no child processes")
    from multiprocessing import forkserver
    forkserver.ensure_running()
    args = ["compare", "--quick", "--steps", "4", "--seeds", "0", "1", "--methods",
            "supervised", "tsal-published-mutual", "--parallel", "1", "--out", str(tmp_path)]
    assert mod.main(args) == 0
    doc = json.loads((tmp_path / "results" / "semi_supervised.json").read_text())
    rows = [r for r in doc["summary"] if r["method"] == "tsal-published-mutual"
            and r["model"] == "teacher"]
    assert {r["eval_set"] for r in rows} == {"synthetic.test.lst", "synthetic.videos.test.lst"}
    video = next(r for r in rows if r["eval_set"] == "synthetic.videos.test.lst")
    assert video["nmj"] > 0 and len(video["nme_delta"]["per_seed"]) == 2
    # the table and the plot beside the json, in the tables' own folder
    res = tmp_path / "results"
    assert "tsal-published-mutual" in (res / "semi_supervised_table.md").read_text()
    assert (res / "semi_supervised.png").read_bytes()[:4] == b"\x89PNG"
    # the tracking probe (semi_supervised.md, H4) on one of these runs, end to end
    probe = load_script("tracking_probe")
    out = tmp_path / "probe"
    assert probe.main(["--runs", str(tmp_path / "supervised-L50-s0"), "--clip-length", "4",
                       "--out", str(out)]) == 0
    (run,) = json.loads((out / "tracking_probe.json").read_text())["summary"]["runs"]
    assert run["frames"] == run["clips"] * 3 > 0  # every clip frame but the anchor
    assert set(run["by_k_pct"]) <= {"1", "2", "3"}
    means = run["mean_pct"]
    assert all(math.isfinite(means[k]) and means[k] >= 0
               for k in ("own", "drift", "drift_inner", "drift_jaw"))
    # a 4-step model's landmarks are far off: carried along the clip they may all leave the
    # crop, and a target with no point left is reported as missing (null), never as a number
    if means["tracked"] is None:
        assert run["carried_points_dropped_frac"] > 0
    else:
        assert math.isfinite(means["tracked"]) and means["tracked"] >= 0
    assert (out / "tracking_probe.md").read_text().startswith("# Tracking probe")
    before = (tmp_path / "supervised-L50-s0" / "result.json").stat().st_mtime_ns
    assert mod.main(args) == 0  # finished runs are reused, not trained again
    assert (tmp_path / "supervised-L50-s0" / "result.json").stat().st_mtime_ns == before
    # another setting in the same folders is refused, not resumed from the other run's steps
    from tsal_dist.loop.runs import RunConfigChanged

    with pytest.raises(RunConfigChanged, match=r"optim\.steps: 4 -> 5"):
        mod.main([*args[:3], "5", *args[4:]])
