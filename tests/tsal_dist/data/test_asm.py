"""ASM soft landmarks: projection of shapes built from a known basis, clamping, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from tsal_dist.data.asm import (ShapeModel, denormalize_shapes, fit_shape_model,
                                n_components_for, normalize_shapes)


def _basis_shapes(n=400, k=10, seed=0):
    """Shapes = mean + 2 orthonormal modes with std 0.3 and 0.1 (hyperface-normalised space)."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-0.3, 0.3, 2 * k)
    q, _ = np.linalg.qr(rng.normal(size=(2 * k, 2)))
    modes = q.T  # (2, 2K) orthonormal
    coef = rng.normal(size=(n, 2)) * np.array([0.3, 0.1])
    vec = mean + coef @ modes
    size = 100
    shapes = denormalize_shapes(vec, np.full((n, 2), size / 2), np.full(n, -float(size)))
    return shapes, mean, modes, coef, size


def test_normalize_round_trip_and_center_scale_invariance():
    rng = np.random.default_rng(1)
    s = rng.uniform(0, 96, (5, 68, 2))
    v, c, sc = normalize_shapes(s)
    assert np.allclose(denormalize_shapes(v, c, sc), s)
    v2, _, _ = normalize_shapes(s * 2.0 + 7.0)
    assert np.allclose(v, v2)  # position and size removed
    vh, ch, sch = normalize_shapes(s, "hyperface", input_size=96)
    assert np.allclose(vh.reshape(5, 68, 2), (48 - s) / 96)  # KD: (S/2 - x) / S
    assert np.allclose(denormalize_shapes(vh, ch, sch), s)


def test_fit_recovers_known_basis_and_projection():
    shapes, mean, modes, coef, size = _basis_shapes()
    m = fit_shape_model(shapes, variance=99.0, normalization="hyperface", input_size=size)
    assert m.num_components == 2
    # subspace equality: projector onto the fitted components == projector onto the true modes
    assert np.allclose(m.components.T @ m.components, modes.T @ modes, atol=1e-8)
    # eigenvalues ~ the mode variances (0.09, 0.01)
    assert np.allclose(m.eigenvalues, [0.09, 0.01], rtol=0.2)
    # every in-distribution shape (|b| < 3 sigma) is reproduced exactly
    inside = np.all(np.abs(coef) < 3 * np.sqrt(m.eigenvalues), axis=1)
    soft = m.soft_landmarks(shapes)
    assert np.allclose(soft[inside], shapes[inside], atol=1e-8)
    # 90%: the first mode carries 0.09 / 0.10 of the variance -> one component
    m90 = fit_shape_model(shapes, variance=90.0, normalization="hyperface", input_size=size)
    assert m90.num_components == 1 and m90.explained >= 0.9


def test_outlier_coefficient_is_clamped_and_off_model_part_removed():
    shapes, mean, modes, coef, size = _basis_shapes()
    m = fit_shape_model(shapes, variance=99.0, normalization="hyperface", input_size=size)
    sd = np.sqrt(m.eigenvalues)
    # build an outlier in the FITTED basis: 10 sigma along component 0, 1 sigma along 1,
    # plus a deviation orthogonal to the model (which projection must remove)
    rng = np.random.default_rng(3)
    r = rng.normal(size=mean.shape)
    r -= m.components.T @ (m.components @ r)
    vec = m.mean + np.array([10 * sd[0], 1 * sd[1]]) @ m.components + 0.05 * r
    shape = denormalize_shapes(vec[None], np.full((1, 2), size / 2), np.full(1, -float(size)))
    b = m.project(vec[None])[0]
    assert np.allclose(b, [10 * sd[0], sd[1]])
    assert np.allclose(m.clamp(b[None])[0], [3 * sd[0], sd[1]])
    expected_vec = m.mean + np.array([3 * sd[0], sd[1]]) @ m.components
    expected = denormalize_shapes(expected_vec[None], np.full((1, 2), size / 2),
                                  np.full(1, -float(size)))
    assert np.allclose(m.soft_landmarks(shape), expected)


def test_incomplete_shapes_left_alone_and_skipped_in_fit():
    shapes, *_ = _basis_shapes(n=50)
    vis = np.ones(shapes.shape[:2])
    vis[0, 3] = 0
    shapes[0, 3] = (1e6, 1e6)  # garbage at an invisible point must not enter the fit
    m = fit_shape_model(shapes, variance=90.0, visible=vis)
    soft = m.soft_landmarks(shapes, vis)
    assert np.array_equal(soft[0], shapes[0])
    assert np.all(np.abs(m.mean) < 10)


def test_n_components_rule():
    lam = np.array([5.0, 3.0, 1.0, 1.0])
    assert n_components_for(lam, 50) == 1
    assert n_components_for(lam, 80) == 2
    assert n_components_for(lam, 90) == 3
    assert n_components_for(lam, 100) == 4
    with pytest.raises(ValueError):
        n_components_for(lam, 0)


def test_save_load_round_trip_and_bad_file(tmp_path):
    shapes, *_ = _basis_shapes(n=30)
    m = fit_shape_model(shapes, variance=95.0)
    m.save(tmp_path / "asm.npz")
    m2 = ShapeModel.load(tmp_path / "asm.npz")
    assert np.array_equal(m2.components, m.components) and m2.normalization == "center_scale"
    assert np.allclose(m2.soft_landmarks(shapes), m.soft_landmarks(shapes))
    assert list(tmp_path.iterdir()) == [tmp_path / "asm.npz"]  # no temp files left
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.npz"):
        ShapeModel.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="missing.npz"):
        ShapeModel.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="complete shapes"):
        fit_shape_model(shapes[:1])
