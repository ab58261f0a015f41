"""Stability metrics against hand computations."""

import numpy as np
import pytest

from tsal_runtime.stability import INNER_68, interocular, jitter, nmj


def shape68(iod: float = 10.0) -> np.ndarray:
    p = np.zeros((68, 2))
    p[36], p[45] = [0.0, 0.0], [iod, 0.0]
    return p


def test_jitter_of_steady_motion_and_its_second_difference() -> None:
    # every point moves 0.3 px right per frame; inter-ocular 10 px -> 3 % per frame, 0 % second
    pts = np.stack([shape68() + [0.3 * t, 0.0] for t in range(6)])
    d = interocular(pts)
    assert np.allclose(d, 10.0)
    assert jitter(pts, d) == pytest.approx(3.0)
    assert jitter(pts, d, order=2) == pytest.approx(0.0, abs=1e-12)


def test_jitter_uses_only_the_inner_points_and_skips_missing_frames() -> None:
    pts = np.stack([shape68() for _ in range(5)])
    pts[:, :17] += np.arange(5)[:, None, None] * 7.0  # the jaw moves: not counted
    pts[3, 40] += [0.0, 5.1]  # one inner point jumps out and back on frame 3
    pts[1] = np.nan  # frame 1 missing: differences 0->1 and 1->2 skipped
    d = np.full(5, 10.0)
    # remaining differences: 2->3 and 3->4, each moves one of 51 points by 5.1 px
    assert jitter(pts, d) == pytest.approx(100 * 5.1 / 51 / 10.0)
    assert len(INNER_68) == 51


def test_nmj_is_zero_for_a_constant_offset_and_the_rms_of_error_changes() -> None:
    g = np.stack([shape68() + [t, 2.0 * t] for t in range(4)])
    d = interocular(g)
    assert nmj(g + [1.5, -0.5], g, d) == pytest.approx(0.0, abs=1e-12)
    # error alternates between +a and -a on the x axis of every point: change 2a per frame
    a = 0.25
    p = g + np.array([[(-1) ** t * a, 0.0] for t in range(4)])[:, None, :]
    assert nmj(p, g, d) == pytest.approx(100 * 2 * a / 10.0)
    # independent computation on random data
    rng = np.random.default_rng(0)
    p = g + rng.normal(0, 0.4, g.shape)
    e = (p - g) / d[:, None, None]
    want = 100 * np.sqrt(np.mean(np.sum(np.diff(e, axis=0) ** 2, axis=-1)))
    assert nmj(p, g, d) == pytest.approx(want)
    p[2] = np.nan  # frame 2 missing: only the 0->1 change remains
    want = 100 * np.sqrt(np.mean(np.sum((e[1] - e[0]) ** 2, axis=-1)))
    assert nmj(p, g, d) == pytest.approx(want)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"\(T, K, 2\)"):
        jitter(np.zeros((3, 68)), np.ones(3))
    with pytest.raises(ValueError, match="differ"):
        nmj(np.zeros((3, 68, 2)), np.zeros((4, 68, 2)), np.ones(3))
