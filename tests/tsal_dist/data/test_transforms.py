"""Crop geometry: hand-computed crop matrices, round trips, flips, warping, augmentation draws."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tsal_dist.data.schemes import IBUG68_FLIP_PAIRS
from tsal_dist.data.transforms import (
    IMAGENET_MEAN_RGB,
    Augmentation,
    apply_affine_points,
    compose_affine,
    crop_matrix,
    flip_matrix,
    flip_permutation,
    invert_affine,
    sample_augmentation,
    transform_landmarks,
    visible_in_crop,
    warp_image,
)


def test_crop_matrix_plain_hand_computed():
    # box w=100, h=50, expand .25 -> x in [-15, 135] (150 wide), y in [7.5, 82.5] (75 tall)
    M = crop_matrix((10, 20, 110, 70), 150, 0.25)
    assert M.shape == (2, 3) and M.dtype == np.float64
    np.testing.assert_allclose(M, [[1.0, 0.0, 15 - 0.5], [0.0, 2.0, -15 - 0.5]])
    # box corners and centre
    out = apply_affine_points(M, np.array([[10, 20], [60, 45], [-15, 7.5]]))
    np.testing.assert_allclose(out, [[24.5, 24.5], [74.5, 74.5], [-0.5, -0.5]])


def test_crop_matrix_rotation_scale_shift_match_cv2():
    box, S, ex = (30.0, 40.0, 90.0, 120.0), 64, 0.2
    base = crop_matrix(box, S, ex)
    c = (S - 1) / 2
    for rot, scale in [(90.0, 1.0), (-17.0, 1.3), (5.0, 0.8)]:
        R = cv2.getRotationMatrix2D((c, c), rot, scale)
        expect = compose_affine(R, base)
        expect[:, 2] += (3.0, -4.5)
        np.testing.assert_allclose(crop_matrix(box, S, ex, rot, scale, (3.0, -4.5)), expect,
                                   atol=1e-12)
    # +90 deg: a point right of the centre goes up (counter-clockwise as displayed)
    M = crop_matrix((0, 0, 10, 10), 11, 0.0, rot_deg=90)
    centre_img = apply_affine_points(invert_affine(crop_matrix((0, 0, 10, 10), 11, 0.0)),
                                     np.array([[5.0, 5.0], [8.0, 5.0]]))
    p = apply_affine_points(M, centre_img)
    np.testing.assert_allclose(p[1] - p[0], [0.0, -3.0], atol=1e-9)
    # scale 2 doubles distances from the crop centre
    M2 = crop_matrix((0, 0, 10, 10), 11, 0.0, scale=2.0)
    q = apply_affine_points(M2, centre_img)
    np.testing.assert_allclose(q[1] - q[0], [6.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(q[0], [5.0, 5.0], atol=1e-9)


def test_crop_matrix_rejects_empty_box():
    with pytest.raises(ValueError, match="empty box"):
        crop_matrix((5, 5, 5, 9), 64, 0.2)


def test_invert_affine_round_trip():
    rng = np.random.default_rng(0)
    M = crop_matrix((12.5, 30, 140, 170), 96, 0.2, rot_deg=23, scale=1.07, shift=(2.5, -1.0))
    pts = rng.uniform(0, 200, size=(50, 2))
    back = apply_affine_points(invert_affine(M), apply_affine_points(M, pts))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    np.testing.assert_allclose(invert_affine(invert_affine(M)), M, atol=1e-12)
    np.testing.assert_allclose(invert_affine(M), cv2.invertAffineTransform(M), atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]))


def test_invert_affine_batch_matches_one_by_one():
    Ms = np.stack([crop_matrix((10 + i, 20, 120 + 3 * i, 150), 64, 0.1, rot_deg=7 * i)
                   for i in range(5)])
    inv = invert_affine(Ms)
    assert inv.shape == (5, 2, 3)
    for M, Mi in zip(Ms, inv):
        np.testing.assert_array_equal(Mi, invert_affine(M))  # bit for bit
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.stack([Ms[0], np.zeros((2, 3))]))


def test_apply_affine_points_batched_shapes():
    M = crop_matrix((0, 0, 10, 20), 32, 0.1)
    pts = np.arange(24, dtype=np.float64).reshape(3, 4, 2)
    out = apply_affine_points(M, pts)
    assert out.shape == (3, 4, 2)
    np.testing.assert_allclose(out[1, 2], apply_affine_points(M, pts[1, 2][None])[0])


def test_warp_image_integer_translation_and_border():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    # box chosen so the affine is a pure translation by (-10, -5) at scale 1
    S = 20
    box = (9.5, 4.5, 29.5, 24.5)
    M = crop_matrix(box, S, 0.0)
    np.testing.assert_allclose(M, [[1, 0, -10], [0, 1, -5]], atol=1e-12)
    crop = warp_image(img, M, S)
    np.testing.assert_array_equal(crop, img[5:25, 10:30])
    # a crop entirely outside the image is the border colour
    far = warp_image(img, crop_matrix((1000, 1000, 1020, 1020), S, 0.0), S)
    np.testing.assert_array_equal(far, np.broadcast_to(np.round(IMAGENET_MEAN_RGB), far.shape))


def test_warp_image_puts_a_dot_where_the_matrix_maps_it():
    img = np.zeros((200, 220, 3), np.uint8)
    p = np.array([123.0, 87.0])
    cv2.circle(img, (123, 87), 2, (255, 255, 255), -1)
    aug = Augmentation(rot_deg=-31.0, scale=1.15, shift=(4.0, -6.0))
    M = aug.matrix((60, 40, 180, 170), 96, 0.2)
    crop = warp_image(img, M, 96)[..., 0].astype(np.float64)
    q = apply_affine_points(M, p[None])[0]
    ys, xs = np.nonzero(crop > 0.5 * crop.max())
    w = crop[ys, xs]
    centroid = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    np.testing.assert_allclose(centroid, q, atol=0.5)


def test_warp_image_antialias_on_large_downscale():
    # 2-px checkerboard shrunk ~8x: box-filtered first it is flat grey, plain bilinear aliases
    yy, xx = np.mgrid[0:800, 0:800]
    board = (((yy // 1 + xx // 1) % 2) * 255).astype(np.uint8)
    img = np.dstack([board] * 3)
    M = crop_matrix((100, 100, 700, 700), 64, 0.0, rot_deg=7.0)
    smooth = warp_image(img, M, 64)
    aliased = warp_image(img, M, 64, antialias=False)
    assert abs(smooth.mean() - 127.5) < 3 and smooth.std() < 3
    assert aliased.std() > 20
    # on a smooth image the two agree (the ROI/downscale bookkeeping is right)
    grad = np.dstack([(xx * 0.2 + yy * 0.1).astype(np.uint8)] * 3)
    a = warp_image(grad, M, 64).astype(float)
    b = warp_image(grad, M, 64, antialias=False).astype(float)
    assert np.abs(a - b)[4:-4, 4:-4].max() <= 3


def test_flip_permutation_ibug68():
    perm = flip_permutation(68, IBUG68_FLIP_PAIRS)
    np.testing.assert_array_equal(perm[perm], np.arange(68))  # involution
    assert len(IBUG68_FLIP_PAIRS) == 29
    fixed = sorted(int(i) for i in np.nonzero(perm == np.arange(68))[0])
    assert fixed == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert perm[36] == 45 and perm[0] == 16 and perm[48] == 54 and perm[60] == 64
    with pytest.raises(ValueError, match="two flip pairs"):
        flip_permutation(5, [(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="outside"):
        flip_permutation(5, [(0, 5)])


def test_flip_of_mirror_symmetric_face_is_identity_after_pair_swap():
    # a face symmetric about x = 100 (the box centre): point b = mirror of its partner a
    rng = np.random.default_rng(3)
    perm = flip_permutation(68, IBUG68_FLIP_PAIRS)
    pts = np.zeros((68, 2))
    for a, b in IBUG68_FLIP_PAIRS:
        x, y = rng.uniform(40, 95), rng.uniform(50, 150)
        pts[a], pts[b] = (x, y), (200 - x, y)
    for j in np.nonzero(perm == np.arange(68))[0]:
        pts[j] = (100.0, rng.uniform(50, 150))
    vis = np.ones(68)
    box = (40.0, 50.0, 160.0, 150.0)
    plain = Augmentation(rot_deg=0.0, scale=1.1, shift=(0.0, 3.0))
    flipped = Augmentation(rot_deg=0.0, scale=1.1, shift=(0.0, 3.0), flip=True)
    lm0, v0 = transform_landmarks(plain.matrix(box, 64, 0.2), pts, vis, 64)
    lm1, v1 = transform_landmarks(flipped.matrix(box, 64, 0.2), pts, vis, 64, perm)
    np.testing.assert_allclose(lm1, lm0, atol=1e-4)
    np.testing.assert_array_equal(v1, v0)
    # mirroring twice is the identity
    F = flip_matrix(64)
    np.testing.assert_allclose(compose_affine(F, F), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_points_outside_crop_become_invisible_and_zero():
    M = crop_matrix((0, 0, 99, 99), 100, 0.0)  # scale 100/99, offset -0.5
    pts = np.array([[50.0, 50.0], [-5.0, 10.0], [10.0, 200.0], [0.4, 0.4], [98.9, 50.0]])
    lm, vis = transform_landmarks(M, pts, np.array([1, 1, 1, 1, 0.0]), 100)
    np.testing.assert_array_equal(vis, [1, 0, 0, 0, 0])  # 0.4 -> -0.096 is outside [0, S)
    np.testing.assert_array_equal(lm[1:], 0.0)
    assert lm.dtype == np.float32 and vis.dtype == np.float32
    edge = np.array([[0.0, 0.0], [99.99, 0], [100, 5]])
    np.testing.assert_array_equal(visible_in_crop(edge, 100),
                                  [True, True, False])


def test_sample_augmentation_ranges_and_determinism():
    draws = [sample_augmentation(np.random.default_rng(s), 20, 0.9, 1.1, 0.1, 128, True)
             for s in range(300)]
    assert all(-20 <= d.rot_deg <= 20 and 0.9 <= d.scale <= 1.1 for d in draws)
    assert all(abs(d.shift[0]) <= 12.8 and abs(d.shift[1]) <= 12.8 for d in draws)
    flips = sum(d.flip for d in draws)
    assert 100 < flips < 200
    assert max(abs(d.rot_deg) for d in draws) > 15
    again = sample_augmentation(np.random.default_rng(7), 20, 0.9, 1.1, 0.1, 128, True)
    assert again == draws[7]
    no_flip = [sample_augmentation(np.random.default_rng(s), 20, 0.9, 1.1, 0.1, 128, False)
               for s in range(50)]
    assert not any(d.flip for d in no_flip)
    # flip only toggles the coin: the geometry of the draw is the same either way
    assert (no_flip[3].rot_deg, no_flip[3].scale, no_flip[3].shift) == \
        (draws[3].rot_deg, draws[3].scale, draws[3].shift)
    zero = sample_augmentation(np.random.default_rng(0), 0, 1, 1, 0, 128, False)
    assert zero == Augmentation()
