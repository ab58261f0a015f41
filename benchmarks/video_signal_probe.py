"""Do the unlabeled videos hold a signal that is right where the narrow-label teacher is wrong?

The semi-supervised benchmark's gap is head pose (``domain_probe.md``): the teacher, trained on
near-frontal labels, is biased on turned faces, and correct labels on turned faces would be
worth 16-20 % on the test images (H8 bound, ``semi_supervised.md`` section 3). Its own landmarks
cannot supply them (H2, H3, H8), nor can 8-frame clips tracked on the 64 px crops (H4). This
probe measures, without training, the two further signals a video offers across ALL its frames,
each scored against the ground truth the generator keeps (no method reads it) and set against
the teacher's own landmarks on the same frames, by the true head turn (``head_turn``):

- **structure**: the person's face is the same 3D shape in every frame of a video, so the
  teacher's landmarks over the whole video, fitted by one shape seen through a per-frame affine
  camera (a rank-r factorisation of the centred landmarks: r = 3 rigid, up to an affine
  transform of 3D since the cameras carry no metric constraint; r = 4, 5 a little non-rigid
  freedom beyond it, where a full mode of expression would add 3), give every frame a target
  constrained by every other frame.
  ``structure-frontal`` weighs the frames by how frontal the teacher sees them (its own
  |turn|: weight exp(-(turn / 0.1)^2)), so the shape comes mostly from where it is right. The
  same fit of the ground truth is the model's floor (perspective and expression it leaves out).
- **long tracking**: pyramidal Lucas-Kanade on the full frames, chained frame to frame from the
  frame the teacher sees most frontal (its own |turn|, the anchor) to every other frame of the
  video: the teacher's landmarks there, carried. The ground truth at the anchor carried the
  same way is the best any anchor could give (the tracker's own drift).

A signal pays only where it beats the teacher's own landmarks on the turned frames. Writes
``benchmarks/results/video_signal_probe.{json,md}``::

    python benchmarks/video_signal_probe.py --runs /tmp/ssl2000/supervised-L50-s{0,1,2} \\
        /tmp/ssl2000/tsal-published-queue-L50-s{0,1,2}

``--video-size PX`` renders the runs' training videos again with PX px frames (the same people,
poses and motion; ``domain_probe.videos_at``) and probes those instead: what sharper video buys
the tracker, with the teacher still seeing its own input size (``--lk-window`` to match).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results_io import write_report
from _stats import format_delta, paired
from domain_probe import TURN_BINS, point_errors, teacher_on_videos

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
RANKS = (3, 4, 5)
FRONTAL_SCALE = 0.1  # structure-frontal: frame weight exp(-(|turn| / 0.1)^2)
LK_WINDOW = 21  # px, on the 128 px frames (9 to 31 measured: 21 drifts least)
LK_LEVELS = 3


def structure_fit(points: Any, rank: int, weights: Any = None) -> Any:
    """Every frame's landmarks re-predicted by one shape through a per-frame affine camera.

    Args:
        points: (F, N, 2) one video's landmarks.
        rank: 3 = a rigid shape (any 3D shape under an affine camera); more adds modes of
            deformation shared by the video.
        weights: (F,) frame weights (default equal): the fit minimises the weighted squared
            error, frame rows scaled by sqrt(weight), which the SVD solves exactly.

    Returns:
        (F, N, 2): the fit (each frame's own centroid kept).
    """
    import numpy as np

    p = np.asarray(points, np.float64)
    f, n, _ = p.shape
    w = np.ones(f) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (f,) or np.any(w <= 0):
        raise ValueError(f"weights: {f} positive frame weights expected")
    centre = p.mean(1, keepdims=True)
    rows = (p - centre).transpose(0, 2, 1).reshape(2 * f, n)  # x row, y row per frame
    sw = np.sqrt(np.repeat(w, 2))[:, None]
    u, s, vt = np.linalg.svd(sw * rows, full_matrices=False)
    k = min(rank, len(s))
    fit = (u[:, :k] * s[:k]) @ vt[:k] / sw
    return fit.reshape(f, 2, n).transpose(0, 2, 1) + centre


def track(frames: list[Any], points: Any, start: int, window: int = LK_WINDOW) -> Any:
    """``points`` (N, 2) of frame ``start`` carried to every frame of ``frames`` (grey uint8),
    pyramidal Lucas-Kanade (``window`` px) chained frame to frame in each direction: (F, N, 2)."""
    import cv2
    import numpy as np

    out = np.empty((len(frames), len(points), 2))
    out[start] = points
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    for step in (1, -1):
        p = np.asarray(points, np.float32).reshape(-1, 1, 2)
        t = start
        while 0 <= t + step < len(frames):
            p, _, _ = cv2.calcOpticalFlowPyrLK(frames[t], frames[t + step], p, None,
                                               winSize=(window, window),
                                               maxLevel=LK_LEVELS, criteria=crit)
            t += step
            out[t] = p.reshape(-1, 2)
    return out


def grey_frames(path: Path) -> list[Any]:
    """Every frame of a video file, grey uint8."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))
    finally:
        cap.release()
    if not frames:
        raise SystemExit(f"{path}: no frame could be decoded")
    return frames


def frame_width(path: Path) -> int:
    """A video file's frame width in px, from its header (nothing decoded)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    finally:
        cap.release()
    if width <= 0:
        raise SystemExit(f"{path}: cannot read its frame size")
    return width


def video_frames(list_path: Path) -> list[tuple[Path, list[int]]]:
    """(video file, its rows in the list in frame order) per video of an annotated list whose
    rows name ``video#frame``."""
    from tsal_dist.data.formats import read_list, split_video_ref

    videos: dict[Path, list[tuple[int, int]]] = {}
    for row, e in enumerate(read_list(list_path)):
        ref = split_video_ref(e.image)
        if ref is None:
            raise SystemExit(f"{list_path}: row {row + 1} is not a video frame ({e.image})")
        videos.setdefault(Path(ref[0]), []).append((int(ref[1]), row))
    out = []
    for path, rows in videos.items():
        rows.sort()
        if [f for f, _ in rows] != list(range(len(rows))):
            raise SystemExit(f"{list_path}: {path.name} does not list every frame from 0")
        out.append((path, [r for _, r in rows]))
    return out


def signals(preds: Any, gts: Any, videos: list[tuple[Path, list[int]]],
            frames_of: Any = grey_frames, window: int = LK_WINDOW) -> dict[str, Any]:
    """Per frame: the teacher's own landmarks and every signal's target (module docstring).

    Returns {name: (F, 68, 2)} in list order, the anchors' rows excluded from ``tracked*`` by
    leaving them NaN (the anchor's own landmarks are not a carried target)."""
    import numpy as np

    from tsal_dist.data.schemes import IBUG68, head_turn

    preds, gts = np.asarray(preds, np.float64), np.asarray(gts, np.float64)
    out = {"own": preds}
    for r in RANKS:
        out[f"structure-r{r}"] = np.full_like(preds, np.nan)
        out[f"structure-frontal-r{r}"] = np.full_like(preds, np.nan)
        out[f"gt structure-r{r}"] = np.full_like(preds, np.nan)
    out["tracked"] = np.full_like(preds, np.nan)
    out["gt tracked"] = np.full_like(preds, np.nan)
    for path, rows in videos:
        p, g = preds[rows], gts[rows]
        turn = np.abs(head_turn(p, IBUG68))
        w = np.exp(-(turn / FRONTAL_SCALE) ** 2) + 1e-3
        for r in RANKS:
            out[f"structure-r{r}"][rows] = structure_fit(p, r)
            out[f"structure-frontal-r{r}"][rows] = structure_fit(p, r, w)
            out[f"gt structure-r{r}"][rows] = structure_fit(g, r)
        frames = frames_of(path)
        if len(frames) != len(rows):
            raise SystemExit(f"{path}: {len(frames)} frames decoded, {len(rows)} listed")
        anchor = int(np.argmin(turn))
        carried = track(frames, p[anchor], anchor, window)
        carried_gt = track(frames, g[anchor], anchor, window)
        carried[anchor] = carried_gt[anchor] = np.nan
        out["tracked"][rows] = carried
        out["gt tracked"][rows] = carried_gt
    return out


def by_turn(targets: dict[str, Any], gts: Any) -> dict[str, Any]:
    """Mean NME of every target per true |turn| bin (TURN_BINS) and over all frames, and the
    teacher's own (``targets["own"]``) on the same frames (``own_same_frames``: a target left
    NaN on some frames, as ``tracked`` on the anchors, is compared on the frames it has)."""
    import numpy as np

    from tsal_dist.data.schemes import IBUG68, head_turn

    turn = np.abs(head_turn(np.asarray(gts, np.float64), IBUG68))
    bins = [(turn >= lo) & (turn < hi) for lo, hi in itertools.pairwise(TURN_BINS)]

    def means(nme: Any, ok: Any) -> dict[str, Any]:
        return {"all": float(nme[ok].mean()),
                "bins": [float(nme[ok & b].mean()) if (ok & b).any() else None for b in bins]}

    own = point_errors(targets["own"], gts).mean(1)
    res = {}
    for name, x in targets.items():
        nme = point_errors(x, gts).mean(1)
        ok = np.isfinite(nme)
        res[name] = {**means(nme, ok), "own_same_frames": means(own, ok)}
    res["_share"] = [float(b.mean()) for b in bins]
    return res


def probe_run(run_dir: Path, video_size: int | None = None, window: int = LK_WINDOW,
              cache_dir: Path | None = None) -> dict[str, Any]:
    preds, gts, lst = teacher_on_videos(run_dir, video_size, cache_dir)
    videos = video_frames(lst)
    return {"run": run_dir.name, "frames": len(preds), "videos": len(videos),
            "video_size": frame_width(videos[0][0]),
            "nme": by_turn(signals(preds, gts, videos, window=window), gts)}


def _method(run_name: str) -> str:
    return run_name.rsplit("-L", 1)[0]


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, signal and turn bin (and all frames): mean NME over the runs and the
    difference to the teacher's own landmarks on the same frames, paired by run."""
    out = []
    nb = len(TURN_BINS) - 1
    for method in dict.fromkeys(_method(r["run"]) for r in runs):
        rs = [r for r in runs if _method(r["run"]) == method]
        for name in rs[0]["nme"]:
            if name.startswith("_"):
                continue
            row: dict[str, Any] = {"method": method, "signal": name, "runs": len(rs)}
            for b in [*range(nb), "all"]:
                def val(d: dict[str, Any], b: Any = b) -> float | None:
                    return d["all"] if b == "all" else d["bins"][b]
                vals = {r["run"]: val(r["nme"][name]) for r in rs
                        if val(r["nme"][name]) is not None}
                own = {r["run"]: val(r["nme"][name]["own_same_frames"]) for r in rs
                       if val(r["nme"][name]["own_same_frames"]) is not None}
                row[str(b)] = {"nme_mean": statistics.fmean(vals.values()) if vals else None,
                               "delta_vs_own": None if name == "own" else paired(vals, own)}
            out.append(row)
    return out


def _frames_phrase(doc: dict[str, Any]) -> str:
    sizes = sorted({r.get("video_size") for r in doc["runs"]} - {None})
    px = "/".join(str(x) for x in sizes) + " px frames" if sizes else "frames"
    return (f"{px}, rendered again from the runs' video seeds" if doc.get("video_size")
            else f"the runs' own files, {px}")


def markdown(doc: dict[str, Any]) -> str:
    nb = len(TURN_BINS) - 1
    share = [statistics.fmean(r["nme"]["_share"][b] for r in doc["runs"]) for b in range(nb)]
    heads = [f"{lo:g}-{hi:g} ({100 * s:.0f} %)"
             for (lo, hi), s in zip(itertools.pairwise(TURN_BINS), share)]
    lines = [("# Video signal probe: is anything in the unlabeled videos right where the teacher "
              "is wrong?"), "",
             (f"`{doc['command']}` on {doc['machine']}; {doc['seconds']:.0f} s. Each run's "
              f"teacher (last checkpoint) on the {doc['runs'][0]['frames']} frames of its "
              f"{doc['runs'][0]['videos']} unlabeled training videos "
              f"({_frames_phrase(doc)}), every target scored with "
              "the generator's ground truth: NME inter-ocular (%) by the true |turn| "
              "(`head_turn`; ~0.13 bounds 15° of yaw, 0.2 25°, 0.29 35°, 0.4 45°; the share of "
              "frames in brackets). own = the teacher's landmarks; structure-r = one shape per "
              "video through per-frame affine cameras, rank r (3 rigid); structure-frontal = the "
              "same weighted to the frames the teacher sees frontal; tracked = its landmarks on "
              f"the frame it sees most frontal, carried by Lucas-Kanade "
              f"({doc.get('lk_window', LK_WINDOW)} px window, "
              f"{LK_LEVELS} levels) chained over the full frames; gt = the same applied to the "
              "ground truth (the signal's floor). Δ vs own on the same frames (the tracked rows "
              "leave out each video's anchor frame) paired by run, mean [95 % t interval], * "
              "where it excludes 0; negative = the signal is better. The runs of a method differ "
              "in their seed, not in their videos (every run sees the same ones), so an interval "
              "is the spread over teachers, not over videos."), ""]
    for method in dict.fromkeys(r["method"] for r in doc["summary"]):
        runs = next(r["runs"] for r in doc["summary"] if r["method"] == method)
        lines += [f"## {method} ({runs} runs)", "",
                  "| signal | all frames | " + " | ".join(f"|turn| {h}" for h in heads) + " |",
                  "|---|---|" + "---|" * nb]
        for r in doc["summary"]:
            if r["method"] != method:
                continue
            cells = []
            for b in ["all", *range(nb)]:
                c = r[str(b)]
                txt = "–" if c["nme_mean"] is None else f"{100 * c['nme_mean']:.2f}"
                if c["delta_vs_own"]:
                    txt += f", {format_delta(c['delta_vs_own'])}"
                cells.append(txt)
            lines.append(f"| {r['signal']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (method-L<n>-s<seed>)")
    ap.add_argument("--video-size", type=int, default=None, metavar="PX",
                    help="render the runs' training videos again with frames of PX px (the same "
                         "people, poses and motion, every length in proportion) and probe those "
                         "(default: the runs' own videos)")
    ap.add_argument("--lk-window", type=int, default=LK_WINDOW, metavar="PX",
                    help=f"Lucas-Kanade window (default {LK_WINDOW}, chosen at 128 px frames)")
    ap.add_argument("--cache", default=None, help="folder of the re-rendered videos (default: "
                                                   "the runs' data cache)")
    ap.add_argument("--results-name", default="video_signal_probe")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the results")
    args = ap.parse_args(argv)
    if args.video_size is not None and args.video_size < 32:
        ap.error(f"--video-size {args.video_size}: must be at least 32 px")
    if args.lk_window < 3 or args.lk_window % 2 == 0:
        ap.error(f"--lk-window {args.lk_window}: must be an odd number of px, at least 3")
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    t0 = time.time()
    runs = []
    for i, r in enumerate(args.runs, 1):
        runs.append(probe_run(Path(r), args.video_size, args.lk_window,
                              Path(args.cache) if args.cache else None))
        own, best = runs[-1]["nme"]["own"], runs[-1]["nme"]["structure-frontal-r3"]
        print(f"[{i}/{len(args.runs)}] {runs[-1]['run']}: own {100 * own['all']:.2f} %, "
              f"structure-frontal-r3 {100 * best['all']:.2f} %, tracked "
              f"{100 * runs[-1]['nme']['tracked']['all']:.2f} % ({time.time() - t0:.0f} s)",
              flush=True)
    doc = {"command": " ".join(["python benchmarks/video_signal_probe.py",
                                *(argv if argv is not None else sys.argv[1:])]),
           "machine": f"{platform.machine()}, 1 thread, no GPU", "seconds": time.time() - t0,
           "lk_window": args.lk_window, "video_size": args.video_size,
           "runs": runs, "summary": summarise(runs)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_report(Path(args.out), args.results_name, doc, markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
