"""The face model: 3D landmark template, identities, expressions, head pose and projection.

Head units: eye line at y = 0, outer eye corners at x = +-0.5; x right, y down, z towards the
viewer. Landmarks follow iBUG's 68-point order (see the package docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_POINTS = 68

# The identity basis draws from default_rng([_STREAM_BASIS, 0]); the dataset's own streams (one per
# split, dataset.py) are numbered below it.
_STREAM_BASIS = 99


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
# Per-frame state: pose, expression, lighting; its camera and landmarks
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
