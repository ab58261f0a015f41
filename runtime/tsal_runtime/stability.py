"""Stability of landmark tracks over video frames (pure numpy).

Without ground truth (real video), motion is all there is: ``jitter`` is the mean frame-to-frame
displacement of the points and ``jitter2`` the mean second difference |p(t) - 2 p(t-1) + p(t-2)|,
which is zero for motion at constant velocity and so less sensitive to true motion. Both are
divided by the frame's inter-ocular distance, in %.

With ground truth (synthetic video), the error itself can be followed: ``nmj`` (normalised mean
jitter, as LDEQ reports on WFLW-V) is the RMS over frames and points of the frame-to-frame change
of the normalised error e(t) = (p(t) - g(t)) / d(t): a tracker that is wrong by the same offset on
every frame has NMJ 0, one that shakes around the truth does not.

Frames where the face is missing are NaN rows; differences that touch one are skipped, so a lost
track does not count as motion.
"""

from __future__ import annotations

import numpy as np

# iBUG 68: the 51 inner points (brows, nose, eyes, mouth; the jaw line 0-16 left out) and the
# outer eye corners that define the inter-ocular distance.
INNER_68 = tuple(range(17, 68))
OUTER_EYE_CORNERS_68 = (36, 45)


def _check(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"points must be (T, K, 2), got {p.shape}")
    return p


def interocular(points: np.ndarray, eyes: tuple[int, int] = OUTER_EYE_CORNERS_68) -> np.ndarray:
    """(T,) distance between the two eye-corner points of each frame."""
    p = _check(points)
    return np.linalg.norm(p[:, eyes[0]] - p[:, eyes[1]], axis=-1)


def jitter(points: np.ndarray, norm: np.ndarray, order: int = 1,
           subset: tuple[int, ...] | None = INNER_68) -> float:
    """Mean |finite difference of ``order``| of the points over frames and points, in % of ``norm``.

    Args:
        points: (T, K, 2) image px, NaN rows where the face is missing.
        norm: (T,) normalising distance of each frame (e.g. inter-ocular); the last frame of each
            difference normalises it.
        order: 1 = frame-to-frame motion, 2 = second difference.
        subset: point indices to use (None = all).

    Returns:
        The mean in %, or NaN when no difference could be formed.
    """
    p = _check(points)
    if subset is not None:
        p = p[:, list(subset)]
    d = np.diff(p, n=order, axis=0)  # (T - order, K, 2)
    mag = np.linalg.norm(d, axis=-1).mean(axis=-1) / np.asarray(norm, np.float64)[order:]
    mag = mag[np.isfinite(mag)]
    return float(100.0 * mag.mean()) if len(mag) else float("nan")


def nmj(points: np.ndarray, truth: np.ndarray, norm: np.ndarray,
        subset: tuple[int, ...] | None = None) -> float:
    """Normalised mean jitter in %: RMS over frames and points of e(t) - e(t-1), with
    e(t) = (points(t) - truth(t)) / norm(t).

    Args:
        points, truth: (T, K, 2); NaN rows in ``points`` where the face is missing.
        norm: (T,) normalising distance of each frame (inter-ocular of the ground truth).
        subset: point indices (None = all).
    """
    p, g = _check(points), _check(truth)
    if p.shape != g.shape:
        raise ValueError(f"points {p.shape} and truth {g.shape} differ")
    e = (p - g) / np.asarray(norm, np.float64)[:, None, None]
    if subset is not None:
        e = e[:, list(subset)]
    de = np.diff(e, axis=0)  # (T-1, K, 2)
    sq = (de ** 2).sum(axis=-1)  # squared change of the 2-D error, per point
    ok = np.isfinite(sq).all(axis=-1)
    return float(100.0 * np.sqrt(sq[ok].mean())) if ok.any() else float("nan")
