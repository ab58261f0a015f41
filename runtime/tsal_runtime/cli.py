"""``tsal-runtime``: live / video / image-folder facial landmarking with an exported model.

Examples:
    tsal-runtime --model runs/x/export --camera 0
    tsal-runtime --model M --video in.mp4 --headless --output out.mp4 --json out.jsonl

Exit status: 0 done; 1 a clear one-line error (printed as ``tsal-runtime: error: ...``);
2 bad command line; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Outputs written before
an error or a signal stay complete.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Sequence

from tsal_runtime.errors import RuntimeFailure

log = logging.getLogger("tsal_runtime")


def _camera_index(text: str) -> int:
    """A camera index: a whole number >= 0 (OpenCV crashes the process on -1 without a camera)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a camera index: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a camera index is >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tsal-runtime", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="folder with model.json + model.onnx")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=_camera_index, metavar="N", help="camera index")
    src.add_argument("--video", metavar="FILE", help="video file (decord, OpenCV fallback)")
    src.add_argument("--images", metavar="DIR", help="folder of images (sorted by name)")
    p.add_argument("--engine", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"],
                   help="auto: TensorRT, then torch CUDA, then ONNX Runtime, the first that runs")
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"],
                   help="tensorrt / torch-CUDA precision")
    p.add_argument("--detector", default="auto",
                   help="auto | yunet | blazeface | dlib | boxes:FILE (JSON lines of boxes)")
    p.add_argument("--detect-every", type=int, default=10, metavar="N",
                   help="run the detector every N frames (and whenever a track is lost)")
    p.add_argument("--detection", default="auto", choices=["auto", "async", "sync"],
                   help="async: the detector runs off the frame loop (its own process for yunet, "
                        "blazeface and dlib) and never blocks it (tracking carries every "
                        "frame); sync: on the frame loop, "
                        "reproducible; auto: async for --camera, sync for files (always sync "
                        "for --images)")
    p.add_argument("--max-faces", type=int, default=4, help="faces tracked at most per frame")
    p.add_argument("--min-score", type=float, default=0.2,
                   help="drop a track whose mean landmark score falls below this")
    p.add_argument("--refine", type=int, default=1, help="refinement passes after a detection")
    p.add_argument("--no-smooth", action="store_true", help="disable One Euro smoothing")
    p.add_argument("--smoothing", default="face", choices=["face", "points"],
                   help="face: One Euro on the face's centre and size (--min-cutoff, --beta) and "
                        "a calmer one on its shape (--shape-cutoff, --shape-beta); points: One "
                        "Euro on every coordinate (--min-cutoff, --beta)")
    p.add_argument("--min-cutoff", type=float, default=0.3,
                   help="One Euro min cutoff, Hz (lower: steadier at rest, more lag)")
    p.add_argument("--beta", type=float, default=20.0,
                   help="One Euro speed coefficient (higher: less lag in fast motion)")
    p.add_argument("--shape-cutoff", type=float, default=0.1, help="face shape min cutoff, Hz")
    p.add_argument("--shape-beta", type=float, default=1.0, help="face shape speed coefficient")
    p.add_argument("--output", metavar="FILE.mp4", help="annotated video (mp4v)")
    p.add_argument("--json", metavar="FILE", help="per-frame landmarks, JSON lines")
    p.add_argument("--csv", metavar="FILE", help="per-face landmarks, CSV")
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = all)")
    p.add_argument("--threads", type=int, default=1,
                   help="engine CPU threads for one face (0 = the engine's default). 1 leaves "
                        "the other cores to the face detector's process: fastest for 1 face on "
                        "2 cores (benchmarks/results/runtime_fps.md)")
    p.add_argument("--batch-threads", type=int, default=None,
                   help="onnxruntime CPU threads when a frame has 2 faces or more (default: "
                        "the cores, at most 4; 0 = same as --threads): several faces split well "
                        "over the cores")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def run(args: argparse.Namespace) -> int:
    """Run the pipeline for parsed arguments; raises RuntimeFailure on fatal problems."""
    from tsal_runtime.detectors import make_detector
    from tsal_runtime.engines import make_engine
    from tsal_runtime.engines.ort_engine import default_batch_threads
    from tsal_runtime.outputs import (CsvWriter, JsonlWriter, VideoSink, Window,
                                      check_output_paths, draw)
    from tsal_runtime.pipeline import Pipeline
    from tsal_runtime.sources import CameraSource, ImageFolderSource, VideoSource
    from tsal_runtime.spec import load_spec

    check_numbers(args)
    if args.video is not None and Path(args.video).is_dir():
        raise RuntimeFailure(f"{args.video}: --video names a folder (use --images for a folder "
                             f"of images)")
    inputs = [p for p in (args.video, *_box_file(args.detector)) if p]
    model_dir = Path(args.model)
    inputs += [model_dir / n for n in ("model.json", "model.onnx", "model.pt2")]
    check_output_paths({"--output": args.output, "--json": args.json, "--csv": args.csv}, inputs)
    spec = load_spec(args.model)
    # each engine takes its own options (auto hands each candidate those it takes)
    kw: dict[str, object] = {}
    if args.engine in ("auto", "tensorrt", "torch"):
        kw["precision"] = args.precision
    if args.threads and args.engine in ("auto", "onnxruntime", "torch"):
        kw["threads"] = args.threads
    if args.engine in ("auto", "onnxruntime"):
        kw["batch_threads"] = (default_batch_threads() if args.batch_threads is None
                               else args.batch_threads)
    engine = make_engine(args.engine, spec, **kw)
    log.info("engine %s on %s", engine.name, engine.device)
    detector = make_detector(args.detector)
    log.info("detector %s", detector.name)
    if args.camera is not None:
        source = CameraSource(args.camera)
    elif args.video is not None:
        source = VideoSource(args.video)
    else:
        source = ImageFolderSource(args.images)
    still_images = args.images is not None
    # every image is its own scene: detected on the loop, never merged from an earlier image
    detection = "sync" if still_images else args.detection if args.detection != "auto" else \
        ("async" if args.camera is not None else "sync")
    log.info("detection %s", detection)
    sinks: list[object] = []
    window = pipe = None
    n = faces = 0
    t_start = time.perf_counter()
    try:
        pipe = Pipeline(spec, engine, detector,
                        detect_every=1 if still_images else args.detect_every,
                        max_faces=args.max_faces, min_score=args.min_score, refine=args.refine,
                        smooth=not args.no_smooth and not still_images,
                        min_cutoff=args.min_cutoff, beta=args.beta, detection=detection,
                        smoothing=args.smoothing, shape_cutoff=args.shape_cutoff,
                        shape_beta=args.shape_beta)
        # the video first: it checks that OpenCV can write there before a text output is opened
        vs = (VideoSink(args.output, source.fps, paced=args.camera is not None)
              if args.output else None)
        if vs:
            sinks.append(vs)
        jw = JsonlWriter(args.json) if args.json else None
        if jw:
            sinks.append(jw)
        cw = CsvWriter(args.csv, spec.num_landmarks) if args.csv else None
        if cw:
            sinks.append(cw)
        if not args.headless:
            window = Window()
        need_draw = vs is not None or window is not None
        stamps: deque[float] = deque(maxlen=30)
        it = iter(source)
        while True:
            t0 = time.perf_counter()
            try:
                frame = next(it)
            except StopIteration:
                break
            decode_ms = (time.perf_counter() - t0) * 1e3
            if still_images:
                pipe.reset()
            res = pipe.process(frame.image, frame.index, frame.time_s)
            res.timings_ms["decode"] = decode_ms
            stamps.append(time.perf_counter())
            fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
            if need_draw:
                t0 = time.perf_counter()
                bgr = draw(frame.image, res, fps)
                res.timings_ms["draw"] = (time.perf_counter() - t0) * 1e3
                if vs:
                    vs.write(bgr, frame.time_s)
                if window is not None and not window.show(bgr):
                    break
            name = source.frame_name(frame.index) if still_images else ""  # type: ignore[attr-defined]
            if jw:
                jw.write(res, name)
            if cw:
                cw.write(res, name)
            n += 1
            faces += len(res.faces)
            if args.max_frames and n >= args.max_frames:
                break
    finally:
        _ignore_sigterm()  # a second SIGTERM must not cut the finalising short
        if pipe is not None:
            pipe.close()
        for s in sinks:
            s.close()  # type: ignore[attr-defined]
        if window is not None:
            window.close()
        source.close()
    if n == 0:
        raise RuntimeFailure(f"{source.description}: no frame was read")
    dt = time.perf_counter() - t_start
    log.info("%d frame(s), %d face(s) over all frames, %.1f FPS overall", n, faces,
             n / dt if dt > 0 else 0.0)
    return 0


def _box_file(detector: str) -> list[str]:
    return [detector[len("boxes:"):]] if detector.startswith("boxes:") else []


def check_numbers(args: argparse.Namespace) -> None:
    """The numeric flags' ranges, checked before any work (one line naming the flag)."""
    rules = [("--detect-every", args.detect_every, args.detect_every >= 1, ">= 1"),
             ("--max-faces", args.max_faces, args.max_faces >= 1, ">= 1"),
             ("--refine", args.refine, args.refine >= 0, ">= 0"),
             ("--max-frames", args.max_frames, args.max_frames >= 0, ">= 0 (0 = all)"),
             ("--min-score", args.min_score, math.isfinite(args.min_score), "a finite number"),
             ("--min-cutoff", args.min_cutoff, args.min_cutoff > 0, "> 0 (Hz)"),
             ("--shape-cutoff", args.shape_cutoff, args.shape_cutoff > 0, "> 0 (Hz)"),
             ("--beta", args.beta, args.beta >= 0, ">= 0"),
             ("--shape-beta", args.shape_beta, args.shape_beta >= 0, ">= 0")]
    for flag, value, ok, need in rules:
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise RuntimeFailure(f"{flag} must be {need}, got {value}")


def _ignore_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Terminated(BaseException):
    """SIGTERM, raised in the frame loop like Ctrl-C so that every output is finalised."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images is not None and args.detection == "async":
        parser.error("--detection async does not apply to --images (each image is detected on "
                     "its own)")
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="tsal-runtime: %(message)s", stream=sys.stderr)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(args)
    except RuntimeFailure as e:
        if e.__cause__ is not None:  # a library's failure: its traceback with --log-level DEBUG
            log.debug("the failure's cause:", exc_info=e.__cause__)
        print(f"tsal-runtime: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tsal-runtime: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("tsal-runtime: terminated (outputs finalised)", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
