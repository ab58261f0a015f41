"""The face renderer: one person drawn into an image in layers, back to front.

``render_face`` projects the expressed 3D landmarks with the state's camera, then draws: the body
(neck and shirt), and inside the head's region of interest the ray-cast head ellipsoid's ears,
skin (with beard) and hair, then the features -- eye sockets, brows, eyes, mouth, nose. Each
layer is a function of its own, called in that order; none draws random numbers, so a render is a
pure function of the identity and the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from tsal_dist.data.synthetic.face import (
    _HEAD_C,
    _HEAD_R,
    _INNER_LIPS,
    _JAW,
    _LBROW_I,
    _LEYE_I,
    _OUTER_LIPS,
    _PIVOT,
    _RBROW_I,
    _REYE_I,
    Camera,
    FaceState,
    Identity,
    _camera,
    _expressed,
    _head_normal,
    _surface_texture,
)
from tsal_dist.data.synthetic.raster import (
    _blend,
    _ellipse_mask,
    _line_mask,
    _poly_mask,
    _soft,
    _window,
)


@dataclass(frozen=True)
class _Face:
    """What every layer of one ``render_face`` call draws with."""

    ident: Identity
    st: FaceState
    cam: Camera
    pts3: np.ndarray  # (68, 3) expressed shape, head units
    light: np.ndarray  # (3,) unit vector towards the light, world
    unit: float  # px per head unit


class _Head(NamedTuple):
    """The head ellipsoid ray-cast through every pixel of the region of interest (float32)."""

    hx: np.ndarray  # head-unit hit point, per pixel
    hy: np.ndarray
    hz: np.ndarray
    hit: np.ndarray  # bool: the ray meets the ellipsoid
    shade: np.ndarray  # ambient + diffuse
    spec: np.ndarray  # specular highlight
    head_mask: np.ndarray  # antialiased silhouette in [0, 1]


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
    face = _Face(ident, st, cam, pts3, light, unit)

    _draw_body(img, face)
    box = _head_box(face, lm, W, H)
    if box is None:
        return lm
    x0, y0, x1, y1 = box
    roi = img[y0:y1, x0:x1]
    off = np.array([x0, y0], np.float64)
    L = lm - off
    head = _cast_head(face, x0, y0, x1, y1)
    _draw_ears(roi, face, off)
    _draw_skin(roi, face, head, L, off)
    _draw_hair(roi, face, head)
    _draw_eye_sockets(roi, face, off)
    _draw_brows(roi, face, off)
    _draw_eyes(roi, face, L)
    _draw_mouth(roi, face, L)
    _draw_nose(roi, face, L, off)
    np.clip(roi, 0, 1, out=roi)
    return lm


def _draw_body(img: np.ndarray, face: _Face) -> None:
    """Neck and shoulders, first: behind the head."""
    ident, st, cam = face.ident, face.st, face.cam
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


def _head_box(face: _Face, lm: np.ndarray, W: int, H: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) region of interest around the head, or None when under 4 px a side."""
    cam = face.cam
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
        return None
    return x0, y0, x1, y1


def _cast_head(face: _Face, x0: int, y0: int, x1: int, y1: int) -> _Head:
    """Ray-cast the head ellipsoid: silhouette, normals, hair region (float32, per component)."""
    st, cam, light = face.st, face.cam, face.light
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
    return _Head(hx, hy, hz, hit, shade, spec, head_mask)


def _draw_ears(roi: np.ndarray, face: _Face, off: np.ndarray) -> None:
    """Ears: behind the face skin, in front of the hair at the back."""
    ident, st, cam, light, unit = face.ident, face.st, face.cam, face.light, face.unit
    for sx in (-1, 1):
        ec3 = np.array([[sx * 0.80, 0.12, -0.70]])
        ec = cam.project(ec3)[0] - off
        nrm = cam.rot @ np.array([sx * 0.9, 0, -0.45])
        width = abs(nrm[0]) * 0.10 * unit + 0.02 * unit
        win, o = _window(roi, ec[None], 0.21 * unit + 2)
        if win.size:
            _blend(win, _ellipse_mask(win.shape[:2], ec - o, (width, 0.20 * unit), st.roll),
                   ident.skin * (st.ambient + (1 - st.ambient) * max(0, nrm @ light) * 0.7))


def _draw_skin(roi: np.ndarray, face: _Face, head: _Head, L: np.ndarray, off: np.ndarray) -> None:
    """Skin of the head and of the jaw / lower face polygon (the landmark jaw line is its lower
    border), shaded, with blotch texture; then the beard."""
    ident, st, cam, pts3, unit = face.ident, face.st, face.cam, face.pts3, face.unit
    hx, hy, hz, hit, shade, spec, head_mask = head
    rs = roi.shape[:2]
    jaw_poly = np.vstack([L[_JAW], cam.project(np.array([[0.70, -0.3, -0.60], [0, -0.5, 0.0],
                                                         [-0.70, -0.3, -0.60]])) - off])
    hull = cv2.convexHull(jaw_poly.astype(np.float32)).reshape(-1, 2)
    jaw_mask = _poly_mask(rs, [hull])
    upper = hy < 0.35
    skin_mask = np.maximum(jaw_mask, head_mask * upper)
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


def _draw_hair(roi: np.ndarray, face: _Face, head: _Head) -> None:
    """Hair: on the ellipsoid, above the hairline or at the back/sides of the head."""
    ident = face.ident
    hx, hy, hz, _, shade, spec, head_mask = head
    hair_line = ident.hairline + 0.55 * (hx / _HEAD_R[0]) ** 2 + 0.08 * np.sin(hx * 9)
    hair = (hy < hair_line) | ((hz < -0.95) & (hy < 0.25)) | ((np.abs(hx) > 0.66) & (hy < -0.15))
    hair_mask = head_mask * hair.astype(np.float32)
    if ident.bald:
        hair_mask *= (hy > -0.55) & (hz < -0.9)
    hair_tex = 1 + 0.3 * _surface_texture(ident.hair_waves, hx, hy, hz)
    hair_lum = np.float32(0.5) + np.float32(0.5) * shade * hair_tex
    hair_img = cv2.merge([hair_lum * np.float32(ident.hair[k]) + np.float32(0.1) * spec
                          for k in range(3)])
    _blend(roi, hair_mask, hair_img)


# feature visibility: facing factor of each feature's mean normal
def _facing(face: _Face, idx: np.ndarray) -> float:
    n = face.cam.rot @ _head_normal(face.pts3[idx].mean(0))
    return float(np.clip((n[2] - 0.05) / 0.25, 0, 1))


def _shade_at(face: _Face, idx: np.ndarray) -> float:
    n = face.cam.rot @ _head_normal(face.pts3[idx].mean(0))
    return float(face.st.ambient + (1 - face.st.ambient) * max(0.0, n @ face.light))


def _draw_eye_sockets(roi: np.ndarray, face: _Face, off: np.ndarray) -> None:
    """Eye sockets: a soft shadow."""
    cam, pts3, unit = face.cam, face.pts3, face.unit
    for idx in (_REYE_I, _LEYE_I):
        fac = _facing(face, idx)
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


def _draw_brows(roi: np.ndarray, face: _Face, off: np.ndarray) -> None:
    """Brows: a band below the brow landmarks, tapering towards the nose, soft-edged."""
    ident, cam, pts3, unit = face.ident, face.cam, face.pts3, face.unit
    for idx in (_RBROW_I, _LBROW_I):
        fac = _facing(face, idx)
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
            _blend(win, m, ident.brow * _shade_at(face, idx))


def _draw_eyes(roi: np.ndarray, face: _Face, L: np.ndarray) -> None:
    """Eyes: sclera, iris, pupil, lid lines."""
    ident, st, unit = face.ident, face.st, face.unit
    for idx in (_REYE_I, _LEYE_I):
        fac = _facing(face, idx)
        if fac <= 0:
            continue
        sh = _shade_at(face, idx)
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


def _draw_mouth(roi: np.ndarray, face: _Face, L: np.ndarray) -> None:
    """Lips; when open, the mouth's inside and the teeth."""
    ident, unit = face.ident, face.unit
    fac = _facing(face, _OUTER_LIPS)
    win, o = _window(roi, L[_OUTER_LIPS], 3)
    if fac > 0 and win.size:
        ws = win.shape[:2]
        sh = _shade_at(face, _OUTER_LIPS)
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


def _draw_nose(roi: np.ndarray, face: _Face, L: np.ndarray, off: np.ndarray) -> None:
    """Nose: shaded facets in painter's order (hides the far cheek at large yaw), nostrils, tip."""
    ident, st, cam, pts3, light, unit = (face.ident, face.st, face.cam, face.pts3, face.light,
                                         face.unit)
    fac_nose = _facing(face, np.array([28, 29, 30]))
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
