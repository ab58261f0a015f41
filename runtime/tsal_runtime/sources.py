"""Frame sources: camera index, video file (decord, OpenCV fallback), image folder.

Each yields :class:`Frame` (index, timestamp in s, RGB uint8 (H, W, 3)). Problems that stop the
stream raise :class:`SourceError` with a one-line message; a source that fails mid-stream raises
after yielding everything it could read, so the pipeline's outputs stay complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from tsal_runtime.errors import SourceError

log = logging.getLogger("tsal_runtime")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what C libraries (OpenCV's capture back-ends, FFmpeg inside OpenCV and decord)
    print straight to file descriptor 2 while a video or camera is opened or read: their lines
    name no file and would come before the one-line error the user is meant to see. Python's own
    ``sys.stderr`` writes are not affected (they are flushed first)."""
    import sys

    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured): nothing to do
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


@dataclass
class Frame:
    index: int
    time_s: float
    image: np.ndarray  # (H, W, 3) uint8 RGB


class FrameSource:
    """Base: iterate frames; ``fps`` is the nominal rate (0 if unknown); ``close()`` frees."""

    fps: float = 0.0
    description: str = ""

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CameraSource(FrameSource):
    """cv2.VideoCapture on a camera index.

    Args:
        index: camera index.
        max_failures: consecutive failed reads that count as a disconnect.
        width/height: requested capture size (0 = driver default).
    """

    def __init__(self, index: int, max_failures: int = 30, width: int = 0, height: int = 0,
                 capture: "cv2.VideoCapture | None" = None) -> None:
        self.description = f"camera {index}"
        with quiet_native_stderr():  # V4L2 / OpenCV warnings for a missing camera
            self._cap = capture if capture is not None else cv2.VideoCapture(index)
            opened = self._cap.isOpened()
        if not opened:
            self._cap.release()
            raise SourceError(f"camera {index}: cannot open (no camera at that index, or it is "
                              f"busy / not permitted)")
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.index, self.max_failures = index, max_failures

    def __iter__(self) -> Iterator[Frame]:
        i, fails, t0 = 0, 0, time.perf_counter()
        while True:
            ok, bgr = self._cap.read()
            if not ok or bgr is None or bgr.size == 0:
                fails += 1
                if fails >= self.max_failures:
                    raise SourceError(f"camera {self.index}: stopped delivering frames after "
                                      f"{i} frame(s) (disconnected?)")
                time.sleep(0.01)
                continue
            fails = 0
            yield Frame(i, time.perf_counter() - t0, _to_rgb(bgr))
            i += 1

    def close(self) -> None:
        self._cap.release()


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    if bgr.shape[2] == 4:
        return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoSource(FrameSource):
    """Video file read with decord (sequential), falling back to OpenCV.

    Raises:
        SourceError: missing, unreadable/corrupt or empty file.
    """

    def __init__(self, path: str | os.PathLike[str], backend: str = "auto") -> None:
        self.path = Path(path)
        self.description = str(self.path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: video file not found")
        if self.path.stat().st_size == 0:
            raise SourceError(f"{self.path}: video file is empty (0 bytes)")
        self._vr = None
        self._cap = None
        self.truncated_at: int | None = None  # frames read when the video ended early
        errors = []
        if backend in ("auto", "decord"):
            try:
                import decord

                # FFmpeg's own lines for a corrupt file (decord decodes on its own threads too)
                decord.logging.set_level(decord.logging.QUIET)
                with quiet_native_stderr():
                    vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
                if len(vr) > 0:
                    self._vr, self.fps, self.num_frames = vr, float(vr.get_avg_fps()), len(vr)
                else:
                    errors.append("decord: 0 frames")
            except Exception as e:  # noqa: BLE001 - decord raises DECORDError / RuntimeError
                errors.append(f"decord: {str(e).splitlines()[0][:80] if str(e) else type(e)}")
        if self._vr is None and backend in ("auto", "opencv"):
            with quiet_native_stderr():
                cap = cv2.VideoCapture(str(self.path))
                ok, first = cap.read() if cap.isOpened() else (False, None)
            if ok and first is not None:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._cap, self.fps = cap, float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
                self.num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            else:
                cap.release()
                errors.append("opencv: no frame could be decoded")
        if self._vr is not None:
            # decord counts the frames it can index; the container header states how many the
            # file should have (a cut-short AVI/MP4 has fewer): keep the stated number
            with quiet_native_stderr():
                probe = cv2.VideoCapture(str(self.path))
                stated = int(probe.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if probe.isOpened() else 0
                probe.release()
            self.num_frames = max(self.num_frames, stated)
        if self._vr is None and self._cap is None:
            raise SourceError(f"{self.path}: cannot read video (corrupt, empty or unsupported: "
                              f"{'; '.join(errors)})")

    def __iter__(self) -> Iterator[Frame]:
        dt = 1.0 / self.fps if self.fps > 0 else 1.0 / 30.0
        if self._vr is not None:
            for i in range(len(self._vr)):
                try:
                    with quiet_native_stderr():
                        rgb = self._vr[i].asnumpy()
                except Exception as e:  # noqa: BLE001
                    if i == 0:
                        raise SourceError(f"{self.path}: decode failed at frame 0 "
                                          f"({str(e).splitlines()[0][:80] if str(e) else e!r})"
                                          ) from None
                    self._ended_early(i)
                    return
                yield Frame(i, i * dt, rgb)
            if len(self._vr) < self.num_frames:
                self._ended_early(len(self._vr))
            return
        assert self._cap is not None
        i = 0
        while True:
            with quiet_native_stderr():
                ok, bgr = self._cap.read()
            if not ok or bgr is None:
                break
            yield Frame(i, i * dt, _to_rgb(bgr))
            i += 1
        if i == 0:
            raise SourceError(f"{self.path}: no frame could be decoded")
        if self.num_frames and i < self.num_frames:
            self._ended_early(i)

    def _ended_early(self, frames: int) -> None:
        """A video whose frames stop before the length its container states (cut short)."""
        self.truncated_at = frames
        log.warning("%s: the video ended after %d of its %d frames (truncated or corrupt "
                    "from there on); outputs cover those %d", self.path, frames, self.num_frames,
                    frames)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._vr = None


class ImageFolderSource(FrameSource):
    """Images of a folder in sorted name order; unreadable images are skipped with a warning."""

    def __init__(self, folder: str | os.PathLike[str], fps: float = 0.0) -> None:
        self.folder = Path(folder)
        self.description = str(self.folder)
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: image folder not found")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise SourceError(f"{self.folder}: no images ({', '.join(IMAGE_EXTS)}) in folder")
        self.fps = fps
        self.skipped: list[Path] = []

    def __iter__(self) -> Iterator[Frame]:
        dt = 1.0 / self.fps if self.fps > 0 else 1.0
        i = 0
        for p in self.files:
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                log.warning("%s: unreadable image, skipped", p)
                self.skipped.append(p)
                continue
            yield Frame(i, i * dt, _to_rgb(bgr))
            i += 1
        if i == 0:
            raise SourceError(f"{self.folder}: none of the {len(self.files)} image(s) is readable")

    def frame_name(self, index: int) -> str:
        ok = [p for p in self.files if p not in self.skipped]
        return ok[index].name if index < len(ok) else ""
