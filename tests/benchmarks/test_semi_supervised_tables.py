"""The semi-supervised benchmark's aggregation: means, sds and seed-paired deltas by hand."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "semi_supervised.py"


def _module():
    spec = importlib.util.spec_from_file_location("semi_supervised_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _row(method, seed, nme, model="teacher", es="test.lst"):
    return {"method": method, "seed": seed, "model": model, "eval_set": es, "count": 10,
            "nme_inter_ocular": nme, "nme_inter_pupil": 1.5 * nme, "auc@0.08": 0.1,
            "fr@0.08": 0.2}


def test_aggregate_means_sds_and_paired_deltas():
    mod = _module()
    sup = {0: 0.10, 1: 0.12, 2: 0.09}
    tsal = {0: 0.11, 1: 0.125, 2: 0.10}
    rows = [_row("supervised", s, v) for s, v in sup.items()]
    rows += [_row("tsal-queue", s, v) for s, v in tsal.items()]
    rows += [_row("tsal-queue", 0, 0.5, model="student")]  # another group, no supervised pair
    out = {(r["method"], r["model"]): r for r in mod.aggregate(rows)}
    t = out[("tsal-queue", "teacher")]
    assert t["nme_inter_ocular"] == pytest.approx(statistics.fmean(tsal.values()))
    assert t["nme_inter_ocular_sd"] == pytest.approx(statistics.stdev(tsal.values()))
    diffs = [tsal[s] - sup[s] for s in (0, 1, 2)]
    assert t["delta_vs_supervised_per_seed"] == pytest.approx(diffs)
    assert t["delta_vs_supervised"] == pytest.approx(statistics.fmean(diffs))
    assert t["delta_vs_supervised_sd"] == pytest.approx(statistics.stdev(diffs))
    assert "delta_vs_supervised" not in out[("supervised", "teacher")]
    assert "delta_vs_supervised" not in out[("tsal-queue", "student")]
    md = mod.markdown(mod.aggregate(rows), {"labeled_images": 50, "steps": 600, "batch": 8,
                                            "clips_per_step": 2, "seeds": [0, 1, 2],
                                            "machine": "m", "command": "c"})
    assert "| tsal-queue | teacher | test.lst | 10 | 11.17 ± 1.26 | 11.00 / 12.50 / 10.00 | " \
           "+0.83 ± 0.29 |" in md


def test_every_method_is_a_valid_config():
    from tsal_dist.config import ExperimentConfig, with_overrides

    mod = _module()
    for name, over in mod.METHODS.items():
        cfg = with_overrides(ExperimentConfig(), over)  # raises on an unknown key or bad value
        assert cfg.to_dict() is not None, name
