"""The final evaluation of the default run, in one process and sharded over 2 workers.

Trains the default configuration briefly in one process (``--steps``; the evaluation's cost does
not depend on how trained the model is), then runs the final evaluation of teacher and student on
the default eval lists (200 test images, 240 test-video frames) with 1 worker and with 2 workers
(2 gloo processes, ``tsal_dist.loop.loop.finish_run`` exactly as the Ray workers call it), and
reports the wall time of each and whether the numbers are the same.

    python benchmarks/eval_sharding.py     # writes results/eval_sharding.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results_io import strict_json, write_text  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_eval(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from tsal_dist.codec import HeatmapCodec
    from tsal_dist.config import ExperimentConfig
    from tsal_dist.loop.checkpoint import load_checkpoint
    from tsal_dist.data.lists import resolve_data
    from tsal_dist.loop.context import WorkerContext
    from tsal_dist.loop.evaluation import finish_run
    from tsal_dist.models import build_model

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    state = load_checkpoint(ckpt)
    cfg = ExperimentConfig.from_dict(state["config"])
    models = {}
    for role in ("teacher", "student"):
        m = build_model(cfg.model, cfg.data.num_points)
        m.load_state_dict(state[role])
        models[role] = m.eval()
    codec = HeatmapCodec.for_model(cfg.model, stride=models["teacher"].stride,
                                   num_points=cfg.data.num_points)
    from dataclasses import replace

    cfg = replace(cfg, run=replace(cfg.run, export=False))
    ctx = WorkerContext(rank=rank, world_size=world)
    if world > 1:
        dist.barrier()
    t = time.perf_counter()
    res = finish_run(cfg, run_dir=Path(out) / f"w{world}", teacher=models["teacher"],
                     student=models["student"], hm_codec=codec, lists=resolve_data(cfg), ctx=ctx)
    wall = time.perf_counter() - t
    if rank == 0:
        (Path(out) / f"w{world}.json").write_text(json.dumps({"wall_s": wall,
                                                               "eval": res["eval"]}))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # before the work: a bad --out fails fast
    import torch.multiprocessing as mp

    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.loop.checkpoint import latest_checkpoint
    from tsal_dist.loop.loop import run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = with_overrides(ExperimentConfig(), {
            "optim.steps": args.steps, "run.checkpoint_every": args.steps, "run.eval_every": 0,
            "run.log_every": args.steps, "run.export": False, "data.loader_workers": 0})
        run(cfg, run_dir=Path(tmp) / "r", progress=False, final_eval=False)
        ckpt = str(latest_checkpoint(Path(tmp) / "r" / "checkpoints"))
        _final_eval(0, 1, 0, ckpt, tmp)
        mp.start_processes(_final_eval, args=(2, _free_port(), ckpt, tmp), nprocs=2,
                           start_method="spawn", join=True)
        one = json.loads((Path(tmp) / "w1.json").read_text())
        two = json.loads((Path(tmp) / "w2.json").read_text())
    rows = []
    same = True
    for role in ("teacher", "student"):
        for name, a in one["eval"][role].items():
            b = two["eval"][role][name]
            d = abs(a["nme_inter_ocular"] - b["nme_inter_ocular"])
            same &= a["count"] == b["count"] and d < 1e-6
            rows.append({"model": role, "list": name, "count": a["count"],
                         "nme_1_worker": a["nme_inter_ocular"],
                         "nme_2_workers": b["nme_inter_ocular"], "abs_diff": d})
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d"),
                           "train_steps": args.steps, "wall_s_1_worker": one["wall_s"],
                           "wall_s_2_workers": two["wall_s"], "same_numbers": bool(same),
                           "lists": rows}
    out = Path(args.out)
    write_text(out / "eval_sharding.json", strict_json(res) + "\n")
    lines = ["# Final evaluation of the default run: 1 vs 2 workers", "",
             f"Machine: {res['machine']['cpus']} CPU cores, no GPU; {res['date']}. Default "
             f"config trained {args.steps} steps in one process; the final evaluation "
             "(`finish_run`: teacher and student on both eval lists, CED plot) timed with 1 "
             "worker and sharded over 2 gloo workers (1 torch thread each).", "",
             f"- wall time: **{one['wall_s']:.1f} s** with 1 worker, **{two['wall_s']:.1f} s** "
             f"with 2 ({one['wall_s'] / two['wall_s']:.2f}x)",
             f"- same numbers: **{'yes' if same else 'NO'}** (|NME difference| < 1e-6 on every "
             "list)", "",
             "| model | list | frames | NME 1 worker | NME 2 workers |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['list']} | {r['count']} | "
                     f"{100 * r['nme_1_worker']:.4f} % | {100 * r['nme_2_workers']:.4f} % |")
    write_text(out / "eval_sharding.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
