"""Active Shape Model soft landmarks for the KD-Loss Tolerant teacher (docs/method_notes.md §5.3).

A PCA shape model is fitted on normalised training shapes; a shape's "soft" version is its
projection onto the kept components with every coefficient clamped to +-3 sqrt(lambda_i):

    b = V^T (s - mean),  b_i <- clip(b_i, -3 sqrt(lambda_i), 3 sqrt(lambda_i)),  s_soft = mean + V b

The number of components is the smallest explaining at least ``variance`` percent of the total
variance (sklearn ``PCA(n_components=p/100)``; default p = 90). Eigenvalues use the N - 1
convention, as sklearn's ``explained_variance_``.

Normalisation (one of):

- ``center_scale`` (default): each shape minus its centroid, divided by its RMS distance to the
  centroid. Position and size no longer count as "shape", so the model spends its components on
  pose and expression; soft landmarks are mapped back with the shape's own centroid and scale.
- ``hyperface``: KD's ``x_n = (S/2 - x) / S`` on crop px (sign flip included); only translation /
  size of the face inside the crop remain as variation (KD fits this on tight crops).

Shapes are (N, K, 2) crop px. Shapes with an invisible point are not fitted and are returned
unchanged by :meth:`ShapeModel.soft_landmarks` (their missing points have no coordinates).
Not here: training the teacher on the soft landmarks (tsal_dist.loop.distill_loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tsal_dist.atomic import atomic_path

__all__ = ["ShapeModel", "fit_shape_model", "normalize_shapes", "denormalize_shapes",
           "n_components_for"]

Normalization = Literal["center_scale", "hyperface"]
_NORMS = ("center_scale", "hyperface")


def _check_shapes(shapes: np.ndarray) -> np.ndarray:
    s = np.asarray(shapes, np.float64)
    if s.ndim != 3 or s.shape[-1] != 2 or s.shape[1] < 2:
        raise ValueError(f"shapes must be (N, K >= 2, 2), got {s.shape}")
    return s


def normalize_shapes(shapes: np.ndarray, normalization: Normalization = "center_scale",
                     input_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise shapes to vectors.

    Args:
        shapes: (N, K, 2) crop px.
        normalization: "center_scale" or "hyperface".
        input_size: crop side S (hyperface only).

    Returns:
        (vectors (N, 2K) interleaved x0, y0, x1, ...; centers (N, 2); scales (N,)). For hyperface
        centers = S/2 and scales = -S (so ``x = center + scale * x_n`` inverts both).
    """
    s = _check_shapes(shapes)
    n = s.shape[0]
    if normalization == "center_scale":
        centers = s.mean(axis=1)
        d = s - centers[:, None]
        scales = np.sqrt((d ** 2).sum(-1).mean(-1))
        if np.any(scales < 1e-9):
            raise ValueError("normalize_shapes: a shape has all points at one location")
        return (d / scales[:, None, None]).reshape(n, -1), centers, scales
    if normalization == "hyperface":
        if not input_size or input_size <= 0:
            raise ValueError("normalize_shapes: hyperface needs input_size > 0")
        centers = np.full((n, 2), input_size / 2.0)
        scales = np.full(n, -float(input_size))
        return ((s - centers[:, None]) / scales[:, None, None]).reshape(n, -1), centers, scales
    raise ValueError(f"unknown normalization {normalization!r} (expected one of {_NORMS})")


def denormalize_shapes(vectors: np.ndarray, centers: np.ndarray,
                       scales: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize_shapes`: (N, 2K) -> (N, K, 2) crop px."""
    v = np.asarray(vectors, np.float64)
    n = v.shape[0]
    return v.reshape(n, -1, 2) * np.asarray(scales)[:, None, None] + np.asarray(centers)[:, None]


def n_components_for(eigenvalues: np.ndarray, variance: float) -> int:
    """Smallest n with sum(lambda[:n]) / sum(lambda) >= variance / 100 (eigenvalues descending)."""
    if not 0 < variance <= 100:
        raise ValueError(f"variance must be a percentage in (0, 100], got {variance}")
    lam = np.asarray(eigenvalues, np.float64)
    total = lam.sum()
    if total <= 0:
        return 1
    ratio = np.cumsum(lam) / total
    # tolerance: 100% must not fail on round-off
    return int(min(len(lam), np.searchsorted(ratio, variance / 100.0 - 1e-12) + 1))


@dataclass(frozen=True)
class ShapeModel:
    """PCA shape model.

    Attributes:
        mean: (2K,) mean normalised shape.
        components: (C, 2K) orthonormal rows (eigenvectors, descending eigenvalue).
        eigenvalues: (C,) variances along the components (N - 1 convention).
        variance: the percentage asked for; ``explained`` the fraction actually kept.
        normalization, input_size: how shapes are normalised (input_size used by hyperface).
        clamp_sigmas: coefficients are clamped to +- clamp_sigmas * sqrt(lambda) (3).
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    variance: float
    explained: float
    normalization: str = "center_scale"
    input_size: int = 0
    clamp_sigmas: float = 3.0

    @property
    def num_components(self) -> int:
        return int(self.components.shape[0])

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(N, 2K) normalised shapes -> (N, C) coefficients b = V^T (s - mean)."""
        return (np.asarray(vectors, np.float64) - self.mean) @ self.components.T

    def clamp(self, coefficients: np.ndarray) -> np.ndarray:
        """Clamp each b_i to [-c sqrt(lambda_i), c sqrt(lambda_i)] (c = clamp_sigmas)."""
        lim = self.clamp_sigmas * np.sqrt(np.maximum(self.eigenvalues, 0.0))
        return np.clip(coefficients, -lim, lim)

    def reconstruct(self, coefficients: np.ndarray) -> np.ndarray:
        """(N, C) coefficients -> (N, 2K) normalised shapes mean + V b."""
        return self.mean + np.asarray(coefficients, np.float64) @ self.components

    def soft_landmarks(self, shapes: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
        """Soft landmarks of (N, K, 2) crop-px shapes (float64, same frame).

        Shapes with any invisible point (``visible`` (N, K) == 0) are returned unchanged.
        """
        s = _check_shapes(shapes)
        if s.shape[1] * 2 != self.mean.shape[0]:
            raise ValueError(f"shape model has {self.mean.shape[0] // 2} points, shapes have "
                             f"{s.shape[1]}")
        full = np.ones(len(s), bool) if visible is None else np.asarray(visible).min(-1) > 0
        out = s.copy()
        if full.any():
            v, c, sc = normalize_shapes(s[full], self.normalization, self.input_size or None)
            soft = self.reconstruct(self.clamp(self.project(v)))
            out[full] = denormalize_shapes(soft, c, sc)
        return out

    def save(self, path: str | Path) -> None:
        """Write an .npz atomically (temp file in the same folder, then rename)."""
        with atomic_path(path, ext=".npz") as tmp:  # np.savez appends .npz to other names
            np.savez(tmp, mean=self.mean, components=self.components,
                     eigenvalues=self.eigenvalues, variance=self.variance,
                     explained=self.explained, normalization=np.array(self.normalization),
                     input_size=self.input_size, clamp_sigmas=self.clamp_sigmas)

    @classmethod
    def load(cls, path: str | Path) -> "ShapeModel":
        """Read a model written by :meth:`save`; a missing/bad file raises ValueError naming it."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"{p}: shape model file not found")
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls(mean=z["mean"], components=z["components"],
                           eigenvalues=z["eigenvalues"], variance=float(z["variance"]),
                           explained=float(z["explained"]),
                           normalization=str(z["normalization"]),
                           input_size=int(z["input_size"]), clamp_sigmas=float(z["clamp_sigmas"]))
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{p}: not a shape model file ({type(e).__name__}: {e})") from None


def fit_shape_model(shapes: np.ndarray, *, variance: float = 90.0,
                    normalization: Normalization = "center_scale", input_size: int = 0,
                    visible: np.ndarray | None = None, clamp_sigmas: float = 3.0) -> ShapeModel:
    """Fit the PCA shape model (pure).

    Args:
        shapes: (N, K, 2) crop px training shapes.
        variance: percentage of variance the kept components must explain (90).
        normalization: see the module docstring.
        input_size: crop side S (hyperface only).
        visible: (N, K); shapes with an invisible point are left out of the fit.
        clamp_sigmas: clamp limit in standard deviations (3).

    Raises:
        ValueError: fewer than 2 complete shapes, bad shapes or variance.
    """
    s = _check_shapes(shapes)
    if visible is not None:
        s = s[np.asarray(visible).min(-1) > 0]
    if len(s) < 2:
        raise ValueError(f"fit_shape_model: need >= 2 complete shapes, got {len(s)}")
    v, _, _ = normalize_shapes(s, normalization, input_size or None)
    mean = v.mean(axis=0)
    _, sv, vt = np.linalg.svd(v - mean, full_matrices=False)
    lam = sv ** 2 / (len(v) - 1)
    n = n_components_for(lam, variance)
    explained = float(lam[:n].sum() / lam.sum()) if lam.sum() > 0 else 1.0
    return ShapeModel(mean=mean, components=vt[:n].copy(), eigenvalues=lam[:n].copy(),
                      variance=float(variance), explained=explained,
                      normalization=normalization, input_size=int(input_size),
                      clamp_sigmas=float(clamp_sigmas))
