"""Synthetic faces with exact 68-point (iBUG) ground truth, written in the real on-disk formats.

What belongs here: a small procedural face renderer (3D landmark template + identity, expression,
head pose, perspective projection, shading, clutter, occlusion, degradations) and the writer that
lays the result out like 300W (images + .pts), 300VW (videos + per-frame .pts) and SBR list files.
What does not: reading the data back (formats.py / datasets.py), augmentation (transforms.py).

Landmark convention (0-based indices): 0-16 jaw, 17-21 right brow, 22-26 left brow, 27-30 nose
bridge, 31-35 nostrils, 36-41 right eye, 42-47 left eye (outer corners 36 and 45), 48-59 outer lips,
60-67 inner lips. "Right" is the subject's right, which appears on the image's left.

Coordinates in the written .pts files follow docs/CONTRACTS.md: x right, y down, pixel i's centre
at coordinate i (0-based), i.e. exactly the coordinates the renderer drew with (OpenCV's raster
convention), so a loader that uses .pts values as written is pixel-exact. Points self-occluded by a
large yaw keep their projected positions and stay marked visible (as 300W does).

Everything is deterministic for a seed: every image / video draws from its own
``np.random.default_rng([seed, stream, index])``, and the encoders (libjpeg, OpenCV's built-in MJPEG
writer) are deterministic, so the same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from dataclasses import replace as _replace
from pathlib import Path

import cv2
import numpy as np

from tsal_dist.atomic import PLAIN, atomic_path, atomic_write_bytes
from tsal_dist.data import formats
from tsal_dist.data.formats import ListEntry, landmark_box, write_list, write_pts

NUM_POINTS = 68

LIST_FILES = {
    "train": "synthetic.train.lst",
    "test": "synthetic.test.lst",
    "videos_train_unlabeled": "synthetic.videos.train.none",
    "videos_train": "synthetic.videos.train.lst",
    "videos_test": "synthetic.videos.test.lst",
}

# Random streams: each item draws from default_rng([seed, stream, index]).
_STREAM_TRAIN, _STREAM_TEST, _STREAM_VIDEO, _STREAM_TEST_VIDEO, _STREAM_BASIS = 1, 2, 3, 4, 99

_SIZE_DEFAULTS = dict(images=800, test_images=200, videos=16, test_videos=4, frames=60,
                      image_size=256, seed=0)


# ----------------------------------------------------------------------------------------------
# 3D template (head units: eye line at y = 0, outer eye corners at x = +-0.5; x right, y down,
# z towards the viewer). Only the subject's right half (image left) is listed; the rest mirrors.
# ----------------------------------------------------------------------------------------------

_JAW_HALF = [  # points 0..8 (8 = chin)
    (-0.76, 0.05, -0.66), (-0.75, 0.25, -0.60), (-0.73, 0.45, -0.53), (-0.69, 0.64, -0.46),
    (-0.62, 0.82, -0.38), (-0.52, 0.98, -0.28), (-0.38, 1.11, -0.18), (-0.20, 1.21, -0.10),
    (0.00, 1.25, -0.07)]
_RBROW = [(-0.66, -0.24, -0.30), (-0.55, -0.34, -0.16), (-0.41, -0.38, -0.07),
          (-0.27, -0.37, -0.02), (-0.13, -0.31, 0.00)]  # 17..21, outer -> inner
_NOSE = [(0.0, -0.02, -0.02), (0.0, 0.14, 0.08), (0.0, 0.30, 0.18), (0.0, 0.46, 0.28)]  # 27..30
_NOSTRIL_HALF = [(-0.17, 0.53, 0.04), (-0.09, 0.57, 0.11), (0.0, 0.59, 0.15)]  # 31, 32, 33
_REYE = [(-0.50, 0.01, -0.14), (-0.40, -0.065, -0.07), (-0.26, -0.07, -0.05), (-0.16, 0.01, -0.06),
         (-0.26, 0.055, -0.06), (-0.40, 0.055, -0.08)]  # 36..41
_OUTER_LIP_HALF = [(-0.27, 0.83, -0.06), (-0.17, 0.76, 0.03), (-0.07, 0.72, 0.07),
                   (0.0, 0.74, 0.08)]  # 48..51
_LOWER_LIP_HALF = [(-0.17, 0.92, 0.01), (-0.07, 0.96, 0.05), (0.0, 0.97, 0.06)]  # 59, 58, 57
_INNER_UPPER_HALF = [(-0.22, 0.83, -0.03), (-0.07, 0.812, 0.05), (0.0, 0.815, 0.055)]  # 60..62
_INNER_LOWER_HALF = [(-0.07, 0.835, 0.05), (0.0, 0.84, 0.055)]  # 67, 66


def _mirror(p: tuple[float, float, float]) -> tuple[float, float, float]:
    return (-p[0], p[1], p[2])


def _build_template() -> np.ndarray:
    """(68, 3) mean face in head units, iBUG order."""
    pts: list[tuple[float, float, float]] = []
    pts += _JAW_HALF + [_mirror(p) for p in _JAW_HALF[-2::-1]]  # 0..16
    pts += _RBROW + [_mirror(p) for p in _RBROW[::-1]]  # 17..26
    pts += _NOSE  # 27..30
    pts += _NOSTRIL_HALF + [_mirror(p) for p in _NOSTRIL_HALF[-2::-1]]  # 31..35
    pts += _REYE  # 36..41
    # left eye 42..47: 42 inner, 43/44 upper, 45 outer, 46/47 lower (mirrors 39, 38, 37, 36, 41, 40)
    pts += [_mirror(_REYE[i]) for i in (3, 2, 1, 0, 5, 4)]
    pts += _OUTER_LIP_HALF + [_mirror(p) for p in _OUTER_LIP_HALF[-2::-1]]  # 48..54
    pts += [_mirror(p) for p in _LOWER_LIP_HALF[:-1]] + [_LOWER_LIP_HALF[-1]]  # 55, 56, 57
    pts += _LOWER_LIP_HALF[-2::-1]  # 58, 59
    pts += _INNER_UPPER_HALF + [_mirror(p) for p in _INNER_UPPER_HALF[-2::-1]]  # 60..64
    pts += [_mirror(_INNER_LOWER_HALF[0]), _INNER_LOWER_HALF[1], _INNER_LOWER_HALF[0]]  # 65..67
    arr = np.asarray(pts, np.float64)
    assert arr.shape == (NUM_POINTS, 3)
    return arr


TEMPLATE = _build_template()

# Head ellipsoid (skull + cheeks) used for silhouette, hair and shading; head-unit centre and radii.
_HEAD_C = np.array([0.0, 0.0, -0.62])
_HEAD_R = np.array([0.80, 1.30, 0.80])
_PIVOT = np.array([0.0, 0.35, -0.65])  # rotation centre (roughly the top of the neck)

_JAW = np.arange(0, 17)
_RBROW_I, _LBROW_I = np.arange(17, 22), np.arange(22, 27)
_REYE_I, _LEYE_I = np.arange(36, 42), np.arange(42, 48)
_OUTER_LIPS, _INNER_LIPS = np.arange(48, 60), np.arange(60, 68)
# (upper, lower) eyelid pairs that meet when the eye closes
_LID_PAIRS = [(37, 41), (38, 40), (43, 47), (44, 46)]


def _basis(n: int = 8) -> np.ndarray:
    """(n, 68, 3) smooth low-rank identity deformations: quadratic fields of template position."""
    rng = np.random.default_rng([_STREAM_BASIS, 0])
    x, y = TEMPLATE[:, 0], TEMPLATE[:, 1] - 0.6
    feats = np.stack([x, y, x * x, x * y, y * y, np.abs(x)], 1)  # (68, 6)
    coef = rng.normal(size=(n, 6, 3)) / np.array([1.0, 1.0, 1.5, 1.5, 1.5, 1.0])[None, :, None]
    b = np.einsum("pf,nfc->npc", feats, coef)
    b[..., 2] *= 0.5
    return b / np.abs(b).max(axis=(1, 2), keepdims=True)


_BASIS = _basis()


# ----------------------------------------------------------------------------------------------
# Identity, expression, pose
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """A person: neutral 3D landmark shape and appearance. Colours are RGB in [0, 1]."""

    shape: np.ndarray  # (68, 3) head units
    skin: np.ndarray  # (3,)
    lips: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    iris: np.ndarray
    hairline: float  # head-unit y of the hairline at the centre (more negative = higher)
    bald: bool
    beard: float  # 0 = none, up to ~0.5 = dark stubble strength
    brow_thickness: float  # head units
    cloth: np.ndarray  # (3,) shirt colour
    skin_waves: np.ndarray  # (K, 5): 3D frequency (rad / head unit), phase, amplitude
    hair_waves: np.ndarray  # (K, 5)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw an identity: global proportions, jaw, eyes, nose, mouth, low-rank shape and colours."""
    s = TEMPLATE.copy()
    # jaw width / chin length
    lower = np.clip((s[:, 1] - 0.3) / 0.95, 0, 1)
    jaw_w = rng.uniform(0.85, 1.10)
    s[_JAW, 0] *= 1 + (jaw_w - 1) * lower[_JAW]
    s[_JAW, 1] += rng.uniform(-0.06, 0.08) * lower[_JAW] ** 2
    # eyes: spacing and size about each eye centre
    spacing, eye_size = rng.uniform(-0.04, 0.05), rng.uniform(0.85, 1.2)
    for idx in (_REYE_I, _LEYE_I):
        c = s[idx].mean(0)
        s[idx] = c + (s[idx] - c) * [eye_size, eye_size * rng.uniform(0.85, 1.2), 1]
        s[idx, 0] += np.sign(c[0]) * spacing
        s[np.r_[_RBROW_I, _LBROW_I][np.sign(s[np.r_[_RBROW_I, _LBROW_I], 0]) == np.sign(c[0])],
          0] += np.sign(c[0]) * spacing * 0.6
    # brows: height and arch
    s[17:27, 1] += rng.uniform(-0.05, 0.04)
    s[[18, 19, 24, 25], 1] -= rng.uniform(-0.02, 0.04)
    # nose: length, width, protrusion
    nose = np.arange(28, 36)
    s[nose, 1] = s[27, 1] + (s[nose, 1] - s[27, 1]) * rng.uniform(0.85, 1.15)
    s[31:36, 0] *= rng.uniform(0.8, 1.3)
    s[28:36, 2] *= rng.uniform(0.85, 1.2)
    # mouth: width, lip thickness, height
    mc = s[_OUTER_LIPS].mean(0)
    mw = rng.uniform(0.8, 1.2)
    s[48:68, 0] = mc[0] + (s[48:68, 0] - mc[0]) * mw
    s[[49, 50, 51, 52, 53], 1] -= rng.uniform(-0.015, 0.03)
    s[[55, 56, 57, 58, 59], 1] += rng.uniform(-0.03, 0.03)
    s[48:68, 1] += rng.uniform(-0.04, 0.04)
    # low-rank smooth deformation + tiny per-point noise
    s += np.einsum("n,npc->pc", rng.normal(0, 0.025, len(_BASIS)), _BASIS)
    s += rng.normal(0, 0.004, s.shape)
    # global proportions
    s *= [rng.uniform(0.9, 1.1), rng.uniform(0.92, 1.08), rng.uniform(0.9, 1.1)]

    tone = rng.uniform() ** 1.4
    skin = (1 - tone) * np.array([0.96, 0.80, 0.68]) + tone * np.array([0.36, 0.23, 0.16])
    skin = np.clip(skin * rng.uniform(0.92, 1.08, 3), 0.05, 1)
    lips = np.clip(skin * np.array([0.92, 0.62, 0.62]) * rng.uniform(0.8, 1.0), 0, 1)
    hair_palette = np.array([[0.06, 0.05, 0.04], [0.25, 0.16, 0.09], [0.45, 0.30, 0.15],
                             [0.80, 0.66, 0.40], [0.55, 0.25, 0.10], [0.62, 0.62, 0.60]])
    hair = np.clip(hair_palette[rng.integers(len(hair_palette))] * rng.uniform(0.8, 1.2), 0, 1)
    brow = np.clip(hair * 0.7 + 0.05 * rng.uniform(), 0, 1)
    iris_palette = np.array([[0.25, 0.15, 0.07], [0.12, 0.08, 0.05], [0.30, 0.45, 0.65],
                             [0.30, 0.45, 0.30]])
    iris = iris_palette[rng.integers(len(iris_palette))]
    return Identity(shape=s, skin=skin, lips=lips, hair=hair, brow=brow, iris=iris,
                    hairline=float(rng.uniform(-0.95, -0.70)), bald=bool(rng.uniform() < 0.12),
                    beard=float(rng.uniform(0.15, 0.5)) if rng.uniform() < 0.15 else 0.0,
                    brow_thickness=float(rng.uniform(0.045, 0.085)),
                    cloth=rng.uniform(0.05, 0.9, 3) * rng.uniform(0.6, 1.0),
                    skin_waves=_waves(rng, 4, 5.0, 20.0, (1.0, 1.0, 1.0)),
                    hair_waves=_waves(rng, 4, 25.0, 80.0, (1.0, 0.15, 1.0)))


def _waves(rng: np.random.Generator, k: int, fmin: float, fmax: float,
           axis_weight: tuple[float, float, float]) -> np.ndarray:
    """(k, 5) random plane waves on the head surface: frequency vector, phase, amplitude."""
    d = rng.normal(size=(k, 3)) * axis_weight
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    f = d * rng.uniform(fmin, fmax, (k, 1))
    amp = rng.uniform(0.5, 1.0, k)
    return np.concatenate([f, rng.uniform(0, 2 * np.pi, (k, 1)), (amp / amp.sum())[:, None]], 1)


def _surface_texture(waves: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Texture in [-1, 1] attached to head-surface points (so it moves with the head)."""
    out = np.zeros_like(x)
    for fx, fy, fz, ph, a in waves.astype(np.float32):
        out += a * np.sin(fx * x + fy * y + fz * z + ph)
    return out


def apply_expression(shape: np.ndarray, *, mouth_open: float = 0.0, smile: float = 0.0,
                     brow_raise: float = 0.0, blink_right: float = 0.0,
                     blink_left: float = 0.0) -> np.ndarray:
    """Deform a (68, 3) neutral shape by an expression; returns a new (68, 3) array.

    Args:
        mouth_open: 0 (closed) .. 1 (wide open): lower lip and chin drop.
        smile: -0.3 .. 1: mouth corners go out and up.
        brow_raise: -0.5 (frown) .. 1 (raised).
        blink_right, blink_left: 0 (open) .. 1 (closed: upper and lower lid points coincide).
    """
    s = shape.copy()
    m = float(np.clip(mouth_open, 0, 1))
    drop = 0.30 * m
    s[[55, 56, 57, 58, 59, 65, 66, 67], 1] += drop
    s[[48, 54], 1] += 0.35 * drop
    s[[60, 64], 1] += 0.45 * drop
    s[[61, 62, 63], 1] -= 0.05 * drop
    jaw_w = np.clip(1 - np.abs(np.arange(17) - 8) / 5.0, 0, 1) ** 1.5
    s[_JAW, 1] += drop * jaw_w
    s[[48, 60], 0] += 0.05 * m
    s[[54, 64], 0] -= 0.05 * m
    sm = float(smile)
    for i, sign in ((48, -1), (60, -1), (54, 1), (64, 1)):
        s[i, 0] += sign * 0.05 * sm
        s[i, 1] -= 0.06 * sm
    s[[49, 53, 59, 55], 1] -= 0.025 * sm
    s[[40, 41, 46, 47], 1] -= 0.012 * max(sm, 0.0)
    b = float(brow_raise)
    s[17:27, 1] -= 0.09 * b
    if b < 0:  # frown: inner brow points go down and in
        s[[21, 22], 1] += 0.04 * b
        s[21, 0] -= 0.03 * b
        s[22, 0] += 0.03 * b
    for (up, lo) in _LID_PAIRS:
        c = float(np.clip(blink_right if up < 42 else blink_left, 0, 1))
        meet = 0.25 * s[up] + 0.75 * s[lo]
        s[up] += c * (meet - s[up])
        s[lo] += c * (meet - s[lo])
    return s


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) head->camera rotation from degrees. Yaw > 0 turns the face to the image right,
    pitch > 0 tilts the chin down, roll > 0 rotates clockwise in the image."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Camera:
    """Perspective camera looking down -z from (0, 0, dist) at the rotated head.

    A head point p maps to world w = R (p - pivot); image = centre + focal * w_xy / (dist - w_z).
    ``focal = scale * dist`` so a point at the pivot depth has ``scale`` pixels per head unit.
    """

    rot: np.ndarray  # (3, 3)
    center: np.ndarray  # (2,) image px of the pivot
    scale: float  # px per head unit at pivot depth
    dist: float  # camera distance, head units

    def world(self, p: np.ndarray) -> np.ndarray:
        return (p - _PIVOT) @ self.rot.T

    def project(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) head units -> (N, 2) image px."""
        w = self.world(p)
        return self.center + self.scale * self.dist * w[:, :2] / (self.dist - w[:, 2:3])


# ----------------------------------------------------------------------------------------------
# Raster helpers (float32 RGB images in [0, 1]; polygons drawn with 1/16 px precision + AA)
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Face renderer
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceState:
    """Everything that changes between frames of one person."""

    yaw: float
    pitch: float
    roll: float
    center: tuple[float, float]  # image px of the pivot
    scale: float  # px per head unit
    mouth_open: float = 0.0
    smile: float = 0.0
    brow_raise: float = 0.0
    blink_right: float = 0.0
    blink_left: float = 0.0
    gaze: tuple[float, float] = (0.0, 0.0)  # iris offset, fraction of the eye half-size
    light: tuple[float, float, float] = (0.3, -0.4, 0.85)  # towards the light, world
    ambient: float = 0.35
    dist: float = 8.0


def _camera(st: FaceState) -> Camera:
    return Camera(rotation_matrix(st.yaw, st.pitch, st.roll), np.asarray(st.center, np.float64),
                  float(st.scale), float(st.dist))


def face_landmarks(ident: Identity, st: FaceState) -> np.ndarray:
    """(68, 2) float64 image px of the face in ``st`` (what render_face draws)."""
    return _camera(st).project(_expressed(ident, st))


def _expressed(ident: Identity, st: FaceState) -> np.ndarray:
    return apply_expression(ident.shape, mouth_open=st.mouth_open, smile=st.smile,
                            brow_raise=st.brow_raise, blink_right=st.blink_right,
                            blink_left=st.blink_left)


def _head_normal(p: np.ndarray) -> np.ndarray:
    n = (p - _HEAD_C) / _HEAD_R ** 2
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def render_face(img: np.ndarray, ident: Identity, st: FaceState) -> np.ndarray:
    """Draw the person into ``img`` (H, W, 3) float32 RGB [0, 1] in place.

    Returns:
        (68, 2) float64 landmarks in image px (pixel centres at integers).
    """
    H, W = img.shape[:2]
    cam = _camera(st)
    pts3 = _expressed(ident, st)
    lm = cam.project(pts3)
    light = np.asarray(st.light, np.float64)
    light /= np.linalg.norm(light)
    unit = cam.scale  # px per head unit

    # body (neck + shoulders) first, behind the head
    neck3 = np.array([[-0.42, 0.6, -0.75], [0.42, 0.6, -0.75], [0.46, 2.4, -0.7],
                      [-0.46, 2.4, -0.7]])
    cloth3 = np.array([[-0.5, 1.75, -0.7], [0.5, 1.75, -0.7], [1.6, 2.2, -0.7], [1.9, 4.0, -0.7],
                       [-1.9, 4.0, -0.7], [-1.6, 2.2, -0.7]])
    neck_shade = st.ambient + (1 - st.ambient) * 0.45
    for poly3, col in ((neck3, ident.skin * neck_shade), (cloth3, ident.cloth)):
        poly = cam.project(poly3)
        win, o = _window(img, poly, 1)
        if win.size:
            _blend(win, _poly_mask(win.shape[:2], [poly - o]), col)

    # region of interest around the head
    head_outline = cam.project(np.array([[x, y, _HEAD_C[2]] for x in (-0.9, 0.9)
                                         for y in (-1.4, 1.4)] +
                                        [[0, -1.4, 0.3], [0, 1.4, 0.3], [0.9, 0, 0.3],
                                         [-0.9, 0, 0.3]]))
    allp = np.vstack([head_outline, lm])
    x0 = int(max(0, np.floor(allp[:, 0].min()) - 2))
    y0 = int(max(0, np.floor(allp[:, 1].min()) - 2))
    x1 = int(min(W, np.ceil(allp[:, 0].max()) + 3))
    y1 = int(min(H, np.ceil(allp[:, 1].max()) + 3))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return lm
    roi = img[y0:y1, x0:x1]
    rs = roi.shape[:2]
    off = np.array([x0, y0], np.float64)
    L = lm - off

    # ---- ray-cast the head ellipsoid: silhouette, normals, hair region (float32, per component)
    f = cam.scale * cam.dist
    dx = ((np.arange(x0, x1, dtype=np.float32) - cam.center[0]) / f)[None, :]
    dy = ((np.arange(y0, y1, dtype=np.float32) - cam.center[1]) / f)[:, None]
    rot = cam.rot.astype(np.float32)
    o_h = cam.rot.T @ np.array([0, 0, cam.dist]) + _PIVOT
    o_e = ((o_h - _HEAD_C) / _HEAD_R).astype(np.float32)
    # ray direction in head coords: R^T (dx, dy, -1), scaled per axis into the unit sphere frame
    de = [(rot[0, k] * dx + rot[1, k] * dy - rot[2, k]) / np.float32(_HEAD_R[k]) for k in range(3)]
    a = de[0] * de[0] + de[1] * de[1] + de[2] * de[2]
    b = 2 * (de[0] * o_e[0] + de[1] * o_e[1] + de[2] * o_e[2])
    disc = b * b - 4 * a * np.float32(o_e @ o_e - 1)
    hit = disc > 0
    sq = np.sqrt(np.maximum(disc, 0))
    t = (-b - sq) / (2 * a)
    pe = [o_e[k] + t * de[k] for k in range(3)]  # hit point in unit-sphere coords
    hx, hy, hz = (pe[k] * np.float32(_HEAD_R[k]) + np.float32(_HEAD_C[k]) for k in range(3))
    nx, ny, nz = (pe[k] / np.float32(_HEAD_R[k]) for k in range(3))  # head-frame normal (unnorm.)
    inv = 1 / np.sqrt(nx * nx + ny * ny + nz * nz + 1e-12)
    l_h = (cam.rot.T @ light).astype(np.float32)
    hv = light + [0, 0, 1]
    h_h = (cam.rot.T @ (hv / np.linalg.norm(hv))).astype(np.float32)
    diff = np.clip((nx * l_h[0] + ny * l_h[1] + nz * l_h[2]) * inv, 0, 1)
    spec = np.clip((nx * h_h[0] + ny * h_h[1] + nz * h_h[2]) * inv, 0, 1)
    spec *= spec
    spec *= spec  # ^4
    spec = spec * (spec * spec) ** 2  # ^20
    shade = np.minimum(np.float32(1.1) * (st.ambient + (1 - st.ambient) * diff), 1)
    # antialiased silhouette: the chord length through the ellipsoid ramps from 0 at the edge
    head_mask = np.clip(sq / np.sqrt(a) * np.float32(0.4 * cam.scale), 0, 1) * hit

    # ears (behind the face skin, in front of the hair at the back)
    for sx in (-1, 1):
        ec3 = np.array([[sx * 0.80, 0.12, -0.70]])
        ec = cam.project(ec3)[0] - off
        nrm = cam.rot @ np.array([sx * 0.9, 0, -0.45])
        width = abs(nrm[0]) * 0.10 * unit + 0.02 * unit
        win, o = _window(roi, ec[None], 0.21 * unit + 2)
        if win.size:
            _blend(win, _ellipse_mask(win.shape[:2], ec - o, (width, 0.20 * unit), st.roll),
                   ident.skin * (st.ambient + (1 - st.ambient) * max(0, nrm @ light) * 0.7))

    # jaw / lower face polygon (the landmark jaw line is its lower border)
    jaw_poly = np.vstack([L[_JAW], cam.project(np.array([[0.70, -0.3, -0.60], [0, -0.5, 0.0],
                                                         [-0.70, -0.3, -0.60]])) - off])
    hull = cv2.convexHull(jaw_poly.astype(np.float32)).reshape(-1, 2)
    jaw_mask = _poly_mask(rs, [hull])
    upper = hy < 0.35
    skin_mask = np.maximum(jaw_mask, head_mask * upper)
    # hair: on the ellipsoid, above the hairline or at the back/sides of the head
    hair_line = ident.hairline + 0.55 * (hx / _HEAD_R[0]) ** 2 + 0.08 * np.sin(hx * 9)
    hair = (hy < hair_line) | ((hz < -0.95) & (hy < 0.25)) | ((np.abs(hx) > 0.66) & (hy < -0.15))
    hair_mask = head_mask * hair.astype(np.float32)
    if ident.bald:
        hair_mask *= (hy > -0.55) & (hz < -0.9)

    # skin colour with blotch texture, shaded
    tex = 1 + 0.05 * _surface_texture(ident.skin_waves, hx, hy, hz)
    skin_img = cv2.merge([shade * tex * np.float32(ident.skin[k]) + np.float32(0.18) * spec
                          for k in range(3)])
    miss = ~hit
    if miss.any():  # jaw pixels beyond the ellipsoid: dim rim
        skin_img[miss] = ident.skin * (st.ambient + 0.15)
    _blend(roi, skin_mask, skin_img)
    if ident.beard > 0:
        beard3 = np.vstack([pts3[3:14], pts3[[54, 55, 56, 57, 58, 59, 48]] + [0, 0.03, 0]])
        bm = _soft(_poly_mask(rs, [cam.project(beard3) - off]), 0.03 * unit)
        _blend(roi, bm * ident.beard, ident.hair * 0.5)
    hair_tex = 1 + 0.3 * _surface_texture(ident.hair_waves, hx, hy, hz)
    hair_lum = np.float32(0.5) + np.float32(0.5) * shade * hair_tex
    hair_img = cv2.merge([hair_lum * np.float32(ident.hair[k]) + np.float32(0.1) * spec
                          for k in range(3)])
    _blend(roi, hair_mask, hair_img)

    # feature visibility: facing factor of each feature's mean normal
    def facing(idx: np.ndarray) -> float:
        n = cam.rot @ _head_normal(pts3[idx].mean(0))
        return float(np.clip((n[2] - 0.05) / 0.25, 0, 1))

    def shade_at(idx: np.ndarray) -> float:
        n = cam.rot @ _head_normal(pts3[idx].mean(0))
        return float(st.ambient + (1 - st.ambient) * max(0.0, n @ light))

    # eye sockets (soft shadow)
    for idx in (_REYE_I, _LEYE_I):
        fac = facing(idx)
        if fac <= 0:
            continue
        ec3 = pts3[idx].mean(0) + [0, -0.03, 0]
        sock = cam.project(np.vstack([ec3 + [dx, dy, 0] for dx, dy in
                                      ((-0.2, 0), (0, -0.15), (0.2, 0), (0, 0.11))])) - off
        sig = 0.06 * unit
        win, o = _window(roi, sock, 3 * sig + 1)
        if win.size:
            m = _soft(_poly_mask(win.shape[:2], [sock - o]), sig) * fac
            win *= (1 - 0.22 * m)[..., None]

    # brows
    for idx in (_RBROW_I, _LBROW_I):
        fac = facing(idx)
        if fac <= 0:
            continue
        top = pts3[idx]
        taper = np.linspace(0.55, 1.0, 5) if idx[0] == 17 else np.linspace(1.0, 0.55, 5)
        bot = top + np.stack([np.zeros(5), ident.brow_thickness * taper, np.zeros(5)], 1)
        poly = np.vstack([cam.project(top), cam.project(bot)[::-1]]) - off
        sig = 0.012 * unit
        win, o = _window(roi, poly, 3 * sig + 1)
        if win.size:
            m = _soft(_poly_mask(win.shape[:2], [poly - o]), sig) * fac * 0.9
            _blend(win, m, ident.brow * shade_at(idx))

    # eyes: sclera, iris, pupil, lid lines
    for idx in (_REYE_I, _LEYE_I):
        fac = facing(idx)
        if fac <= 0:
            continue
        sh = shade_at(idx)
        lw = max(1.0, 0.025 * unit)
        win, o = _window(roi, L[idx], lw + 2)
        if not win.size:
            continue
        ws = win.shape[:2]
        poly = L[idx] - o
        eye_m = _poly_mask(ws, [poly])
        _blend(win, eye_m * fac, np.array([0.92, 0.90, 0.86]) * (0.55 + 0.45 * sh))
        ewidth = float(np.linalg.norm(poly[3] - poly[0]))
        c = poly.mean(0) + np.array(st.gaze) * [ewidth * 0.22, ewidth * 0.08]
        r = max(0.21 * ewidth, 0.03 * unit * fac)
        iris_m = _ellipse_mask(ws, c, (r * max(fac, 0.3), r), st.roll) * eye_m
        _blend(win, iris_m * fac, ident.iris * (0.5 + 0.5 * sh))
        pupil_m = _ellipse_mask(ws, c, (0.45 * r * max(fac, 0.3), 0.45 * r), st.roll) * eye_m
        _blend(win, pupil_m * fac, np.array([0.03, 0.03, 0.03]))
        _blend(win, _line_mask(ws, poly[[0, 1, 2, 3]], lw) * fac, np.array([0.05, 0.04, 0.04]))
        _blend(win, _line_mask(ws, poly[[3, 4, 5, 0]], max(1.0, lw * 0.5)) * fac * 0.5,
               ident.skin * 0.45)

    # mouth
    fac = facing(_OUTER_LIPS)
    win, o = _window(roi, L[_OUTER_LIPS], 3)
    if fac > 0 and win.size:
        ws = win.shape[:2]
        sh = shade_at(_OUTER_LIPS)
        outer, inner = L[_OUTER_LIPS] - o, L[_INNER_LIPS] - o
        _blend(win, _soft(_poly_mask(ws, [outer]), 0.008 * unit) * fac, ident.lips * sh)
        gap = float(np.linalg.norm(L[66] - L[62]))
        if gap > 0.8:
            in_m = _poly_mask(ws, [inner])
            _blend(win, in_m * fac, np.array([0.18, 0.05, 0.05]) * sh)
            teeth = np.vstack([inner[[0, 1, 2, 3, 4]], inner[[4, 3, 2, 1, 0]] + [0, 0.22 * gap]])
            _blend(win, _poly_mask(ws, [teeth]) * in_m * fac, np.array([0.88, 0.86, 0.80]) * sh)
        _blend(win, _line_mask(ws, inner[[0, 1, 2, 3, 4]], max(1.0, 0.012 * unit)) * fac * 0.8,
               ident.lips * 0.35)

    # nose: shaded facets in painter's order (hides the far cheek at large yaw)
    fac_nose = facing(np.array([28, 29, 30]))
    scale_nose = float(np.ptp(pts3[[31, 35], 0])) / 0.34
    dy_nose = pts3[[31, 35], 1].mean() - 0.53
    P = {"b": pts3[27], "m": pts3[28], "k": pts3[29], "t": pts3[30],
         "sr": np.array([-0.10, 0.06, -0.06]) + [0, 0, pts3[28, 2] - 0.08],
         "sl": np.array([0.10, 0.06, -0.06]) + [0, 0, pts3[28, 2] - 0.08],
         "ar": np.array([-0.18 * scale_nose, 0.44 + dy_nose, 0.0]),
         "al": np.array([0.18 * scale_nose, 0.44 + dy_nose, 0.0]),
         "n1": pts3[31], "n2": pts3[32], "n3": pts3[33], "n4": pts3[34], "n5": pts3[35]}
    tris = [("b", "sr", "m"), ("sr", "k", "m"), ("sr", "ar", "k"), ("ar", "t", "k"),
            ("ar", "n1", "t"), ("n1", "n2", "t"), ("n2", "n3", "t"),
            ("b", "m", "sl"), ("sl", "m", "k"), ("sl", "k", "al"), ("al", "k", "t"),
            ("al", "t", "n5"), ("n5", "t", "n4"), ("n4", "t", "n3")]
    tri3 = np.array([[P[a], P[b], P[c]] for a, b, c in tris])  # (T, 3, 3)
    tw = cam.world(tri3.reshape(-1, 3)).reshape(-1, 3, 3)
    tn = np.cross(tw[:, 1] - tw[:, 0], tw[:, 2] - tw[:, 0])
    tn /= np.linalg.norm(tn, axis=1, keepdims=True) + 1e-12
    tn *= np.sign(tn[:, 2:3] + 1e-9)  # facets face the camera side
    t2 = cam.project(tri3.reshape(-1, 3)).reshape(-1, 3, 2) - off
    sig = max(0.4, 0.012 * unit)
    win, o = _window(roi, t2.reshape(-1, 2), 3 * sig + 2)
    if fac_nose > 0 and win.size:
        ws = win.shape[:2]
        base = float(np.clip(cam.rot @ _head_normal(pts3[29]) @ light, 0, 1))
        layer = win.copy()
        for i in np.argsort(tw[:, :, 2].mean(1)):
            lit = 0.45 * max(0.0, float(tn[i] @ light)) + 0.55 * base
            _blend(layer, _poly_mask(ws, [t2[i] - o]),
                   (ident.skin * (st.ambient + (1 - st.ambient) * lit)).astype(np.float32))
        nose_m = _poly_mask(ws, list(t2 - o))
        nose_m = np.minimum(nose_m, _soft(nose_m, 1.5 * sig) * 1.6) * fac_nose * 0.9
        _blend(win, nose_m, cv2.GaussianBlur(layer, (0, 0), sig))
        for a_i, b_i in ((31, 32), (35, 34)):  # nostrils
            cn = 0.6 * L[a_i] + 0.4 * L[b_i] + (L[27] - L[30]) * 0.03 - o
            rx = 0.25 * float(np.linalg.norm(L[a_i] - L[b_i])) + 0.3
            _blend(win, _soft(_ellipse_mask(ws, cn, (rx, rx * 0.55), st.roll), 0.01 * unit) *
                   fac_nose * 0.8, ident.skin * 0.2)
        tip = _soft(_ellipse_mask(ws, L[30] - o, (0.04 * unit, 0.03 * unit), 0), 0.02 * unit)
        win += (tip * fac_nose * 0.1 * (1 - st.ambient))[..., None]
    np.clip(roi, 0, 1, out=roi)
    return lm


def _window(img: np.ndarray, pts: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """A view of ``img`` around points (N, 2) +- pad px, and its (x, y) offset."""
    h, w = img.shape[:2]
    x0 = int(np.clip(np.floor(pts[:, 0].min() - pad), 0, w))
    x1 = int(np.clip(np.ceil(pts[:, 0].max() + pad) + 1, 0, w))
    y0 = int(np.clip(np.floor(pts[:, 1].min() - pad), 0, h))
    y1 = int(np.clip(np.ceil(pts[:, 1].max() + pad) + 1, 0, h))
    return img[y0:y1, x0:x1], np.array([x0, y0], np.float64)


# ----------------------------------------------------------------------------------------------
# Scene: background, occluders, degradations
# ----------------------------------------------------------------------------------------------

def make_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 RGB [0, 1]: gradient + noise texture + random shapes."""
    c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ang = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    g = (xs * np.cos(ang) + ys * np.sin(ang)) / max(h, w)
    g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
    img = (c1[None, None] * (1 - g[..., None]) + c2[None, None] * g[..., None]).astype(np.float32)
    img += rng.uniform(0.05, 0.25) * _noise_field(rng, h, w, rng.uniform(4, 40) * w / 256, 3)
    side = max(h, w)
    for _ in range(int(rng.integers(4, 14))):
        col = tuple(float(v) for v in rng.uniform(0, 1, 3))
        kind = rng.integers(5)
        p = rng.uniform(-0.1, 1.1, 2) * [w, h]
        sz = rng.uniform(0.05, 0.45) * side
        thick = -1 if rng.uniform() < 0.6 else int(rng.integers(1, max(2, side // 40)))
        if kind == 0:
            q = p + rng.uniform(-1, 1, 2) * sz
            cv2.rectangle(img, tuple(int(v) for v in p), tuple(int(v) for v in q), col, thick)
        elif kind == 1:
            cv2.circle(img, tuple(int(v) for v in p), int(sz / 2), col, thick, cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(img, tuple(int(v) for v in p), (int(sz / 2), int(sz / 5) + 1),
                        float(rng.uniform(0, 180)), 0, 360, col, thick, cv2.LINE_AA)
        elif kind == 3:
            q = p + rng.uniform(-1, 1, 2) * sz * 2
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), col,
                     int(rng.integers(1, max(2, side // 30))), cv2.LINE_AA)
        else:
            poly = (p + rng.uniform(-0.5, 0.5, (int(rng.integers(3, 7)), 2)) * sz).astype(np.int32)
            cv2.fillPoly(img, [poly], col, cv2.LINE_AA)
    if rng.uniform() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.5) * w / 256)
    return np.clip(img, 0, 1)


@dataclass(frozen=True)
class Occluder:
    """A bar or blob over part of the face; geometry in image px."""

    kind: int  # 0 bar, 1 blob (ellipse), 2 polygon
    center: tuple[float, float]
    size: tuple[float, float]
    angle: float  # degrees
    color: tuple[float, float, float]
    texture: float
    seed: int


def sample_occluder(rng: np.random.Generator, box: tuple[float, float, float, float]) -> Occluder:
    """An occluder centred somewhere on the face box, 15-45% of the face size."""
    x1, y1, x2, y2 = box
    fs = max(x2 - x1, y2 - y1)
    kind = int(rng.integers(3))
    cx, cy = rng.uniform(x1, x2), rng.uniform(y1, y2)
    if kind == 0:
        size = (rng.uniform(0.8, 1.6) * fs, rng.uniform(0.08, 0.2) * fs)
    else:
        size = (rng.uniform(0.15, 0.35) * fs, rng.uniform(0.12, 0.3) * fs)
    return Occluder(kind, (cx, cy), size, float(rng.uniform(0, 180)),
                    tuple(float(v) for v in rng.uniform(0, 1, 3)), float(rng.uniform(0, 0.3)),
                    int(rng.integers(1 << 30)))


def draw_occluder(img: np.ndarray, occ: Occluder, shift: tuple[float, float] = (0, 0)) -> None:
    """Draw ``occ`` (moved by ``shift`` px) into img in place."""
    h, w = img.shape[:2]
    c = np.array(occ.center) + shift
    if occ.kind == 1:
        m = _ellipse_mask((h, w), c, occ.size, occ.angle)
    else:
        a = np.deg2rad(occ.angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        if occ.kind == 0:
            base = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.array(occ.size) / 2
        else:
            r = np.random.default_rng(occ.seed)
            ang = np.sort(r.uniform(0, 2 * np.pi, 7))
            rad = r.uniform(0.6, 1.0, 7)
            base = np.stack([np.cos(ang) * rad * occ.size[0], np.sin(ang) * rad * occ.size[1]], 1)
        m = _poly_mask((h, w), [base @ rot.T + c])
    col = np.array(occ.color, np.float32)[None, None] * np.ones((h, w, 3), np.float32)
    if occ.texture > 0:
        tex = _noise_field(np.random.default_rng(occ.seed), h, w, 6, 1)
        col *= 1 + occ.texture * tex[..., None]
    _blend(img, m, col)


@dataclass(frozen=True)
class Degrade:
    """Camera/sensor degradations applied to a finished frame."""

    blur_sigma: float  # px, 0 = none
    motion_len: int  # px, 0 = none
    motion_angle: float
    contrast: float
    brightness: float
    gamma: float
    noise: float  # Gaussian sigma on [0, 1]
    jpeg_quality: int


def sample_degrade(rng: np.random.Generator, size: int) -> Degrade:
    k = size / 256
    return Degrade(
        blur_sigma=float(rng.uniform(0.4, 1.6) * k) if rng.uniform() < 0.3 else 0.0,
        motion_len=int(rng.integers(3, 10) * k) if rng.uniform() < 0.15 else 0,
        motion_angle=float(rng.uniform(0, 180)), contrast=float(rng.uniform(0.7, 1.25)),
        brightness=float(rng.uniform(-0.12, 0.12)), gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.003, 0.04)), jpeg_quality=int(rng.integers(35, 96)))


def apply_degrade(img: np.ndarray, dg: Degrade, rng: np.random.Generator) -> np.ndarray:
    """float32 RGB [0, 1] -> uint8 RGB (blur, motion blur, noise, contrast/brightness/gamma)."""
    if dg.blur_sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), dg.blur_sigma)
    if dg.motion_len >= 2:
        n = dg.motion_len
        k = np.zeros((n, n), np.float32)
        cv2.line(k, (0, n // 2), (n - 1, n // 2), 1.0, 1)
        rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), dg.motion_angle, 1.0)
        k = cv2.warpAffine(k, rot, (n, n))
        img = cv2.filter2D(img, -1, k / max(float(k.sum()), 1e-6))
    noisy = img * np.float32(255) + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(
        dg.noise * 255) + np.float32(0.5)
    u8 = np.clip(noisy, 0, 255).astype(np.uint8)
    lut = np.clip(((np.arange(256) / 255 - 0.5) * dg.contrast + 0.5 + dg.brightness), 0, 1)
    return cv2.LUT(u8, np.round(255 * lut ** dg.gamma).astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# Still images (300W-style) and videos (300VW-style)
# ----------------------------------------------------------------------------------------------

def _random_light(rng: np.random.Generator) -> tuple[float, float, float]:
    v = np.array([rng.uniform(-0.9, 0.9), rng.uniform(-0.8, 0.4), rng.uniform(0.4, 1.0)])
    return tuple(float(x) for x in v / np.linalg.norm(v))


def _fit_in_frame(lm: np.ndarray, size: int, rng: np.random.Generator,
                  margin: float) -> np.ndarray:
    """Random shift (2,) keeping the landmark box inside [margin, size - 1 - margin]."""
    lo = margin - lm.min(0)
    hi = size - 1 - margin - lm.max(0)
    shift = np.empty(2)
    for i in range(2):
        shift[i] = rng.uniform(lo[i], hi[i]) if hi[i] > lo[i] else (lo[i] + hi[i]) / 2
    return shift


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One 300W-style photo.

    Returns:
        image: (size, size, 3) uint8 RGB; landmarks: (68, 2) float64 px; jpeg quality.
    """
    ident = sample_identity(rng)
    yaw = float(np.clip(rng.normal(0, 22), -55, 55)) if rng.uniform() < 0.85 else \
        float(rng.uniform(-55, 55))
    st = FaceState(
        yaw=yaw, pitch=float(np.clip(rng.normal(0, 10), -25, 25)),
        roll=float(np.clip(rng.normal(0, 11), -30, 30)), center=(0.0, 0.0),
        scale=float(rng.uniform(0.48, 0.80) * size / 2.0),
        mouth_open=float(max(0.0, rng.uniform(-0.6, 1.0))), smile=float(rng.uniform(-0.3, 1.0)),
        brow_raise=float(rng.uniform(-0.5, 1.0)),
        blink_right=float(rng.uniform() < 0.1) * rng.uniform(0.5, 1.0),
        blink_left=0.0, gaze=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        light=_random_light(rng), ambient=float(rng.uniform(0.25, 0.6)),
        dist=float(rng.uniform(4.5, 12.0)))
    st = _replace(st, blink_left=st.blink_right if rng.uniform() < 0.8 else
                  float(rng.uniform(0, 1)))
    lm0 = face_landmarks(ident, st)
    shift = _fit_in_frame(lm0, size, rng, margin=0.02 * size)
    st = _replace(st, center=(float(shift[0]), float(shift[1])))
    img = make_background(rng, size, size)
    lm = render_face(img, ident, st)
    if rng.uniform() < 0.2:
        draw_occluder(img, sample_occluder(rng, landmark_box(lm)))
    dg = sample_degrade(rng, size)
    return apply_degrade(img, dg, rng), lm, dg.jpeg_quality


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


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------

def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


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


def detector_box(lm: np.ndarray, rng: np.random.Generator, size: int
                 ) -> tuple[float, float, float, float]:
    """A detector-like box: the tight landmark box, expanded ~0-10% and jittered ~+-5% per side."""
    x1, y1, x2, y2 = landmark_box(lm)
    w, h = x2 - x1, y2 - y1
    e = rng.uniform(0.0, 0.10)
    j = rng.uniform(-0.05, 0.05, 4)
    b = [x1 - (e + j[0]) * w, y1 - (e + j[1]) * h, x2 + (e + j[2]) * w, y2 + (e + j[3]) * h]
    b = [float(np.clip(v, 0, size - 1)) for v in b]
    if b[2] - b[0] < 2 or b[3] - b[1] < 2:
        return landmark_box(lm)
    return (round(b[0], 2), round(b[1], 2), round(b[2], 2), round(b[3], 2))


def dataset_lists(root: str | Path) -> dict[str, Path]:
    """Paths of the synthetic dataset's list files under ``root`` (not checked for existence).

    Keys: "train", "test", "videos_train_unlabeled", "videos_train", "videos_test".
    """
    lists = Path(root) / "lists"
    return {k: lists / v for k, v in LIST_FILES.items()}


def _contact_sheet(samples: list[tuple[np.ndarray, np.ndarray]], cols: int = 6) -> np.ndarray:
    """RGB grid of images with landmarks drawn (jaw, brows, nose, eyes, mouth coloured apart)."""
    groups = [(range(0, 17), (255, 255, 0)), (range(17, 27), (255, 128, 0)),
              (range(27, 36), (0, 255, 255)), (range(36, 48), (0, 255, 0)),
              (range(48, 68), (255, 0, 255))]
    tiles = []
    for img, lm in samples:
        t = img.copy()
        r = max(1, img.shape[0] // 128)
        for idx, col in groups:
            for i in idx:
                cv2.circle(t, (int(round(lm[i, 0] * 4)), int(round(lm[i, 1] * 4))), r * 4, col, -1,
                           cv2.LINE_AA, 2)
        tiles.append(t)
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, t in enumerate(tiles):
        sheet[(k // cols) * h:(k // cols + 1) * h, (k % cols) * w:(k % cols + 1) * w] = t
    return sheet


def generate_dataset(out: str | Path, *, images: int, test_images: int, videos: int,
                     test_videos: int, frames: int, image_size: int = 256, seed: int = 0,
                     progress: bool = True) -> Path:
    """Render the whole synthetic dataset into ``out`` (see the module docstring for the layout).

    Layout::

        out/300W/{train,test}/NNNNN.jpg + NNNNN.pts
        out/300VW/<vid>/vid.avi + out/300VW/<vid>/annot/000001.pts ...  (file number = frame + 1)
        out/lists/synthetic.{train,test}.lst, synthetic.videos.train.{none,lst},
                  synthetic.videos.test.lst   (paths relative to lists/)
        out/contact_sheet.png
        out/manifest.json   (written last, atomically: its presence means the dataset is complete)

    Returns:
        ``out`` as a Path.
    Raises:
        ValueError: a size is out of range.
    """
    for name, v, lo in (("images", images, 1), ("test_images", test_images, 1),
                        ("videos", videos, 0), ("test_videos", test_videos, 0),
                        ("frames", frames, 1), ("image_size", image_size, 32)):
        if int(v) < lo:
            raise ValueError(f"generate_dataset: {name}={v} must be >= {lo}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").unlink(missing_ok=True)
    lists_dir = root / "lists"
    lists_dir.mkdir(exist_ok=True)
    total = images + test_images + (videos + test_videos) * frames
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="synthetic faces", unit="img", file=sys.stderr)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    sheet: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        entries: dict[str, list[ListEntry]] = {k: [] for k in LIST_FILES}
        for split, count, stream in (("train", images, _STREAM_TRAIN),
                                     ("test", test_images, _STREAM_TEST)):
            d = root / "300W" / split
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, stream, i])
                img, lm, q = render_image(rng, image_size)
                jpg, pts = d / f"{i:05d}.jpg", d / f"{i:05d}.pts"
                _write_jpeg(jpg, img, q)
                write_pts(pts, lm)
                entries[split].append(ListEntry(str(jpg), str(pts), detector_box(lm, rng,
                                                                                  image_size)))
                if split == "train" and len(sheet) < 18:
                    sheet.append((img, lm))
                if bar is not None:
                    bar.update(1)
        for split, count, stream, prefix in (("train", videos, _STREAM_VIDEO, "v"),
                                             ("test", test_videos, _STREAM_TEST_VIDEO, "t")):
            for j in range(count):
                rng = np.random.default_rng([seed, stream, j])
                vframes, lms, q = render_video(rng, frames, image_size)
                vdir = root / "300VW" / f"{prefix}{j + 1:03d}"
                avi = vdir / "vid.avi"
                _write_video(avi, vframes, q)
                for t, lm in enumerate(lms):
                    pts = vdir / "annot" / f"{t + 1:06d}.pts"
                    write_pts(pts, lm)
                    box = landmark_box(lm)
                    ref = f"{avi}#{t}"
                    if split == "train":
                        entries["videos_train_unlabeled"].append(ListEntry(ref, None, box))
                        entries["videos_train"].append(ListEntry(ref, str(pts), box))
                    else:
                        entries["videos_test"].append(ListEntry(ref, str(pts), box))
                if j < 3 and split == "train":
                    sheet += [(vframes[t], lms[t]) for t in (0, frames // 2)]
                if bar is not None:
                    bar.update(frames)
        paths = dataset_lists(root)
        for k, p in paths.items():
            write_list(p, entries[k], relative_to=lists_dir)
        png = cv2.imencode(".png", cv2.cvtColor(_contact_sheet(sheet), cv2.COLOR_RGB2BGR))[1]
        atomic_write_bytes(root / "contact_sheet.png", png.tobytes())
        manifest = {
            "generator": "tsal_dist.data.synthetic", "fingerprint": generator_fingerprint(),
            "numpy": np.__version__, "opencv": cv2.__version__,
            "content_sha256": content_digest(root), "seed": seed,
            "images": images, "test_images": test_images, "videos": videos,
            "test_videos": test_videos, "frames": frames, "image_size": image_size,
            "num_points": NUM_POINTS, "landmark_scheme": "ibug68",
            "pts_coordinates": "0-based pixel centres (x right, y down)",
            "lists": {k: str(p.relative_to(root)) for k, p in paths.items()},
            "counts": {k: len(v) for k, v in entries.items()},
        }
        atomic_write_bytes(root / "manifest.json",
                           (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    finally:
        cv2.setNumThreads(threads)
        if bar is not None:
            bar.close()
    return root


def generator_fingerprint() -> str:
    """16 hex of what decides the bytes the generator writes.

    That is the source of this module and of the writers it calls (``formats.py``), and the numpy
    (random streams) and OpenCV (drawing, libjpeg, MJPEG) versions. A cache folder is keyed by it,
    so any change to the generator -- with nobody remembering to bump a version -- or another
    library version gives a folder of its own instead of silently reusing other data.
    """
    h = hashlib.sha256()
    for mod in (sys.modules[__name__], formats):
        h.update(Path(mod.__file__).read_bytes())  # type: ignore[arg-type]
    h.update(f"numpy {np.__version__} opencv {cv2.__version__}".encode())
    return h.hexdigest()[:16]


def content_digest(root: str | Path) -> str:
    """sha256 over every file of a generated dataset except manifest.json (relative paths + bytes).

    Equal digests mean byte-identical datasets wherever they were generated.
    """
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.name != "manifest.json"):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def synthetic_key(**sizes: int) -> str:
    """Folder name for these sizes: ``synthetic-<12 hex>`` of sizes, seed and generator."""
    unknown = set(sizes) - set(_SIZE_DEFAULTS)
    if unknown:
        raise TypeError(f"ensure_synthetic: unknown size argument(s) {sorted(unknown)}; "
                        f"expected {sorted(_SIZE_DEFAULTS)}")
    full = {**_SIZE_DEFAULTS, **{k: int(v) for k, v in sizes.items()},
            "generator": generator_fingerprint()}
    return "synthetic-" + hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]


def _intact(root: Path) -> bool:
    """True when ``root`` holds a complete dataset whose files still match its manifest."""
    try:
        man = json.loads((root / "manifest.json").read_text())
        return man.get("content_sha256") == content_digest(root)
    except (OSError, ValueError):
        return False


def ensure_synthetic(cache_dir: str | Path, *, progress: bool = True, **sizes: int) -> Path:
    """Generate the dataset once into ``cache_dir/synthetic-<hash>`` and reuse it afterwards.

    Generation goes to a temporary sibling folder that is renamed into place when complete, so an
    interrupted run never leaves a half dataset under the final name. The folder is keyed by the
    sizes and ``generator_fingerprint()``; a reused folder is checked against the content digest
    in its manifest (about 0.1 s for the default dataset) and generated again if it differs.

    Args:
        cache_dir: parent folder (``~`` expanded, created if missing).
        progress: show a progress bar while generating.
        **sizes: any of images, test_images, videos, test_videos, frames, image_size, seed
            (defaults as in ``SyntheticConfig``).
    Returns:
        The dataset root (contains manifest.json).
    """
    key = synthetic_key(**sizes)
    cache = Path(cache_dir).expanduser()
    final = cache / key
    if (final / "manifest.json").is_file():
        if _intact(final):
            return final
        print(f"tsal_dist: {final}: files differ from its manifest.json (changed or damaged "
              "since generation); generating it again", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    if final.exists():  # left by something that did not finish, or damaged: not ours to trust
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{key}.tmp-"))
    try:
        generate_dataset(tmp, **{**_SIZE_DEFAULTS, **sizes}, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # lost a race to a broken folder
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
