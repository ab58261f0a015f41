"""How fast the training data pipeline is, and how many CPU cores a GPU needs to be fed.

Measures, on this machine:

1. the pipeline alone on one core (``StepBatches`` on the calling thread, ``cv2`` on one
   thread): labeled images/s and clips/s (a clip = ``clip_length`` frames, their augmentation
   and the DIS optical flow between neighbours), for the default geometry (96 px crops,
   3-frame clips) and the 300W+300VW recipe's (256 px crops, 10-frame clips; synthetic frames
   stand in for 300W/300VW, whose JPEGs are larger and decode slower);
2. the default run in one process (``run``, no Ray) for ``--steps`` steps with 0, 1 and 2
   loader workers: seconds per step and the fraction of it spent waiting for data;
3. from (1): cores per GPU for both recipes at a stated GPU step time.

    python benchmarks/data_pipeline.py            # writes results/data_pipeline.{json,md}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results_io import strict_json, write_text  # noqa: E402


def pipeline_rate(cfg: Any, n_batches: int) -> dict[str, float]:
    """Labeled images/s and clips/s of StepBatches on this thread (cv2 and torch 1 thread)."""
    import cv2
    import torch

    from tsal_dist.data.batches import StepBatches
    from tsal_dist.data.build import augmentation_args
    from tsal_dist.data.datasets import ClipDataset, LabeledImageDataset
    from tsal_dist.data.formats import read_list
    from tsal_dist.data.lists import resolve_data

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    d, m, o = cfg.data, cfg.model, cfg.optim
    lists = resolve_data(cfg)
    aug = augmentation_args(d)
    labeled = LabeledImageDataset([e for p in lists.labeled for e in read_list(p)],
                                  num_points=d.num_points, input_size=m.input_size,
                                  pre_crop_expand=d.pre_crop_expand, augment=True, **aug)
    clips = ClipDataset([e for p in lists.unlabeled for e in read_list(p)],
                        num_points=d.num_points, clip_length=d.clip_length,
                        clip_stride=d.clip_stride, input_size=m.input_size,
                        pre_crop_expand=d.pre_crop_expand, augment=True, flow=d.flow, **aug)
    out = {}
    for what, sb, per in (
            ("labeled_images_per_s", StepBatches(labeled, None, batch=o.batch_size,
                                                 clips_per_batch=0, rank=0, world=1, seed=0),
             o.batch_size),
            ("clips_per_s", StepBatches(_ClipsOnly(clips), None, batch=o.clips_per_batch,
                                        clips_per_batch=0, rank=0, world=1, seed=0),
             o.clips_per_batch)):
        sb[0]  # warm-up: video handles, flow objects
        t = time.perf_counter()
        for s in range(1, n_batches + 1):
            sb[s]
        out[what] = n_batches * per / (time.perf_counter() - t)
    # data time of one training step (batch labeled + clips_per_batch clips) on one core
    out["data_s_per_step_one_core"] = (o.batch_size / out["labeled_images_per_s"]
                                       + o.clips_per_batch / out["clips_per_s"])
    return out


class _ClipsOnly:
    """A ClipDataset seen through StepBatches' labeled slot (to time clips alone)."""

    def __init__(self, clips: Any) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def get_with_replacements(self, i: int, s: int) -> Any:
        return self.clips.get_with_replacements(i, s)

    def take_reports(self) -> list[str]:
        return self.clips.take_reports()


def loop_wait(cfg: Any, workers: int, steps: int) -> dict[str, float]:
    """Default model, one process: mean s/step and data-wait fraction after the first row."""
    from tsal_dist.config import with_overrides
    from tsal_dist.loop.loop import run

    log = max(1, steps // 4)
    c = with_overrides(cfg, {"data.loader_workers": workers, "optim.steps": steps,
                             "run.log_every": log, "run.checkpoint_every": steps,
                             "run.eval_every": 0, "run.export": False, "train.torch_threads": 1})
    with tempfile.TemporaryDirectory() as tmp:
        run(c, run_dir=Path(tmp) / "r", progress=False, final_eval=False)
        rows = [json.loads(x) for x in (Path(tmp) / "r" / "metrics.jsonl").read_text()
                .splitlines()]
    rows = [r for r in rows if "sec_per_step" in r][1:]  # first row: worker start-up
    return {"loader_workers": workers,
            "sec_per_step": sum(r["sec_per_step"] for r in rows) / len(rows),
            "data_wait_frac": sum(r["data/wait_frac"] for r in rows) / len(rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=20, help="batches timed per pipeline rate")
    ap.add_argument("--steps", type=int, default=40, help="training steps per worker count")
    ap.add_argument("--gpu-step-s", type=float, default=0.05,
                    help="assumed GPU step time of the default recipe (s)")
    ap.add_argument("--gpu-step-s-300w", type=float, default=0.25,
                    help="assumed GPU step time of the 300W+300VW recipe (s)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # before the work: a bad --out fails fast

    from tsal_dist.config import ExperimentConfig, load_config, with_overrides

    default = ExperimentConfig()
    recipe = load_config(ROOT / "configs" / "recipes" / "300w_300vw_gpu.yaml")
    # the recipe's geometry on synthetic stand-in data (no 300W/300VW here)
    big = with_overrides(default, {"model.input_size": recipe.model.input_size,
                                   "data.clip_length": recipe.data.clip_length,
                                   "optim.batch_size": recipe.optim.batch_size,
                                   "optim.clips_per_batch": recipe.optim.clips_per_batch,
                                   "data.synthetic.image_size": 320,
                                   # a small stand-in set: the rates, not the set, are measured
                                   "data.synthetic.images": 64, "data.synthetic.test_images": 8,
                                   "data.synthetic.videos": 4, "data.synthetic.test_videos": 1,
                                   "data.synthetic.frames": 30})
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d"),
                           "pipeline": {}, "loop": [], "assumed_gpu_step_s": {}}
    for name, cfg in (("default", default), ("300w_300vw_geometry", big)):
        r = pipeline_rate(cfg, args.batches)
        res["pipeline"][name] = {k: round(v, 3) for k, v in r.items()}
        print(name, json.dumps(res["pipeline"][name]), flush=True)
    for w in (0, 1, 2):
        r = loop_wait(default, w, args.steps)
        res["loop"].append({k: round(v, 4) for k, v in r.items()})
        print(json.dumps(res["loop"][-1]), flush=True)
    cores = {}
    for name, gpu_s in (("default", args.gpu_step_s), ("300w_300vw_geometry",
                                                       args.gpu_step_s_300w)):
        need = res["pipeline"][name]["data_s_per_step_one_core"] / gpu_s
        cores[name] = {"gpu_step_s": gpu_s, "data_s_per_step_one_core":
                       res["pipeline"][name]["data_s_per_step_one_core"],
                       "loader_cores_per_gpu": math.ceil(need / 0.95)}  # < 5 % wait
    res["cores_per_gpu"] = cores
    out = Path(args.out)
    write_text(out / "data_pipeline.json", strict_json(res) + "\n")
    write_text(out / "data_pipeline.md", render(res))
    print(f"wrote {out}/data_pipeline.{{json,md}}")
    return 0


def render(res: dict[str, Any]) -> str:
    p = res["pipeline"]
    lines = ["# Data pipeline", "",
             f"Machine: {res['machine']['cpus']} CPU cores, no GPU; {res['date']}. Synthetic data "
             "(the 300W+300VW row uses the recipe's geometry -- 256 px crops, 10-frame clips, "
             "batch 8 + 2 clips -- on synthetic 320 px frames; real 300W/300VW JPEGs are larger).",
             "", "## The pipeline alone, one core", "",
             "| geometry | labeled images/s | clips/s | data s per training step |",
             "|---|---|---|---|"]
    for name, r in p.items():
        lines.append(f"| {name} | {r['labeled_images_per_s']:.1f} | {r['clips_per_s']:.2f} | "
                     f"{r['data_s_per_step_one_core']:.3f} |")
    lines += ["", "## The default run, one process (no Ray), by loader workers", "",
              "| loader workers | s/step | data wait (% of step) |", "|---|---|---|"]
    for r in res["loop"]:
        lines.append(f"| {r['loader_workers']} | {r['sec_per_step']:.3f} | "
                     f"{100 * r['data_wait_frac']:.1f} % |")
    lines += ["", "## Cores per GPU (loader processes for < 5 % data wait)", "",
              "| recipe | assumed GPU step (s) | data s/step on one core | loader cores per GPU |",
              "|---|---|---|---|"]
    for name, c in res["cores_per_gpu"].items():
        lines.append(f"| {name} | {c['gpu_step_s']} (assumed, not measured) | "
                     f"{c['data_s_per_step_one_core']:.3f} | {c['loader_cores_per_gpu']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
