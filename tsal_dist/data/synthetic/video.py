"""300VW-style clips: smooth pose / expression / position over time, and the MJPG video writer."""

from __future__ import annotations

from dataclasses import replace as _replace
from pathlib import Path

import cv2
import numpy as np

from tsal_dist.atomic import PLAIN, atomic_path
from tsal_dist.data.formats import landmark_box
from tsal_dist.data.synthetic.face import FaceState, face_landmarks, sample_identity
from tsal_dist.data.synthetic.render import render_face
from tsal_dist.data.synthetic.scene import (
    _fit_in_frame,
    _random_light,
    apply_degrade,
    draw_occluder,
    make_background,
    sample_degrade,
    sample_occluder,
)


def smooth_series(rng: np.random.Generator, n: int, amp: float, min_period: float,
                  max_period: float, comps: int = 3) -> np.ndarray:
    """(n,) sum of ``comps`` random sinusoids with periods in [min, max] frames, peak |x| <= amp."""
    t = np.arange(n, dtype=np.float64)
    w = rng.uniform(0.3, 1.0, comps)
    w /= w.sum()
    per = rng.uniform(min_period, max_period, comps)
    ph = rng.uniform(0, 2 * np.pi, comps)
    return amp * (w[None] * np.sin(2 * np.pi * t[:, None] / per[None] + ph[None])).sum(1)


def _blink_track(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) eyelid closure in [0, 1]: blinks every ~30-90 frames lasting ~5-7 frames."""
    out = np.zeros(n)
    t = float(rng.uniform(5, 60))
    while t < n:
        dur = rng.uniform(5, 8)
        k = np.arange(n)
        u = (k - t) / dur
        out = np.maximum(out, np.where((u > 0) & (u < 1), np.sin(np.pi * np.clip(u, 0, 1)), 0))
        t += rng.uniform(30, 90)
    return out


def render_video(rng: np.random.Generator, frames: int, size: int
                 ) -> tuple[list[np.ndarray], np.ndarray, int]:
    """One 300VW-style clip: smooth pose/expression/position, slowly moving background.

    Returns:
        frames: list of (size, size, 3) uint8 RGB; landmarks (frames, 68, 2) float64 px;
        MJPEG quality.
    """
    ident = sample_identity(rng)
    n = frames
    yaw = 55 * np.tanh((rng.uniform(-25, 25) + smooth_series(rng, n, 35, 50, 160)) / 55)
    pitch = np.clip(rng.uniform(-8, 8) + smooth_series(rng, n, 14, 50, 160), -25, 25)
    roll = np.clip(rng.uniform(-10, 10) + smooth_series(rng, n, 14, 60, 200), -30, 30)
    base_scale = rng.uniform(0.50, 0.72) * size / 2.0
    scale = base_scale * (1 + smooth_series(rng, n, 0.08, 60, 200))
    mouth = np.clip(rng.uniform(-0.5, 0.3) + smooth_series(rng, n, 0.8, 30, 90), 0, 1)
    smile = np.clip(rng.uniform(-0.2, 0.5) + smooth_series(rng, n, 0.5, 40, 120), -0.3, 1)
    brow = np.clip(rng.uniform(-0.2, 0.4) + smooth_series(rng, n, 0.5, 40, 120), -0.5, 1)
    blink = _blink_track(rng, n)
    gx, gy = smooth_series(rng, n, 1.0, 30, 100), smooth_series(rng, n, 0.8, 30, 100)
    light0 = np.array(_random_light(rng))
    lx = smooth_series(rng, n, 0.15, 100, 300)
    ambient = float(rng.uniform(0.25, 0.6))
    dist = float(rng.uniform(4.5, 12.0))
    states = [FaceState(yaw=float(yaw[i]), pitch=float(pitch[i]), roll=float(roll[i]),
                        center=(0.0, 0.0), scale=float(scale[i]), mouth_open=float(mouth[i]),
                        smile=float(smile[i]), brow_raise=float(brow[i]),
                        blink_right=float(blink[i]), blink_left=float(blink[i]),
                        gaze=(float(gx[i]), float(gy[i])),
                        light=tuple(float(v) for v in light0 + [lx[i], 0, 0]), ambient=ambient,
                        dist=dist) for i in range(n)]
    # position: a smooth wander; then one constant shift that keeps every frame's box inside
    tx = smooth_series(rng, n, 0.07 * size, 50, 160)
    ty = smooth_series(rng, n, 0.05 * size, 50, 160)
    lms = np.stack([face_landmarks(ident, s) for s in states]) + np.stack([tx, ty], 1)[:, None]
    lo, hi = lms.reshape(-1, 2).min(0), lms.reshape(-1, 2).max(0)
    if np.any(hi - lo > size - 3):  # too big to fit everywhere: shrink about the pivot
        shrink = float((size - 3) / (hi - lo).max())
        states = [_replace(s, scale=s.scale * shrink) for s in states]
        tx, ty = tx * shrink, ty * shrink
        lms = np.stack([face_landmarks(ident, s) for s in states]) + np.stack([tx, ty], 1)[:, None]
    shift = _fit_in_frame(lms.reshape(-1, 2), size, rng, margin=1.0)
    states = [_replace(s, center=(float(shift[0] + tx[i]), float(shift[1] + ty[i])))
              for i, s in enumerate(states)]
    # background: a larger canvas panned slowly
    pad = int(0.1 * size) + 2
    bg = make_background(rng, size + 2 * pad, size + 2 * pad)
    bx = np.clip(smooth_series(rng, n, pad * 0.8, 80, 240), -pad + 1, pad - 1)
    by = np.clip(smooth_series(rng, n, pad * 0.8, 80, 240), -pad + 1, pad - 1)
    occ = None
    if rng.uniform() < 0.3:
        occ = sample_occluder(rng, landmark_box(lms[0] + shift))
        ox = smooth_series(rng, n, 0.15 * size, 60, 200)
        oy = smooth_series(rng, n, 0.10 * size, 60, 200)
    dg = sample_degrade(rng, size)
    dg = _replace(dg, motion_len=0)  # per-frame motion blur would need per-frame direction
    out_frames, out_lm = [], []
    for i, st in enumerate(states):
        m = np.float32([[1, 0, pad + bx[i]], [0, 1, pad + by[i]]])
        img = cv2.warpAffine(bg, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)
        frng = np.random.default_rng([int(rng.integers(1 << 31)), i])
        lm = render_face(img, ident, st)
        if occ is not None:
            draw_occluder(img, occ, (float(ox[i]), float(oy[i])))
        out_frames.append(apply_degrade(img, dg, frng))
        out_lm.append(lm)
    return out_frames, np.stack(out_lm), int(np.clip(dg.jpeg_quality + 10, 50, 95))


def _write_video(path: Path, frames: list[np.ndarray], quality: int, fps: float = 25.0) -> None:
    """MJPG AVI (every frame a JPEG: intra-only) via OpenCV's built-in deterministic encoder."""
    h, w = frames[0].shape[:2]
    with atomic_path(path, ext=".avi", mode=PLAIN) as tmp:
        vw = cv2.VideoWriter(str(tmp), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"),
                             fps, (w, h))
        if not vw.isOpened():
            raise OSError(f"{path}: cannot open an MJPG video writer")
        vw.set(cv2.VIDEOWRITER_PROP_QUALITY, float(quality))
        for f in frames:
            vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        vw.release()
