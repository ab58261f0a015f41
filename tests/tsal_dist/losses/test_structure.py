import itertools

import numpy as np
import pytest
import torch

from tsal_dist.losses.structure import structure_loss


def _interleave(points: np.ndarray) -> torch.Tensor:
    """(N, K, 2) -> (N, 2K) interleaved (dx0, dy0, dx1, dy1, ...)."""
    return torch.tensor(points.reshape(points.shape[0], -1), dtype=torch.float64)


def _numpy_sic(points, clip_ids, descriptor):
    n, k, _ = points.shape
    if descriptor == "pairs":
        m = ((points[:, : k // 2] - points[:, k // 2:]) ** 2).sum(axis=(1, 2))
    else:
        m = (points**2).sum(axis=(1, 2))
    pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if clip_ids[i] == clip_ids[j]]
    return sum((m[i] - m[j]) ** 2 for i, j in pairs) / (k * len(pairs))


def test_hand_computed_pairs_deinterleaved():
    # K=2: points o0, o1; m = ||o0 - o1||^2.
    # frame 0: o0=(0,0), o1=(1,0) -> m=1 ; frame 1: o0=(0,0), o1=(0,2) -> m=4.
    pts = np.array([[[0, 0], [1, 0]], [[0, 0], [0, 2]]], float)
    loss = structure_loss(_interleave(pts), torch.tensor([0, 0]), descriptor="pairs")
    # one pair, (1 - 4)^2 / (K=2 * 1)
    assert loss.item() == pytest.approx(4.5)


def test_hand_computed_centroid():
    pts = np.array([[[1, 0], [0, 1]], [[2, 0], [0, 0]]], float)  # m = 2 and 4
    loss = structure_loss(_interleave(pts), torch.tensor([3, 3]), descriptor="centroid")
    assert loss.item() == pytest.approx((2 - 4) ** 2 / 2)


@pytest.mark.parametrize("descriptor", ["pairs", "centroid"])
def test_matches_numpy_formula(descriptor):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(7, 6, 2))
    clips = np.array([0, 0, 0, 1, 1, 2, 5])
    loss = structure_loss(_interleave(pts), torch.tensor(clips), descriptor=descriptor)
    assert loss.item() == pytest.approx(_numpy_sic(pts, clips, descriptor), rel=1e-10)


def test_cross_clip_differences_ignored():
    # Two clips, each internally constant in structure, very different from each other.
    small = np.array([[0, 0], [1, 0]], float)
    pts = np.stack([small, small + 3, small * 10, small * 10 - 2])
    loss = structure_loss(_interleave(pts), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0
    # The same frames as one clip are penalised.
    assert structure_loss(_interleave(pts), torch.tensor([0, 0, 0, 0])).item() > 1.0


def test_translation_invariant_pairs():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(1, 4, 2))
    both = np.concatenate([pts, pts + np.array([5.0, -2.0])])
    assert structure_loss(_interleave(both), torch.tensor([0, 0])).item() == pytest.approx(0.0)


def test_no_clip_with_two_frames_is_zero_with_graph():
    x = torch.randn(3, 4, requires_grad=True)
    loss = structure_loss(x, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(x.grad == 0)


def test_mask_compares_jointly_visible_terms_only():
    # K=4, pairs (0,2), (1,3). Frame 1 loses landmark 3 (pair (1,3) invalid there).
    pts = np.array([[[0, 0], [0, 0], [1, 0], [0, 3]],
                    [[0, 0], [0, 0], [2, 0], [np.nan, np.nan]]], float)
    mask = torch.ones(2, 8, dtype=torch.float64)
    mask[1, 6:] = 0
    x = _interleave(pts).requires_grad_(True)
    loss = structure_loss(x, torch.tensor([0, 0]), mask)
    # Only pair (0, 2) is valid in both frames: m = 1 vs 4 -> (1 - 4)^2 / (K=4 * 1)
    assert loss.item() == pytest.approx(9 / 4)
    loss.backward()
    assert torch.all(x.grad[:, 2:4] == 0) and torch.all(x.grad[:, 6:] == 0)
    assert torch.isfinite(x.grad).all()


def test_full_mask_equals_no_mask():
    x = torch.randn(4, 8, dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 1])
    a = structure_loss(x, ids, torch.ones(4, 8, dtype=torch.float64))
    b = structure_loss(x, ids, None)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="even K"):
        structure_loss(torch.zeros(2, 6), torch.tensor([0, 0]), descriptor="pairs")
    with pytest.raises(ValueError, match="descriptor"):
        structure_loss(torch.zeros(2, 4), torch.tensor([0, 0]),
                       descriptor="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip_ids"):
        structure_loss(torch.zeros(2, 4), torch.tensor([0, 0, 0]))
