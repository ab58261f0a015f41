"""KD-Loss ablation: the same student with L2, L1, KD-Loss (code) and KD-Loss (paper) vs teachers.

    python benchmarks/distill_ablation.py [--teacher-steps 200] [--student-steps 1000] [--seeds 2]

One pair of teachers (Tough on hard landmarks, Tolerant on ASM soft landmarks; ResNet-style
heatmap detectors, 96 px) is trained once on the default synthetic data (800 faces), then four
students (MobileNetV2 regressor, width 0.5) with identical init and batch order differ only in
their loss (the student defaults of DistillConfig: zero-initialised head, no dropout, no
weight decay). ``--seeds 2`` reruns plain L2 and KD-Loss (code) with a second student init seed
(same teachers, same batches) to measure run-to-run noise. Everything is scored on the held-out synthetic test images and test videos (NME
inter-ocular, AUC@0.08, FR@0.08), with parameter counts and per-face latency in ONNX Runtime on
this CPU (batch 1, 1 thread, median of 100 runs; uint8 NHWC crop -> normalised landmarks, the
exported program of tsal_dist.export, written with torch.onnx.export(dynamo=False) here).

Writes benchmarks/results/distill_ablation.{json,md,png}. Small step counts: it shows the
direction and rough size of the effect on a CPU budget, not converged accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import save_figure, write_text  # noqa: E402

from tsal_dist.export import CropToLandmarks  # noqa: E402
from tsal_dist.distill import DistillConfig, load_distill_config, run_distill  # noqa: E402
from tsal_dist.models import MobileNetV2Regressor, count_parameters  # noqa: E402

VARIANTS = {  # name -> overrides of the student's loss
    "student L2": {"kd.loss": "l2"},
    "student L1": {"kd.loss": "l1"},
    "student KD-Loss (code)": {"kd.loss": "kd", "kd.variant": "code"},
    "student KD-Loss (paper)": {"kd.loss": "kd", "kd.variant": "paper"},
}


def onnx_latency_ms(model: torch.nn.Module, size: int, runs: int = 100) -> float:
    """Median per-face latency (ms) of the exported crop->landmarks program, ORT CPU, 1 thread."""
    import onnxruntime as ort

    module = CropToLandmarks(model.eval()).eval()
    x = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        torch.onnx.export(module, (x,), path, input_names=["crops"],
                          output_names=["landmarks", "scores"], opset_version=17, dynamo=False,
                          dynamic_axes={"crops": {0: "batch"}})
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-steps", type=int, default=200)
    ap.add_argument("--student-steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=2,
                    help="student init seeds of the L2 and KD-Loss (code) runs (noise estimate)")
    ap.add_argument("--work", default="", help="scratch folder (default: a temp folder)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="distill_ablation_"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    base = load_distill_config(None, {"teachers.steps": args.teacher_steps,
                                      "experiment.optim.steps": args.student_steps,
                                      "experiment.run.export": False,
                                      "experiment.run.checkpoint_every": 10**6,
                                      "experiment.run.log_every": 50})
    tdir = work / "teachers"
    results: dict[str, Any] = {}
    models: dict[str, torch.nn.Module] = {}
    first = True
    runs = dict(VARIANTS)
    for k in range(1, args.seeds):  # extra seeds: other init and batch order, same teachers
        for v in ("student L2", "student KD-Loss (code)"):
            runs[f"{v} seed {k}"] = {**VARIANTS[v],
                                     "student.seed": base.experiment.train.seed + k}
    timings: dict[str, float] = {}
    teacher_cache: dict = {}  # every KD student sees the same batches: teachers run once
    for name, over in runs.items():
        cfg = load_distill_config(None, {**_flat(base), **over})
        run_dir = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        if not first:  # same ASM as the teachers' (fitted once)
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "first_asm.npz", run_dir / "asm.npz")
        t0 = time.time()
        summary = run_distill(cfg, run_dir=run_dir, teacher_dir=tdir, progress=True,
                              export=False, teacher_cache=teacher_cache)
        timings[name] = time.time() - t0
        print(f"{name}: {timings[name]:.0f} s", flush=True)
        if first:
            shutil.copy(run_dir / "asm.npz", work / "first_asm.npz")
        ev = summary["eval"]
        for which, label in (("tough", "Tough teacher"), ("tolerant", "Tolerant teacher")):
            if first:
                results[label] = {ln: _row(s) for ln, s in ev[which].items()}
        results[name] = {ln: _row(s) for ln, s in ev["student"].items()}
        results[name]["train_px_error_last"] = summary["last"].get("student/px_error")
        results[name]["sec_per_step"] = summary["last"].get("sec_per_step")
        if first:
            from tsal_dist.loop.checkpoint import latest_checkpoint, load_checkpoint
            from tsal_dist.models import build_model

            e = cfg.experiment
            for role, label in (("tough", "Tough teacher"), ("tolerant", "Tolerant teacher")):
                m = build_model(e.model, e.data.num_points)
                m.load_state_dict(load_checkpoint(latest_checkpoint(tdir / role))["teacher"])
                models[label] = m
        first = False
        ck = load_ckpt_student(run_dir)
        student = MobileNetV2Regressor(cfg.experiment.data.num_points,
                                       cfg.experiment.model.input_size,
                                       width=cfg.experiment.model.width)
        student.load_state_dict(ck)
        models[name] = student

    size = base.experiment.model.input_size
    for label, m in models.items():
        results[label]["params"] = count_parameters(m)
        results[label]["latency_ms"] = onnx_latency_ms(m, size)

    lists = [k for k in results["student L2"] if isinstance(results["student L2"][k], dict)]
    verdict = _verdict(results, lists)
    payload = {"config": _flat(base), "variants": runs, "lists": lists, "results": results,
               "verdict": verdict, "seconds": time.time() - t_start, "run_seconds": timings,
               "machine": {"cpu": platform.processor() or platform.machine(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "threads": 1}}
    write_text(out / "distill_ablation.json", json.dumps(payload, indent=2, default=float))
    write_text(out / "distill_ablation.md", _markdown(results, lists, verdict, args))
    _plot(results, lists, out / "distill_ablation.png")
    print(verdict)
    print(f"total {time.time() - t_start:.0f} s; wrote {out}/distill_ablation.{{json,md,png}}")
    return 0


def load_ckpt_student(run_dir: Path) -> dict[str, torch.Tensor]:
    from tsal_dist.loop.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["student"]


def _flat(cfg: DistillConfig) -> dict[str, Any]:
    from tsal_dist.config import flatten

    return flatten(cfg.to_dict())


def _seeds(results: dict[str, Any], name: str, ln: str) -> list[float]:
    """NME of ``name`` and of its extra-seed reruns (``name seed k``) on list ``ln``."""
    return [r[ln]["nme_io"] for n, r in results.items()
            if n == name or n.startswith(f"{name} seed ")]


def _verdict(results: dict[str, Any], lists: list[str]) -> str:
    """Plain statement: does KD-Loss beat L2 / L1, by how much, against seed-to-seed noise."""
    parts = []
    for ln in lists:
        l2 = _seeds(results, "student L2", ln)
        l1 = _seeds(results, "student L1", ln)
        kdc = _seeds(results, "student KD-Loss (code)", ln)
        # run-to-run noise: largest seed-to-seed spread of any variant run with several seeds
        spreads = [max(v) - min(v) for v in (l2, kdc) if len(v) > 1]
        noise = max(spreads) if spreads else None
        m_l2, m_l1 = float(np.mean(l2)), float(np.mean(l1))
        txt = [f"{ln}: L2 {100 * m_l2:.2f}%" + (f" (mean of {len(l2)} seeds)" if len(l2) > 1
                                                   else "") + f", L1 {100 * m_l1:.2f}%"]
        for v in ("student KD-Loss (code)", "student KD-Loss (paper)"):
            vals = _seeds(results, v, ln)
            kd = float(np.mean(vals))
            d = kd - m_l2
            rel = 100 * d / m_l2
            beyond = noise is None or abs(d) > noise
            word = "beats" if d < 0 else "loses to"
            txt.append(f"{v.removeprefix('student ')} {100 * kd:.2f}% {word} L2 by "
                       f"{100 * abs(d):.2f} points ({rel:+.1f}% relative)"
                       + ("" if noise is None else
                          (", larger than" if beyond else ", within")
                          + f" the seed-to-seed spread of {100 * noise:.2f} points")
                       + f" and {'beats' if kd < m_l1 else 'loses to'} L1")
        parts.append("; ".join(txt))
    tough = results["Tough teacher"]["latency_ms"]
    st = results["student KD-Loss (code)"]["latency_ms"]
    parts.append(f"student latency {st:.2f} ms vs Tough teacher {tough:.2f} ms per face "
                 f"({tough / st:.1f}x faster)")
    return ". ".join(parts) + "."


def _markdown(results: dict[str, Any], lists: list[str], verdict: str, args) -> str:
    lines = ["# KD-Loss ablation (synthetic data, CPU)", "",
             f"Teachers {args.teacher_steps} steps, students {args.student_steps} steps "
             "(batch 8, 96 px crops); held-out synthetic test images and videos. NME is "
             "inter-ocular (%); latency is per face, ONNX Runtime CPU, batch 1, 1 thread.", "",
             "| model | params | latency (ms) | " + " | ".join(
                 f"{ln} NME % | AUC@0.08 | FR@0.08" for ln in lists) + " |",
             "|---|---:|---:|" + "---:|---:|---:|" * len(lists)]
    for name, r in results.items():
        cells = [f"{100 * r[ln]['nme_io']:.2f} | {r[ln]['auc@0.08']:.3f} | "
                 f"{r[ln]['fr@0.08']:.3f}" for ln in lists]
        lines.append(f"| {name} | {r['params']:,} | {r['latency_ms']:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"**Verdict:** {verdict}", "",
              "Students: MobileNetV2 regressor (width 0.5), Adam 3e-3 constant, zero-initialised "
              "head (starts at the crop centre), dropout 0, weight decay 0 (DistillConfig "
              "defaults). `seed k` rows rerun a variant with another student init (same batches) "
              "against the same teachers; their spread is the run-to-run noise the verdict "
              "compares against. Short CPU runs: neither teachers nor students are converged."]
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], lists: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    w = 0.8 / len(lists)
    x = np.arange(len(names))
    for i, ln in enumerate(lists):
        axes[0].bar(x + i * w, [100 * results[n][ln]["nme_io"] for n in names], w, label=ln)
    axes[0].set_xticks(x + w * (len(lists) - 1) / 2)
    axes[0].set_xticklabels([n.replace("student ", "") for n in names], rotation=25, ha="right")
    axes[0].set_ylabel("NME inter-ocular (%)")
    axes[0].legend()
    axes[0].set_title("Accuracy on held-out synthetic data")
    for n in names:
        axes[1].scatter(results[n]["latency_ms"], 100 * results[n][lists[0]]["nme_io"], s=40)
        axes[1].annotate(n.replace("student ", ""), (results[n]["latency_ms"],
                                                      100 * results[n][lists[0]]["nme_io"]),
                         fontsize=8)
    axes[1].set_xlabel("ONNX Runtime latency per face (ms, 1 thread)")
    axes[1].set_ylabel(f"NME on {lists[0]} (%)")
    axes[1].set_title("Speed vs accuracy")
    fig.tight_layout()
    save_figure(fig, path)



if __name__ == "__main__":
    sys.exit(main())
