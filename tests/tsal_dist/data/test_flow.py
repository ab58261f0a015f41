"""Dense flow and the tracking source: known shifts are recovered, warping registers frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tsal_dist.data.flow import flow_between, warp_to_next, warp_with_flow


def _texture(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)


def _mse(a: np.ndarray, b: np.ndarray, m: int = 12) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    return float((d[m:-m, m:-m] ** 2).mean())


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_integer_shift_is_recovered(method):
    base = _texture(160)
    a = base[16:144, 16:144]
    b = base[16 + 2:144 + 2, 16 - 3:144 - 3]  # b[y, x] = a[y+2, x-3], a[y, x] = b[y-2, x+3]
    f = flow_between(a, b, method)
    assert f.shape == (128, 128, 2) and f.dtype == np.float32
    interior = f[24:-24, 24:-24]
    assert np.abs(interior[..., 0] - 3.0).mean() < 0.1
    assert np.abs(interior[..., 1] + 2.0).mean() < 0.1
    assert np.abs(interior[..., 0] - 3.0).max() < 0.5 and np.abs(interior[..., 1] + 2.0).max() < 0.5


def test_warp_with_constant_flow_is_a_shift():
    img = _texture(64, 1)
    flow = np.zeros((64, 64, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    out = warp_with_flow(img, flow)
    # out[y, x] = img[y - 2, x + 3]
    np.testing.assert_array_equal(out[2:, :-3], img[:-2, 3:])
    # border replicate: the last columns repeat the image's last column
    np.testing.assert_array_equal(out[10, -1], img[8, -1])


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_warp_to_next_registers_translated_and_rotated_frames(method):
    base = _texture(200, 2)
    c = (99.5, 99.5)
    frames = []
    for t in range(4):
        R = cv2.getRotationMatrix2D(c, 2.0 * t, 1.0)
        R[:, 2] += (1.5 * t, -1.0 * t)
        frames.append(cv2.warpAffine(base, R, (200, 200), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT)[36:164, 36:164])
    frames = np.stack(frames)
    warped = warp_to_next(frames, method)
    assert warped.shape == (3, 128, 128, 3) and warped.dtype == np.uint8
    for t in range(3):
        before = _mse(frames[t], frames[t + 1])
        after = _mse(warped[t], frames[t + 1])
        assert after < 0.15 * before, (t, before, after)


def test_warp_to_next_none_and_identical_frames():
    frames = np.stack([_texture(48, s) for s in range(3)])
    out = warp_to_next(frames, "none")
    np.testing.assert_array_equal(out, frames[:-1])
    assert not np.shares_memory(out, frames)
    same = np.stack([frames[0]] * 3)
    w = warp_to_next(same, "dis")
    assert np.abs(w.astype(int) - same[1:].astype(int)).max() <= 2


def test_flow_errors():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        flow_between(a, np.zeros((32, 31, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown flow method"):
        flow_between(a, a, "lk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="T>=2"):
        warp_to_next(a[None])
    with pytest.raises(ValueError, match="preset"):
        flow_between(a, a, "dis", preset="slow")
    np.testing.assert_array_equal(flow_between(a, a, "none"), 0.0)
