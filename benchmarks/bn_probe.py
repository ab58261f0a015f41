"""Are the normalisation statistics what the unlabeled video can fix?

The semi-supervised diagnosis (``semi_supervised.md`` section 3) found the narrow-label model's
error on wide-domain faces persistent (the same on every frame of a clip) and TSAL's
consistency unable to correct it. One persistent error that unlabeled wide-domain frames CAN
correct without labels is the batch-norm statistics: a supervised-only model normalises every
layer with running means and variances gathered on narrow-domain labeled crops (near-frontal,
even light, unoccluded), and applies them to wide-domain test faces. TSAL's training updates its
BN statistics on labeled and unlabeled batches in turn, a mixture of both domains.

H5 tested here without training, on the benchmark's supervised-only runs (the model TSAL starts
from), each scored on the held-out test images and test videos (NME inter-ocular, FR@0.08, video
NMJ) three ways:

- ``as trained``: the checkpoint's own statistics (narrow labeled crops, augmented);
- ``re-estimated, labeled``: every BN layer's statistics recomputed (cumulative average, weights
  untouched) on the run's own labeled crops without augmentation: the control, which separates
  re-estimating from changing domain;
- ``re-estimated, unlabeled video``: the same on the frames of the unlabeled TRAINING videos
  (wide domain; what a semi-supervised method may read): AdaBN (Li et al. 2016);
- each of the two again on crops augmented as training augments them (rotation, scale, shift;
  one draw per image or clip): ``re-estimated, labeled, augmented`` sees what training saw and
  should land near ``as trained`` (the check of the re-estimation itself).

Deltas against ``as trained`` are paired by run (seed). Writes
``benchmarks/results/bn_probe.{json,md}``; the runs are the comparison's supervised-only runs,
made on the probing machine (their tables kept apart from the recorded ones)::

    python benchmarks/semi_supervised.py compare --methods supervised --labeled 50 \
        --seeds 0 1 2 --out /tmp/ssl_bn --results /tmp/ssl_bn/results
    python benchmarks/bn_probe.py --runs /tmp/ssl_bn/supervised-L50-s{0,1,2}
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import write_report  # noqa: E402
from _stats import format_delta, paired  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
WAYS = ("as trained", "re-estimated, labeled", "re-estimated, labeled, augmented",
        "re-estimated, unlabeled video", "re-estimated, unlabeled video, augmented")


def reestimate_bn(model: Any, batches: Any) -> int:
    """Recompute every batch-norm layer's running mean and variance of ``model`` in place as the
    cumulative average over ``batches`` (uint8 (B, 3, S, S) tensors, the model's input); weights
    and every other buffer untouched. Returns the number of images seen.

    Raises:
        ValueError: the model has no batch-norm layer, or no batch was given.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("the model has no batch-norm layer to re-estimate")
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over every batch
    seen = 0
    try:
        model.eval()
        for m in bns:
            m.train()  # only the BN layers in training mode (dropout and the rest stay eval)
        with torch.no_grad():
            for x in batches:
                model(x)
                seen += int(x.shape[0])
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was_training)
    if seen == 0:
        raise ValueError("no images to re-estimate the statistics on")
    return seen


def _batches(dataset: Any, key: str, batch: int, seed: int = 0) -> list[Any]:
    """uint8 model inputs of ``dataset`` (clip frames flattened; item i drawn with seed i where
    the dataset augments), shuffled with ``seed`` across images and videos and cut into batches of
    exactly ``batch`` (the remainder dropped, unless there is less than one batch): each batch a
    random sample, as training's are, so that the average of the batch variances estimates the
    variance over all images (batches of one video would leave out the differences between
    videos)."""
    import numpy as np
    import torch

    images: list[Any] = []
    for i in range(len(dataset)):
        x = dataset.get(i, i)[key]
        images.extend(x if x.dim() == 4 else x[None])
    order = np.random.default_rng(seed).permutation(len(images))
    n = max(1, len(images) // batch) * batch
    order = order[:n]
    return [torch.stack([images[j] for j in order[k:k + batch]]) for k in range(0, n, batch)]


def probe_run(run_dir: Path, batch: int) -> dict[str, Any]:
    """One run's teacher scored as trained and with both re-estimations."""
    import torch

    from tsal_dist.data.build import augmentation_args, build_run_data
    from tsal_dist.data.clips import ClipDataset
    from tsal_dist.data.datasets import LabeledImageDataset
    from tsal_dist.data.formats import read_list
    from tsal_dist.loop.checkpoint import latest_checkpoint, model_from_checkpoint
    from tsal_dist.loop.evaluation import evaluate_lists

    torch.manual_seed(0)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint to probe")
    cm = model_from_checkpoint(ckpt, "teacher")
    cfg, d, m = cm.config, cm.config.data, cm.config.model
    run_data = build_run_data(cfg, clips=False)  # the run's lists and its training images
    lists, train, aug = run_data.lists, run_data.labeled.entries, augmentation_args(d)
    videos = [e for p in lists.unlabeled for e in read_list(p)]
    sources = {}
    for augment in (False, True):
        sources[(1, augment)] = LabeledImageDataset(
            train, num_points=d.num_points, input_size=m.input_size,
            pre_crop_expand=d.pre_crop_expand, augment=augment, **aug), "image"
        sources[(3, augment)] = ClipDataset(
            videos, num_points=d.num_points, clip_length=d.clip_length,
            clip_stride=d.clip_stride, input_size=m.input_size,
            pre_crop_expand=d.pre_crop_expand, augment=augment, flow="none", **aug), "frames"
    models = {WAYS[0]: cm.model}
    seen = {}
    for (k, augment), (ds, key) in sources.items():
        way = WAYS[k + augment]
        models[way] = copy.deepcopy(cm.model)
        seen[way] = reestimate_bn(models[way], _batches(ds, key, batch))
    models = {w: models[w] for w in WAYS}
    scored = evaluate_lists(models, cfg, lists.eval)
    assert scored is not None  # one process: rank 0
    return {"run": run_dir.name, "checkpoint_step": cm.step, "images_seen": seen,
            "labeled": d.labeled_limit,
            "eval": {w: {ln: {"nme": s["nme_inter_ocular"], "fr@0.08": s["fr@0.08"],
                              "nmj": s.get("nmj")} for ln, s in per.items()}
                     for w, per in scored[0].items()}}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per way and test list: per-run values, mean, and Δ vs as trained paired by run."""
    out = []
    lists = list(runs[0]["eval"][WAYS[0]])
    for ln in lists:
        base = [r["eval"][WAYS[0]][ln]["nme"] for r in runs]
        for w in WAYS:
            vals = [r["eval"][w][ln]["nme"] for r in runs]
            nmj = [r["eval"][w][ln]["nmj"] for r in runs if r["eval"][w][ln]["nmj"] is not None]
            row = {"way": w, "test_set": ln, "per_run": vals,
                   "nme_mean": statistics.fmean(vals),
                   "nmj_mean": statistics.fmean(nmj) if nmj else None,
                   "fr_mean": statistics.fmean(r["eval"][w][ln]["fr@0.08"] for r in runs)}
            if w != WAYS[0] and len(runs) >= 2:
                row["delta"] = paired(dict(enumerate(vals)), dict(enumerate(base)))
                row["rel"] = row["delta"]["mean"] / statistics.fmean(base)
            out.append(row)
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# BN-statistics probe (H5): can the unlabeled video fix the normalisation?", "",
             f"`{doc['command']}` on {doc['machine']}; {doc['seconds']:.0f} s. Runs: "
             + ", ".join(r["run"] for r in doc["runs"]) + " (the teacher of each, its last "
             "checkpoint). Images used to re-estimate: "
             + "; ".join(f"{w}: {doc['runs'][0]['images_seen'][w]}" for w in WAYS[1:])
             + ". NME inter-ocular (%); Δ = way − as trained, paired by run, mean [95 % t "
             "interval], * where it excludes 0; negative is better.", "",
             "| statistics | test set | per run NME % | NME % mean | Δ pp [95 % CI] | rel. | "
             "FR@0.08 | video NMJ |", "|---|---|---|---:|---|---:|---:|---:|"]
    for r in doc["summary"]:
        d = r.get("delta")
        lines.append(
            f"| {r['way']} | {r['test_set']} | "
            + ", ".join(f"{100 * v:.2f}" for v in r["per_run"])
            + f" | {100 * r['nme_mean']:.2f} | {format_delta(d) if d else ''} | "
            + (f"{100 * r['rel']:+.1f} %" if d else "") + f" | {r['fr_mean']:.3f} | "
            + ("" if r["nmj_mean"] is None else f"{100 * r['nmj_mean']:.2f}") + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="supervised-only run folders")
    ap.add_argument("--batch", type=int, default=16, help="images per re-estimation batch")
    ap.add_argument("--results-name", default="bn_probe")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the results")
    args = ap.parse_args(argv)
    import torch

    t0 = time.time()
    runs = []
    for i, r in enumerate(args.runs, 1):
        runs.append(probe_run(Path(r), args.batch))
        print(f"[{i}/{len(args.runs)}] {runs[-1]['run']}: " + "; ".join(
            f"{w} " + ", ".join(f"{100 * s['nme']:.2f} %" for s in per.values())
            for w, per in runs[-1]["eval"].items()), flush=True)
    doc = {"command": " ".join(["python benchmarks/bn_probe.py", *(argv or sys.argv[1:])]),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, no GPU",
           "seconds": time.time() - t0, "runs": runs, "summary": summarise(runs)}
    out = Path(args.out)
    write_report(out, args.results_name, doc, markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
