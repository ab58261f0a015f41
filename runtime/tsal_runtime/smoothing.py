"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorised over landmark arrays.

Tuning: jitter at rest -> lower ``min_cutoff``; lag in fast motion -> raise ``beta``.
Units: cutoffs in Hz, ``beta`` in 1/(face-size/s): speeds are divided by ``scale`` (face size in
px) so one setting works for near and far faces.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def smoothing_alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Exponential smoothing factor of a first-order low-pass at ``cutoff`` Hz, step ``dt`` s."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Adaptive low-pass over arrays of any fixed shape.

    Args:
        min_cutoff: cutoff at zero speed, Hz.
        beta: cutoff increase per unit speed (speed in ``scale`` units per second).
        d_cutoff: cutoff of the speed estimate, Hz.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.5, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("need min_cutoff > 0, d_cutoff > 0, beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filter one sample.

        Args:
            x: array (e.g. (K, 2) image px).
            t: timestamp in seconds (strictly increasing; equal stamps return the last output).
            scale: size the speed is normalised by (e.g. face box diagonal in px).

        Returns:
            The filtered array (float64, same shape).
        """
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        if dt <= 0:
            return self._x.copy()
        assert self._dx is not None
        _one_euro_step(x, self._x, self._dx, dt, self.min_cutoff, self.beta, self.d_cutoff,
                       max(scale, 1e-9))
        self._t = t
        return self._x.copy()


def _one_euro_step(x: np.ndarray, prev: np.ndarray, dprev: np.ndarray, dt: float | np.ndarray,
                   min_cutoff: float, beta: float, d_cutoff: float,
                   scale: float | np.ndarray) -> None:
    """One One Euro step, in place on ``prev`` (the output) and ``dprev`` (the speed).

    ``dt`` and ``scale`` are numbers, or arrays that broadcast against ``x`` (one row per face
    when several faces are filtered at once: :func:`filter_faces`). Written in place: the runtime
    filters every face of every frame, and a dozen temporaries per call cost more than the maths.
    """
    a_d = smoothing_alpha(d_cutoff, dt)
    dx = x - prev
    dx *= a_d / (dt * scale)
    dprev *= 1 - a_d
    dprev += dx  # a_d * speed + (1 - a_d) * old speed
    # a = 1 / (1 + tau / dt), tau = 1 / (2 pi cutoff), cutoff = min_cutoff + beta |speed|
    a = np.abs(dprev)
    a *= beta
    a += min_cutoff
    a *= 2.0 * math.pi * dt
    a = np.reciprocal(a, out=a)
    a += 1.0
    a = np.reciprocal(a, out=a)
    x_new = x - prev
    x_new *= a
    prev += x_new  # a * x + (1 - a) * old x


class FaceFilter:
    """One Euro filtering of a face split into its rigid part and its shape.

    Landmark noise of a tracked face is mostly in its shape (each point on its own), while true
    motion is mostly rigid (the whole face moves). So the face's centre (mean of the points) and
    size (RMS distance to the centre) follow a responsive filter (``min_cutoff``, ``beta``, speeds
    in face sizes per second, like :class:`OneEuroFilter` with ``scale``), and the shape (points
    relative to the centre, in face sizes) a calm one (``shape_cutoff``, ``shape_beta``); the
    output is centre + size * shape. On our benchmark this halves the frame-to-frame jitter of the
    points at the same rigid lag (benchmarks/results/runtime_fps.md, smoothing table).
    """

    def __init__(self, min_cutoff: float = 0.3, beta: float = 20.0, d_cutoff: float = 1.0,
                 shape_cutoff: float = 0.1, shape_beta: float = 1.0) -> None:
        # centre (x, y) and size share one filter: the same cutoffs, the same speed units
        self._rigid = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self._shape = OneEuroFilter(shape_cutoff, shape_beta, d_cutoff)

    def reset(self) -> None:
        for f in (self._rigid, self._shape):
            f.reset()

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filter one (K, 2) landmark array at time ``t`` s; ``scale`` = face size in px."""
        x = np.asarray(x, dtype=np.float64)
        centre = x.mean(axis=0)
        rel = x - centre
        size = math.sqrt(float(np.einsum("ij,ij->", rel, rel)) / len(rel))
        if not size > 0:
            return x.copy()
        rigid = self._rigid(np.array([centre[0], centre[1], size]), t, scale=scale)
        rel /= size
        shape = self._shape(rel, t, scale=1.0)
        shape *= rigid[2]
        shape += rigid[:2]
        return shape

    def _params(self) -> tuple[float, ...]:
        r, sh = self._rigid, self._shape
        return (r.min_cutoff, r.beta, r.d_cutoff, sh.min_cutoff, sh.beta, sh.d_cutoff)

    def _continues(self, shape: tuple[int, ...], t: float) -> bool:
        """Whether a sample of ``shape`` at ``t`` is an ordinary step of both filters (state of
        that shape, one last stamp, strictly earlier): the case :func:`filter_faces` batches."""
        r, sh = self._rigid, self._shape
        return (r._x is not None and sh._x is not None and r._t is not None
                and sh._t == r._t and t > r._t and sh._x.shape == shape)


def filter_faces(filters: Sequence[OneEuroFilter | FaceFilter], points: Sequence[np.ndarray],
                 t: float, scales: Sequence[float]) -> list[np.ndarray]:
    """``[f(x, t, scale=s) for f, x, s in zip(filters, points, scales)]``, with every
    :class:`FaceFilter` that continues its track filtered in one vectorised pass (the same
    arithmetic on one row per face: a frame of 8 faces costs about one face's numpy calls).
    Filters that start, repeat a stamp or see a degenerate face take the one-face path."""
    if len({id(f) for f in filters}) != len(filters):
        raise ValueError("filter_faces: the same filter twice in one call (one filter per face)")
    out: list[np.ndarray | None] = [None] * len(filters)
    rows: list[int] = []
    params = None  # one pass has one set of filter parameters (the pipeline's filters share it)
    for i, (f, x) in enumerate(zip(filters, points)):
        p = f._params() if isinstance(f, FaceFilter) and f._continues(np.shape(x), t) else None
        if p is not None and params in (None, p):
            params = p
            rows.append(i)
        else:
            out[i] = f(x, t, scale=scales[i])
    if len(rows) == 1:  # one face: the one-face path is cheaper than stacking
        i = rows.pop()
        out[i] = filters[i](points[i], t, scale=scales[i])
    if rows:
        x = np.stack([np.asarray(points[i], dtype=np.float64) for i in rows])  # (N, K, 2)
        centre = x.mean(axis=1)
        rel = x - centre[:, None]
        size = np.sqrt(np.einsum("nij,nij->n", rel, rel) / rel.shape[1])
        ok = size > 0
        for j in np.flatnonzero(~ok):  # degenerate faces: the one-face path (returns x)
            i = rows[j]
            out[i] = filters[i](points[i], t, scale=scales[i])
        rows = [i for i, good in zip(rows, ok) if good]
        if rows:
            centre, rel, size = centre[ok], rel[ok], size[ok]
            fs = [filters[i] for i in rows]
            r0, s0 = fs[0]._rigid, fs[0]._shape  # type: ignore[union-attr]
            rig = [f._rigid for f in fs]  # type: ignore[union-attr]
            shp = [f._shape for f in fs]  # type: ignore[union-attr]
            dt = t - np.array([f._t for f in rig])[:, None]  # (N, 1)
            scale = np.maximum(np.asarray([scales[i] for i in rows], dtype=np.float64),
                               1e-9)[:, None]
            rx, rdx = np.stack([f._x for f in rig]), np.stack([f._dx for f in rig])
            _one_euro_step(np.concatenate([centre, size[:, None]], axis=1), rx, rdx, dt,
                           r0.min_cutoff, r0.beta, r0.d_cutoff, scale)
            rel /= size[:, None, None]
            sx, sdx = np.stack([f._x for f in shp]), np.stack([f._dx for f in shp])
            _one_euro_step(rel, sx, sdx, dt[:, :, None], s0.min_cutoff, s0.beta, s0.d_cutoff,
                           1.0)
            res = sx * rx[:, None, 2:3]
            res += rx[:, None, :2]
            for j, i in enumerate(rows):
                rig[j]._x, rig[j]._dx, rig[j]._t = rx[j], rdx[j], t
                shp[j]._x, shp[j]._dx, shp[j]._t = sx[j], sdx[j], t
                out[i] = res[j]
    return out  # type: ignore[return-value]
