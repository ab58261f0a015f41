"""Outputs: JSON lines, CSV, annotated video (mp4v), drawing + HUD, and an on-screen window.

Every writer is closed in the caller's ``finally``, so what was written before an error stays
complete and readable. JSON lines and CSV are written in place and flushed per frame (readable
while a camera runs); the video goes to a hidden ``.<name>.partial<ext>`` beside it and takes its
name when it is finalised (an mp4 cannot be read before), so an earlier file of that name stays
whole until then. :func:`check_output_paths` runs before anything is opened.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from tsal_runtime.errors import RuntimeFailure
from tsal_runtime.pipeline import STAGES, FrameResult
from tsal_runtime.sources import quiet_native_stderr

log = logging.getLogger("tsal_runtime")


def check_output_paths(outputs: Mapping[str, str | os.PathLike[str] | None],
                       inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse, before any file is opened or truncated, an output (``{flag: path}``) that is a
    folder, lies in a folder that does not exist, is one of the ``inputs`` (the video, the box
    file, the model's files) or is given to two flags."""
    ins = {Path(p).resolve() for p in inputs}
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        p = Path(path)
        if p.is_dir():
            raise RuntimeFailure(f"{p}: {flag} names a folder, not a file")
        if not p.parent.is_dir():
            raise RuntimeFailure(f"{p}: output folder {p.parent} does not exist")
        r = p.resolve()
        if r in ins:
            raise RuntimeFailure(f"{p}: {flag} would overwrite an input of this run")
        if r in seen:
            raise RuntimeFailure(f"{p}: given to both {seen[r]} and {flag}")
        seen[r] = flag


def _open_text(path: str | os.PathLike[str]) -> TextIO:
    p = Path(path)
    if p.parent and not p.parent.is_dir():
        raise RuntimeFailure(f"{p}: output folder {p.parent} does not exist")
    try:
        return open(p, "w", newline="")
    except OSError as e:
        raise RuntimeFailure(f"{p}: cannot write ({e.strerror})") from None


def frame_record(res: FrameResult, source_name: str = "") -> dict[str, Any]:
    """JSON-safe dict of one frame's result (image px, 2 decimals)."""
    rec: dict[str, Any] = {"frame": res.index, "time_s": round(res.time_s, 4),
                           "detected": res.detected,
                           "timings_ms": {k: round(v, 3) for k, v in res.timings_ms.items()},
                           "faces": [{"id": f.track_id, "score": round(f.score, 4),
                                      "box": [round(float(v), 2) for v in f.box],
                                      "landmarks": np.round(f.landmarks, 2).tolist(),
                                      "scores": np.round(f.scores.astype(float), 4).tolist()}
                                     for f in res.faces]}
    if source_name:
        rec["source"] = source_name
    return rec


class JsonlWriter:
    """One JSON object per frame (``frame_record``), flushed per line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._f = _open_text(path)

    def write(self, res: FrameResult, source_name: str = "") -> None:
        self._f.write(json.dumps(frame_record(res, source_name)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class CsvWriter:
    """Rows ``frame,time_s,face_id,score,x0,y0,...,x{K-1},y{K-1}``, one per face, flushed per
    frame."""

    def __init__(self, path: str | os.PathLike[str], num_landmarks: int) -> None:
        self._f = _open_text(path)
        self._w = csv.writer(self._f)
        self._w.writerow(["frame", "time_s", "face_id", "score"]
                         + [f"{a}{i}" for i in range(num_landmarks) for a in ("x", "y")])
        self._f.flush()

    def write(self, res: FrameResult, source_name: str = "") -> None:
        for f in res.faces:
            self._w.writerow([res.index, f"{res.time_s:.4f}", f.track_id, f"{f.score:.4f}"]
                             + [f"{v:.2f}" for v in f.landmarks.reshape(-1)])
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class VideoSink:
    """Annotated video via cv2.VideoWriter (mp4v; the pip wheels cannot write H.264).

    Written to ``.<name>.partial<ext>`` in the same folder and renamed to ``path`` by
    :meth:`close`. Opened at the first frame with that frame's size; later frames of another size
    (image folders) are resized to it. Whether OpenCV can write the file's container is checked
    here, before the run starts.

    ``paced`` (a live camera): the video plays in real time whatever the loop's speed, as an mp4
    has one frame rate: output frame n (at n / ``fps`` s) shows the first frame at or after that
    time (a loop slower than the camera's rate repeats frames, a faster one drops them).
    Otherwise every frame is written once.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, paced: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise RuntimeFailure(f"{self.path}: --output names a folder, not a file")
        if not self.path.parent.is_dir():
            raise RuntimeFailure(f"{self.path}: output folder {self.path.parent} does not exist")
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps = fps if fps > 0 else 30.0
        self.paced = paced
        self._w: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0
        with quiet_native_stderr():  # OpenCV prints its own lines about unknown containers
            probe = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*"mp4v"),
                                    self.fps, (64, 64))
            ok = probe.isOpened()
            probe.release()
        self.partial.unlink(missing_ok=True)
        if not ok:
            raise RuntimeFailure(f"{self.path}: OpenCV cannot write an mp4v video there (a "
                                 f"container it writes: .mp4, .avi, .mov; a writable folder)")

    def write(self, bgr: np.ndarray, time_s: float | None = None) -> None:
        """Append a frame (``time_s``: its time since the source started, for ``paced``)."""
        copies = 1
        if self.paced and time_s is not None:
            copies = max(0, int(time_s * self.fps) + 1 - self.frames)
            if copies == 0:
                return
        if self._w is None:
            h, w = bgr.shape[:2]
            self._size = (w - w % 2, h - h % 2) if min(w, h) > 2 else (max(w, 2), max(h, 2))
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            with quiet_native_stderr():
                self._w = cv2.VideoWriter(str(self.partial), fourcc, self.fps, self._size)
            if not self._w.isOpened():
                raise RuntimeFailure(f"{self.path}: cv2.VideoWriter (mp4v) cannot open it")
        assert self._size is not None
        if (bgr.shape[1], bgr.shape[0]) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)
        frame = np.ascontiguousarray(bgr)
        for _ in range(copies):
            self._w.write(frame)
        self.frames += copies

    def close(self) -> None:
        """Finalise the video and give it its name (nothing is written when no frame was)."""
        if self._w is not None:
            self._w.release()
            self._w = None
            if self.frames:
                os.replace(self.partial, self.path)
            else:
                self.partial.unlink(missing_ok=True)


_COLORS = [(0, 255, 0), (255, 128, 0), (0, 200, 255), (255, 0, 255), (255, 255, 0)]


def draw(rgb: np.ndarray, res: FrameResult, fps: float, show_boxes: bool = True) -> np.ndarray:
    """Annotated BGR copy: landmarks, boxes, face ids, and a HUD (FPS + per-stage ms)."""
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    unit = max(1, round(max(h, w) / 640))
    for f in res.faces:
        c = _COLORS[f.track_id % len(_COLORS)]
        if show_boxes:
            x1, y1, x2, y2 = (int(round(v)) for v in f.box)
            cv2.rectangle(img, (x1, y1), (x2, y2), c, unit)
            cv2.putText(img, f"#{f.track_id} {f.score:.2f}", (x1, max(10, y1 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4 * unit, c, unit, cv2.LINE_AA)
        for x, y in f.landmarks:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(img, (int(round(x)), int(round(y))), unit + 1, c, -1, cv2.LINE_AA)
    lines = [f"FPS {fps:5.1f}  faces {len(res.faces)}" + ("  [det]" if res.detected else "")]
    lines.append("  ".join(f"{k} {res.timings_ms.get(k, 0.0):.1f}" for k in STAGES) + " ms")
    scale = 0.45 * unit
    # white text on a darkened panel (readable on any background; a thick black outline under
    # small anti-aliased text smears the glyphs)
    tw = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, unit)[0][0] for line in lines)
    x2, y2 = min(w, 12 + tw), min(h, int(18 * unit * len(lines) + 8 * unit))
    if x2 > 0 and y2 > 0:
        img[:y2, :x2] = (img[:y2, :x2] * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        y = int(18 * unit * (i + 1))
        cv2.putText(img, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), unit,
                    cv2.LINE_AA)
    return img


class Window:
    """On-screen window: cv2.imshow when this OpenCV has a GUI, else a tkinter window (the
    headless OpenCV wheel has no highgui). ``show`` returns False when the user quit (q / Esc /
    window closed)."""

    def __init__(self, title: str = "tsal-runtime") -> None:
        self.title = title
        self._tk: Any = None
        self._closed = False
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
            self._cv = True
        except cv2.error:
            self._cv = False
            self._init_tk()

    def _init_tk(self) -> None:
        if not os.environ.get("DISPLAY") and os.name != "nt":
            raise RuntimeFailure("no display (DISPLAY unset): use --headless with --output/--json")
        try:
            import tkinter as tk
        except ImportError:
            raise RuntimeFailure("this OpenCV has no GUI and tkinter is missing: install "
                                 "opencv-python or use --headless") from None
        try:
            root = tk.Tk()
        except tk.TclError as e:
            raise RuntimeFailure(f"cannot open a window ({e}): use --headless") from None
        root.title(self.title)
        label = tk.Label(root)
        label.pack()
        root.protocol("WM_DELETE_WINDOW", self._on_close)
        root.bind("<Key>", lambda e: self._on_close() if e.keysym in ("q", "Escape") else None)
        self._tk, self._label, self._tkmod = root, label, tk

    def _on_close(self) -> None:
        self._closed = True

    def show(self, bgr: np.ndarray) -> bool:
        if self._cv:
            cv2.imshow(self.title, bgr)
            key = cv2.waitKey(1) & 0xFF
            return key not in (ord("q"), 27)
        if self._closed:
            return False
        h, w = bgr.shape[:2]
        ppm = f"P6 {w} {h} 255 ".encode() + cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).tobytes()
        photo = self._tkmod.PhotoImage(data=ppm, format="PPM")
        self._label.configure(image=photo)
        self._label.image = photo
        self._tk.update()
        return not self._closed

    def close(self) -> None:
        if self._cv:
            cv2.destroyAllWindows()
        elif self._tk is not None:
            try:
                self._tk.destroy()
            except Exception:  # noqa: BLE001 - already gone
                pass
