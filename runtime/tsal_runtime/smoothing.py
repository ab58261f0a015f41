"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorised over landmark arrays.

Tuning: jitter at rest -> lower ``min_cutoff``; lag in fast motion -> raise ``beta``.
Units: cutoffs in Hz, ``beta`` in 1/(face-size/s): speeds are divided by ``scale`` (face size in
px) so one setting works for near and far faces.
"""

from __future__ import annotations

import math

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
        # the same arithmetic as smoothing_alpha, written in place: the runtime filters every
        # face of every frame, and a dozen temporaries per call cost more than the maths
        a_d = smoothing_alpha(self.d_cutoff, dt)
        dx = x - self._x
        dx *= a_d / (dt * max(scale, 1e-9))
        self._dx *= 1 - a_d
        self._dx += dx  # a_d * speed + (1 - a_d) * old speed
        # a = 1 / (1 + tau / dt), tau = 1 / (2 pi cutoff), cutoff = min_cutoff + beta |speed|
        a = np.abs(self._dx)
        a *= self.beta
        a += self.min_cutoff
        a *= 2.0 * math.pi * dt
        a = np.reciprocal(a, out=a)
        a += 1.0
        a = np.reciprocal(a, out=a)
        x_new = x - self._x
        x_new *= a
        self._x += x_new  # a * x + (1 - a) * old x
        self._t = t
        return self._x.copy()


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
