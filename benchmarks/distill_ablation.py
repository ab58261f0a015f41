"""KD-Loss judged where it can win: one student with L2, L1, KD-Loss (code) and KD-Loss (paper).

    python benchmarks/distill_ablation.py [--teacher-steps 600] [--student-steps 3000]
                                          [--seeds 3] [--schedule constant] [--parallel 2]
                                          [--work DIR] [--results-name distill_ablation]

One pair of teachers (Tough on hard landmarks, Tolerant on ASM soft landmarks; ResNet-style
heatmap detectors, 96 px) is trained once on the default synthetic data (800 faces), long enough
to be clearly better than any student; then the students (MobileNetV2 regressor, width 0.5)
differ only in their loss, each with ``--seeds`` seeds: L2, L1, KD-Loss (code), KD-Loss (paper),
and each KD-Loss after plain L2 for the first third of the steps (``--variants`` picks). Seed k
sets both the student's init and the batch order / augmentation (``experiment.train.seed``), and
the losses of one seed share both, so the differences to plain L2 are paired by seed: mean and
95 % t interval. Everything is scored on the held-out synthetic test images and test videos (NME
inter-ocular, AUC@0.08, FR@0.08), with parameter counts and per-face latency in ONNX Runtime on
this CPU (batch 1, 1 thread, median of 100 runs; uint8 NHWC crop -> normalised landmarks, the
exported program of tsal_dist.export, written with torch.onnx.export(dynamo=False) here).

Resumable: every student is a run folder under ``--work`` (default /tmp/tsal_distill_ablation);
a finished one is re-scored from its last checkpoint, an unfinished one continues, and the tables
are rewritten after every finished student. ``--quick`` checks the pipeline with tiny data and
writes only under ``--work``.

Writes benchmarks/results/distill_ablation.{json,md,png} (``--results-name`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import save_figure, write_report, write_text  # noqa: E402
from _stats import format_delta as _delta, paired, spearman  # noqa: E402

from tsal_dist.export import CropToLandmarks, write_onnx  # noqa: E402
from tsal_dist.distill import DistillConfig, load_distill_config, run_distill  # noqa: E402
from tsal_dist.models import MobileNetV2Regressor, count_parameters  # noqa: E402

VARIANTS = {  # name -> overrides of the student's loss
    "L2": {"kd.loss": "l2"},
    "L1": {"kd.loss": "l1"},
    "KD-Loss (code)": {"kd.loss": "kd", "kd.variant": "code"},
    "KD-Loss (paper)": {"kd.loss": "kd", "kd.variant": "paper"},
    # the diagnosis' remedy (KD-Loss students leave the mean shape late): plain L2 for the first
    # third of the steps, then KD-Loss; same total steps, schedule and batches
    "KD-Loss (code) after L2": {"kd.loss": "kd", "kd.variant": "code",
                                "l2_warmup_fraction": 1 / 3},
    "KD-Loss (paper) after L2": {"kd.loss": "kd", "kd.variant": "paper",
                                 "l2_warmup_fraction": 1 / 3},
    # the switch's shock (KD-Loss's gradient is ~100x L2's): KD-Loss scaled to L2's gradient norm
    # at the switch (kd.switch: matched)
    "KD-Loss (code) after L2, matched": {"kd.loss": "kd", "kd.variant": "code",
                                         "kd.switch": "matched", "l2_warmup_fraction": 1 / 3},
    "KD-Loss (paper) after L2, matched": {"kd.loss": "kd", "kd.variant": "paper",
                                          "kd.switch": "matched", "l2_warmup_fraction": 1 / 3},
    # a later switch: every L2 student has left the mean shape by half of the steps
    "KD-Loss (paper) after L2, half": {"kd.loss": "kd", "kd.variant": "paper",
                                       "l2_warmup_fraction": 1 / 2},
    # the switch without KD-Loss: plain L2 throughout, multiplied at the switch by 35 (the median
    # ratio of KD-Loss (paper)'s gradient norm to L2's there, measured by the matched variant):
    # is the gain of "after L2" KD-Loss's, or the jump's?
    "L2, x35 at the switch": {"kd.loss": "l2", "kd.jump_factor": 35.0,
                              "l2_warmup_fraction": 1 / 3},
    # the matched switch (no large steps after it) ends worse: do larger steps throughout the
    # KD-Loss phase gain more? (the schedule's rate x3 from the switch on)
    "KD-Loss (paper) after L2, lr x3": {"kd.loss": "kd", "kd.variant": "paper",
                                        "kd.switch_lr_factor": 3.0, "l2_warmup_fraction": 1 / 3},
    # an earlier switch (step 500, before most L2 students have left the mean shape)
    "KD-Loss (paper) after L2, early": {"kd.loss": "kd", "kd.variant": "paper",
                                        "l2_warmup_fraction": 1 / 6},
    # the jump's cause: Adam's second moment, tuned to L2's gradient, lags KD-Loss's (~100x) for
    # ~1000 steps; cleared at the switch (kd.switch: reset), Adam restarts at KD-Loss's scale
    "KD-Loss (paper) after L2, Adam reset": {"kd.loss": "kd", "kd.variant": "paper",
                                             "kd.switch": "reset", "l2_warmup_fraction": 1 / 3},
}
BASELINE = "L2"
# variants judged against another variant than L2 (paired by seed): the switch's alternatives
# against the switch they change
AGAINST = {"KD-Loss (code) after L2, matched": "KD-Loss (code) after L2",
           "KD-Loss (paper) after L2, matched": "KD-Loss (paper) after L2",
           "KD-Loss (paper) after L2, half": "KD-Loss (paper) after L2",
           "KD-Loss (paper) after L2, lr x3": "KD-Loss (paper) after L2",
           "KD-Loss (paper) after L2, early": "KD-Loss (paper) after L2",
           "KD-Loss (paper) after L2, Adam reset": "KD-Loss (paper) after L2"}
ESCAPE_PX = 9.0  # running training error (px at 96) below which a student has left the mean shape
QUICK = {"experiment.data.synthetic.images": 48, "experiment.data.synthetic.test_images": 12,
         "experiment.data.synthetic.videos": 1, "experiment.data.synthetic.test_videos": 1,
         "experiment.data.synthetic.frames": 8}
_TEACHER_CACHE: dict = {}  # per worker process: teachers' predictions on each seed's batches


def onnx_latency_ms(model: torch.nn.Module, size: int, runs: int = 100) -> float:
    """Median per-face latency (ms) of the exported crop->landmarks program (exported as
    ``python -m tsal_dist.export`` does), ONNX Runtime CPU, 1 thread, batch 1."""
    import onnxruntime as ort

    module = CropToLandmarks(model.eval()).eval()
    x = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        write_onnx(module, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {"crops": x.numpy()}
        for _ in range(10):
            sess.run(None, feed)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def _row(summary: dict[str, Any]) -> dict[str, float]:
    return {"nme_io": summary["nme_inter_ocular"], "auc@0.08": summary["auc@0.08"],
            "fr@0.08": summary["fr@0.08"], "count": summary["count"]}


def _flat(cfg: DistillConfig) -> dict[str, Any]:
    from tsal_dist.config import flatten

    return flatten(cfg.to_dict())


def base_config(teacher_steps: int, student_steps: int, quick: bool,
                schedule: str = "constant") -> DistillConfig:
    """The students' shared config; ``schedule`` is the students' learning-rate schedule (KD's
    own optimizer has none: ``constant``); the teachers keep their constant rate either way."""
    return load_distill_config(None, {"teachers.steps": teacher_steps,
                                      "experiment.optim.steps": student_steps,
                                      "experiment.optim.schedule": schedule,
                                      "experiment.run.export": False,
                                      "experiment.run.checkpoint_every": max(1, student_steps // 4),
                                      "experiment.run.log_every": 50,
                                      **(QUICK if quick else {})})


def warmup_steps(variant: str, student_steps: int) -> int | None:
    """The steps of plain L2 before KD-Loss in ``variant``, or before the jump of the L2 control
    (None: it has no switch)."""
    frac = VARIANTS.get(variant, {}).get("l2_warmup_fraction")
    return None if frac is None else round(frac * student_steps)


def job_config(base: DistillConfig, variant: str, seed: int) -> DistillConfig:
    """``variant``'s loss; seed k moves the student init and the batch order together."""
    s0 = base.experiment.train.seed
    over = {k: v for k, v in VARIANTS[variant].items() if k != "l2_warmup_fraction"}
    w = warmup_steps(variant, base.experiment.optim.steps)
    if w is not None:  # KD-Loss's switch, or for plain L2 the step of its jump (the control)
        over["kd.l2_warmup_steps" if over["kd.loss"] == "kd" else "kd.jump_step"] = w
    return load_distill_config(None, {**_flat(base), **over,
                                      "experiment.train.seed": s0 + seed,
                                      "student.seed": s0 + seed})


def run_name(variant: str, seed: int) -> str:
    return ("student_" + variant.replace(" ", "_").replace("(", "").replace(")", "")
            + f"_s{seed}")


def train_teachers(base: DistillConfig, work: Path) -> dict[str, Any]:
    """The shared teachers (and the ASM the Tolerant one learns from), once; scored on the tests."""
    first = work / "teachers_run"
    cfg = load_distill_config(None, {**_flat(base), "experiment.optim.steps": 1,
                                     "kd.loss": "l2"})
    summary = run_distill(cfg, run_dir=first, teacher_dir=work / "teachers", progress=True,
                          export=False)
    return {label: {ln: _row(s) for ln, s in summary["eval"][which].items()}
            for which, label in (("tough", "Tough teacher"), ("tolerant", "Tolerant teacher"))}


def measure_latency(base: DistillConfig, work: Path, params: dict[str, int]) -> dict[str, float]:
    """Per-face ONNX Runtime latency of both teachers and the student (fills ``params``)."""
    from tsal_dist.loop.checkpoint import latest_checkpoint, load_checkpoint
    from tsal_dist.models import build_model

    e = base.experiment
    size = e.model.input_size
    models: dict[str, torch.nn.Module] = {}
    for role, label in (("tough", "Tough teacher"), ("tolerant", "Tolerant teacher")):
        m = build_model(e.model, e.data.num_points)
        m.load_state_dict(load_checkpoint(latest_checkpoint(work / "teachers" / role))["teacher"])
        models[label] = m
    models["student"] = MobileNetV2Regressor(e.data.num_points, size, width=base.student_width())
    latency = {}
    for label, m in models.items():
        params[label] = count_parameters(m)
        latency[label] = onnx_latency_ms(m, size)
    return latency


def _kd_scale(run_dir: Path) -> dict[str, float]:
    """``{"kd_scale": c}``: the KD-Loss scale a ``kd.switch: matched`` student logged (its last
    logged value; the scale is set once); ``{}`` for every other student."""
    metrics = run_dir / "metrics.jsonl"
    scales = [r["student/kd_scale"] for r in map(json.loads, metrics.read_text().splitlines())
              if "student/kd_scale" in r] if metrics.is_file() else []
    return {"kd_scale": scales[-1]} if scales else {}


def reuse_recorded(path: Path, base: DistillConfig, teachers: dict[str, Any], work: Path,
                   variants: list[str], seeds: list[int]) -> int:
    """Write the runs of a recorded results json whose config is the one this command would run
    as finished run folders under ``work`` (so they are reused, not re-run); returns how many.

    A recorded run is only as good as its teachers: unless the teachers trained here score
    exactly as recorded (same data, code and arithmetic), nothing is reused (SystemExit)."""
    try:
        doc = json.loads(path.read_text())
        recorded, runs = doc["teachers"], doc["runs"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{path}: not a results json of this benchmark ({e})") from None
    if recorded != teachers:
        raise SystemExit(f"{path}: its teachers scored {_teacher_nmes(recorded)}, the ones "
                         f"trained here {_teacher_nmes(teachers)}: its runs are not this "
                         f"machine's and are not reused")
    n = 0
    for r in runs:
        v, s = r.get("variant"), r.get("seed")
        if v not in variants or s not in seeds or r.get("config_hash") != \
                job_config(base, v, s).hash():
            continue
        done = work / run_name(v, s) / "result.json"
        if not done.is_file():
            done.parent.mkdir(parents=True, exist_ok=True)
            write_text(done, json.dumps({k: x for k, x in r.items() if k != "reused"}))
        n += 1
    return n


def _teacher_nmes(t: dict[str, Any]) -> str:
    return "; ".join(f"{label} " + ", ".join(f"{100 * x['nme_io']:.4f} %" for x in per.values())
                     for label, per in t.items())


def run_student(base_flat: dict[str, Any], variant: str, seed: int,
                work: str) -> dict[str, Any]:
    """One student (resumes its run folder); its scores on every test list."""
    torch.set_num_threads(1)
    base = load_distill_config(None, base_flat)
    cfg = job_config(base, variant, seed)
    run_dir = Path(work) / run_name(variant, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "result.json"
    if done.is_file():
        got = json.loads(done.read_text())
        if got.get("config_hash") == cfg.hash():  # finished under this very config: reuse
            return {**got, **_kd_scale(run_dir), "reused": True}
    if not (run_dir / "asm.npz").is_file():  # the teachers' ASM, never refitted
        shutil.copy(Path(work) / "teachers_run" / "asm.npz", run_dir / "asm.npz")
    t0 = time.time()
    summary = run_distill(cfg, run_dir=run_dir, teacher_dir=Path(work) / "teachers",
                          progress=False, export=False, teacher_cache=_TEACHER_CACHE)
    curve = []
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        r = json.loads(line)
        if "student/px_error" in r and "step" in r:
            curve.append((r["step"], r["student/px_error"]))
    got = {"variant": variant, "seed": seed, "seconds": time.time() - t0,
           "eval": {ln: _row(s) for ln, s in summary["eval"]["student"].items()},
           "train_px_error_curve": curve, "config_hash": cfg.hash(), **_kd_scale(run_dir)}
    write_text(done, json.dumps(got))
    return got


def summarise(runs: list[dict[str, Any]], lists: list[str]) -> list[dict[str, Any]]:
    """Per variant and test list: mean ± sd over seeds and the seed-paired Δ vs plain L2."""
    out = []
    for v in VARIANTS:
        for ln in lists:
            vals = {r["seed"]: r["eval"][ln]["nme_io"] for r in runs
                    if r["variant"] == v and ln in r["eval"]}
            if not vals:
                continue
            base = {r["seed"]: r["eval"][ln]["nme_io"] for r in runs
                    if r["variant"] == BASELINE and ln in r["eval"]}
            row: dict[str, Any] = {
                "variant": v, "test_set": ln, "seeds": sorted(vals),
                "nme_mean": statistics.fmean(vals.values()),
                "nme_sd": statistics.stdev(vals.values()) if len(vals) > 1 else 0.0,
                "fr@0.08_mean": statistics.fmean(r["eval"][ln]["fr@0.08"] for r in runs
                                                 if r["variant"] == v and ln in r["eval"]),
                "per_seed": {str(s): vals[s] for s in sorted(vals)}}
            if v != BASELINE:
                d = paired(vals, base)
                if d is not None:
                    row["delta_vs_l2"] = d
                    row["rel_vs_l2"] = d["mean"] / statistics.fmean(base[s] for s in d["seeds"])
            if v in AGAINST:
                other = {r["seed"]: r["eval"][ln]["nme_io"] for r in runs
                         if r["variant"] == AGAINST[v] and ln in r["eval"]}
                d = paired(vals, other)
                if d is not None:
                    row["against"] = {"variant": AGAINST[v], "delta": d}
            out.append(row)
    return out


def escape_step(curve: list[tuple[int, float]], px: float = ESCAPE_PX) -> int | None:
    """First logged step whose running training error is below ``px``: the regressor leaving
    the mean shape (None: never)."""
    return next((int(step) for step, err in curve if err < px), None)


def escape_table(runs: list[dict[str, Any]], test_set: str) -> dict[str, Any]:
    """Per variant, the escape step of each seed; over every student that escaped, Spearman's
    rank correlation of the escape step with the final NME on ``test_set``."""
    per: dict[str, dict[int, int | None]] = {}
    pairs = []
    for r in runs:
        e = escape_step([tuple(c) for c in r.get("train_px_error_curve", [])])
        per.setdefault(r["variant"], {})[r["seed"]] = e
        if e is not None and test_set in r["eval"]:
            pairs.append((e, r["eval"][test_set]["nme_io"]))
    rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    return {"px": ESCAPE_PX, "test_set": test_set, "per_variant": per, "spearman": rho,
            "students": len(pairs)}


def switch_shock(runs: list[dict[str, Any]], student_steps: int,
                 window: int = 150) -> dict[str, dict[int, tuple[float, float]]]:
    """For the variants with an L2 warm-up: per seed, the running training error (px) logged at
    the switch to KD-Loss and the largest one logged in the ``window`` steps after it."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for r in runs:
        w = warmup_steps(r["variant"], student_steps)
        if w is None:
            continue
        curve = {int(a): float(b) for a, b in r.get("train_px_error_curve", [])}
        after = [e for st_, e in curve.items() if w < st_ <= w + window]
        if w in curve and after:
            out.setdefault(r["variant"], {})[r["seed"]] = (curve[w], max(after))
    return out


def _compared(d: dict[str, Any]) -> str:
    """How a paired difference (variant − reference) reads: better, worse or no different."""
    sig = d.get("significant")
    return ("significantly better than" if sig and d["mean"] < 0 else
            "significantly worse than" if sig else "not significantly different from")


def verdict(summary: list[dict[str, Any]], lists: list[str]) -> str:
    """Does KD-Loss beat L2 by the 10 % the issue asks, and is any difference significant?"""
    parts = []
    for ln in lists:
        rows = {r["variant"]: r for r in summary if r["test_set"] == ln}
        if BASELINE not in rows:
            continue
        txt = [f"{ln}: L2 {100 * rows[BASELINE]['nme_mean']:.2f} % ({len(rows[BASELINE]['seeds'])}"
               " seeds)"]
        for v in VARIANTS:
            r = rows.get(v)
            if not r or "delta_vs_l2" not in r:
                continue
            d = r["delta_vs_l2"]
            txt.append(f"{v} {100 * r['nme_mean']:.2f} % is {_compared(d)} L2 "
                       f"(Δ {_delta(d)} pp, {100 * r['rel_vs_l2']:+.1f} %)")
        for v, r in rows.items():
            if "against" in r:
                d = r["against"]["delta"]
                txt.append(f"{v} is {_compared(d)} {r['against']['variant']} "
                           f"(Δ {_delta(d)} pp)")
        parts.append("; ".join(txt))
    return ". ".join(parts) + "."


def markdown(doc: dict[str, Any]) -> str:
    a, lists, summary = doc["args"], doc["lists"], doc["summary"]
    lines = ["# KD-Loss ablation (synthetic data, CPU): measured tables", "",
             f"`{doc['command']}` on {doc['machine']['cpu']}, {doc['machine']['cores']} cores, no "
             f"GPU, {a['parallel']} student{'s' * (a['parallel'] != 1)} at a time in that command "
             "(NME does not depend on it), one thread each. Teachers "
             f"{a['teacher_steps']} steps; students {a['student_steps']} steps of batch "
             f"{doc['config']['experiment.optim.batch_size']} (96 px crops), Adam at "
             f"{doc['config']['experiment.optim.lr']:g} with a "
             f"{doc['config']['experiment.optim.schedule']} schedule after "
             f"{doc['config']['experiment.optim.warmup_steps']} warm-up steps. Held-out synthetic "
             "test images and test videos; NME inter-ocular (%). Δ = variant − L2, paired by "
             "seed (same init and batches), mean [95 % t interval], * where it excludes 0; "
             "negative is better.", "",
             "| model | params | latency (ms) | " + " | ".join(
                 f"{ln} NME % | FR@0.08" for ln in lists) + " |",
             "|---|---:|---:|" + "---:|---:|" * len(lists)]
    for label, r in doc["teachers"].items():
        cells = [f"{100 * r[ln]['nme_io']:.2f} | {r[ln]['fr@0.08']:.3f}" for ln in lists]
        lines.append(f"| {label} | {doc['params'].get(label, 0):,} | "
                     f"{doc['latency_ms'].get(label, float('nan')):.2f} | " + " | ".join(cells)
                     + " |")
    lines += ["", "| student loss | test set | seeds | per seed NME % | NME % mean ± sd | "
              "Δ vs L2, pp [95 % CI] | rel. | FR@0.08 |", "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        per = ", ".join(f"{100 * x:.2f}" for x in r["per_seed"].values())
        rel = f"{100 * r['rel_vs_l2']:+.1f} %" if "rel_vs_l2" in r else ""
        lines.append(f"| {r['variant']} | {r['test_set']} | {len(r['seeds'])} | {per} | "
                     f"{100 * r['nme_mean']:.2f} ± {100 * r['nme_sd']:.2f} | "
                     f"{_delta(r.get('delta_vs_l2'))} | {rel} | {r['fr@0.08_mean']:.3f} |")
    lat = doc["latency_ms"]
    if "student" in lat and "Tough teacher" in lat:
        lines += ["", f"Student {doc['params'].get('student', 0):,} parameters, "
                  f"{lat['student']:.2f} ms per face against the Tough teacher's "
                  f"{lat['Tough teacher']:.2f} ms ({lat['Tough teacher'] / lat['student']:.1f}x; "
                  f"measured at a 1-minute load average of "
                  f"{doc.get('latency_load_avg_1min', float('nan')):.1f} on "
                  f"{doc['machine']['cores']} cores)."]
    esc = doc.get("escape")
    if esc and esc["per_variant"]:
        lines += ["", f"Leaving the mean shape: the first logged step whose running training "
                  f"error is below {esc['px']:g} px, per seed (- = never):", "",
                  "| student loss | " + " | ".join(f"seed {s}" for s in doc["args"]["seed_list"])
                  + " |", "|---|" + "---:|" * len(doc["args"]["seed_list"])]
        for v, per in sorted(esc["per_variant"].items(), key=lambda kv: list(VARIANTS).index(
                kv[0]) if kv[0] in VARIANTS else 99):
            lines.append(f"| {v} | " + " | ".join(
                "" if s not in per else ("-" if per[s] is None else str(per[s]))
                for s in doc["args"]["seed_list"]) + " |")
        if esc["spearman"] is not None:
            lines += ["", f"Over all {esc['students']} students, Spearman's rank correlation of "
                      f"that step with the final {esc['test_set']} NME: "
                      f"ρ = {esc['spearman']:+.2f}."]
    against = [r for r in summary if "against" in r]
    if against:
        lines += ["", "Against the switch they change (Δ = variant − that variant, paired by seed, "
                  "pp [95 % CI], * where it excludes 0):", "",
                  "| variant | against | test set | Δ pp [95 % CI] |", "|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['against']['variant']} | {r['test_set']} | "
                  f"{_delta(r['against']['delta'])} |" for r in against]
    shock = switch_shock(doc["runs"], doc["args"]["student_steps"])
    for v, per in shock.items():
        w = warmup_steps(v, doc["args"]["student_steps"])
        lines += ["", f"{v}: running training error at the switch (step {w}) → the largest in "
                  f"the 150 steps after it: " + ", ".join(
                      f"seed {s_} {a:.1f} → {b:.1f} px" for s_, (a, b) in sorted(per.items()))
                  + "."]
        scales = {r["seed"]: r["kd_scale"] for r in doc["runs"]
                  if r["variant"] == v and "kd_scale" in r}
        if scales:
            lines[-1] += (" KD-Loss scaled by ||dL2/dpred|| / ||dKD/dpred|| at the switch: "
                          + ", ".join(f"seed {s_} {c:.3f}" for s_, c in sorted(scales.items()))
                          + ".")
    lines += ["", f"**Verdict (computed):** {doc['verdict']}", ""]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lists, summary = doc["lists"], doc["summary"]
    fig, axes = plt.subplots(1, len(lists) + 1, figsize=(6.5 * (len(lists) + 1), 5),
                             squeeze=False)
    for ax, ln in zip(axes[0], lists):
        rows = [r for r in summary if r["test_set"] == ln]
        for i, r in enumerate(rows):
            ys = [100 * x for x in r["per_seed"].values()]
            ax.scatter([i] * len(ys), ys, s=18, color="C0", alpha=0.6)
            ax.errorbar([i], [100 * r["nme_mean"]], yerr=[100 * r["nme_sd"]], fmt="o",
                        color="C3", capsize=4)
        for label, r in doc["teachers"].items():
            ax.axhline(100 * r[ln]["nme_io"], ls="--", lw=0.8,
                       color="k" if label.startswith("Tough") else "gray", label=label)
        ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=35,
                      ha="right", fontsize=7)
        ax.set_ylabel("NME inter-ocular (%)")
        ax.set_title(ln, fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    for i, v in enumerate(VARIANTS):
        curves = [r for r in doc["runs"] if r["variant"] == v and r["train_px_error_curve"]]
        for n, r in enumerate(curves):  # one legend entry a variant, whichever seed came first
            xs, ys = zip(*r["train_px_error_curve"])
            ax.plot(xs, ys, color=f"C{i}", lw=0.8, alpha=0.7, label=v if n == 0 else None)
    ax.set_xlabel("student step")
    ax.set_ylabel("train error (px, running mean)")
    ax.set_yscale("log")
    ax.set_title("student training curves (all seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_outputs(doc: dict[str, Any], out: Path) -> None:
    doc["summary"] = summarise(doc["runs"], doc["lists"])
    doc["verdict"] = verdict(doc["summary"], doc["lists"])
    doc["escape"] = escape_table(doc["runs"], doc["lists"][0])
    out.mkdir(parents=True, exist_ok=True)
    stem = doc["args"].get("results_name", "distill_ablation")
    write_report(out, stem, doc, markdown(doc), default=float)
    plot(doc, out / f"{stem}.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--student-steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per loss (init + batch order)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--schedule", default="constant", choices=["constant", "cosine", "multistep"],
                    help="the students' learning-rate schedule (KD's optimizer: constant)")
    ap.add_argument("--results-name", default="distill_ablation",
                    help="stem of the files written under benchmarks/results")
    ap.add_argument("--parallel", type=int, default=2, help="students at a time (1 thread each)")
    ap.add_argument("--work", default="/tmp/tsal_distill_ablation",
                    help="run folders (resumable)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny data: checks the pipeline; results go under --work/results")
    ap.add_argument("--reuse-from", metavar="JSON",
                    help="a recorded results json of this benchmark: its runs whose config "
                         "matches are taken as done (written into --work) instead of re-run; "
                         "refused unless the teachers trained here score exactly as recorded")
    ap.add_argument("--no-latency", action="store_true",
                    help="leave the latency column for a later --latency run on a quiet machine")
    ap.add_argument("--latency", action="store_true",
                    help="only re-measure the latency column (on a quiet machine) and rewrite "
                         "the tables from the json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    if args.latency:
        out = work / "results" if args.quick else ROOT / "benchmarks" / "results"
        doc = json.loads((out / f"{args.results_name}.json").read_text())
        base = load_distill_config(None, doc["config"])
        doc["latency_ms"] = measure_latency(base, Path(doc["args"]["work"]), doc["params"])
        doc["latency_load_avg_1min"] = os.getloadavg()[0]
        write_outputs(doc, out)
        print(markdown(doc))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    out = work / "results" if args.quick else ROOT / "benchmarks" / "results"
    t_start = time.time()
    base = base_config(args.teacher_steps, args.student_steps, args.quick, args.schedule)
    torch.set_num_threads(max(1, args.parallel))  # the teachers alone: every core the pool gets
    teachers = train_teachers(base, work)
    torch.set_num_threads(1)  # latency is measured on one thread
    lists = list(next(iter(teachers.values())))
    seeds = list(range(args.seeds))
    if args.reuse_from:
        n = reuse_recorded(Path(args.reuse_from), base, teachers, work, args.variants, seeds)
        print(f"reusing {n} recorded run(s) from {args.reuse_from}", flush=True)
    doc: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/distill_ablation.py",
                               *(argv or sys.argv[1:])]),
        "args": {**vars(args), "seed_list": seeds}, "config": _flat(base), "lists": lists,
        "teachers": teachers, "runs": [], "params": {}, "latency_ms": {},
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__}}
    if not args.no_latency:
        doc["latency_ms"] = measure_latency(base, work, doc["params"])
        doc["latency_load_avg_1min"] = os.getloadavg()[0]
    # One single-process pool per slot, each seed's KD students on one of them, first: the
    # teachers' predictions on a seed's batches (most of a KD student's cost) are made once, by
    # the first KD student, and reused by the second from the worker's cache.
    order = sorted(args.variants, key=lambda v: (VARIANTS[v].get("kd.loss") != "kd",
                                                 list(VARIANTS).index(v)))
    flat = _flat(base)
    # spawned, not forked: this process's loader forkserver (the teachers' training) belongs to
    # it, and a forked worker using it would wait on children that are not its own (ECHILD)
    pools = [ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
             for _ in range(max(1, args.parallel))]
    # a seed's KD students share a pool (the cache); everything else goes where the least work
    # is queued (relative costs: a seed's first KD student 3, any other student 1, a finished
    # one 0: it is only re-read)
    def todo(v: str, s: int) -> bool:
        done = work / run_name(v, s) / "result.json"
        return not (done.is_file() and json.loads(done.read_text()).get("config_hash")
                    == job_config(base, v, s).hash())

    load = [0.0] * len(pools)
    jobs: list[tuple[int, str, int]] = []
    kd = [v for v in order if VARIANTS[v].get("kd.loss") == "kd"]
    for s in seeds:
        left = [v for v in kd if todo(v, s)]
        if kd:
            p = min(range(len(pools)), key=load.__getitem__)
            jobs += [(p, v, s) for v in kd]
            load[p] += (3 + len(left) - 1) if left else 0
    for s in seeds:
        for v in order:
            if VARIANTS[v].get("kd.loss") != "kd":
                p = min(range(len(pools)), key=load.__getitem__)
                jobs.append((p, v, s))
                load[p] += 1 if todo(v, s) else 0
    try:
        futs = {pools[p].submit(run_student, flat, v, s, str(work)): (v, s) for p, v, s in jobs}
        for n, f in enumerate(as_completed(futs), 1):
            j = futs[f]
            r = f.result()
            print(f"[{n}/{len(futs)}] {run_name(*j)}: "
                  + ", ".join(f"{ln} {100 * v['nme_io']:.2f} %" for ln, v in r["eval"].items())
                  + " (" + ("reused" if r.get("reused") else f"{r['seconds']:.0f} s") + ")",
                  flush=True)
            doc["runs"].append(r)
            doc["seconds"] = time.time() - t_start
            write_outputs(doc, out)
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)
    print(doc["verdict"])
    print(f"total {time.time() - t_start:.0f} s; wrote {out}/{args.results_name}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
