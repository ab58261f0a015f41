import math

import numpy as np
import pytest
import torch

from tsal_dist.losses.consistency import (nearest_candidate, student_consistency,
                                          student_pseudo_target, teacher_consistency)


def test_teacher_consistency_hand_computed_and_detached():
    target = torch.zeros(1, 2, 2, 2, requires_grad=True)
    s1 = torch.zeros(1, 2, 2, 2)
    s1[0, 0, 0, 0] = 2.0  # summed sq err = 4, one frame -> 4 / 2
    s2 = torch.ones(1, 2, 2, 2)  # summed sq err = 8 -> 8 / 2
    s1.requires_grad_(True)
    loss = teacher_consistency([s1, s2], target)
    assert loss.item() == pytest.approx(2.0 + 4.0)
    loss.backward()
    assert target.grad is None  # the target is a stop-gradient
    assert s1.grad[0, 0, 0, 0].item() == pytest.approx(2 * 2.0 / 2)
    s1g = s1.grad.clone()
    s1g[0, 0, 0, 0] = 0
    assert torch.all(s1g == 0)  # zero error elsewhere -> zero gradient


def test_nearest_candidate_over_whole_shape():
    hm = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])  # (1, K=2, 2)
    cands = torch.tensor([[
        [[0.0, 0.0], [20.0, 0.0]],  # point-0 perfect, point-1 off by 10 -> d^2 = 100
        [[3.0, 0.0], [13.0, 0.0]],  # both off by 3 -> d^2 = 18 (nearest over the whole shape)
        [[50.0, 50.0], [60.0, 50.0]],
    ]])
    nearest, idx = nearest_candidate(hm, cands)
    assert idx.tolist() == [1]
    assert torch.equal(nearest[0], cands[0, 1])


def test_pseudo_target_fuses_in_pixels_and_per_frame():
    hm = torch.tensor([[[8.0, 8.0]], [[100.0, 0.0]]], requires_grad=True)  # (N=2, K=1, 2)
    cands = torch.tensor([[[[12.0, 8.0]], [[90.0, 0.0]]],
                          [[[12.0, 8.0]], [[90.0, 0.0]]]])
    t = student_pseudo_target(hm, cands, 0.5)
    assert torch.allclose(t, torch.tensor([[[10.0, 8.0]], [[95.0, 0.0]]]))
    assert not t.requires_grad
    assert torch.allclose(student_pseudo_target(hm, cands, 1.0), hm.detach())
    assert torch.allclose(student_pseudo_target(hm, cands, 0.0),
                          torch.tensor([[[12.0, 8.0]], [[90.0, 0.0]]]))
    with pytest.raises(ValueError):
        student_pseudo_target(hm, cands, 1.5)


def test_student_consistency_in_cells():
    pred = torch.tensor([[[8.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    target = torch.zeros(1, 2, 2)
    loss = student_consistency(pred, target, stride=8)
    # diffs in cells: 1, 0, 0, 0 -> mean 1/4
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert pred.grad[0, 0, 0].item() == pytest.approx(2 * 1 / 4 / 8)
    assert torch.all(pred.grad.flatten()[1:] == 0)


def test_student_consistency_is_stop_gradient_on_target():
    pred = torch.randn(2, 3, 2, requires_grad=True)
    target = torch.randn(2, 3, 2, requires_grad=True)
    student_consistency(pred, target, 4).backward()
    assert target.grad is None


# ----------------------------------------------------------------------- output-space carrying


def _affine_grid_px(A: np.ndarray, n: int, s: int) -> torch.Tensor:
    """(n, s, s, 2) grid: pixel y of frame t+1 -> A y in frame t (crop px)."""
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64)
    g = np.stack([A[0, 0] * xs + A[0, 1] * ys + A[0, 2], A[1, 0] * xs + A[1, 1] * ys + A[1, 2]],
                 axis=-1)
    return torch.from_numpy(np.repeat(g[None], n, axis=0)).float()


def _similarity(deg: float, zoom: float, dx: float, dy: float, s: int) -> np.ndarray:
    c = (s - 1) / 2
    a, b = zoom * math.cos(math.radians(deg)), zoom * math.sin(math.radians(deg))
    return np.array([[a, b, c - a * c - b * c + dx], [-b, a, c + b * c - a * c + dy], [0, 0, 1]])


def test_heatmaps_and_points_carried_through_an_affine_grid() -> None:
    from tsal_dist.codec import HeatmapCodec
    from tsal_dist.losses.consistency import (grid_to_cells, points_through_inverse_grid,
                                              warp_heatmaps)

    s, stride = 64, 4
    codec = HeatmapCodec(input_size=s, stride=stride, num_points=3, sigma_px=4.0, window=3)
    A = _similarity(8.0, 1.05, 2.0, -1.5, s)  # frame t+1 px -> frame t px
    grid = _affine_grid_px(A, 2, s)
    pts_t = torch.tensor([[[20.0, 24.0], [40.0, 30.0], [31.0, 44.0]]] * 2)
    # points: frame t -> t+1 is A^-1
    Ainv = np.linalg.inv(A)
    want = torch.from_numpy(np.einsum("ij,nkj->nki", Ainv[:2, :2], pts_t.double().numpy())
                            + Ainv[:2, 2]).float()
    got = points_through_inverse_grid(pts_t, grid)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    # heatmaps drawn at pts_t, carried into t+1, decode at the moved points
    maps, _ = codec.encode(pts_t, torch.ones(2, 3))
    warped, valid = warp_heatmaps(maps, grid_to_cells(grid, stride))
    xy, _ = codec.decode(warped)
    assert (xy - want).abs().max() < 0.3 * stride, (xy - want).abs().max()
    # cells whose source lies outside frame t's map are invalid; the rest valid
    far = _affine_grid_px(_similarity(0.0, 1.0, 40.0, 0.0, s), 1, s)  # shifted 40 px right
    _, valid = warp_heatmaps(maps[:1], grid_to_cells(far, stride))
    assert valid[0, 0, :, :5].all() and not valid[0, 0, :, -5:].any()
    with pytest.raises(ValueError, match="grid_to_cells"):
        grid_to_cells(torch.zeros(1, 62, 62, 2), stride)
