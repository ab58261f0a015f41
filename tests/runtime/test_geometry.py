import numpy as np
import pytest

from tsal_runtime.geometry import (adapt_box, apply_affine, crop_matrix, extract_crops,
                                   invert_affine, iou, landmark_box, normalised_to_image)


def test_crop_matrix_hand_values() -> None:
    # box 10..30 (w 20), expand 0.25 -> expanded 5..35 (30 px) onto S=60: scale 2
    m = crop_matrix((10, 20, 30, 60), 60, 0.25)  # y: 20..60 (h 40) -> 10..70 (60 px): scale 1
    assert np.allclose(m, [[2.0, 0.0, -10.5], [0.0, 1.0, -10.5]])
    # the expanded box's edges land on the crop's outer pixel edges
    assert np.allclose(apply_affine(m, np.array([[5.0, 10.0], [35.0, 70.0]])),
                       [[-0.5, -0.5], [59.5, 59.5]])


def test_inverse_round_trip_and_normalised() -> None:
    m = crop_matrix((3.5, 7.0, 103.5, 57.0), 32, 0.2)
    pts = np.array([[10.0, 20.0], [50.5, 44.25]])
    assert np.allclose(apply_affine(invert_affine(m), apply_affine(m, pts)), pts)
    # normalised n -> left + n * expanded width (crop = (img - left) * S / W - 0.5)
    norm = np.array([[[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]], np.float32)
    img = normalised_to_image(norm, m[None], 32)
    assert np.allclose(img[0], [[-16.5, -3.0], [123.5, 67.0], [53.5, 32.0]])


def test_normalised_to_image_maps_each_face_with_its_own_crop() -> None:
    boxes = [(3.5, 7.0, 103.5, 57.0), (200.0, 10.0, 260.0, 90.0), (0.0, 0.0, 20.0, 20.0)]
    mats = np.stack([crop_matrix(b, 32, 0.2) for b in boxes])
    norm = np.random.default_rng(0).uniform(0, 1, (3, 5, 2)).astype(np.float32)
    got = normalised_to_image(norm, mats, 32)
    for i in range(3):  # one face at a time, through the (2, 3) inverse
        want = apply_affine(invert_affine(mats[i]), norm[i].astype(np.float64) * 32 - 0.5)
        assert np.allclose(got[i], want)
    assert normalised_to_image(norm[:0], mats[:0], 32).shape == (0, 5, 2)


def test_extract_crops_samples_the_right_pixels() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[40:60, 40:60] = 200  # a bright square; box = square, expand 0 -> crop all bright
    crops, mats = extract_crops(frame, np.array([[40.0, 40.0, 60.0, 60.0]]), 20, 0.0)
    assert crops.shape == (1, 20, 20, 3) and (crops[0, 1:-1, 1:-1] == 200).all()
    # a box at the border: outside is zero padding, no error
    crops, _ = extract_crops(frame, np.array([[-50.0, -50.0, 10.0, 10.0]]), 16, 0.2)
    assert crops[0, 0, 0].tolist() == [0, 0, 0]
    crops, _ = extract_crops(frame, np.array([[-50.0, -50.0, 10.0, 10.0]]), 16, 0.2,
                             border_value=(124, 116, 104))
    assert crops[0, 0, 0].tolist() == [124, 116, 104]


def test_extract_crops_antialias() -> None:
    """A 1-px checkerboard shrunk 4x: plain bilinear aliases (it samples pixel centres of one
    colour only), the box-filtered crop is the flat mean grey (127.5 -> 127/128)."""
    yy, xx = np.mgrid[:256, :256]
    frame = np.repeat((((xx + yy) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    box = np.array([[64.0, 64.0, 192.0, 192.0]])
    plain, _ = extract_crops(frame, box, 32, 0.0)
    aa, _ = extract_crops(frame, box, 32, 0.0, antialias=True)
    assert np.abs(plain[0, 4:-4, 4:-4].astype(float) - 127.5).min() > 100
    assert np.abs(aa[0, 4:-4, 4:-4].astype(float) - 127.5).max() <= 1


def test_boxes() -> None:
    pts = np.array([[1.0, 5.0], [4.0, 2.0], [3.0, 9.0]])
    assert landmark_box(pts).tolist() == [1.0, 2.0, 4.0, 9.0]
    assert adapt_box(np.array([0.0, 0.0, 10.0, 20.0]), 2.0, 0.1, -0.5).tolist() == \
        [-4.0, -20.0, 16.0, 20.0]
    assert iou(np.array([0, 0, 2, 2.0]), np.array([1, 0, 3, 2.0])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        crop_matrix((5, 5, 5, 9), 32, 0.2)
