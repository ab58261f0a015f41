"""One-shot GPU check: everything the project claims about GPUs, measured in one command.

On a machine with one CUDA GPU (about 8 minutes in all)::

    python benchmarks/gpu_check.py

1. the ``gpu``-marked tests (``pytest -m gpu``: TensorRT / torch-CUDA engines, CUDA training);
2. a 200-step bf16 ``ddp`` run of the default model through Ray Train (1 GPU worker);
3. the same with DeepSpeed ZeRO-2 bf16.

4. the runtime's GPU figures: the ddp run's teacher is exported and ``benchmarks/runtime_fps.py
   --gpu-only`` measures torch-CUDA fp16/fp32 and TensorRT fp16 (when installed) per-face latency
   at batch 1, 16 and 64 and the end-to-end pipeline on them (``runtime_fps_gpu.{json,md}``).

For each training run it reads the run's metrics.jsonl and reports samples/s (after warm-up),
the fraction of each step spent waiting for data, and peak GPU memory; everything goes to
``benchmarks/results/gpu_check.{json,md}``.

Every step's figures are written as soon as it ends (a step that fails is reported and the next
one runs), so a check stopped by a time limit keeps what it measured; each training run starts
from an empty run folder (a check never resumes an earlier one).

``--dry-run`` runs the same plumbing on CPU (bf16 on CPU workers, a few steps, no pytest), so
the script itself is tested where there is no GPU; its figures say ``"device": "cpu"`` and are
not GPU results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "runtime"))  # tsal_runtime: export writes its model spec
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results_io import strict_json, write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _device_info(gpu: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(),
                            "torch": torch.__version__, "device": "cpu"}
    if gpu:
        p = torch.cuda.get_device_properties(0)
        info.update(device="cuda", gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def run_pytest_gpu(timeout_s: int) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:logging",
                           "--timeout", str(timeout_s)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)
    tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
    return {"returncode": proc.returncode, "summary": tail[0],
            "seconds": round(time.perf_counter() - t, 1)}


def training_run(name: str, overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """One Ray Train run of the default model; figures read back from its metrics.jsonl."""
    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.distributed.launch import fit

    cfg = with_overrides(ExperimentConfig(), {"run.output": str(out), "run.name": name,
                                              "run.export": False, **overrides})
    shutil.rmtree(out / name, ignore_errors=True)  # measure this code, never resume an old run
    t = time.perf_counter()
    summary = fit(cfg)
    wall = time.perf_counter() - t
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "samples_per_sec" in r]
    steady = train[1:] or train  # the first row holds compilation / cuDNN autotuning
    mean = lambda key: (sum(r.get(key, 0.0) for r in steady) / len(steady)  # noqa: E731
                        if steady else float("nan"))
    ev = (summary.get("eval") or {}).get("teacher", {})
    return {"name": name, "overrides": overrides, "error": summary.get("error"),
            "wall_s": round(wall, 1), "steps": cfg.optim.steps,
            "samples_per_sec": round(mean("samples_per_sec"), 1),
            "sec_per_step": round(mean("sec_per_step"), 4),
            "data_wait_frac": round(mean("data/wait_frac"), 4),
            "loader_workers": steady[-1].get("data/loader_workers") if steady else None,
            "peak_gpu_mib": round(max((r.get("mem/max_gpu_mib", 0.0) for r in train),
                                      default=0.0), 1),
            "teacher_nme": {k: v.get("nme_inter_ocular") for k, v in ev.items()}}


def _error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (300 characters at most), for the report."""
    line = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {line}"


def runtime_figures(run_dir: Path, out: Path, work: Path, frames: int = 300,
                    timeout_s: int = 900) -> dict[str, Any]:
    """Export the run's teacher and run ``runtime_fps.py --gpu-only`` on it."""
    from tsal_dist.export import export
    from tsal_dist.loop.checkpoint import latest_checkpoint

    t = time.perf_counter()
    ck = latest_checkpoint(run_dir / "checkpoints")
    if ck is None:
        return {"returncode": None, "summary": f"no checkpoint in {run_dir}"}
    export(ck, work / "export", which="teacher")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "runtime_fps.py"),
                           "--gpu-only", "--model", str(work / "export"), "--out", str(out),
                           "--frames", str(frames)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)
    tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-1:] or [""]
    return {"returncode": proc.returncode, "summary": tail[0][:300],
            "results": str(out / "runtime_fps_gpu.md"), "seconds": round(time.perf_counter() - t)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU plumbing check: bf16 on CPU workers, a few steps, no pytest")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=str(RESULTS), help="folder for gpu_check.{json,md}")
    ap.add_argument("--work", default=None,
                    help="folder of the run folders (default: a new temporary folder); a run "
                         "folder of the same name in it is emptied first")
    ap.add_argument("--pytest-timeout", type=int, default=480, metavar="S",
                    help="seconds for the whole `pytest -m gpu` (default 480)")
    ap.add_argument("--runtime-timeout", type=int, default=900, metavar="S",
                    help="seconds for runtime_fps.py --gpu-only (default 900)")
    args = ap.parse_args(argv)

    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        print("gpu_check: no CUDA device here; use --dry-run to check the script on CPU",
              file=sys.stderr)
        return 2
    steps = args.steps if gpu else min(args.steps, 4)
    # max_failures 0: a failing run is reported at once, not restarted twice at full length
    scale: dict[str, Any] = {"optim.steps": steps, "run.log_every": max(1, steps // 4),
                             "run.checkpoint_every": steps, "run.eval_every": 0,
                             "run.max_failures": 0,
                             "train.precision": "bf16", "train.deterministic": False}
    if gpu:
        scale.update({"scaling.num_workers": 1, "scaling.use_gpu": True,
                      "scaling.cpus_per_worker": max(1, (os.cpu_count() or 2) - 2),
                      "train.torch_threads": 0})
    else:
        scale.update({"scaling.num_workers": 1, "data.synthetic.images": 48,
                      "data.synthetic.test_images": 8, "data.synthetic.videos": 2,
                      "data.synthetic.test_videos": 1, "data.synthetic.frames": 12,
                      "run.val_images": 8})
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tsal_gpu_check-"))
    out = Path(args.out)
    stem = "gpu_check" if gpu else "gpu_check_dry_run"
    report: dict[str, Any] = {"machine": _device_info(gpu), "dry_run": not gpu,
                              "date": time.strftime("%Y-%m-%d"), "training": []}
    t0 = time.perf_counter()

    def save() -> None:  # after every step: a check cut short keeps what it measured
        report["total_s"] = round(time.perf_counter() - t0, 1)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / f"{stem}.json", strict_json(report) + "\n")
        write_text(out / f"{stem}.md", render(report))

    save()
    if gpu:
        try:
            report["pytest_gpu"] = run_pytest_gpu(timeout_s=args.pytest_timeout)
        except Exception as e:  # noqa: BLE001 - a timeout included: reported, the runs go on
            report["pytest_gpu"] = {"returncode": None, "summary": _error_line(e),
                                    "seconds": None}
        print(f"gpu tests: {report['pytest_gpu']['summary']}", flush=True)
        save()
    runs = report["training"]
    for name, extra in (("ddp-bf16", {"train.engine": "ddp"}),
                        ("zero2-bf16", {"train.engine": "deepspeed", "train.zero_stage": 2})):
        name += "" if gpu else "-dry"
        try:
            r = training_run(name, {**scale, **extra}, work)
        except Exception as e:  # noqa: BLE001 - reported, and the next step still runs
            r = {"name": name, "error": _error_line(e), "overrides": {**scale, **extra}}
        print(json.dumps(r), flush=True)
        runs.append(r)
        save()
    if gpu and runs[0]["error"]:
        report["runtime"] = {"returncode": None, "skipped": True,
                             "summary": "skipped: the ddp run failed, no teacher to export"}
    elif gpu:
        try:
            report["runtime"] = runtime_figures(work / runs[0]["name"], out, work,
                                                timeout_s=args.runtime_timeout)
        except Exception as e:  # noqa: BLE001
            report["runtime"] = {"returncode": None, "summary": _error_line(e)}
        print(f"runtime: {report['runtime']}", flush=True)
    save()
    print(f"gpu_check: wrote {out / stem}.{{json,md}} in {report['total_s']} s")
    bad = [r["name"] for r in runs if r["error"]]
    if gpu and report["runtime"]["returncode"] != 0 and not report["runtime"].get("skipped"):
        bad.append("runtime_fps --gpu-only")
    if bad or (gpu and report["pytest_gpu"]["returncode"] not in (0, 5)):
        return 1
    return 0


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# GPU check{' (CPU dry run: NOT GPU figures)' if report['dry_run'] else ''}", "",
             f"Machine: {m.get('gpu', 'CPU only')}, {m['cpus']} CPUs, torch {m['torch']}; "
             f"{report['date']}; total {report['total_s']} s.", ""]
    if "pytest_gpu" in report:
        p = report["pytest_gpu"]
        secs = "–" if p["seconds"] is None else p["seconds"]
        lines += [f"`pytest -m gpu`: {p['summary']} (exit {p['returncode']}, {secs} s)",
                  ""]
    lines += ["| run | steps | samples/s | s/step | data wait | loader workers | peak GPU MiB |",
              "|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        if "steps" not in r:  # the run raised before it had figures
            lines.append(f"| {r['name']} | – | – | – | – | – | – | error: {r['error']}")
            continue
        lines.append(f"| {r['name']} | {r['steps']} | {r['samples_per_sec']} | "
                     f"{r['sec_per_step']} | {100 * r['data_wait_frac']:.1f} % | "
                     f"{r['loader_workers']} | {r['peak_gpu_mib']} |"
                     + (f" error: {r['error']}" if r["error"] else ""))
    if "runtime" in report:
        r = report["runtime"]
        if r["returncode"] == 0:
            lines += ["", "Runtime on the GPU (`runtime_fps.py --gpu-only`): see "
                          f"`runtime_fps_gpu.md`. {r['summary']}"]
        else:  # never point at a runtime_fps_gpu.md this check did not write
            lines += ["", f"Runtime on the GPU (`runtime_fps.py --gpu-only`): not measured, "
                          f"{r['summary']} (exit {r['returncode']})"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
