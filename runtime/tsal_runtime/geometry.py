"""Crop geometry shared by the runtime (pure numpy + OpenCV warps).

Must match training/eval exactly (docs/CONTRACTS.md "Crops"): the face box (x1, y1, x2, y2) in
image px is expanded by ``expand`` * width on EACH side (and * height vertically) and the
expanded box is mapped onto the S x S crop by an axis-aligned affine that is NOT aspect
preserving. Pixel i's centre is at coordinate i. The expanded box's edges land on the crop's
outer pixel edges, i.e. ``crop = (img - left) * S / width - 0.5`` with ``left``/``width`` the
expanded box; this is ``tsal_dist.data.transforms.crop_matrix(box, S, expand)`` (checked by
tests/integration/test_export_parity.py). Exported landmarks are crop-normalised
``(crop_px + 0.5) / S``, so ``img = left + n * width`` -- the inverse is trivial.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def crop_matrix(box: np.ndarray | tuple[float, float, float, float], size: int,
                expand: float) -> np.ndarray:
    """Image -> crop affine of one face box.

    Args:
        box: (4,) x1, y1, x2, y2 in image px (x2 > x1, y2 > y1).
        size: crop side S in px.
        expand: fraction of the box width/height added on each side.

    Returns:
        (2, 3) float64 matrix M with ``crop_xy = M @ [x, y, 1]``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if not (w > 0 and h > 0):
        raise ValueError(f"degenerate box {box!r}")
    left, top = x1 - expand * w, y1 - expand * h
    sx, sy = size / (w * (1 + 2 * expand)), size / (h * (1 + 2 * expand))
    return np.array([[sx, 0.0, -left * sx - 0.5], [0.0, sy, -top * sy - 0.5]], dtype=np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine as (2, 3)."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points (..., 2) with a (2, 3) affine."""
    return pts @ m[:, :2].T + m[:, 2]


def extract_crops(frame: np.ndarray, boxes: np.ndarray, size: int, expand: float,
                  border_value: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  antialias: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Warp each box of a frame to an S x S crop, the way training/eval crops are made.

    Args:
        frame: (H, W, 3) uint8 RGB.
        boxes: (N, 4) float image px.
        size: S.
        expand: crop expansion per side.
        border_value: RGB fill outside the frame (training uses the ImageNet mean, see
            ``ModelSpec.border_value``).
        antialias: when the crop shrinks the frame by 2x or more, box-filter the crop's
            footprint by an integer factor first (cv2.INTER_AREA), as
            ``tsal_dist.data.transforms.warp_image`` does.

    Returns:
        crops (N, S, S, 3) uint8 and the image->crop matrices (N, 2, 3) float64.
    """
    n = len(boxes)
    crops = np.empty((n, size, size, 3), dtype=np.uint8)
    mats = np.empty((n, 2, 3), dtype=np.float64)
    bv = tuple(float(v) for v in border_value)
    for i, b in enumerate(boxes):
        m = crop_matrix(b, size, expand)
        mats[i] = m
        img, mw = frame, m
        s = math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]))  # crop px per image px
        if antialias and 0 < s < 0.5:
            img, mw = _area_downscale_roi(frame, m, size, int(math.floor(1.0 / s)))
        crops[i] = cv2.warpAffine(img, mw, (size, size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=bv)
    return crops, mats


def _area_downscale_roi(img: np.ndarray, m: np.ndarray, size: int,
                        k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the crop's footprint (+ margin) out of ``img``, shrink it k x with INTER_AREA; return
    it with the affine re-expressed on the shrunk grid (same algorithm as training)."""
    h_img, w_img = img.shape[:2]
    e = size - 0.5
    corners = np.array([[-0.5, -0.5], [e, -0.5], [-0.5, e], [e, e]])
    foot = apply_affine(invert_affine(m), corners)
    x0 = max(int(math.floor(foot[:, 0].min())) - 2 * k, 0)
    y0 = max(int(math.floor(foot[:, 1].min())) - 2 * k, 0)
    x1 = min(int(math.ceil(foot[:, 0].max())) + 2 * k + 1, w_img)
    y1 = min(int(math.ceil(foot[:, 1].max())) + 2 * k + 1, h_img)
    w, h = (x1 - x0) // k * k, (y1 - y0) // k * k
    if w < k or h < k:  # footprint (almost) entirely outside the frame
        return img, m
    roi = cv2.resize(img[y0:y0 + h, x0:x0 + w], (w // k, h // k), interpolation=cv2.INTER_AREA)
    off = np.array([x0 + (k - 1) / 2.0, y0 + (k - 1) / 2.0])
    return roi, np.hstack([m[:, :2] * k, (m[:, :2] @ off + m[:, 2])[:, None]])


def normalised_to_image(norm: np.ndarray, mats: np.ndarray, size: int) -> np.ndarray:
    """Crop-normalised landmarks -> image px.

    Args:
        norm: (N, K, 2) in [0, 1] (``(crop_px + 0.5) / S``).
        mats: (N, 2, 3) image->crop affines used for the crops.
        size: S.

    Returns:
        (N, K, 2) float64 image px.
    """
    if len(norm) == 0:
        return np.zeros(norm.shape, dtype=np.float64)
    full = np.zeros((len(mats), 3, 3))
    full[:, :2], full[:, 2, 2] = mats, 1.0
    inv = np.linalg.inv(full)[:, :2]  # every face's crop -> image affine in one call
    pts = norm.astype(np.float64) * size - 0.5
    return pts @ inv[:, :, :2].transpose(0, 2, 1) + inv[:, None, :, 2]


def landmark_box(points: np.ndarray) -> np.ndarray:
    """Tight box (x1, y1, x2, y2) of (K, 2) points -- the box convention of the training lists."""
    return np.array([points[:, 0].min(), points[:, 1].min(),
                     points[:, 0].max(), points[:, 1].max()], dtype=np.float64)


def adapt_box(box: np.ndarray, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Scale a box about its centre and shift it by fractions of its size.

    Detector boxes are not landmark boxes; a detector's calibration (scale, dx, dy) maps its box
    onto the expected landmark box before the refinement pass.
    """
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h
    return np.array([cx - scale * w / 2, cy - scale * h / 2, cx + scale * w / 2,
                     cy + scale * h / 2], dtype=np.float64)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (4,) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
