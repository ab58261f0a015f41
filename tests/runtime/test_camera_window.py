"""``tsal-runtime --camera 0`` with a window, under a virtual X server (Xvfb).

There is no camera here, so ``cv2.VideoCapture(0)`` is replaced by a virtual source that serves
the frames of a video file; the real CLI ``main()`` opens its window (cv2.imshow when this OpenCV
has a GUI, else the tkinter fallback: the headless wheel has none) on the Xvfb display, and a
screenshot of the root window is taken while the stream runs. The test checks that the window
shows the frame with landmarks (the track colour) and the HUD (white text, FPS + per-stage ms).

Skipped, with the reason, where Xvfb, tkinter or a screenshot tool (ImageMagick ``import``, or
``xwd`` + ``convert``) is missing -- CI installs none of them.

Regenerate the committed screenshot (a trained model, a real face video, YuNet)::

    python tests/runtime/test_camera_window.py --model DIR --video FILE \\
        --out benchmarks/results/runtime_camera_xvfb.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "runtime") not in sys.path:
    sys.path.insert(0, str(ROOT / "runtime"))

from tsal_runtime import cli, sources  # noqa: E402


def missing_tools() -> str:
    """Why a window test cannot run here ('' if it can)."""
    if sys.platform != "linux":
        return "Xvfb test is Linux-only"
    if shutil.which("Xvfb") is None:
        return "Xvfb not installed (apt-get install xvfb)"
    if shutil.which("import") is None and not (shutil.which("xwd") and shutil.which("convert")):
        return "no screenshot tool (apt-get install imagemagick x11-apps)"
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return "tkinter missing (the headless OpenCV window falls back to it)"
    return ""


@contextlib.contextmanager
def xvfb(size: str = "800x600x24") -> Iterator[str]:
    """Start Xvfb on a free display; yields the DISPLAY string."""
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    else:
        raise RuntimeError("no free X display number")
    disp = f":{n}"
    proc = subprocess.Popen(["Xvfb", disp, "-screen", "0", size, "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"Xvfb {disp} exited with {proc.returncode}")
            time.sleep(0.05)
        yield disp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def screenshot(display: str, out: Path) -> None:
    """PNG of the whole X screen."""
    env = {**os.environ, "DISPLAY": display}
    if shutil.which("import"):
        subprocess.run(["import", "-window", "root", str(out)], env=env, check=True, timeout=30)
    else:
        xwd = subprocess.run(["xwd", "-root", "-silent"], env=env, check=True, timeout=30,
                             capture_output=True).stdout
        subprocess.run(["convert", "xwd:-", str(out)], input=xwd, check=True, timeout=30)


class VideoCamera:
    """cv2.VideoCapture stand-in for a camera index: serves a video's frames (BGR), looping,
    and calls ``on_frame(i)`` before delivering frame i (used to take the screenshot)."""

    def __init__(self, video: Path, on_frame: Callable[[int], None]) -> None:
        cap = cv2.VideoCapture(str(video))
        self.frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            self.frames.append(bgr)
        cap.release()
        if not self.frames:
            raise RuntimeError(f"{video}: no frames")
        self.i, self.on_frame = 0, on_frame

    def isOpened(self) -> bool:  # noqa: N802 - cv2 API
        return True

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        self.on_frame(self.i)
        f = self.frames[self.i % len(self.frames)]
        self.i += 1
        return True, f.copy()

    def release(self) -> None:
        pass


def run_camera_window(model: Path, video: Path, detector: str, shot: Path, frames: int = 40,
                      shot_at: int = 30, extra: tuple[str, ...] = ()) -> int:
    """Run ``tsal-runtime --camera 0`` (window on) under Xvfb, screenshot at frame ``shot_at``."""
    real = cv2.VideoCapture
    with xvfb() as disp:
        old = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = disp

        def fake(index: int | str, *a: object) -> object:
            if index == 0:
                return VideoCamera(video, lambda i: screenshot(disp, shot) if i == shot_at
                                   else None)
            return real(index, *a)

        sources.cv2.VideoCapture = fake  # type: ignore[attr-defined]
        try:
            return cli.main(["--model", str(model), "--camera", "0", "--detector", detector,
                             "--max-frames", str(frames), "--log-level", "WARNING", *extra])
        finally:
            sources.cv2.VideoCapture = real  # type: ignore[attr-defined]
            if old is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = old


@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "ok")
def test_camera_window_under_xvfb(tmp_path: Path, const_model: Path) -> None:
    video = tmp_path / "cam.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 240))
    for i in range(12):
        w.write(np.full((240, 320, 3), 90 + 5 * i, np.uint8))
    w.release()
    box = [100.0, 60.0, 220.0, 180.0]
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(json.dumps({"frame": 0, "boxes": [box]}) + "\n")
    shot = tmp_path / "shot.png"
    rc = run_camera_window(const_model, video, f"boxes:{boxes}", shot, frames=12, shot_at=8,
                           extra=("--min-score", "0"))
    assert rc == 0
    img = cv2.imread(str(shot))  # BGR, the whole 800x600 screen; the window sits at (0, 0)
    assert img is not None and img.shape[:2] == (600, 800)
    win = img[:240, :320].astype(int)
    # landmarks: the constant model's 5 points are drawn in track 0's colour (pure green) at
    # known places: the corners/centre of the un-expanded box
    green = (win[..., 1] > 200) & (win[..., 0] < 80) & (win[..., 2] < 80)
    ys, xs = np.nonzero(green)
    assert len(xs) > 20, "no landmark/box pixels on screen"
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for x, y in [(box[0], box[1]), (box[2], box[3]), (cx, cy)]:
        assert np.min(np.hypot(xs - x, ys - y)) < 3, f"no landmark drawn near ({x}, {y})"
    # HUD: white text in the top-left band (FPS line and the per-stage ms line)
    white = (win[:45, :320] > 230).all(-1)
    assert white[:20].sum() > 30 and white[20:45].sum() > 30, "HUD text not visible"
    # outside the window the Xvfb root stays black
    assert img[300:, 400:].max() == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tsal-runtime --camera 0 under Xvfb + screenshot")
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--detector", default="auto")
    ap.add_argument("--out",
                    default=str(ROOT / "benchmarks" / "results" / "runtime_camera_xvfb.png"))
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args(argv)
    why = missing_tools()
    if why:
        print(why, file=sys.stderr)
        return 1
    return run_camera_window(Path(args.model), Path(args.video), args.detector, Path(args.out),
                             frames=args.frames, shot_at=args.frames - 10)


if __name__ == "__main__":
    raise SystemExit(main())
