"""The scene around the face and one 300W-style photo: background, occluders, degradations.

A photo's distribution is narrowed by a ``DomainConfig`` (pose, occluders, light, expression,
blur), which transforms the draws and never adds or skips one: the default (wide) domain gives the
bytes it always gave, and a narrowed photo keeps its seed's identity (and its background, unless
the narrowed or the wide face is too big to be placed at random: ``_fit_in_frame`` then draws
nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as _replace

import cv2
import numpy as np

from tsal_dist.config.experiment import DomainConfig
from tsal_dist.data.formats import landmark_box
from tsal_dist.data.synthetic.face import FaceState, face_landmarks, sample_identity
from tsal_dist.data.synthetic.raster import _blend, _ellipse_mask, _noise_field, _poly_mask
from tsal_dist.data.synthetic.render import render_face


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


def sample_degrade(rng: np.random.Generator, size: int, blur_rate: float = 1.0) -> Degrade:
    """Degradations for a ``size`` px frame; blur and motion blur (probabilities 0.3 and 0.15)
    happen only with ``blur_rate`` times those probabilities (same draws for any rate)."""
    k = size / 256
    u_blur = rng.uniform()
    blur = float(rng.uniform(0.4, 1.6) * k) if u_blur < 0.3 else 0.0
    u_motion = rng.uniform()
    motion = int(rng.integers(3, 10) * k) if u_motion < 0.15 else 0
    return Degrade(
        blur_sigma=blur if u_blur < 0.3 * blur_rate else 0.0,
        motion_len=motion if u_motion < 0.15 * blur_rate else 0,
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
# Still images (300W-style)
# ----------------------------------------------------------------------------------------------

_WIDE = DomainConfig()


def _random_light(rng: np.random.Generator, side: float = 1.0) -> tuple[float, float, float]:
    """Unit vector towards the light; its sideways and vertical parts scaled by ``side``."""
    v = np.array([rng.uniform(-0.9, 0.9) * side, rng.uniform(-0.8, 0.4) * side,
                  rng.uniform(0.4, 1.0)])
    return tuple(float(x) for x in v / np.linalg.norm(v))


def _even_ambient(ambient: float, side: float) -> float:
    """Ambient share moved towards 0.6 (the top of its range) as ``side`` goes from 1 to 0."""
    return ambient + (1 - side) * (0.6 - ambient)  # side = 1: exactly ``ambient``


def _fit_in_frame(lm: np.ndarray, size: int, rng: np.random.Generator,
                  margin: float) -> np.ndarray:
    """Random shift (2,) keeping the landmark box inside [margin, size - 1 - margin]."""
    lo = margin - lm.min(0)
    hi = size - 1 - margin - lm.max(0)
    shift = np.empty(2)
    for i in range(2):
        shift[i] = rng.uniform(lo[i], hi[i]) if hi[i] > lo[i] else (lo[i] + hi[i]) / 2
    return shift


def render_image(rng: np.random.Generator, size: int, domain: DomainConfig = _WIDE
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """One 300W-style photo, from ``domain`` (default: the wide one).

    Returns:
        image: (size, size, 3) uint8 RGB; landmarks: (68, 2) float64 px; jpeg quality.
    """
    d, e = domain, domain.expression
    ident = sample_identity(rng)
    yaw = float(np.clip(rng.normal(0, 22), -55, 55)) if rng.uniform() < 0.85 else \
        float(rng.uniform(-55, 55))
    # keyword arguments are evaluated in order: this is the order of the draws
    st = FaceState(
        yaw=yaw * (d.yaw_max_deg / 55),
        pitch=float(np.clip(rng.normal(0, 10), -25, 25)) * (d.pitch_max_deg / 25),
        roll=float(np.clip(rng.normal(0, 11), -30, 30)) * (d.roll_max_deg / 30),
        center=(0.0, 0.0), scale=float(rng.uniform(0.48, 0.80) * size / 2.0),
        mouth_open=float(max(0.0, rng.uniform(-0.6, 1.0))) * e,
        smile=float(rng.uniform(-0.3, 1.0)) * e, brow_raise=float(rng.uniform(-0.5, 1.0)) * e,
        blink_right=float(rng.uniform() < 0.1) * rng.uniform(0.5, 1.0) * e,
        blink_left=0.0, gaze=(float(rng.uniform(-1, 1)) * e, float(rng.uniform(-1, 1)) * e),
        light=_random_light(rng, d.side_light),
        ambient=_even_ambient(float(rng.uniform(0.25, 0.6)), d.side_light),
        dist=float(rng.uniform(4.5, 12.0)))
    st = _replace(st, blink_left=st.blink_right if rng.uniform() < 0.8 else
                  float(rng.uniform(0, 1)) * e)
    lm0 = face_landmarks(ident, st)
    shift = _fit_in_frame(lm0, size, rng, margin=0.02 * size)
    st = _replace(st, center=(float(shift[0]), float(shift[1])))
    img = make_background(rng, size, size)
    lm = render_face(img, ident, st)
    u_occ = rng.uniform()
    if u_occ < 0.2:
        occ = sample_occluder(rng, landmark_box(lm))  # drawn whatever the rate: same draws
        if u_occ < 0.2 * d.occluder_rate:
            draw_occluder(img, occ)
    dg = sample_degrade(rng, size, d.blur_rate)
    return apply_degrade(img, dg, rng), lm, dg.jpeg_quality
