"""Dense optical flow and the flow-warped "tracking source" of a clip (classical, OpenCV).

TSAL registers frame t onto frame t+1 with a learned flow net; we use OpenCV's DIS (default) or
Farneback flow on the (already cropped) frames. ``warp_to_next(frames)[t]`` is frame t resampled
into frame t+1's geometry: a reconstruction of frame t+1 from frame t's pixels.

Every warp here goes through :func:`pixel_grid` and ``_remap`` (bilinear, border replicate).
What does not belong here: cropping and augmentation (transforms.py), learned flow models.
"""

from __future__ import annotations

import threading
from typing import Literal, Sequence

import cv2
import numpy as np

from tsal_dist.data.transforms import as_3x3

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


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every pixel of an h x w image: two (h, w) float32 arrays (pixel i at i)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx, gy


def _remap(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``out[y, x] = img[ys[y, x], xs[y, x]]``: bilinear, border replicate (every resampling
    through a flow or a grid here)."""
    return cv2.remap(img, xs, ys, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_with_flow(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``out[y, x] = img[y + flow[y, x, 1], x + flow[y, x, 0]]`` (bilinear, border replicate)."""
    gx, gy = pixel_grid(*flow.shape[:2])
    return _remap(img, gx + flow[..., 0], gy + flow[..., 1])


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


def _affine_apply(M: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (M[0, 0] * x + M[0, 1] * y + M[0, 2]).astype(np.float32), \
        (M[1, 0] * x + M[1, 1] * y + M[1, 2]).astype(np.float32)


def tracking_grids(shared: np.ndarray, jitters: Sequence[np.ndarray] | None = None,
                   method: FlowMethod = "dis", preset: str = "medium") -> np.ndarray:
    """Where every pixel of frame t+1 comes from in frame t, for jittered views of a clip.

    The clip's frames are first cropped with ONE shared transform (``shared``: the crops on which
    the flow is computed); frame t is then shown to the network as view t = ``jitters[t]``
    applied to shared crop t (a crop -> crop affine per frame; None = identity for all). For
    output pixel y of view t+1: ``x = jitters[t+1]^-1 y`` (shared crop t+1), ``x' = x + F(x)``
    with F the dense flow from shared crop t+1 to shared crop t, and ``grid[t][y] =
    jitters[t](x')`` (view t px). With no jitter this is the grid of :func:`warp_to_next`
    (``y + F(y)``), so ``remap(view t, grid[t])`` is the registered image TSAL detects on.

    Args:
        shared: (T, S, S, 3) uint8 crops under the shared transform, T >= 2.
        jitters: T (2, 3) or (3, 3) crop -> crop affines, or None.
        method, preset: see :func:`flow_between`.

    Returns:
        (T-1, S, S, 2) float32 (x, y) positions in view t, crop px.
    """
    shared = np.asarray(shared)
    if shared.ndim != 4 or shared.shape[0] < 2:
        raise ValueError(f"tracking_grids: expected (T>=2, H, W, C) crops, got {shared.shape}")
    t_len, h, w = shared.shape[:3]
    if jitters is not None and len(jitters) != t_len:
        raise ValueError(f"tracking_grids: {len(jitters)} jitters for {t_len} frames")
    eye = np.eye(3)
    J = [eye if jitters is None else as_3x3(jitters[t]) for t in range(t_len)]
    gx, gy = pixel_grid(h, w)
    grays = [_gray(f) for f in shared] if method != "none" else []
    out = np.empty((t_len - 1, h, w, 2), np.float32)
    for t in range(t_len - 1):
        xs, ys = _affine_apply(np.linalg.inv(J[t + 1]), gx, gy)
        if method == "none":
            fx = fy = np.float32(0.0)
        else:
            flow = flow_between(grays[t + 1], grays[t], method, preset)
            if np.array_equal(J[t + 1], eye):
                f = flow
            else:
                f = _remap(flow, xs, ys)
            fx, fy = f[..., 0], f[..., 1]
        out[t, ..., 0], out[t, ..., 1] = _affine_apply(J[t], xs + fx, ys + fy)
    return out


def remap_with_grid(img: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``out[y, x] = img[grid[y, x, 1], grid[y, x, 0]]`` (bilinear, border replicate)."""
    return _remap(img, np.ascontiguousarray(grid[..., 0]), np.ascontiguousarray(grid[..., 1]))
