"""Raster helpers: float32 RGB images in [0, 1]; polygons drawn with 1/16 px precision + AA."""

from __future__ import annotations

import cv2
import numpy as np

_SHIFT = 4
_ONE = 1 << _SHIFT


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _poly_mask(shape: tuple[int, int], polys: list[np.ndarray]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [_fix(p) for p in polys], 255, cv2.LINE_AA, _SHIFT)
    return m.astype(np.float32) * (1 / 255)


def _line_mask(shape: tuple[int, int], pts: np.ndarray, thickness: float) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.polylines(m, [_fix(pts)], False, 255, max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)
    return m.astype(np.float32) * (1 / 255)


def _ellipse_mask(shape: tuple[int, int], c: np.ndarray, axes: tuple[float, float],
                  angle: float) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(m, (int(round(c[0] * _ONE)), int(round(c[1] * _ONE))), ax, angle, 0, 360, 255, -1,
                cv2.LINE_AA, _SHIFT)
    return m.astype(np.float32) * (1 / 255)


def _blend(img: np.ndarray, mask: np.ndarray, color: np.ndarray | float) -> None:
    """In place: img = img * (1 - mask) + color * mask; color (3,) or an image like img."""
    mask = np.asarray(mask, np.float32)
    if np.ndim(color) < 3:
        c = np.empty_like(img)
        c[:] = np.asarray(color, np.float32)
    else:
        c = np.asarray(color, np.float32)
    img[...] = cv2.blendLinear(c, img, mask, 1 - mask)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask, (0, 0), max(sigma, 0.3)) if sigma > 0.3 else mask


def _noise_field(rng: np.random.Generator, h: int, w: int, cell: float, ch: int = 1) -> np.ndarray:
    """Smooth noise in [-1, 1], feature size ~cell px; (h, w) or (h, w, ch)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    g = rng.uniform(-1, 1, (gh, gw, ch)).astype(np.float32)
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return out if ch > 1 else out.reshape(h, w)


def _window(img: np.ndarray, pts: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """A view of ``img`` around points (N, 2) +- pad px, and its (x, y) offset."""
    h, w = img.shape[:2]
    x0 = int(np.clip(np.floor(pts[:, 0].min() - pad), 0, w))
    x1 = int(np.clip(np.ceil(pts[:, 0].max() + pad) + 1, 0, w))
    y0 = int(np.clip(np.floor(pts[:, 1].min() - pad), 0, h))
    y1 = int(np.clip(np.ceil(pts[:, 1].max() + pad) + 1, 0, h))
    return img[y0:y1, x0:x1], np.array([x0, y0], np.float64)
