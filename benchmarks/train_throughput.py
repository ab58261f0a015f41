"""Training throughput of tsal_dist on Ray, in one run so the figures are comparable.

Measures, on this machine:
- samples/s and step time of the supervised-only step (no unlabeled clips) vs the full TSAL step;
- DDP vs DeepSpeed (ZeRO-2), 1 vs 2 workers (scaling efficiency = thr(2) / (2 * thr(1)));
- the teacher sync cost inside the loop (per-step share, fraction of step time), and through a
  real teacher actor: bytes, push (client side: serialise + submit) and pull latency, for the
  default model and for cpm_vgg16 at 256 px;
- peak resident memory of the rank-0 worker (``resource.getrusage`` maxrss).

The run configs are the default model (mobilenetv2, 96 px, width 0.5) with the default
``teacher.sync_every`` on the cached smoke dataset; timings skip the first logging window.

Usage: ``python benchmarks/train_throughput.py [--steps 24] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import torch  # noqa: E402
from _results_io import strict_json, write_text  # noqa: E402

from tsal_dist.config import load_config, with_overrides  # noqa: E402


def base_cfg(out: Path, steps: int):
    """Smoke data (cached) with the default model, batch and sync interval."""
    smoke = load_config(REPO / "configs" / "smoke.yaml")
    return with_overrides(smoke, {
        "model.input_size": 96, "model.width": 0.5, "model.heatmap_sigma_px": 3.0,
        "optim.batch_size": 8, "optim.steps": steps, "optim.warmup_steps": 2,
        "teacher.sync_every": 10, "run.log_every": 4, "run.checkpoint_every": 10**6,
        "run.eval_every": 0, "run.export": False, "run.output": str(out),
        "scaling.cpus_per_worker": 1})


def train_case(cfg, name: str, overrides: dict) -> dict:
    from tsal_dist.distributed.launch import fit

    c = with_overrides(cfg, {"run.name": name, **overrides})
    t0 = time.perf_counter()
    summary = fit(c)
    wall = time.perf_counter() - t0
    if summary.get("error"):
        raise RuntimeError(f"{name}: {summary['error']}")
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text()
            .splitlines()]
    rows = [r for r in rows if "sec_per_step" in r][1:]  # skip the warm-up window
    step_s = statistics.mean(r["sec_per_step"] for r in rows)
    sync_ms = statistics.mean(r.get("teacher/sync_ms", 0.0) for r in rows)
    return {"case": name, "engine": c.train.engine, "zero_stage": c.train.zero_stage,
            "workers": c.scaling.num_workers, "clips_per_batch": c.optim.clips_per_batch,
            "batch_per_worker": c.optim.batch_size, "step_s": step_s,
            "samples_per_s": statistics.mean(r["samples_per_sec"] for r in rows),
            "sync_ms_per_step": sync_ms, "sync_fraction": sync_ms / 1000.0 / step_s,
            "max_rss_mib_rank0": max(r.get("mem/max_rss_mib", 0.0) for r in rows),
            "fit_wall_s": wall}


def sync_cost(model_over: dict, label: str, pushes: int = 5) -> dict:
    """Push/pull a model's state through a real teacher actor (the protocol of the loop)."""
    import ray

    from tsal_dist.config import ExperimentConfig
    from tsal_dist.distributed.teacher_actor import RayTeacherClient, start_teacher_actor
    from tsal_dist.models import build_model

    cfg = with_overrides(ExperimentConfig(), model_over)
    model = build_model(cfg.model, cfg.data.num_points)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    handle = start_teacher_actor(run_name=f"bench-{label}", mode="queue", queue_length=3,
                                 ema_decay=0.99, keep_versions=4, checkpoint_dir="")
    ray.get(handle.ping.remote())
    client = RayTeacherClient(f"bench-{label}")
    push_s, pull_s = [], []
    for i in range(pushes):
        t = time.perf_counter()
        client.push(state, step=(i + 1) * 10)
        push_s.append(time.perf_counter() - t)
        ray.get([ref for _, ref in client._pending])  # applied (not part of the step's cost)
        t = time.perf_counter()
        client.get((i + 1) * 10)
        pull_s.append(time.perf_counter() - t)
    ray.kill(handle, no_restart=True)
    return {"model": label, "params": sum(p.numel() for p in model.parameters()),
            "state_bytes": int(sum(v.nbytes for v in state.values())),
            "push_ms_median": 1000 * statistics.median(push_s[1:]),
            "pull_ms_median": 1000 * statistics.median(pull_s[1:])}


def _sync_worker(config: dict) -> None:
    """Ray Train worker: ``syncs`` teacher pulls, timed between barriers (slowest rank)."""
    import torch.distributed as dist

    import ray.train
    from tsal_dist.config import ExperimentConfig
    from tsal_dist.distributed.teacher_actor import RayTeacherClient
    from tsal_dist.loop.loop import WorkerContext, pull_teacher
    from tsal_dist.models import build_model

    ctx_ray = ray.train.get_context()
    ctx = WorkerContext(rank=ctx_ray.get_world_rank(), world_size=ctx_ray.get_world_size())
    cfg = with_overrides(ExperimentConfig(), config["model"])
    template = {k: (tuple(v.shape), v.dtype)
                for k, v in build_model(cfg.model, cfg.data.num_points).state_dict().items()}
    client = RayTeacherClient(config["run"])
    times = []
    for i in range(config["syncs"] + 1):
        dist.barrier()
        t = time.perf_counter()
        if config["mode"] == "every_rank_pulls":  # the sync before: each rank asks the actor
            client.get(10)
        else:  # rank 0 pulls once, broadcast over the process group
            pull_teacher(client, 10, ctx, template=template)
        dist.barrier()
        elapsed = torch.tensor(time.perf_counter() - t)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed))
    if ctx.rank == 0:
        Path(config["out"]).write_text(json.dumps(times[1:]))  # first: connection warm-up


def sync_scaling(model_over: dict, label: str, workers: int, mode: str, tmp: Path,
                 syncs: int = 4) -> dict:
    """Sync cost (ms, slowest rank) with ``workers`` Ray Train workers, one per simulated node."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tsal_dist.config import ExperimentConfig
    from tsal_dist.distributed.teacher_actor import start_teacher_actor
    from tsal_dist.models import build_model

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(workers):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        cfg = with_overrides(ExperimentConfig(), model_over)
        model = build_model(cfg.model, cfg.data.num_points)
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        run = f"sync-{label}-{workers}-{mode}"
        handle = start_teacher_actor(run_name=run, mode="queue", queue_length=2, ema_decay=0.9,
                                     keep_versions=4, checkpoint_dir="")
        ray.get(handle.push.remote(state, 10))
        out = tmp / f"{run}.json"
        TorchTrainer(_sync_worker, train_loop_config={"model": model_over, "run": run,
                                                      "mode": mode, "syncs": syncs,
                                                      "out": str(out)},
                     scaling_config=ScalingConfig(num_workers=workers,
                                                  resources_per_worker={"CPU": 1},
                                                  placement_strategy="SPREAD"),
                     run_config=RunConfig(name=run, storage_path=str(tmp / "ray"))).fit()
        times = json.loads(out.read_text())
        ray.kill(handle, no_restart=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"model": label, "workers": workers, "mode": mode,
            "sync_ms_median": 1000 * statistics.median(times),
            "state_mb": sum(v.nbytes for v in state.values()) / 1e6}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Training throughput ({m['description']})", "",
             f"{res['note']}", "",
             "| case | engine | workers | clips/batch | step s | samples/s | sync ms/step | "
             "sync % of step | peak RSS rank0 MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for c in res["cases"]:
        eng = c["engine"] + (f" ZeRO-{c['zero_stage']}" if c["engine"] == "deepspeed" else "")
        lines.append(f"| {c['case']} | {eng} | {c['workers']} | {c['clips_per_batch']} | "
                     f"{c['step_s']:.3f} | {c['samples_per_s']:.1f} | "
                     f"{c['sync_ms_per_step']:.2f} | {100 * c['sync_fraction']:.2f} | "
                     f"{c['max_rss_mib_rank0']:.0f} |")
    s = res["summary"]
    lines += ["", f"- full TSAL step / supervised-only step time: {s['tsal_over_supervised']:.2f}x",
              f"- scaling efficiency 1 -> 2 DDP workers: {100 * s['scaling_efficiency']:.0f}%",
              f"- DeepSpeed ZeRO-2 / DDP step time (2 workers): {s['deepspeed_over_ddp']:.2f}x",
              f"- teacher sync overhead, default model, sync_every=10: "
              f"{100 * s['sync_overhead_fraction']:.2f}% of step time",
              f"- bf16 / fp32 step time on CPU: ddp (autocast) "
              f"{s['bf16_over_fp32_ddp']:.2f}x, DeepSpeed ZeRO-2 {s['bf16_over_fp32_zero2']:.2f}x",
              "",
              "| model | params | state MB | push ms (client) | pull ms |", "|---|---|---|---|---|"]
    for c in res["sync"]:
        lines.append(f"| {c['model']} | {c['params'] / 1e6:.2f} M | {c['state_bytes'] / 1e6:.1f} | "
                     f"{c['push_ms_median']:.1f} | {c['pull_ms_median']:.1f} |")
    if res.get("sync_scaling"):
        lines += ["", "Teacher sync with 2 and 4 workers, one per simulated node "
                  "(`ray.cluster_utils.Cluster`, all on this machine's cores): ms per sync, "
                  "slowest rank, median.", "",
                  "| model | state MB | sync | 2 workers ms | 4 workers ms | 4 / 2 |",
                  "|---|---|---|---|---|---|"]
        rows: dict = {}
        for c in res["sync_scaling"]:
            rows.setdefault((c["model"], c["mode"]), {})[c["workers"]] = c
        for (model, mode), by in rows.items():
            a, b = by.get(2), by.get(4)
            if a and b:
                lines.append(f"| {model} | {a['state_mb']:.1f} | {mode} | "
                             f"{a['sync_ms_median']:.1f} | {b['sync_ms_median']:.1f} | "
                             f"{b['sync_ms_median'] / a['sync_ms_median']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24,
                    help="per case, at least 8: the first logged window of 4 steps is warm-up")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--skip-sync-scaling", action="store_true")
    ap.add_argument("--note", default=(
        "CPU only: no NCCL, CUDA autocast or fp16 figures. Worker counts above the core count "
        "oversubscribe the cores (the 4-worker sync rows run 4 processes on 2 cores), so they "
        "measure collective latency under contention as much as data movement."),
        help="what the machine was doing, recorded with the figures")
    args = ap.parse_args(argv)
    if args.steps < 8:
        ap.error(f"--steps {args.steps}: at least 8 (the first logged window of 4 steps is "
                 f"warm-up, not timed)")
    Path(args.out).mkdir(parents=True, exist_ok=True)  # before the work: a bad --out fails fast
    torch.set_num_threads(1)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = base_cfg(Path(tmp), args.steps)
        cases = [
            train_case(cfg, "ddp-1-supervised", {"scaling.num_workers": 1,
                                                 "optim.clips_per_batch": 0}),
            train_case(cfg, "ddp-1-tsal", {"scaling.num_workers": 1}),
            train_case(cfg, "ddp-2-tsal", {"scaling.num_workers": 2}),
            train_case(cfg, "deepspeed2-2-tsal", {"scaling.num_workers": 2,
                                                  "train.engine": "deepspeed",
                                                  "train.zero_stage": 2}),
            train_case(cfg, "ddp-1-tsal-bf16", {"scaling.num_workers": 1,
                                                "train.precision": "bf16"}),
            train_case(cfg, "deepspeed2-2-tsal-bf16", {"scaling.num_workers": 2,
                                                       "train.engine": "deepspeed",
                                                       "train.zero_stage": 2,
                                                       "train.precision": "bf16"}),
        ]
    sync = [sync_cost({}, "default-mobilenetv2-96"),
            sync_cost({"model.backbone": "cpm_vgg16", "model.input_size": 256}, "cpm_vgg16-256")]
    ray.shutdown()
    scaling = []
    if not args.skip_sync_scaling:
        with tempfile.TemporaryDirectory() as tmp:
            for over, label in (({}, "default-mobilenetv2-96"),
                                ({"model.backbone": "cpm_vgg16", "model.input_size": 256},
                                 "cpm_vgg16-256")):
                for mode in ("every_rank_pulls", "rank0_pull_broadcast"):
                    for w in (2, 4):
                        scaling.append(sync_scaling(over, label, w, mode, Path(tmp)))
                        print(json.dumps(scaling[-1]), flush=True)
    by = {c["case"]: c for c in cases}
    summary = {
        "tsal_over_supervised": by["ddp-1-tsal"]["step_s"] / by["ddp-1-supervised"]["step_s"],
        "scaling_efficiency": by["ddp-2-tsal"]["samples_per_s"]
        / (2 * by["ddp-1-tsal"]["samples_per_s"]),
        "deepspeed_over_ddp": by["deepspeed2-2-tsal"]["step_s"] / by["ddp-2-tsal"]["step_s"],
        "sync_overhead_fraction": by["ddp-2-tsal"]["sync_fraction"],
        "bf16_over_fp32_ddp": by["ddp-1-tsal-bf16"]["step_s"] / by["ddp-1-tsal"]["step_s"],
        "bf16_over_fp32_zero2": by["deepspeed2-2-tsal-bf16"]["step_s"]
        / by["deepspeed2-2-tsal"]["step_s"],
    }
    res = {
        "machine": {"description": f"{os.cpu_count()} CPU cores, no GPU",
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "ray": ray.__version__, "cpus": os.cpu_count()},
        "note": args.note,
        "steps_per_case": args.steps, "cases": cases, "sync": sync, "summary": summary,
        "sync_scaling": scaling,
        "benchmark_wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    write_text(out / "train_throughput.json", strict_json(res, indent=2))
    write_text(out / "train_throughput.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
