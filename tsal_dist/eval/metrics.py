"""Landmark accuracy metrics: NME, CED, AUC, failure rate. Pure numpy, nothing of ours imported.

What belongs here: pure functions of arrays of predictions / ground truth / per-image NMEs.
What does not: running models, reading data, plotting (see ``run.py`` and ``plots.py``).

Conventions (docs/method_notes.md section 3):

* Per image, ``NME = sum_{visible j} ||pred_j - gt_j||_2 / (n_visible * d)``, returned as a
  FRACTION (multiply by 100 for the usual "%" tables). The dataset figure is the mean over images.
* ``d`` (the normaliser) is one of
    - ``"inter_ocular"``: ``||gt[l] - gt[r]||`` with the outer eye corners ``(l, r)`` (68 points:
      36 and 45, 0-based; WFLW: 60 and 72). SBR's choice and our headline number.
    - ``"inter_pupil"``: distance between the means of the two eye contours (68 points: 36-41 and
      42-47). The committed TSAL code's choice; larger NMEs than inter-ocular for the same errors.
  Which indices a landmark scheme uses, and its headline normaliser, are facts of the scheme:
  ``tsal_dist.data.schemes`` holds them and callers pass them in (this module imports nothing of
  ours). Only the iBUG-68 indices are written here, as the argument defaults.
    - ``"face_size"``: given per image (AFLW: ``sqrt(w * h)`` of the GT box, from the list file).
    - ``"bbox"``: ``sqrt(w * h)`` of the tight box of the visible GT points.
* Degenerate images get NaN instead of a number: no visible point, a normaliser ``d <= min_norm``
  (e.g. zero/duplicate annotations, docs/method_notes.md 3.3), a non-finite ``d``, or (inter-ocular
  / inter-pupil) a normaliser point that is not visible, or a visible GT point that is not finite.
  Aggregates (:func:`auc`, :func:`failure_rate`, :func:`ced`, :func:`summarize`) ignore NaNs and
  :func:`count_degenerate` / ``summarize()["n_degenerate"]`` report how many there were.
* A non-finite PREDICTION of a visible point is a failure, not a degenerate image: its NME is
  ``+inf`` (so it counts in the failure rate and makes the mean infinite, visibly).
* CED(t) = fraction of (non-degenerate) images with ``NME < t``; ``AUC@tau`` = trapezoid area of
  the CED on ``linspace(0, tau, steps)`` divided by tau (SBR/TSAL: steps = 2000);
  ``FR@tau`` = fraction with ``NME > tau``.
"""

from __future__ import annotations

from typing import Literal, Protocol, Sequence

import numpy as np

NormName = Literal["inter_ocular", "inter_pupil", "face_size", "bbox"]
NORMS: tuple[str, ...] = ("inter_ocular", "inter_pupil", "face_size", "bbox")

# The iBUG-68 indices, as argument defaults: a copy of tsal_dist.data.schemes.IBUG68 (the home of
# every scheme's indices), held equal to it by tests/tsal_dist/data/test_schemes.py.
DEFAULT_EYE_CORNERS: tuple[int, int] = (36, 45)
DEFAULT_PUPILS: tuple[tuple[int, ...], tuple[int, ...]] = (tuple(range(36, 42)),
                                                           tuple(range(42, 48)))

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.07, 0.08, 0.1)
DEFAULT_MIN_NORM: float = 1e-6  # normaliser (image px) at or below which an image is degenerate


class NormSpec(Protocol):
    """What :func:`nme_by_norm` needs of a landmark scheme (a
    ``tsal_dist.data.schemes.LandmarkScheme`` is one): its computable normalisers, the primary
    first, and the 0-based indices they use."""

    @property
    def norms(self) -> tuple[str, ...]: ...

    @property
    def eye_corners(self) -> tuple[int, int] | None: ...

    @property
    def pupils(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None: ...


def _check_points(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (N, K, 2), got {a.shape}")
    return a


def normalizer(gt: np.ndarray, norm: str, visible: np.ndarray | None = None,
               face_size: np.ndarray | None = None,
               eye_corners: tuple[int, int] = DEFAULT_EYE_CORNERS,
               pupils: tuple[Sequence[int], Sequence[int]] = DEFAULT_PUPILS) -> np.ndarray:
    """Per-image normalising distance ``d`` (image px); NaN where it cannot be computed.

    Args:
        gt: (N, K, 2) ground-truth points.
        norm: one of :data:`NORMS`.
        visible: (N, K) in {0, 1}, or None (all visible).
        face_size: (N,) per-image face size, required for ``norm="face_size"``.
        eye_corners, pupils: 0-based indices, see :func:`nme`.

    Returns:
        (N,) float64. NaN where a needed point is invisible, no point is visible (bbox), or
        face_size is missing/NaN. Values are NOT yet checked against ``min_norm``.
    """
    gt = _check_points("gt", gt)
    n, k, _ = gt.shape
    vis = np.ones((n, k), bool) if visible is None else _check_visible(visible, n, k)
    if norm == "inter_ocular":
        left, right = (int(i) for i in eye_corners)
        _check_indices("eye_corners", (left, right), k)
        d = np.linalg.norm(gt[:, left] - gt[:, right], axis=-1)
        return np.where(vis[:, left] & vis[:, right], d, np.nan)
    if norm == "inter_pupil":
        left, right = (np.asarray(list(p), dtype=np.int64) for p in pupils)
        if left.size == 0 or right.size == 0:
            raise ValueError("pupils: each eye needs at least one landmark index")
        _check_indices("pupils", (*left.tolist(), *right.tolist()), k)
        d = np.linalg.norm(gt[:, left].mean(1) - gt[:, right].mean(1), axis=-1)
        ok = vis[:, left].all(1) & vis[:, right].all(1)
        return np.where(ok, d, np.nan)
    if norm == "face_size":
        if face_size is None:
            raise ValueError("norm='face_size' needs face_size (N,)")
        fs = np.asarray(face_size, dtype=np.float64).reshape(-1)
        if fs.shape != (n,):
            raise ValueError(f"face_size must have shape ({n},), got {np.shape(face_size)}")
        return fs.copy()
    if norm == "bbox":
        d = np.full(n, np.nan)
        for i in range(n):
            pts = gt[i][vis[i]]
            if len(pts):
                w, h = pts.max(0) - pts.min(0)
                d[i] = np.sqrt(w * h)
        return d
    raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")


def _check_visible(visible: np.ndarray, n: int, k: int) -> np.ndarray:
    v = np.asarray(visible)
    if v.shape != (n, k):
        raise ValueError(f"visible must have shape ({n}, {k}), got {v.shape}")
    return v > 0


def _check_indices(name: str, idx: Sequence[int], k: int) -> None:
    bad = [i for i in idx if not 0 <= i < k]
    if bad:
        raise ValueError(f"{name}: landmark indices {bad} outside 0..{k - 1}")


def nme(pred: np.ndarray, gt: np.ndarray, norm: str = "inter_ocular",
        visible: np.ndarray | None = None, face_size: np.ndarray | None = None,
        eye_corners: tuple[int, int] = DEFAULT_EYE_CORNERS,
        pupils: tuple[Sequence[int], Sequence[int]] = DEFAULT_PUPILS,
        min_norm: float = DEFAULT_MIN_NORM) -> np.ndarray:
    """Per-image normalised mean error, as a fraction.

    ``NME_i = sum_{j visible} ||pred_ij - gt_ij|| / (n_visible_i * d_i)``.

    Args:
        pred: (N, K, 2) predicted points, same pixel frame as ``gt``.
        gt: (N, K, 2) ground-truth points.
        norm: "inter_ocular" | "inter_pupil" | "face_size" | "bbox" (see the module docstring).
        visible: (N, K) in {0, 1}; None = all visible. Invisible points are ignored (and may hold
            any value, NaN included).
        face_size: (N,) per-image face size (image px), used by ``norm="face_size"``.
        eye_corners: 0-based (left, right) outer eye corners for "inter_ocular".
        pupils: 0-based index lists of the two eyes; their means are the pupils ("inter_pupil").
        min_norm: a normaliser ``d <= min_norm`` (image px) makes the image degenerate.

    Returns:
        (N,) float64 NMEs. NaN for degenerate images (no visible point, or invalid/tiny ``d``);
        ``+inf`` where a visible point's prediction is not finite.
    """
    pred = _check_points("pred", pred)
    gt = _check_points("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    n, k, _ = gt.shape
    vis = np.ones((n, k), bool) if visible is None else _check_visible(visible, n, k)
    d = normalizer(gt, norm, vis, face_size, eye_corners, pupils)
    with np.errstate(invalid="ignore"):
        err = np.linalg.norm(pred - gt, axis=-1)  # (N, K); NaN/inf where pred or gt is
    err = np.where(np.isfinite(err), err, np.inf)
    err_sum = np.where(vis, err, 0.0).sum(1)
    n_vis = vis.sum(1)
    gt_ok = (np.isfinite(gt).all(-1) | ~vis).all(1)  # a visible NaN/inf GT point: bad annotation
    ok = (n_vis > 0) & gt_ok & np.isfinite(d) & (d > min_norm)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = err_sum / (n_vis * d)
    return np.where(ok, out, np.nan)


def nme_by_norm(pred: np.ndarray, gt: np.ndarray, spec: NormSpec,
                visible: np.ndarray | None = None, face_size: np.ndarray | None = None,
                min_norm: float = DEFAULT_MIN_NORM) -> dict[str, np.ndarray]:
    """NMEs under every normaliser the landmark scheme ``spec`` supports, primary first.

    Args:
        spec: the scheme, e.g. ``tsal_dist.data.schemes.scheme_for(K)``.

    Returns:
        {norm name: (N,) NMEs}; e.g. for 68 points ``{"inter_ocular": ..., "inter_pupil": ...}``,
        for 19 points ``{"face_size": ...}``.
    """
    out = {}
    for name in spec.norms:
        out[name] = nme(pred, gt, name, visible=visible, face_size=face_size,
                        eye_corners=spec.eye_corners or DEFAULT_EYE_CORNERS,
                        pupils=spec.pupils or DEFAULT_PUPILS, min_norm=min_norm)
    return out


# ----------------------------------------------------------------------------- aggregates


def _valid(nmes: np.ndarray) -> np.ndarray:
    a = np.asarray(nmes, dtype=np.float64).reshape(-1)
    return a[~np.isnan(a)]


def count_degenerate(nmes: np.ndarray) -> int:
    """Number of NaN (degenerate) entries in ``nmes``."""
    return int(np.isnan(np.asarray(nmes, dtype=np.float64)).sum())


def ced(nmes: np.ndarray, threshold: float = 0.08,
        steps: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution.

    Args:
        nmes: (N,) per-image NMEs (fractions); NaNs are ignored.
        threshold: largest NME on the curve (fraction).
        steps: number of thresholds, ``linspace(0, threshold, steps)``.

    Returns:
        thresholds: (steps,); fractions: (steps,) fraction of valid images with ``NME < t``
        (all NaN when there is no valid image).
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    ts = np.linspace(0.0, threshold, steps)
    v = np.sort(_valid(nmes))
    if v.size == 0:
        return ts, np.full(steps, np.nan)
    # searchsorted(left) counts the values strictly below t
    return ts, np.searchsorted(v, ts, side="left") / v.size


def auc(nmes: np.ndarray, threshold: float = 0.08, steps: int = 2000) -> float:
    """Area under the CED on [0, threshold], divided by threshold: in [0, 1] (NaN if no image).

    Trapezoid rule on ``linspace(0, threshold, steps)`` (SBR/TSAL, sklearn ``auc``).
    """
    ts, fr = ced(nmes, threshold, steps)
    if np.isnan(fr).all():
        return float("nan")
    area = float(np.sum((fr[1:] + fr[:-1]) * np.diff(ts)) / 2.0)
    return area / threshold


def failure_rate(nmes: np.ndarray, threshold: float = 0.08) -> float:
    """Fraction of valid images with ``NME > threshold`` (NaN if there is no valid image)."""
    v = _valid(nmes)
    if v.size == 0:
        return float("nan")
    return float(np.mean(v > threshold))


def mean_nme(nmes: np.ndarray) -> float:
    """Mean of the valid (non-NaN) NMEs; NaN if there is none."""
    v = _valid(nmes)
    return float(v.mean()) if v.size else float("nan")


def _fmt_threshold(t: float) -> str:
    return f"{t:g}"


def error_changes(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray,
                  visible: np.ndarray | None = None) -> np.ndarray:
    """Squared frame-to-frame changes of the normalised error of one video's frames, in order.

    ``e(t) = (pred(t) - gt(t)) / d(t)``; returns ``||e(t+1) - e(t)||^2`` for every point visible
    in both frames and both frames' ``d`` finite and positive (1-d, pooled over frames and
    points). Their mean's square root is the normalised mean jitter (:func:`nmj`).

    Args:
        pred, gt: (T, K, 2) in frame order; norm: (T,) normaliser of each frame (image px);
        visible: (T, K) or None.
    """
    p, g = _check_points("pred", pred), _check_points("gt", gt)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ")
    t, k, _ = g.shape
    d = np.asarray(norm, dtype=np.float64).reshape(-1)
    if d.shape != (t,):
        raise ValueError(f"norm must have shape ({t},), got {np.shape(norm)}")
    vis = np.ones((t, k), bool) if visible is None else _check_visible(visible, t, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = (p - g) / d[:, None, None]
    sq = (np.diff(e, axis=0) ** 2).sum(-1)  # (T-1, K)
    ok = vis[1:] & vis[:-1] & (np.isfinite(d) & (d > 0))[1:, None] & \
        (np.isfinite(d) & (d > 0))[:-1, None] & np.isfinite(g).all(-1)[1:] & \
        np.isfinite(g).all(-1)[:-1]
    return sq[ok]


def nmj(changes: Sequence[np.ndarray]) -> float:
    """Normalised mean jitter (LDEQ, WFLW-V): the RMS of the frame-to-frame change of the
    normalised error, pooled over the videos' :func:`error_changes`; a fraction (x100 for %).
    A non-finite prediction makes it infinite; NaN when no frame pair exists."""
    allc = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1) for c in changes]) \
        if len(changes) else np.zeros(0)
    return float(np.sqrt(allc.mean())) if allc.size else float("nan")


def summarize(nmes: np.ndarray, nmes_ip: np.ndarray | None = None,
              thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *,
              primary_norm: str = "inter_ocular",
              steps: int = 2000) -> dict[str, float | int | str | None]:
    """Dataset-level numbers from per-image NMEs, as a JSON-safe dict (fractions, not %).

    Args:
        nmes: (N,) per-image NMEs under the primary normaliser (inter-ocular for 68 points; the
            AUC, FR and degenerate count are computed from these).
        nmes_ip: (N,) inter-pupil NMEs of the same images, or None when not applicable.
        thresholds: taus for ``auc@tau`` and ``fr@tau``.
        primary_norm: name of the normaliser of ``nmes``.
        steps: CED resolution for the AUCs.

    Returns:
        ``n_images`` (all images), ``count`` (non-degenerate images), ``n_degenerate``, ``norm``,
        ``nme`` and ``nme_<primary_norm>`` (mean), ``nme_inter_pupil`` (or None),
        ``n_degenerate_inter_pupil``, ``nme_median``, and ``auc@<tau>`` / ``fr@<tau>`` for each tau
        (e.g. ``auc@0.08``). Undefined values (no valid image, or an infinite mean from a
        non-finite prediction) are None; ``n_nonfinite`` counts infinite NMEs.
    """
    a = np.asarray(nmes, dtype=np.float64).reshape(-1)
    v = _valid(a)
    out: dict[str, float | int | str | None] = {
        "n_images": int(a.size),
        "count": int(v.size),
        "n_degenerate": count_degenerate(a),
        "n_nonfinite": int(np.isinf(v).sum()),
        "norm": primary_norm,
    }
    m = mean_nme(a)
    out["nme"] = _safe(m)
    out[f"nme_{primary_norm}"] = _safe(m)
    out["nme_median"] = _safe(float(np.median(v))) if v.size else None
    if nmes_ip is not None:
        ip = np.asarray(nmes_ip, dtype=np.float64).reshape(-1)
        if ip.shape != a.shape:
            raise ValueError(f"nmes_ip {ip.shape} and nmes {a.shape} differ in shape")
        out["nme_inter_pupil"] = _safe(mean_nme(ip))
        out["n_degenerate_inter_pupil"] = count_degenerate(ip)
    elif primary_norm != "inter_pupil":
        out["nme_inter_pupil"] = None
    for t in thresholds:
        out[f"auc@{_fmt_threshold(t)}"] = _safe(auc(a, t, steps))
        out[f"fr@{_fmt_threshold(t)}"] = _safe(failure_rate(a, t))
    return out


def _safe(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
