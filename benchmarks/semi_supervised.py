"""The method's claim, measured: does TSAL's use of unlabeled video help on the same budget?

Runs, on the synthetic dataset and the same step budget, each in one process (no Ray, so runs can
go two at a time on a 2-core machine):

  supervised   L labeled images only (clips_per_batch = 0); teacher still averaged from the student
  tsal-queue   the same L labeled images + unlabeled synthetic videos, queue averaging (default)
  tsal-ema     ... EMA averaging
  tsal-mutual  ... the original code's mutual averaging

and evaluates teacher and student of each on the held-out synthetic test images and the held-out
synthetic test videos (never used in training). Writes benchmarks/results/semi_supervised.json
(one row per method/model/eval set, with nme_inter_ocular), a markdown table and a plot.

    python benchmarks/semi_supervised.py [--labeled 100] [--steps 1500] [--parallel 2]
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

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

METHODS = {
    "supervised": {"optim.clips_per_batch": 0},
    "tsal-queue": {"teacher.mode": "queue"},
    "tsal-ema": {"teacher.mode": "ema"},
    "tsal-mutual": {"teacher.mode": "mutual"},
    # diagnostic: the heatmap source alone (no centroid fusion, no structure term)
    "tsal-queue-hm-only": {"teacher.mode": "queue", "loss.fusion_mu": 1.0,
                           "loss.structure_weight": 0.0},
}


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
        "train.seed": args.seed,
        **dict(kv.split("=", 1) for kv in args.set),
    }


def run_one(method: str, overrides: dict, out: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.loop.loop import run

    cfg = with_overrides(ExperimentConfig(), {**overrides, **METHODS[method],
                                              "run.output": out, "run.name": method})
    import shutil

    shutil.rmtree(Path(out) / method, ignore_errors=True)  # a fresh run, never a resume
    t0 = time.perf_counter()
    summary = run(cfg, run_dir=Path(out) / method, progress=False, resume=None)
    return {"method": method, "seconds": time.perf_counter() - t0, "eval": summary.get("eval"),
            "config": cfg.to_dict()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labeled", type=int, default=100, help="L labeled training images")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--clips", type=int, default=2, help="unlabeled clips per step (TSAL runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", default="/tmp/tsal_semi_supervised")
    p.add_argument("--set", action="append", default=[], help="extra dotted overrides")
    args = p.parse_args()

    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.loop.loop import resolve_data

    over = base_overrides(args)
    resolve_data(with_overrides(ExperimentConfig(), over))  # generate the data once, up front
    with ProcessPoolExecutor(max_workers=args.parallel) as ex:
        futs = {m: ex.submit(run_one, m, over, args.out) for m in args.methods}
        runs = {m: f.result() for m, f in futs.items()}

    rows = []
    for m, r in runs.items():
        for which, lists in (r["eval"] or {}).items():
            for name, s in lists.items():
                rows.append({"method": m, "model": which, "eval_set": name,
                             "count": s["count"], "nme_inter_ocular": s["nme_inter_ocular"],
                             "nme_inter_pupil": s["nme_inter_pupil"], "auc@0.08": s["auc@0.08"],
                             "fr@0.08": s["fr@0.08"], "train_seconds": round(r["seconds"], 1)})
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, "
                       f"{platform.python_version()}",
            "labeled_images": args.labeled, "steps": args.steps, "batch": args.batch,
            "clips_per_step": args.clips, "seed": args.seed,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write(RESULTS / "semi_supervised.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    _write(RESULTS / "semi_supervised.md", markdown(rows, meta))
    plot(rows, RESULTS / "semi_supervised.png")
    print(markdown(rows, meta))
    return 0


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Semi-supervised ablation (synthetic faces)", "",
             f"L = {meta['labeled_images']} labeled images, {meta['steps']} steps, batch "
             f"{meta['batch']} (+{meta['clips_per_step']} unlabeled clips for TSAL), seed "
             f"{meta['seed']}; {meta['machine']}. NME in % of the inter-ocular distance; "
             "held-out test images and test videos.", "",
             "| method | model | eval set | n | NME io % | NME ip % | AUC@0.08 | FR@0.08 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['model']} | {r['eval_set']} | {r['count']} | "
                     f"{100 * r['nme_inter_ocular']:.2f} | {100 * r['nme_inter_pupil']:.2f} | "
                     f"{r['auc@0.08']:.3f} | {r['fr@0.08']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["eval_set"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), squeeze=False)
    for ax, es in zip(axes[0], sets):
        for j, model in enumerate(("teacher", "student")):
            vals = [next((100 * r["nme_inter_ocular"] for r in rows if r["method"] == m and
                          r["model"] == model and r["eval_set"] == es), float("nan"))
                    for m in methods]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
            ax.bar(xs, vals, width=0.38, label=model)
        ax.set_xticks(range(len(methods)), methods, rotation=15)
        ax.set_ylabel("NME (inter-ocular), %")
        ax.set_title(es)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
