"""Which part of the wide domain costs the narrow-label model its error?

The semi-supervised benchmark (``semi_supervised.md``) labels images from a narrow domain
(near-frontal, unoccluded, even light, mild expression, sharp) and tests on the wide one. The
ceiling (wide-domain labels) is 35 % better, so the domain gap is what unlabeled wide-domain
video would have to close. This probe measures, without training, which factor of the domain the
gap is made of: the same unseen faces (one generator seed, so identity, background and camera are
the same in every set; ``DomainConfig`` narrows draws without skipping any) rendered once per
domain that widens ONE factor of ``NARROW_DOMAIN`` to the wide bound, plus the narrow and the wide
domain themselves, and each run's teacher scored on every set (NME inter-ocular, FR@0.08).

Δ = factor set − narrow set, paired by run (seed), mean [95 % t interval]: the error that the
factor adds at the wide domain's own rates (occluders on 20 % of faces, blur on 45 %), so that the
rows can be compared with the whole gap (wide − narrow).

Second, what the unlabeled training videos offer along the main factor, head pose: on their
frames (the generator keeps their ground truth, which no method reads), each run's teacher's
error by the ground-truth head turn (``data.schemes.head_turn``), how its own landmarks report
the turn (the slope and correlation of predicted against true |turn|), and what a turn limit on
its own landmarks (``loss.pseudo_max_turn``) keeps: the share of frames, their pseudo-labels'
NME and the true turn they reach. Writes
``benchmarks/results/domain_probe.{json,md}``::

    python benchmarks/domain_probe.py --runs /tmp/ssl2000/supervised-L50-s{0,1,2} \
        /tmp/ssl2000/tsal-published-queue-L50-s{0,1,2}
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _results_io import write_report
from _stats import format_delta, paired

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def factor_domains() -> dict[str, Any]:
    """{set name: DomainConfig}: narrow, one widened factor each, wide."""
    from tsal_dist.config.experiment import NARROW_DOMAIN, DomainConfig

    wide = DomainConfig()
    one = {"yaw 55": ("yaw_max_deg",), "pitch + roll": ("pitch_max_deg", "roll_max_deg"),
           "occluders": ("occluder_rate",), "side light": ("side_light",),
           "expression": ("expression",), "blur": ("blur_rate",)}
    sets = {"narrow": NARROW_DOMAIN}
    for yaw in (25.0, 35.0, 45.0):  # the error against the yaw bound, up to the wide 55
        sets[f"yaw {yaw:.0f}"] = dataclasses.replace(NARROW_DOMAIN, yaw_max_deg=yaw)
    for name, fields in one.items():
        sets[name] = dataclasses.replace(NARROW_DOMAIN,
                                         **{f: getattr(wide, f) for f in fields})
    sets["wide"] = wide
    return sets


def make_sets(root: Path, images: int, size: int, seed: int) -> dict[str, Path]:
    """Render every set (cached under ``root``) and return {set name: list file}."""
    from tsal_dist.data.synthetic.dataset import generate_dataset

    lists = {}
    for name, dom in factor_domains().items():
        out = root / name.replace(" + ", "_").replace(" ", "")
        if not (out / "manifest.json").is_file():
            generate_dataset(out, images=images, test_images=1, videos=0, test_videos=0,
                             frames=1, image_size=size, seed=seed, labeled_domain=dom,
                             progress=False)
        lists[name] = out / "lists" / "synthetic.train.lst"
    return lists


JAW = slice(0, 17)  # ibug 68: the jaw line; 17-67 the inner points (brows, nose, eyes, mouth)


def point_errors(preds: Any, gts: Any) -> Any:
    """(N, 68) error of every point in inter-ocular distances (outer eye corners 36, 45),
    computed here, independently of the evaluator (``probe_run`` checks its mean against it)."""
    import numpy as np

    from tsal_dist.data.schemes import IBUG68

    left, right = IBUG68.eye_corners
    io = np.linalg.norm(gts[:, left] - gts[:, right], axis=-1)[:, None]
    return np.linalg.norm(preds - gts, axis=-1) / io


def split_nme(preds: Any, gts: Any) -> dict[str, float]:
    """Mean NME over all 68 points, over the jaw line's 17 and over the 51 inner points
    (:func:`point_errors`)."""
    err = point_errors(preds, gts)
    return {"all": float(err.mean()), "jaw": float(err[:, JAW].mean()),
            "inner": float(err[:, JAW.stop:].mean())}


def probe_run(run_dir: Path, lists: dict[str, Path]) -> dict[str, Any]:
    """The run's teacher scored on every set: NME, FR@0.08, jaw and inner points apart."""
    import torch

    from tsal_dist.eval.run import evaluate_list
    from tsal_dist.loop.checkpoint import latest_checkpoint, model_from_checkpoint
    from tsal_dist.loop.evaluation import list_eval_args

    torch.manual_seed(0)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint to probe")
    cm = model_from_checkpoint(ckpt, "teacher")
    scores = {}
    for name, lst in lists.items():
        r = evaluate_list(cm.model.eval(), lst, **list_eval_args(cm.config), batch_size=32)
        assert r is not None  # one process: rank 0
        if r.summary["n_bad_skipped"] or r.summary["n_unlabeled_skipped"]:
            raise SystemExit(f"{lst}: faces skipped ({r.summary['problems']}); every face "
                             "must be scored")
        parts = split_nme(r.preds, r.gts)
        if abs(parts["all"] - r.summary["nme_inter_ocular"]) > 1e-6:
            raise SystemExit(f"{lst}: NME {parts['all']} here against the evaluator's "
                             f"{r.summary['nme_inter_ocular']}")
        scores[name] = {"nme": parts["all"], "nme_jaw": parts["jaw"],
                        "nme_inner": parts["inner"], "fr@0.08": r.summary["fr@0.08"]}
    return {"run": run_dir.name, "checkpoint_step": cm.step, "scores": scores}


TURN_BINS = (0.0, 0.13, 0.2, 0.29, 0.4, float("inf"))  # ~15, 25, 35, 45 deg of yaw (GT sets)
TURN_LIMITS = (0.15, 0.2, 0.25, 0.3)


def video_turns(preds: Any, gts: Any) -> dict[str, Any]:
    """Pseudo-label quality against the true head turn: per-frame NME by true |turn| bin, the
    fit of predicted on true |turn|, and per limit on the predicted |turn| what is kept."""
    import numpy as np

    from tsal_dist.data.schemes import IBUG68, head_turn

    nme = point_errors(preds, gts).mean(1)  # per frame
    tp, tg = np.abs(head_turn(preds, IBUG68)), np.abs(head_turn(gts, IBUG68))
    bins = []
    for lo, hi in itertools.pairwise(TURN_BINS):
        k = (tg >= lo) & (tg < hi)
        bins.append({"lo": lo, "hi": hi, "share": float(k.mean()),
                     "nme": float(nme[k].mean()) if k.any() else None})
    limits = []
    for lim in TURN_LIMITS:
        k = tp <= lim
        limits.append({"limit": lim, "kept": float(k.mean()),
                       "nme_kept": float(nme[k].mean()) if k.any() else None,
                       "nme_dropped": float(nme[~k].mean()) if (~k).any() else None,
                       "true_turn_p95_kept": float(np.percentile(tg[k], 95)) if k.any() else None})
    return {"frames": len(nme), "nme": float(nme.mean()),
            "turn_slope": float(np.polyfit(tg, tp, 1)[0]),
            "turn_corr": float(np.corrcoef(tp, tg)[0, 1]), "bins": bins, "limits": limits}


def teacher_on_videos(run_dir: Path, video_size: int | None = None,
                      cache_dir: Path | None = None) -> tuple[Any, Any, Path]:
    """The run's teacher (last checkpoint) on every frame of its unlabeled training videos:
    predictions and the ground truth the generator keeps, (F, 68, 2) image px each, in the order
    of the annotated list (returned too).

    Args:
        video_size: render the run's training videos again at this frame side (px) and score
            the teacher on those (:func:`videos_at`); None: the run's own video files.
        cache_dir: where the re-rendered videos are kept (default: the run's data cache).
    """
    from tsal_dist.data.lists import resolve_data
    from tsal_dist.eval.run import evaluate_list
    from tsal_dist.loop.checkpoint import latest_checkpoint, model_from_checkpoint
    from tsal_dist.loop.evaluation import list_eval_args

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint to probe")
    cm = model_from_checkpoint(ckpt, "teacher")
    if video_size is not None:
        lst = videos_at(cm.config, video_size, cache_dir)
    else:
        unlabeled = resolve_data(cm.config).unlabeled[0]
        # the same frames with their annotations (dataset_lists: videos_train next to the .none)
        lst = unlabeled.with_suffix(".lst")
    if not lst.is_file():
        raise SystemExit(f"{lst}: no annotated list of the unlabeled videos (synthetic data only)")
    r = evaluate_list(cm.model.eval(), lst, **list_eval_args(cm.config), batch_size=32)
    assert r is not None
    if r.summary["n_bad_skipped"] or r.summary["n_unlabeled_skipped"]:
        raise SystemExit(f"{lst}: frames skipped ({r.summary['problems']}); every frame must be "
                         "scored")
    return r.preds, r.gts, lst


def videos_at(cfg: Any, size: int, cache_dir: Path | None = None) -> Path:
    """The annotated list of a synthetic run's unlabeled training videos rendered again with
    frames of ``size`` px: each video drawn from its own seed as in the run's dataset, so the same
    people, head poses, expressions and motion, every length in proportion to the frame: at 2x
    the size the landmarks are 2x the run's, up to one constant shift per video (the margin that
    keeps the face inside the frame is in pixels; a test checks it). Generated once per size into
    ``cache_dir`` (default the run's ``data.cache_dir``)."""
    from tsal_dist.data.synthetic import dataset_lists, ensure_synthetic

    if cfg.data.root:
        raise SystemExit(f"--video-size: the run's data is {cfg.data.root}, not synthetic; only "
                         "synthetic videos can be rendered again")
    s = cfg.data.synthetic
    if s.videos < 1:
        raise SystemExit("--video-size: the run's synthetic data has no training videos")
    root = ensure_synthetic(Path(cache_dir or cfg.data.cache_dir).expanduser(), images=1,
                            test_images=1, videos=s.videos, test_videos=0, frames=s.frames,
                            image_size=size, seed=s.seed, progress=False)
    return dataset_lists(root)["videos_train"]


def probe_videos(run_dir: Path) -> dict[str, Any]:
    """The run's teacher on its unlabeled training videos' frames, scored with their ground truth
    (:func:`video_turns`)."""
    preds, gts, _ = teacher_on_videos(run_dir)
    return {"run": run_dir.name, **video_turns(preds, gts)}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _method(run_name: str) -> str:
    return run_name.rsplit("-L", 1)[0]


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and set: per-run NME, mean, Δ vs the narrow set paired by run, and the share
    of the whole gap (wide − narrow) that the set's Δ is."""
    out = []
    for method in dict.fromkeys(_method(r["run"]) for r in runs):
        rs = [r for r in runs if _method(r["run"]) == method]
        base = {r["run"]: r["scores"]["narrow"]["nme"] for r in rs}
        gap = statistics.fmean(r["scores"]["wide"]["nme"] - r["scores"]["narrow"]["nme"]
                               for r in rs)
        for name in rs[0]["scores"]:
            vals = {r["run"]: r["scores"][name]["nme"] for r in rs}
            row = {"method": method, "set": name, "runs": list(vals),
                   "per_run": list(vals.values()), "nme_mean": statistics.fmean(vals.values()),
                   "jaw_mean": statistics.fmean(r["scores"][name]["nme_jaw"] for r in rs),
                   "inner_mean": statistics.fmean(r["scores"][name]["nme_inner"] for r in rs),
                   "fr_mean": statistics.fmean(r["scores"][name]["fr@0.08"] for r in rs)}
            if name != "narrow":
                row["delta"] = paired(vals, base)
                row["share_of_gap"] = row["delta"]["mean"] / gap if gap else None
            out.append(row)
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Domain probe: which factor of the wide domain costs the error", "",
             (f"`{doc['command']}` on {doc['machine']}; {doc['seconds']:.0f} s. "
             f"{doc['images']} unseen faces at {doc['image_size']} px (generator seed "
             f"{doc['seed']}, the same faces in every set), each set `NARROW_DOMAIN` with one "
             "factor widened to the wide bound (yaw 55°; pitch 25° and roll 30°; occluders on "
             "20 % of faces; side light; full expression; blur on 45 %), plus the narrow and the "
             "wide domain. Each run's teacher, its last checkpoint. NME inter-ocular (%); "
             "Δ = set − narrow set, paired by run, mean [95 % t interval], * where it excludes 0; "
             "share = Δ / (wide − narrow); jaw = the 17 jaw-line points' mean error, inner = the "
             "51 others' (same normaliser)."), "",
             ("| method | set | per run NME % | NME % mean | Δ vs narrow pp [95 % CI] | share of "
             "gap | jaw % | inner % | FR@0.08 |"), "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in doc["summary"]:
        d = r.get("delta")
        share = r.get("share_of_gap")
        lines.append(f"| {r['method']} | {r['set']} | "
                     + ", ".join(f"{100 * v:.2f}" for v in r["per_run"])
                     + f" | {100 * r['nme_mean']:.2f} | {format_delta(d) if d else ''} | "
                     + ("" if share is None else f"{100 * share:.0f} %")
                     + f" | {100 * r['jaw_mean']:.2f} | {100 * r['inner_mean']:.2f}"
                     + f" | {r['fr_mean']:.3f} |")
    if doc.get("videos"):
        lines += ["", "## The unlabeled training videos along head pose", "",
                  ("Each teacher on the frames of the unlabeled training videos, scored with the "
                  "ground truth the generator keeps (no method reads it). |turn| = "
                  "`head_turn` (nose tip against the eye corners, inter-ocular distances; on the "
                  "rendered sets ~0.13 bounds 95 % of faces within 15° of yaw, 0.2 within 25°, "
                  "0.29 within 35°, 0.5 within 55°). Slope / corr: predicted |turn| regressed on "
                  "the true one."), "",
                  "| run | frames | NME % | slope | corr | "
                  + " | ".join(f"true |turn| {b['lo']:g}-{b['hi']:g}: share, NME %"
                               for b in doc["videos"][0]["bins"])
                  + " |", "|---|---:|---:|---:|---:|" + "---|" * len(doc["videos"][0]["bins"])]
        for v in doc["videos"]:
            lines.append(f"| {v['run']} | {v['frames']} | {100 * v['nme']:.2f} | "
                         f"{v['turn_slope']:.2f} | {v['turn_corr']:.2f} | " + " | ".join(
                             f"{b['share']:.2f}, " + ("–" if b["nme"] is None
                                                       else f"{100 * b['nme']:.2f}")
                             for b in v["bins"]) + " |")
        lines += ["", ("A limit on the teacher's own |turn| (`loss.pseudo_max_turn`): frames kept, "
                  "their pseudo-labels' NME, the dropped frames' NME, the true |turn| that 95 % "
                  "of the kept frames stay within."), "",
                  "| run | " + " | ".join(f"limit {x:g}: kept, NME kept / dropped %, true p95"
                                         for x in TURN_LIMITS) + " |",
                  "|---|" + "---|" * len(TURN_LIMITS)]
        for v in doc["videos"]:
            lines.append(f"| {v['run']} | " + " | ".join(
                f"{x['kept']:.2f}, {_pct(x['nme_kept'])} / {_pct(x['nme_dropped'])}, "
                + ("–" if x["true_turn_p95_kept"] is None else f"{x['true_turn_p95_kept']:.2f}")
                for x in v["limits"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (method-L<n>-s<seed>)")
    ap.add_argument("--images", type=int, default=200, help="faces per set")
    ap.add_argument("--image-size", type=int, default=128, help="rendered side (the benchmark's)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (0 = the training faces)")
    ap.add_argument("--data", default="/tmp/domain_probe_data", help="cache of the rendered sets")
    ap.add_argument("--results-name", default="domain_probe")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the results")
    args = ap.parse_args(argv)
    if args.seed == 0:
        ap.error("--seed 0 renders the training faces; pick another")
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    lists = make_sets(Path(args.data), args.images, args.image_size, args.seed)
    print(f"rendered {len(lists)} sets in {time.time() - t0:.0f} s", flush=True)
    runs = []
    for i, r in enumerate(args.runs, 1):
        runs.append(probe_run(Path(r), lists))
        print(f"[{i}/{len(args.runs)}] {runs[-1]['run']}: " + ", ".join(
            f"{k} {100 * s['nme']:.2f}" for k, s in runs[-1]["scores"].items()), flush=True)
    videos = [probe_videos(Path(r)) for r in args.runs]
    doc = {"command": " ".join(["python benchmarks/domain_probe.py", *(argv or sys.argv[1:])]),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} thread, no GPU",
           "seconds": time.time() - t0, "images": args.images, "image_size": args.image_size,
           "seed": args.seed, "runs": runs, "summary": summarise(runs), "videos": videos}
    out = Path(args.out)
    write_report(out, args.results_name, doc, markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
