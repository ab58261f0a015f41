"""Does tracking carry right landmarks into the frames where the model is wrong?

The semi-supervised diagnosis (``semi_supervised.md`` section 3, H4): TSAL's detection/tracking
consistency can only teach a model what it does not know if the tracked target is better than the
model's own prediction. This probe measures exactly that, without training, on the benchmark's
own supervised-only runs (the model TSAL starts from) and on its TRAINING videos (which training
reads without labels; their synthetic ground truth is read here only to score):

- ``own``: the model's prediction on each clip frame (what self-consistency reinforces);
- ``tracked``: the prediction on the clip's most confident frame (highest mean heatmap peak: what
  a method can choose without labels), carried to every other frame of the clip through the
  training tracking grids (the same DIS flow on the same crops) -- the target of a long-clip
  tracking consistency anchored where the model is surest;
- ``tracked_oracle``: the same from the clip frame where the model is least wrong (chosen with
  the ground truth: an upper bound for any anchor choice), against ``own`` on the same frames
  (its own anchor left out, k counted from it);
- ``error persistence``: per clip, the size of the clip-mean error vector over the mean size of
  the error vectors (1: the same error on every frame, which no anchor can avoid);
- ``drift``: the ground truth of the confident frame carried the same way (the tracker's own
  error), for the 51 inner points and the 17 jaw-line points apart (the jaw line is a silhouette:
  on a turning head it does not move with the skin that flow follows); its mean signed error
  (a constant offset would show there), the landmarks' true motion between adjacent frames (px
  of the crop) and the share of it the flow carries (median over clips of the carried
  displacement projected on the true one, anchor to farthest frame).

Every figure is per-frame NME (% inter-ocular) by distance k (frames) from the anchor, the anchor
frame itself left out; a carried point that leaves the crop is dropped from its frame's score (as
a training target drops it; the share is reported). Writes
``benchmarks/results/tracking_probe.{json,md}``::

    python benchmarks/tracking_probe.py --runs /tmp/ssl800/supervised-L50-s{0,1,2} \
        /tmp/ssl800/supervised-L200-s{0,1,2} --clip-length 8
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
JAW = tuple(range(17))
INNER = tuple(range(17, 68))
SOURCES = ("own", "tracked", "drift", "drift_inner", "drift_jaw")


def carry(points: Any, grids: Any, anchor: int) -> Any:
    """Carry (P, 2) crop-px points of frame ``anchor`` to every frame of a clip.

    ``grids`` (T-1, S, S, 2): ``grids[t]`` holds, for each pixel of frame t+1, where it comes from
    in frame t (``ClipDataset``'s ``grid``). Forward (t -> t+1) inverts the grid
    (``points_through_inverse_grid``); backward (t+1 -> t) reads it at the point.

    Returns:
        (T, P, 2) float64 numpy, row ``anchor`` = ``points``.
    """
    import torch
    import torch.nn.functional as F

    from tsal_dist.losses.consistency import points_through_inverse_grid

    g = torch.as_tensor(grids, dtype=torch.float32)
    p0 = torch.as_tensor(points, dtype=torch.float32)[None]
    t_len, s = g.shape[0] + 1, g.shape[1]
    out: list[Any] = [None] * t_len
    out[anchor] = p0[0]
    p = p0
    for t in range(anchor, t_len - 1):
        p = points_through_inverse_grid(p, g[t:t + 1])
        out[t + 1] = p[0]
    p = p0
    for t in range(anchor - 1, -1, -1):
        norm = (p / max(1, s - 1) * 2.0 - 1.0)[:, :, None]
        p = F.grid_sample(g[t:t + 1].permute(0, 3, 1, 2), norm, mode="bilinear",
                          padding_mode="border", align_corners=True)[..., 0].permute(0, 2, 1)
        out[t] = p[0]
    return torch.stack(out).double().numpy()


def subset_nme(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
               points: tuple[int, ...]) -> np.ndarray:
    """(N,) NME over ``points`` only, still normalised by the full face's inter-ocular distance."""
    from tsal_dist.eval.metrics import normalizer

    d = normalizer(gt, "inter_ocular", visible)
    idx = list(points)
    err = np.linalg.norm(pred[:, idx] - gt[:, idx], axis=-1)
    vis = np.asarray(visible, bool)[:, idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(vis, err, 0.0).sum(1) / (vis.sum(1) * d)


def annotated_videos(unlabeled_list: Path) -> Path:
    """The annotated twin of a synthetic unlabeled video list (``X.none`` -> ``X.lst``)."""
    twin = unlabeled_list.with_suffix(".lst")
    if unlabeled_list.suffix == ".none" and twin.is_file():
        return twin
    raise SystemExit(f"{unlabeled_list}: the probe scores against ground truth and needs the "
                     f"annotated list of these videos ({twin.name} not found)")


def probe_run(run_dir: Path, clip_length: int, which: str) -> dict[str, Any]:
    """Per-frame NMEs of every source (see the module docstring) over one run's training videos."""
    import torch

    from tsal_dist.data.clips import ClipDataset
    from tsal_dist.data.formats import read_list
    from tsal_dist.data.lists import resolve_data
    from tsal_dist.eval.metrics import nme
    from tsal_dist.loop.checkpoint import latest_checkpoint, model_from_checkpoint

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint to probe")
    cm = model_from_checkpoint(ckpt, which)
    cfg, model = cm.config, cm.model
    lists = resolve_data(cfg)
    entries = [e for p in lists.unlabeled for e in read_list(annotated_videos(Path(p)))]
    ds = ClipDataset(entries, num_points=cfg.data.num_points, clip_length=clip_length,
                     clip_stride=cfg.data.clip_stride, input_size=cfg.model.input_size,
                     pre_crop_expand=cfg.data.pre_crop_expand, augment=False, flow=cfg.data.flow)
    rows: dict[str, list[float]] = {k: [] for k in (*SOURCES, "k")}
    oracle: dict[str, list[float]] = {"own": [], "tracked_oracle": [], "k": []}
    dropped: list[float] = []
    motion: list[float] = []
    carried_share: list[float] = []
    persistence: list[float] = []
    signed: list[np.ndarray] = []
    size = cfg.model.input_size
    for i in range(len(ds)):
        item = ds.get(i, 0)
        with torch.no_grad():
            xy, score = model.codec.locate(model(item["frames"])["heatmaps"][-1])
        gt = item["landmarks"].double().numpy()
        vis = item["visible"].numpy()
        ok = vis > 0
        pred = xy.double().numpy()
        own = nme(pred, gt, visible=vis)
        anchor = int(np.argmax(score.mean(1).numpy()))
        best = int(np.nanargmin(own))

        def inside(carried: np.ndarray) -> np.ndarray:
            # a carried point that leaves the crop is dropped, as a training target would be
            return vis * ((carried >= 0) & (carried <= size - 1)).all(-1)

        def scored(carried: np.ndarray) -> np.ndarray:
            v = inside(carried)
            dropped.append(float(1 - v.sum() / max(1, ok.sum())))
            return nme(carried, gt, visible=v)

        got = {"own": own, "tracked": scored(carry(pred[anchor], item["grid"], anchor))}
        from_best = scored(carry(pred[best], item["grid"], best))
        gt_carried = carry(gt[anchor], item["grid"], anchor)
        got["drift"] = nme(gt_carried, gt, visible=inside(gt_carried))
        for name, idx in (("drift_inner", INNER), ("drift_jaw", JAW)):
            got[name] = subset_nme(gt_carried, gt, inside(gt_carried), idx)
        # how much of the model's error is the same on every frame of the clip: the error of
        # the clip-mean error vector over the mean error (1 = a constant bias; independent noise
        # would give about 1 / sqrt(T))
        err = pred - gt
        both = ok.all(0)
        if both.any():
            persistence.append(float(np.linalg.norm(err[:, both].mean(0), axis=-1).mean()
                                     / np.linalg.norm(err[:, both], axis=-1).mean()))
        # how far the landmarks really move, how much of it the flow carries (projection of the
        # carried displacement on the true one, anchor to farthest frame) and the tracker's mean
        # signed error (a constant offset would show here)
        step = np.linalg.norm(np.diff(gt, axis=0), axis=-1)[ok[1:] & ok[:-1]]
        motion.append(float(step.mean()) if step.size else float("nan"))
        far = 0 if anchor >= clip_length / 2 else clip_length - 1
        true_d = (gt[far] - gt[anchor])[ok[far] & ok[anchor]]
        got_d = (gt_carried[far] - gt[anchor])[ok[far] & ok[anchor]]
        if (true_d ** 2).sum() > 0:
            carried_share.append(float((true_d * got_d).sum() / (true_d ** 2).sum()))
        others = [t for t in range(clip_length) if t != anchor]
        signed.append((gt_carried - gt)[others][ok[others]])
        for t in others:
            for name in SOURCES:
                rows[name].append(float(got[name][t]))
            rows["k"].append(abs(t - anchor))
        for t in range(clip_length):  # the oracle: its own anchor left out, k from it
            if t != best:
                oracle["own"].append(float(own[t]))
                oracle["tracked_oracle"].append(float(from_best[t]))
                oracle["k"].append(abs(t - best))
    sg = np.concatenate(signed)
    return {"run": run_dir.name, "checkpoint_step": cm.step, "clips": len(ds), "frames": rows,
            "oracle_frames": oracle,
            "dropped_frac": float(np.mean(dropped)) if dropped else 0.0,
            "gt_motion_px_per_frame": float(np.nanmean(motion)),
            "flow_carried_share_median": float(np.median(carried_share)),
            "error_persistence_mean": float(np.mean(persistence)),
            "drift_signed_mean_px": [float(v) for v in sg.mean(0)],
            "drift_abs_mean_px": float(np.linalg.norm(sg, axis=-1).mean())}


def summarise(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    """Means (in %) per run, overall and by k; the share of frames where ``tracked`` beats
    ``own`` (frames where both are scored); the oracle against ``own`` on its own frames."""
    out: dict[str, Any] = {"runs": []}
    for r in per_run:
        f = {k: np.asarray(v, float) for k, v in r["frames"].items()}
        o = {k: np.asarray(v, float) for k, v in r["oracle_frames"].items()}
        both = np.isfinite(f["tracked"]) & np.isfinite(f["own"])
        out["runs"].append({
            "run": r["run"], "clips": r["clips"], "frames": int(f["k"].size),
            "mean_pct": {s: 100 * float(np.nanmean(f[s])) for s in SOURCES},
            "median_pct": {s: 100 * float(np.nanmedian(f[s])) for s in SOURCES},
            "oracle_mean_pct": {"own": 100 * float(np.nanmean(o["own"])),
                                "tracked_oracle": 100 * float(np.nanmean(o["tracked_oracle"]))},
            "carried_points_dropped_frac": r["dropped_frac"],
            "gt_motion_px_per_frame": r["gt_motion_px_per_frame"],
            "flow_carried_share_median": r["flow_carried_share_median"],
            "error_persistence_mean": r["error_persistence_mean"],
            "drift_signed_mean_px": r["drift_signed_mean_px"],
            "drift_abs_mean_px": r["drift_abs_mean_px"],
            "tracked_better_frac": float(np.mean(f["tracked"][both] < f["own"][both])),
            "by_k_pct": {str(k): {s: 100 * float(np.nanmean(f[s][f["k"] == k])) for s in SOURCES}
                         for k in sorted(set(f["k"].astype(int).tolist()))},
            "oracle_by_k_pct": {str(k): {s: 100 * float(np.nanmean(o[s][o["k"] == k]))
                                         for s in ("own", "tracked_oracle")}
                                for k in sorted(set(o["k"].astype(int).tolist()))}})
    means = {s: [r["mean_pct"][s] for r in out["runs"]] for s in SOURCES}
    out["over_runs"] = {s: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1))
                            if len(v) > 1 else 0.0} for s, v in means.items()}
    out["tracked_minus_own_pct"] = [r["mean_pct"]["tracked"] - r["mean_pct"]["own"]
                                    for r in out["runs"]]
    out["oracle_minus_own_pct"] = [r["oracle_mean_pct"]["tracked_oracle"]
                                   - r["oracle_mean_pct"]["own"] for r in out["runs"]]
    return out


def markdown(doc: dict[str, Any]) -> str:
    s, m = doc["summary"], doc["meta"]
    lines = [f"# Tracking probe ({m['date']})", "",
             f"Machine: {m['machine']}. Command: `{m['command']}`. Clips of {m['clip_length']} "
             f"frames of the training videos, no augmentation, the runs' own flow "
             f"({m['flow']}) on the {m['input_size']} px crops; the {m['which']} of each run's "
             "last checkpoint. NME in % of the inter-ocular distance, per frame, the anchor "
             "frame left out (module docstring of `benchmarks/tracking_probe.py`); the oracle "
             "(the clip frame where the model is least wrong, chosen with the ground truth) is "
             "compared with the model's own prediction on the same frames (its anchor left out).",
             "",
             "| run | frames | own | tracked (confident anchor) | tracked better than own | "
             "own, oracle's frames | tracked (oracle anchor) | error persistence | "
             "carried points dropped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in s["runs"]:
        p, o = r["mean_pct"], r["oracle_mean_pct"]
        lines.append(f"| {r['run']} | {r['frames']} | {p['own']:.2f} | {p['tracked']:.2f} | "
                     f"{100 * r['tracked_better_frac']:.0f} % | {o['own']:.2f} | "
                     f"{o['tracked_oracle']:.2f} | {r['error_persistence_mean']:.2f} | "
                     f"{100 * r['carried_points_dropped_frac']:.1f} % |")
    lines += ["", "error persistence: per clip, the size of the clip-mean error vector over the "
              "mean size of the error vectors (1 = the same error on every frame; independent "
              f"errors would give about 1/sqrt({m['clip_length']}) = "
              f"{1 / np.sqrt(m['clip_length']):.2f}), mean over clips.", "",
              "The tracker alone (the ground truth of the confident frame carried along the "
              "clip):", "",
              "| run | drift NME (all / inner 51 / jaw 17) | mean signed error, px (x, y) | mean "
              "error, px | true motion, px/frame | share of it the flow carries |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in s["runs"]:
        p = r["mean_pct"]
        sx, sy = r["drift_signed_mean_px"]
        lines.append(f"| {r['run']} | {p['drift']:.2f} / {p['drift_inner']:.2f} / "
                     f"{p['drift_jaw']:.2f} | {sx:+.3f}, {sy:+.3f} | "
                     f"{r['drift_abs_mean_px']:.3f} | {r['gt_motion_px_per_frame']:.2f} | "
                     f"{100 * r['flow_carried_share_median']:.0f} % |")
    lines += ["", "By distance k from the anchor (mean over runs of each run's mean):", "",
              "| k | own | tracked | drift | drift inner | drift jaw | own (oracle's frames) | "
              "tracked (oracle anchor) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    ks = sorted({int(k) for r in s["runs"] for k in (*r["by_k_pct"], *r["oracle_by_k_pct"])})
    for k in ks:
        def mean_of(key: str, src: str) -> float:
            v = [r[key][str(k)][src] for r in s["runs"] if str(k) in r[key]]
            return float(np.mean(v)) if v else float("nan")
        vals = [mean_of("by_k_pct", src) for src in SOURCES] + \
            [mean_of("oracle_by_k_pct", src) for src in ("own", "tracked_oracle")]
        lines.append(f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run folders (with checkpoints/)")
    p.add_argument("--clip-length", type=int, default=8)
    p.add_argument("--which", choices=["teacher", "student"], default="teacher")
    p.add_argument("--out", default=str(RESULTS), help="folder for tracking_probe.{json,md}")
    args = p.parse_args(argv)
    if args.clip_length < 2:
        p.error("--clip-length must be >= 2")
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    per_run = []
    for r in args.runs:
        per_run.append(probe_run(Path(r), args.clip_length, args.which))
        print(f"{per_run[-1]['run']}: {per_run[-1]['clips']} clips "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    from tsal_dist.config import load_config

    cfg = load_config(Path(args.runs[0]) / "config.yaml")
    doc = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": f"{platform.machine()}, no GPU, Python "
                               f"{platform.python_version()}, one thread",
                    "command": " ".join(["python benchmarks/tracking_probe.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
                    "clip_length": args.clip_length, "which": args.which,
                    "flow": cfg.data.flow, "input_size": cfg.model.input_size},
           "summary": summarise(per_run)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, "tracking_probe", doc, markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
