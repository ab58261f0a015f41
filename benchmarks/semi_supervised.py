"""The method's claim, measured: does TSAL's use of unlabeled video help on the same budget?

Runs, on the synthetic dataset and the same step budget, each in one process (no Ray, so runs can
go two at a time on a 2-core machine):

  supervised   L labeled images only (clips_per_batch = 0); teacher still averaged from the student
  tsal-queue   the same L labeled images + unlabeled synthetic videos, queue averaging (default)
  tsal-ema     ... EMA averaging
  tsal-mutual  ... the original code's mutual averaging

and evaluates teacher and student of each on the held-out synthetic test images and the held-out
synthetic test videos (never used in training). Writes benchmarks/results/semi_supervised.json
(one row per method/seed/model/eval set, with nme_inter_ocular, plus mean ± sd over seeds),
semi_supervised_table.md and a plot. The verdict and the diagnosis are in semi_supervised.md.

    python benchmarks/semi_supervised.py [--labeled 100] [--steps 1500] [--seeds 0 1 2] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import save_figure, write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

METHODS = {
    "supervised": {"optim.clips_per_batch": 0},
    # the ceiling: every labeled image of the training list (~15x L), same steps. No use of
    # unlabeled data can beat labels on the same images, so this bounds what TSAL could gain.
    "supervised-all-labels": {"optim.clips_per_batch": 0, "data.labeled_limit": 0},
    "tsal-queue": {"teacher.mode": "queue"},
    "tsal-ema": {"teacher.mode": "ema"},
    "tsal-mutual": {"teacher.mode": "mutual"},
    # diagnostic: the heatmap source alone (no centroid fusion, no structure term)
    "tsal-queue-hm-only": {"teacher.mode": "queue", "loss.fusion_mu": 1.0,
                           "loss.structure_weight": 0.0},
    # the diagnosis's fix: frames t and t+1 shown as different views (per-frame jitter) and the
    # consistency taken in OUTPUT space (frame t's heatmaps carried through flow + view change)
    "tsal-queue-equivariant": {"teacher.mode": "queue", "loss.fusion_mu": 1.0,
                               "loss.structure_weight": 0.0, "loss.consistency_space": "output",
                               "data.clip_jitter_rotate_deg": 10.0,
                               "data.clip_jitter_scale": 0.1,
                               "data.clip_jitter_shift_frac": 0.05},
}
# diagnostics with the student's consistency in the heatmap loss's units (x K = 68)
METHODS["tsal-queue-hm-only-s68"] = {**METHODS["tsal-queue-hm-only"],
                                     "loss.student_unsup_weight": 68.0}
# mean-teacher reading: the student matches the TEACHER's heatmaps on the other view (heatmap MSE)
METHODS["tsal-queue-equivariant-mt"] = {**METHODS["tsal-queue-equivariant"],
                                        "loss.pseudo_source": "teacher",
                                        "loss.student_consistency": "heatmap"}
# confident hard pseudo-labels from the teacher's outputs on the other view
METHODS["tsal-queue-equivariant-pl"] = {**METHODS["tsal-queue-equivariant"],
                                        "loss.pseudo_source": "teacher",
                                        "loss.student_consistency": "pseudo_label"}
METHODS["tsal-queue-equivariant-s68"] = {**METHODS["tsal-queue-equivariant"],
                                         "loss.student_unsup_weight": 68.0}


def base_overrides(args: argparse.Namespace) -> dict:
    return {
        "data.labeled_limit": args.labeled,
        "optim.steps": args.steps,
        "optim.batch_size": args.batch,
        "optim.clips_per_batch": args.clips,
        "optim.warmup_steps": min(100, args.steps // 10),
        "run.checkpoint_every": args.steps,
        "run.eval_every": 0,
        "run.log_every": 50,
        "run.export": False,
        **dict(kv.split("=", 1) for kv in args.set),
    }


def run_one(method: str, seed: int, overrides: dict, out: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.loop.loop import run

    name = run_name(method, seed)
    cfg = with_overrides(ExperimentConfig(), {**overrides, **METHODS[method], "train.seed": seed,
                                              "run.output": out, "run.name": name})
    import shutil

    shutil.rmtree(Path(out) / name, ignore_errors=True)  # a fresh run, never a resume
    t0 = time.perf_counter()
    summary = run(cfg, run_dir=Path(out) / name, progress=False, resume=None)
    return {"method": method, "seed": seed, "seconds": time.perf_counter() - t0,
            "eval": summary.get("eval"), "config": cfg.to_dict()}


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def reuse_one(method: str, seed: int, overrides: dict, out: str) -> dict | None:
    """A finished training of exactly this configuration in ``out`` (its final checkpoint),
    re-evaluated with the current code, or None. The config comparison makes a stale folder from
    other settings count as missing; evaluation is redone so that every row of a table comes from
    the same evaluation code, whenever its training ran."""
    import torch

    torch.set_num_threads(1)
    from tsal_dist.codec import HeatmapCodec
    from tsal_dist.config import ExperimentConfig, load_config, with_overrides
    from tsal_dist.loop.checkpoint import latest_checkpoint, load_checkpoint
    from tsal_dist.data.lists import resolve_data
    from tsal_dist.loop.evaluation import finish_run
    from tsal_dist.models import build_model

    name = run_name(method, seed)
    run_dir = Path(out) / name
    config = run_dir / "config.yaml"
    ckpt_path = latest_checkpoint(run_dir / "checkpoints") if config.is_file() else None
    if ckpt_path is None:
        return None
    want = with_overrides(ExperimentConfig(), {**overrides, **METHODS[method], "train.seed": seed,
                                               "run.output": out, "run.name": name})
    try:
        have = load_config(config)
    except Exception:  # unreadable or from another version: run it again
        return None
    # the folder may have been renamed: compare everything but where the run was written
    same_place = {"run.output": want.run.output, "run.name": want.run.name}
    if with_overrides(have, same_place).hash() != want.hash():
        return None
    ckpt = load_checkpoint(ckpt_path)
    if int(ckpt.get("step", -1)) != want.optim.steps:
        return None  # an unfinished run: train it again from scratch
    models = {}
    for which in ("teacher", "student"):
        models[which] = build_model(want.model, want.data.num_points)
        models[which].load_state_dict(ckpt[which])
    codec = HeatmapCodec.for_model(want.model, stride=models["teacher"].stride,
                                   num_points=want.data.num_points)
    result = finish_run(want, run_dir=run_dir, teacher=models["teacher"],
                        student=models["student"], hm_codec=codec, lists=resolve_data(want))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    times = [r["time"] for r in rows if "time" in r]
    return {"method": method, "seed": seed, "seconds": times[-1] - times[0] if times else 0.0,
            "eval": result.get("eval"), "config": want.to_dict(), "reused": True}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labeled", type=int, default=100, help="L labeled training images")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--clips", type=int, default=2, help="unlabeled clips per step (TSAL runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds; the table reports mean and sd over them")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", default="/tmp/tsal_semi_supervised")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished trainings in --out whose config matches (re-evaluated "
                        "with the current code); train only the rest")
    p.add_argument("--set", action="append", default=[], help="extra dotted overrides")
    p.add_argument("--tables-only", action="store_true",
                   help="rebuild the table and plot from results/semi_supervised.json; no runs")
    args = p.parse_args()
    if args.tables_only:
        doc = json.loads((RESULTS / "semi_supervised.json").read_text())
        write_outputs(doc["rows"], doc["meta"])
        return 0

    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.data.lists import resolve_data

    over = base_overrides(args)
    resolve_data(with_overrides(ExperimentConfig(), over))  # generate the data once, up front
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    runs: dict[tuple[str, int], dict] = {}
    if args.reuse:
        with ProcessPoolExecutor(max_workers=args.parallel) as ex:
            found = {j: ex.submit(reuse_one, j[0], j[1], over, args.out) for j in jobs}
            for j, f in found.items():
                got = f.result()
                if got is not None:
                    print(f"reusing {run_name(*j)} (re-evaluated)", flush=True)
                    runs[j] = got
    todo = [j for j in jobs if j not in runs]
    with ProcessPoolExecutor(max_workers=args.parallel) as ex:
        futs = {j: ex.submit(run_one, j[0], j[1], over, args.out) for j in todo}
        for j, f in futs.items():
            runs[j] = f.result()
            print(f"done {run_name(*j)} in {runs[j]['seconds']:.0f} s", flush=True)

    rows = []
    for (m, seed), r in sorted(runs.items(), key=lambda kv: (jobs.index(kv[0]))):
        for which, lists in (r["eval"] or {}).items():
            for name, s in lists.items():
                rows.append({"method": m, "seed": seed, "model": which, "eval_set": name,
                             "count": s["count"], "nme_inter_ocular": s["nme_inter_ocular"],
                             "nme_inter_pupil": s["nme_inter_pupil"], "auc@0.08": s["auc@0.08"],
                             "fr@0.08": s["fr@0.08"], "train_seconds": round(r["seconds"], 1)})
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, "
                       f"{platform.python_version()}",
            "labeled_images": args.labeled, "steps": args.steps, "batch": args.batch,
            "clips_per_step": args.clips, "seeds": args.seeds,
            "overrides": dict(kv.split("=", 1) for kv in args.set),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    write_outputs(rows, meta)
    return 0


def write_outputs(rows: list[dict], meta: dict) -> None:
    summary = aggregate(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "semi_supervised.json",
           json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
    write_text(RESULTS / "semi_supervised_table.md", markdown(summary, meta))
    plot(summary, RESULTS / "semi_supervised.png")
    print(markdown(summary, meta))


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample sd over seeds of each (method, model, eval set)."""
    import statistics

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["model"], r["eval_set"]), []).append(r)
    out = []
    for (m, model, es), rs in groups.items():
        row = {"method": m, "model": model, "eval_set": es, "count": rs[0]["count"],
               "seeds": [r["seed"] for r in rs]}
        for key in ("nme_inter_ocular", "nme_inter_pupil", "auc@0.08", "fr@0.08"):
            vals = [r[key] for r in rs]
            row[key] = statistics.fmean(vals)
            row[f"{key}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[f"{key}_per_seed"] = vals
        # paired by seed against supervised-only (same model, eval set and seed)
        base = {r["seed"]: r["nme_inter_ocular"] for r in groups.get(("supervised", model, es), [])}
        diffs = [r["nme_inter_ocular"] - base[r["seed"]] for r in rs if r["seed"] in base]
        if diffs and m != "supervised":
            row["delta_vs_supervised"] = statistics.fmean(diffs)
            row["delta_vs_supervised_sd"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            row["delta_vs_supervised_per_seed"] = diffs
        out.append(row)
    return out


def markdown(summary: list[dict], meta: dict) -> str:
    seeds = meta["seeds"]
    lines = ["# Semi-supervised ablation (synthetic faces): measured table", "",
             f"L = {meta['labeled_images']} labeled images, {meta['steps']} steps, batch "
             f"{meta['batch']} (+{meta['clips_per_step']} unlabeled clips for TSAL), seeds "
             f"{', '.join(map(str, seeds))}; {meta['machine']}. NME in % of the inter-ocular "
             "distance, mean ± sd over seeds (per-seed values in the JSON); held-out test images "
             "and test videos.", f"Command: `{meta['command']}`", "",
             "| method | model | eval set | n | NME io % | per seed | Δ vs supervised (paired) | "
             "NME ip % | AUC@0.08 | FR@0.08 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary:
        per = " / ".join(f"{100 * v:.2f}" for v in r["nme_inter_ocular_per_seed"])
        delta = (f"{100 * r['delta_vs_supervised']:+.2f} ± {100 * r['delta_vs_supervised_sd']:.2f}"
                 if "delta_vs_supervised" in r else "")
        lines.append(f"| {r['method']} | {r['model']} | {r['eval_set']} | {r['count']} | "
                     f"{100 * r['nme_inter_ocular']:.2f} ± {100 * r['nme_inter_ocular_sd']:.2f} | "
                     f"{per} | {delta} | {100 * r['nme_inter_pupil']:.2f} | "
                     f"{r['auc@0.08']:.3f} | {r['fr@0.08']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["eval_set"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.8), squeeze=False)
    for ax, es in zip(axes[0], sets):
        for j, model in enumerate(("teacher", "student")):
            got = [next((r for r in rows if r["method"] == m and r["model"] == model and
                         r["eval_set"] == es), None) for m in methods]
            vals = [100 * g["nme_inter_ocular"] if g else float("nan") for g in got]
            sds = [100 * g["nme_inter_ocular_sd"] if g else 0.0 for g in got]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
            ax.bar(xs, vals, width=0.38, yerr=sds, capsize=3, label=model)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        shown = [100 * r["nme_inter_ocular"] for r in rows if r["eval_set"] == es]
        ax.set_ylim(max(0.0, min(shown) - 2.0), max(shown) + 1.0)  # the differences, not 0..max
        ax.set_ylabel("NME (inter-ocular), %, mean ± sd over seeds")
        ax.set_title(es)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)



if __name__ == "__main__":
    sys.exit(main())
