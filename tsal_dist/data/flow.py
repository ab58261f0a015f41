"""Dense optical flow and the flow-warped "tracking source" of a clip (classical, OpenCV).

TSAL registers frame t onto frame t+1 with a learned flow net; we use OpenCV's DIS (default) or
Farneback flow on the (already cropped) frames. ``warp_to_next(frames)[t]`` is frame t resampled
into frame t+1's geometry: a reconstruction of frame t+1 from frame t's pixels.

What does not belong here: cropping and augmentation (transforms.py), learned flow models.
"""

from __future__ import annotations

import threading
from typing import Literal

import cv2
import numpy as np

FlowMethod = Literal["dis", "farneback", "none"]

_local = threading.local()  # cv2 DIS objects hold state and are not thread-safe


def _dis(preset: str) -> "cv2.DISOpticalFlow":
    cache = getattr(_local, "dis", None)
    if cache is None:
        cache = _local.dis = {}
    if preset not in cache:
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                   "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if preset not in presets:
            raise ValueError(f"unknown DIS preset {preset!r} (known: {sorted(presets)})")
        cache[preset] = cv2.DISOpticalFlow_create(presets[preset])
    return cache[preset]


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        # channel order does not matter much for flow; treat as RGB
        return cv2.cvtColor(np.ascontiguousarray(img, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected (H, W) or (H, W, 3) uint8 image, got shape {img.shape}")


def flow_between(a: np.ndarray, b: np.ndarray, method: FlowMethod = "dis",
                 preset: str = "medium") -> np.ndarray:
    """Dense flow from image ``a`` to image ``b``: ``a[y, x] ~ b[y + f[y, x, 1], x + f[y, x, 0]]``.

    Args:
        a, b: (H, W, 3) uint8 RGB or (H, W) uint8 grey, same size.
        method: "dis" (cv2 DIS, ``preset`` "ultrafast" | "fast" | "medium"), "farneback", or
            "none" (zero flow).
    Returns:
        (H, W, 2) float32 (dx, dy) in px.
    """
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"flow_between: shapes differ {a.shape} vs {b.shape}")
    h, w = a.shape[:2]
    if method == "none":
        return np.zeros((h, w, 2), np.float32)
    ga, gb = _gray(a), _gray(b)
    if method == "dis":
        return _dis(preset).calc(ga, gb, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(ga, gb, None, pyr_scale=0.5, levels=3, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    raise ValueError(f"unknown flow method {method!r} (known: 'dis', 'farneback', 'none')")


def warp_with_flow(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``out[y, x] = img[y + flow[y, x, 1], x + flow[y, x, 0]]`` (bilinear, border replicate)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def warp_to_next(frames: np.ndarray, method: FlowMethod = "dis",
                 preset: str = "medium") -> np.ndarray:
    """Tracking source of a clip: each frame registered onto its successor.

    ``warped[t]`` = frame t resampled into frame t+1's geometry, using the flow computed from
    frame t+1 to frame t (so every output pixel of t+1 looks up where it came from in t).

    Args:
        frames: (T, H, W, 3) uint8, T >= 2.
        method: see :func:`flow_between`; "none" returns ``frames[:-1]`` unchanged (a copy).
    Returns:
        (T-1, H, W, 3) uint8.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"warp_to_next: expected (T>=2, H, W, C) frames, got {frames.shape}")
    if method == "none":
        return frames[:-1].copy()
    out = np.empty_like(frames[:-1])
    grays = [_gray(f) for f in frames]
    for t in range(frames.shape[0] - 1):
        if method == "dis":
            flow = _dis(preset).calc(grays[t + 1], grays[t], None)
        else:
            flow = flow_between(grays[t + 1], grays[t], method)
        out[t] = warp_with_flow(frames[t], flow)
    return out
