"""Reading images and video frames as RGB uint8 arrays, with errors that name the file.

Video frames (list refs ``<video>#<frame>``) are read with decord when it is installed and can
open the file, else with cv2.VideoCapture. Open readers are kept in a small per-process LRU cache
(a DataLoader worker that forks gets its own readers; decord readers must not cross a fork).

What does not belong here: cropping/augmentation (transforms.py), list/annotation parsing
(formats.py).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from tsal_dist.data.formats import AnnotationError


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file.

    Returns:
        (H, W, 3) uint8 RGB (grey images are expanded, alpha is dropped).
    Raises:
        AnnotationError: file missing or not decodable.
    """
    p = str(path)
    if not os.path.isfile(p):
        raise AnnotationError(f"{p}: image file not found")
    buf = np.fromfile(p, dtype=np.uint8)  # np + imdecode: works for non-ASCII paths too
    problem = truncation(buf.tobytes())
    if problem:  # libjpeg/libpng would decode what is there and fill the rest with grey
        raise AnnotationError(f"{p}: {problem}")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None or img.size == 0:
        raise AnnotationError(f"{p}: cannot decode image (corrupt or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def truncation(data: bytes) -> str | None:
    """Why a JPEG or PNG file's bytes are cut short, or None when they are complete (or neither).

    A JPEG must end with its end-of-image marker FF D9 (trailing zero padding allowed); a PNG with
    its IEND chunk. Decoders accept both kinds of truncated file silently, filling the missing
    rows with grey, so a short file has to be caught before decoding.
    """
    if data[:3] == b"\xff\xd8\xff":
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return "truncated JPEG (no end-of-image marker): the file was cut short"
    elif data[:8] == _PNG_SIGNATURE:
        if not data.rstrip(b"\x00").endswith(_PNG_END):
            return "truncated PNG (no IEND chunk): the file was cut short"
    return None


class _Cv2Video:
    """cv2.VideoCapture with a remembered position, so sequential reads do not seek."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise AnnotationError(f"{path}: cannot open video")
        self.pos = 0
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.num_frames = n if n > 0 else None

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        out = []
        for i in indices:
            if i != self.pos:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                self.pos = i
            ok, frame = self.cap.read()
            if not ok or frame is None:
                self.pos = -1  # unknown: force a seek next time
                raise AnnotationError(f"{self.path}#{i}: cannot read frame {i}")
            self.pos = i + 1
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return out

    def close(self) -> None:
        self.cap.release()


class _DecordVideo:
    def __init__(self, path: str, decord: Any) -> None:
        self.path = path
        try:
            self.vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises its own DECORDError / RuntimeError
            raise AnnotationError(f"{path}: decord cannot open video: {e}") from None
        self.num_frames = len(self.vr)

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        try:
            batch = self.vr.get_batch(list(indices)).asnumpy()  # (N, H, W, 3) RGB
        except Exception as e:
            raise AnnotationError(f"{self.path}: cannot read frames {list(indices)}: {e}") from None
        return [np.ascontiguousarray(f) for f in batch]

    def close(self) -> None:
        del self.vr


def _import_decord() -> Any | None:
    try:
        import decord  # noqa: PLC0415 - optional dependency, imported lazily
    except Exception:  # not installed, or a broken native library
        return None
    return decord


class VideoCache:
    """Small LRU cache of open video readers (decord, cv2 fallback), one per process.

    Args:
        max_open: readers kept open at once.
        backend: "auto" (decord if importable and it opens the file, else cv2), "decord" or
            "cv2".
    """

    def __init__(self, max_open: int = 4, backend: str = "auto") -> None:
        if backend not in ("auto", "decord", "cv2"):
            raise ValueError(f"VideoCache: unknown backend {backend!r}")
        self.max_open = max(1, int(max_open))
        self.backend = backend
        self._readers: OrderedDict[str, _Cv2Video | _DecordVideo] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # open readers and the lock cannot be pickled (spawned DataLoader workers, Ray): the
        # copy starts with no open readers and reopens on demand
        return {"max_open": self.max_open, "backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"], state["backend"])  # type: ignore[misc]

    def _reader(self, path: str) -> _Cv2Video | _DecordVideo:
        if os.getpid() != self._pid:  # forked: the parent's readers are not ours to use
            self._readers = OrderedDict()
            self._pid = os.getpid()
        r = self._readers.get(path)
        if r is not None:
            self._readers.move_to_end(path)
            return r
        if not os.path.isfile(path):
            raise AnnotationError(f"{path}: video file not found")
        r = self._open(path)
        self._readers[path] = r
        while len(self._readers) > self.max_open:
            _, old = self._readers.popitem(last=False)
            old.close()
        return r

    def _open(self, path: str) -> _Cv2Video | _DecordVideo:
        if self.backend in ("auto", "decord"):
            decord = _import_decord()
            if decord is not None:
                try:
                    return _DecordVideo(path, decord)
                except AnnotationError:
                    if self.backend == "decord":
                        raise
            elif self.backend == "decord":
                raise AnnotationError(f"{path}: decord is not installed")
        return _Cv2Video(path)

    def num_frames(self, path: str) -> int | None:
        """Frame count reported by the container (None if cv2 cannot tell)."""
        with self._lock:
            return self._reader(path).num_frames

    def read_frames(self, path: str, indices: Sequence[int]) -> list[np.ndarray]:
        """Frames ``indices`` (0-based) of a video as (H, W, 3) uint8 RGB arrays.

        Raises:
            AnnotationError: video missing/unreadable, or an index outside the video.
        """
        with self._lock:
            r = self._reader(path)
            bad = [i for i in indices if i < 0 or (r.num_frames is not None and i >= r.num_frames)]
            if bad:
                raise AnnotationError(f"{path}#{bad[0]}: frame {bad[0]} outside the video "
                                      f"({r.num_frames} frames)")
            return r.frames(indices)

    def close(self) -> None:
        with self._lock:
            for r in self._readers.values():
                r.close()
            self._readers.clear()
