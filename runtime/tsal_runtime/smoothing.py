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
        dx = (x - self._x) / dt / max(scale, 1e-9)
        a_d = smoothing_alpha(self.d_cutoff, dt)
        assert self._dx is not None
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = smoothing_alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
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
        self._pos = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self._size = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self._shape = OneEuroFilter(shape_cutoff, shape_beta, d_cutoff)

    def reset(self) -> None:
        for f in (self._pos, self._size, self._shape):
            f.reset()

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filter one (K, 2) landmark array at time ``t`` s; ``scale`` = face size in px."""
        x = np.asarray(x, dtype=np.float64)
        centre = x.mean(axis=0)
        rel = x - centre
        size = float(np.sqrt((rel ** 2).sum(axis=-1).mean()))
        if not size > 0:
            return x.copy()
        c = self._pos(centre, t, scale=scale)
        s = float(self._size(np.array([size]), t, scale=scale)[0])
        shape = self._shape(rel / size, t, scale=1.0)
        return c + s * shape
