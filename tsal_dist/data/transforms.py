"""Crop geometry and augmentation: image->crop affines, warping, landmark flips.

Pure numpy/cv2, no torch and no file I/O. Everything follows docs/CONTRACTS.md: pixel i's centre
is at coordinate i; a face box (x1, y1, x2, y2) is expanded by ``expand`` * width on each side
(and * height vertically) and mapped onto an S x S crop (not aspect-preserving) so that the
expanded box's continuous extent [x1', x2'] covers the crop's pixel area [-0.5, S - 0.5]; the box
centre therefore lands on the crop centre ``(S - 1) / 2``.

What does not belong here: reading images (images.py), building dataset items (datasets.py),
optical flow (flow.py), which points mirror onto which (schemes.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

# ImageNet mean on the 0-255 scale, RGB: the border colour of crops reaching outside the image,
# as TSAL pads (normalised, it becomes ~0).
IMAGENET_MEAN_RGB: tuple[float, float, float] = (123.675, 116.28, 103.53)


def crop_matrix(box: Sequence[float], size: int, expand: float, rot_deg: float = 0.0,
                scale: float = 1.0, shift: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """Image -> crop affine for a face box, with optional rotation, zoom and shift.

    Args:
        box: (x1, y1, x2, y2) in image px.
        size: crop side S in crop px.
        expand: the box grows by ``expand * w`` on each side horizontally, ``expand * h``
            vertically (SBR/TSAL PreCrop; not clipped to the image).
        rot_deg: rotation about the crop centre in degrees; positive turns the image content
            counter-clockwise as displayed (cv2.getRotationMatrix2D convention).
        scale: zoom about the crop centre; > 1 zooms in (the face gets bigger).
        shift: (dx, dy) added last, in crop px.

    Returns:
        (2, 3) float64 M with ``crop_xy = M[:, :2] @ image_xy + M[:, 2]``.
    Raises:
        ValueError: empty box, non-positive size or scale.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if not (w > 0 and h > 0):
        raise ValueError(f"crop_matrix: empty box {tuple(box)}")
    if size <= 0 or not scale > 0:
        raise ValueError(f"crop_matrix: size ({size}) and scale ({scale}) must be > 0")
    ex1, ey1 = x1 - expand * w, y1 - expand * h
    ew, eh = w * (1 + 2 * expand), h * (1 + 2 * expand)
    sx, sy = size / ew, size / eh
    # base: expanded box edges -> crop pixel-area edges (-0.5 .. S - 0.5)
    base = np.array([[sx, 0.0, -ex1 * sx - 0.5],
                     [0.0, sy, -ey1 * sy - 0.5],
                     [0.0, 0.0, 1.0]])
    return (centre_similarity(size, rot_deg, scale, shift) @ base)[:2].copy()


def centre_similarity(size: int, rot_deg: float, scale: float,
                      shift: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """(3, 3) crop -> crop similarity about the crop centre: ``p' = R (p - c) + c + shift``,
    R = scale x rotation as cv2.getRotationMatrix2D (positive = counter-clockwise as displayed)."""
    c = (size - 1) / 2.0
    a = scale * math.cos(math.radians(rot_deg))
    b = scale * math.sin(math.radians(rot_deg))
    return np.array([[a, b, c - a * c - b * c + float(shift[0])],
                     [-b, a, c + b * c - a * c + float(shift[1])],
                     [0.0, 0.0, 1.0]])


def flip_matrix(size: int) -> np.ndarray:
    """(2, 3) float64 horizontal mirror of an S x S crop: x -> S - 1 - x (pixel centres)."""
    return np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]])


def as_3x3(M: np.ndarray) -> np.ndarray:
    """(3, 3) float64 homogeneous form of a (2, 3) (or (3, 3)) affine."""
    return np.vstack([np.asarray(M, np.float64)[:2], [0.0, 0.0, 1.0]])


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(2, 3) affine of ``outer(inner(p))``."""
    return (as_3x3(outer) @ as_3x3(inner))[:2].copy()


def apply_affine_points(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points (..., 2) as (x, y) through the (2, 3) affine M; float64 out."""
    M = np.asarray(M, np.float64)
    p = np.asarray(pts, np.float64)
    return p @ M[:, :2].T + M[:, 2]


def invert_affine(M: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine, or of each of a batch (..., 2, 3) (crop -> image for a crop
    matrix); float64, same shape. Raises ValueError on a singular matrix."""
    M = np.asarray(M, np.float64)
    A, t = M[..., :2], M[..., 2]
    det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
    if np.any(np.abs(det) < 1e-12):
        raise ValueError("invert_affine: singular matrix")
    Ai = np.linalg.inv(A)
    return np.concatenate([Ai, -(Ai @ t[..., None])], axis=-1)


def warp_image(img: np.ndarray, M: np.ndarray, size: int,
               border_value: Sequence[float] = IMAGENET_MEAN_RGB,
               antialias: bool = True) -> np.ndarray:
    """Resample an image into an S x S crop with the image->crop affine M.

    Bilinear (cv2.warpAffine); pixels outside the image get the constant ``border_value``
    (channel order as ``img``; default the ImageNet mean colour, RGB). When the crop shrinks the
    image by 2x or more and ``antialias`` is set, the footprint of the crop is first box-filtered
    (cv2.INTER_AREA) by an integer factor so that large faces do not alias.

    Args:
        img: (H, W, C) or (H, W) uint8/float image.
        M: (2, 3) image->crop affine.
        size: S.
    Returns:
        (S, S, C) or (S, S) array of img's dtype.
    """
    M = np.asarray(M, np.float64)
    bv = tuple(float(v) for v in border_value)
    bv = bv[0] if img.ndim == 2 else bv
    det = abs(M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0])
    s = math.sqrt(det)  # crop px per image px
    if antialias and 0 < s < 0.5:
        k = int(math.floor(1.0 / s))
        img, M = _area_downscale_roi(img, M, size, k, bv)
    return cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=bv)


def _area_downscale_roi(img: np.ndarray, M: np.ndarray, size: int, k: int,
                        bv: float | tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Cut the crop's footprint (plus a margin) out of img, shrink it k x with INTER_AREA and
    return it with the affine adjusted to the shrunk ROI's pixel grid."""
    H, W = img.shape[:2]
    e = size - 0.5
    corners = np.array([[-0.5, -0.5], [e, -0.5], [-0.5, e], [e, e]])
    foot = apply_affine_points(invert_affine(M), corners)
    x0 = max(int(math.floor(foot[:, 0].min())) - 2 * k, 0)
    y0 = max(int(math.floor(foot[:, 1].min())) - 2 * k, 0)
    x1 = min(int(math.ceil(foot[:, 0].max())) + 2 * k + 1, W)
    y1 = min(int(math.ceil(foot[:, 1].max())) + 2 * k + 1, H)
    # keep whole k x k blocks; the at most k - 1 dropped image px are < 1 crop px
    w, h = (x1 - x0) // k * k, (y1 - y0) // k * k
    if w < k or h < k:  # footprint (almost) entirely outside the image: nothing to filter
        return img, M
    roi = cv2.resize(img[y0:y0 + h, x0:x0 + w], (w // k, h // k), interpolation=cv2.INTER_AREA)
    # shrunk pixel j covers image px x0 + j k .. x0 + j k + k - 1, centre x0 + j k + (k - 1) / 2
    off = np.array([x0 + (k - 1) / 2.0, y0 + (k - 1) / 2.0])
    M2 = np.hstack([M[:, :2] * k, (M[:, :2] @ off + M[:, 2])[:, None]])
    return roi, M2


def flip_permutation(num_points: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(K,) int64 index array ``perm`` with flipped[j] = original[perm[j]] after a mirror.

    Raises:
        ValueError: an index outside 0..K-1 or used in two pairs.
    """
    perm = np.arange(num_points)
    seen: set[int] = set()
    for a, b in pairs:
        for v in (a, b):
            if not 0 <= v < num_points:
                raise ValueError(f"flip pair ({a}, {b}) outside 0..{num_points - 1}")
            if v in seen:
                raise ValueError(f"landmark {v} appears in two flip pairs")
            seen.add(v)
        perm[a], perm[b] = b, a
    return perm


def visible_in_crop(pts: np.ndarray, size: int) -> np.ndarray:
    """(..., K) bool: the crop-px point (x, y) lies in [0, S) x [0, S)."""
    p = np.asarray(pts)
    return (p[..., 0] >= 0) & (p[..., 0] < size) & (p[..., 1] >= 0) & (p[..., 1] < size)


@dataclass(frozen=True)
class Augmentation:
    """One random draw of the crop augmentation (applied identically to every frame of a clip).

    ``rot_deg`` degrees about the crop centre (positive = counter-clockwise as displayed),
    ``scale`` zoom (> 1 zooms in), ``shift`` (dx, dy) in crop px, ``flip`` horizontal mirror
    applied after the rest (landmark pairs are swapped by :func:`transform_landmarks`).
    """

    rot_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    flip: bool = False

    def matrix(self, box: Sequence[float], size: int, expand: float) -> np.ndarray:
        """(2, 3) float64 image->crop affine of this augmentation, flip included."""
        M = crop_matrix(box, size, expand, self.rot_deg, self.scale, self.shift)
        return compose_affine(flip_matrix(size), M) if self.flip else M


IDENTITY_AUGMENTATION = Augmentation()


def sample_augmentation(rng: np.random.Generator, rotate_max_deg: float, scale_min: float,
                        scale_max: float, shift_max_frac: float, size: int,
                        flip: bool) -> Augmentation:
    """Draw rotation ~ U(-r, r) deg, scale ~ U(min, max), shift ~ U(-f S, f S) crop px per axis,
    and (if ``flip``) a mirror with probability 1/2. Always consumes the same number of draws."""
    rot = float(rng.uniform(-rotate_max_deg, rotate_max_deg))
    scale = float(rng.uniform(scale_min, scale_max))
    m = shift_max_frac * size
    dx, dy = (float(v) for v in rng.uniform(-m, m, size=2))
    coin = bool(rng.random() < 0.5)
    return Augmentation(rot, scale, (dx, dy), flip and coin)


def view_jitter(rng: np.random.Generator, size: int, rotate_deg: float, scale: float,
                shift_frac: float) -> np.ndarray:
    """One per-frame view jitter: a (2, 3) crop -> crop similarity about the crop centre."""
    rot = float(rng.uniform(-rotate_deg, rotate_deg))
    zoom = float(rng.uniform(1.0 - scale, 1.0 + scale))
    m = shift_frac * size
    dx, dy = (float(v) for v in rng.uniform(-m, m, size=2))
    return centre_similarity(size, rot, zoom, (dx, dy))[:2]


def transform_landmarks(M: np.ndarray, points: np.ndarray, visible: np.ndarray, size: int,
                        flip_perm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map landmarks into the crop; points outside [0, S) become invisible; invisible -> 0.

    Args:
        M: (2, 3) image->crop affine (including the mirror if flipped).
        points: (K, 2) image px; visible: (K,) in {0, 1}.
        flip_perm: pass :func:`flip_permutation` when M mirrors, so left/right labels swap.
    Returns:
        landmarks (K, 2) float32 crop px, visible (K,) float32.
    """
    pts = apply_affine_points(M, points)
    vis = (np.asarray(visible) > 0) & visible_in_crop(pts, size)
    if flip_perm is not None:
        pts, vis = pts[flip_perm], vis[flip_perm]
    pts = np.where(vis[:, None], pts, 0.0)
    return pts.astype(np.float32), vis.astype(np.float32)
