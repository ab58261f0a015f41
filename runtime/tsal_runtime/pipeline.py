"""Detect -> track -> landmark -> smooth, per frame, with all faces batched in one engine call.

Per frame:
1. Detection runs on frame 0, every ``detect_every`` frames, and on the frame after any track's
   confidence (mean landmark score) fell below ``min_score`` or a track was lost.
2. Detector boxes are not landmark boxes: each is mapped by the detector's calibration
   (``geometry.adapt_box``), landmarked once, then re-centred on the tight box of that first
   estimate and landmarked again (``refine`` passes). Between detections a track's box is the
   tight box of its previous frame's raw landmarks -- the same box convention as the training
   lists (landmark bounding box), so the crop matches training and eval. A detection matching a
   track is dropped (the landmark box is better). An ``exact`` detector (given landmark boxes,
   ``boxes:FILE``) is different: on a frame where it has boxes, those boxes are the frame's
   faces, each used as given (taking over the track it overlaps most), and other tracks end.
3. Crops of all faces go to the engine in ONE call; landmarks map back to image px.
4. Per-track One Euro smoothing (``smooth=False`` turns it off).

Asynchronous detection (``detection="async"``, the camera default): the detector runs in its own
process or thread (``async_detect.AsyncDetector``) and never blocks the frame loop. When a detection
is due, the frame is handed over if the detector is idle and the loop goes on tracking; the result
is merged on the first frame after it is ready (``detect_lag=None``), or exactly ``detect_lag``
frames after the frame it was computed on (deterministic: the loop waits if it is not ready yet;
``detect_lag=0`` gives the synchronous pipeline's results). A result computed on an older frame is
merged like a fresh one: detections overlapping a track are dropped, new faces are refined on the
current frame (one refinement pass recentres a box that moved a little). Until the first result,
frames have no faces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tsal_runtime.async_detect import DETECTOR_NICE, AsyncDetector, detect_frame
from tsal_runtime.detectors import FaceDetector
from tsal_runtime.engines import Engine
from tsal_runtime.errors import EngineError, RuntimeFailure
from tsal_runtime.geometry import (adapt_box, extract_crops, iou, landmark_box,
                                   normalised_to_image)
from tsal_runtime.smoothing import FaceFilter, OneEuroFilter, filter_faces
from tsal_runtime.spec import ModelSpec

STAGES = ("decode", "detect", "landmark", "smooth", "draw")


@dataclass
class Face:
    """One tracked face in one frame (image px)."""

    track_id: int
    box: np.ndarray  # (4,) box the crop was made from
    landmarks: np.ndarray  # (K, 2) smoothed (== raw when smoothing is off)
    raw_landmarks: np.ndarray  # (K, 2)
    scores: np.ndarray  # (K,)
    score: float  # mean of scores: the tracking confidence


@dataclass
class FrameResult:
    index: int
    time_s: float
    faces: list[Face]
    detected: bool  # detections were merged into this frame (sync: the detector ran on it)
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    filt: OneEuroFilter | FaceFilter | None
    raw: np.ndarray | None = None
    score: float = 0.0


class Pipeline:
    """Args:
        spec: model spec (input size, crop expansion).
        engine: landmark engine.
        detector: face detector.
        detect_every: run the detector every N frames (1 = every frame).
        max_faces: at most this many faces (largest-score detections first).
        min_score: a track whose mean landmark score drops below this is dropped and the
            detector runs on the next frame.
        refine: refinement passes after a detection (0 = use the calibrated detector box).
        smooth: One Euro smoothing on/off; ``min_cutoff``/``beta``/``d_cutoff`` its parameters
            (defaults chosen in benchmarks/results/runtime_fps.md: lowest NMJ on synthetic video,
            then lowest jitter on a real one).
        min_face_px: tracks whose box is smaller than this (px) are dropped.
        smoothing: "face" (centre and size of the face with ``min_cutoff``/``beta``, its shape
            with the calmer ``shape_cutoff``/``shape_beta``: ``smoothing.FaceFilter``) or
            "points" (every coordinate with ``min_cutoff``/``beta``).
        detection: "sync" (the detector runs on the frame loop: reproducible, for files) or
            "async" (its own thread, never blocking the loop: for cameras).
        detect_lag: async only: None = merge results when ready; k = merge exactly k frames
            after the frame they were computed on (see :class:`AsyncDetector`).
        detector_nice: async only: niceness of the detector's process
            (``async_detect.DETECTOR_NICE``).
    """

    def __init__(self, spec: ModelSpec, engine: Engine, detector: FaceDetector,
                 detect_every: int = 10, max_faces: int = 4, min_score: float = 0.2,
                 refine: int = 1, smooth: bool = True, min_cutoff: float = 0.3,
                 beta: float = 20.0, d_cutoff: float = 1.0, min_face_px: float = 8.0,
                 detection: str = "sync", detect_lag: int | None = None,
                 smoothing: str = "face", shape_cutoff: float = 0.1,
                 shape_beta: float = 1.0, detector_nice: int = DETECTOR_NICE) -> None:
        if detect_every < 1 or max_faces < 1 or refine < 0:
            raise ValueError("need detect_every >= 1, max_faces >= 1, refine >= 0")
        if smoothing not in ("face", "points"):
            raise ValueError(f"smoothing must be 'face' or 'points', not {smoothing!r}")
        self._smoothing, self._shape_euro = smoothing, (shape_cutoff, shape_beta)
        if detection not in ("sync", "async"):
            raise ValueError(f"detection must be 'sync' or 'async', not {detection!r}")
        self._async = (AsyncDetector(detector, detect_lag, nice=detector_nice)
                       if detection == "async" else None)
        self.spec, self.engine, self.detector = spec, engine, detector
        self.detect_every, self.max_faces, self.min_score = detect_every, max_faces, min_score
        self.refine, self.smooth, self.min_face_px = refine, smooth, min_face_px
        self._euro = (min_cutoff, beta, d_cutoff)
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._need_detect = True
        self._since_detect = 0

    # -- helpers ---------------------------------------------------------------------------
    def _landmarks(self, frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes -> image-px landmarks (N, K, 2) and scores (N, K), one engine call."""
        s, k = self.spec.input_size, self.spec.num_landmarks
        if len(boxes) == 0:
            return np.zeros((0, k, 2)), np.zeros((0, k), np.float32)
        crops, mats = extract_crops(frame, boxes, s, self.spec.crop_expand,
                                    self.spec.border_value, self.spec.antialias)
        try:
            norm, scores = self.engine.run(crops)
        except RuntimeFailure:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime, TensorRT or torch failing mid-stream
            raise EngineError(f"the {self.engine.name} engine failed on {len(crops)} face(s): "
                              f"{type(e).__name__}: {e}") from e
        return normalised_to_image(norm, mats, s), scores

    def _valid_box(self, box: np.ndarray, h: int, w: int) -> bool:
        bw, bh = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return bool(np.isfinite(box).all() and min(bw, bh) >= self.min_face_px
                    and 0 <= cx < w and 0 <= cy < h and max(bw, bh) < 4 * max(h, w))

    def _new_filter(self) -> OneEuroFilter | FaceFilter | None:
        if not self.smooth:
            return None
        if self._smoothing == "points":
            return OneEuroFilter(*self._euro)
        return FaceFilter(*self._euro, *self._shape_euro)

    def _new_track(self, box: np.ndarray) -> _Track:
        t = _Track(self._next_id, box, self._new_filter())
        self._next_id += 1
        return t

    def _take_exact(self, dets: np.ndarray, tracks: list[_Track], h: int, w: int
                    ) -> list[_Track]:
        """Tracks for the boxes of an ``exact`` detector (given landmark boxes, ``boxes:FILE``).

        Every valid given box is used as it is, on every frame alike: it takes over the track it
        overlaps most (any overlap; identity and smoothing go on), or starts a new one. Tracks
        that no given box takes over end, so a drifted track can never stand in for a box.
        """
        free = list(tracks)
        out: list[_Track] = []
        for d in dets:
            box = adapt_box(d[:4], *self.detector.calibration)
            if not self._valid_box(box, h, w):
                continue
            best = max(free, key=lambda t: iou(t.box, box), default=None)
            if best is not None and iou(best.box, box) > 0.0:
                free.remove(best)
                best.box = box
                out.append(best)
            else:
                out.append(self._new_track(box))
        return out

    def reset(self) -> None:
        """Forget all tracks (e.g. between unrelated images)."""
        self._tracks, self._need_detect, self._since_detect = [], True, 0
        if self._async is not None:
            self._async.discard()

    def close(self) -> None:
        """Stop the detector thread (asynchronous detection); the pipeline can not run after."""
        if self._async is not None:
            self._async.close()

    def _merge(self, dets: np.ndarray, tracks: list[_Track], h: int, w: int
               ) -> tuple[list[_Track], list[_Track]]:
        """(tracks kept, new tracks to refine) after a detection on this frame's tracks."""
        dets = dets[: self.max_faces]
        if getattr(self.detector, "exact", False) and len(dets):
            # the given boxes are this frame's faces, whatever the tracks did
            return [], self._take_exact(dets, tracks, h, w)
        pending: list[_Track] = []
        for d in dets:
            box = adapt_box(d[:4], *self.detector.calibration)
            best = max(tracks, key=lambda t: iou(t.box, box), default=None)
            if best is not None and iou(best.box, box) > 0.3:
                continue  # already tracked: the track's landmark box is better than a det box
            if self._valid_box(box, h, w):
                pending.append(self._new_track(box))
        return tracks, pending

    # -- main ------------------------------------------------------------------------------
    def process(self, image: np.ndarray, index: int, time_s: float) -> FrameResult:
        """Run one RGB frame (H, W, 3) uint8 through the pipeline."""
        h, w = image.shape[:2]
        timings = {"detect": 0.0, "landmark": 0.0, "smooth": 0.0}
        tracks = [t for t in self._tracks if self._valid_box(t.box, h, w)]
        if len(tracks) < len(self._tracks):
            self._need_detect = True  # a face left the frame or shrank away
        due = self._need_detect or not tracks or self._since_detect >= self.detect_every
        pending: list[_Track] = []  # new detections, to refine
        detect = False
        if self._async is None and due:
            found = detect_frame(self.detector, image, index)  # the same call as async
            timings["detect"] = found.ms
            tracks, pending = self._merge(found.dets, tracks, h, w)
            detect, self._since_detect, self._need_detect = True, 0, False
        elif self._async is not None:
            if due and self._async.submit(image, index):
                self._since_detect, self._need_detect = 0, False
            waited = self._async.waited_ms
            done = self._async.poll(index)
            timings["detect"] = self._async.waited_ms - waited  # the loop's share: waiting only
            if done is not None:
                tracks, pending = self._merge(done.dets, tracks, h, w)
                detect = True
                timings["detector_ms"] = done.ms
        self._since_detect += 1

        t0 = time.perf_counter()
        for _ in range(self.refine if pending else 0):
            lms, _sc = self._landmarks(image, np.stack([t.box for t in pending]))
            for t, lm in zip(pending, lms):
                t.box = landmark_box(lm)
        ids = {id(t) for t in tracks}
        active = (tracks + [t for t in pending if id(t) not in ids])[: self.max_faces]
        boxes = np.stack([t.box for t in active]) if active else np.zeros((0, 4))
        lms, scores = self._landmarks(image, boxes)
        timings["landmark"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        kept: list[_Track] = []
        got: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]] = []  # lm, scores, score, box
        for t, lm, sc in sorted(zip(active, lms, scores), key=lambda z: -float(z[2].mean())):
            score = float(np.mean(sc))
            if score < self.min_score or not np.isfinite(lm).all():
                self._need_detect = True  # lost: look again on the next frame
                continue
            box = landmark_box(lm)
            if any(iou(box, g[3]) > 0.5 for g in got):
                continue  # two tracks converged on one face: keep the more confident one
            kept.append(t)
            got.append((lm, sc, score, box))
        # every track's filter in one vectorised pass, each scaled by its crop box's diagonal
        smoothing = [j for j, t in enumerate(kept) if t.filt is not None]
        smoothed = [g[0] for g in got]
        if smoothing:
            diags = [max(float(np.hypot(kept[j].box[2] - kept[j].box[0],
                                        kept[j].box[3] - kept[j].box[1])), 1.0)
                     for j in smoothing]
            for j, out in zip(smoothing, filter_faces([kept[j].filt for j in smoothing],
                                                      [got[j][0] for j in smoothing], time_s,
                                                      diags)):
                smoothed[j] = out
        faces: list[Face] = []
        for t, (lm, sc, score, box), sm in zip(kept, got, smoothed):
            faces.append(Face(t.track_id, t.box.copy(), sm, lm, sc, score))
            t.raw, t.score, t.box = lm, score, box
        self._tracks = kept
        timings["smooth"] = (time.perf_counter() - t0) * 1e3
        faces.sort(key=lambda f: f.track_id)
        return FrameResult(index, time_s, faces, detect, timings)
