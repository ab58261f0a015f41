import math

import pytest
import torch

from tsal_dist.losses.consistency import (nearest_candidate, ramp_weight, student_consistency,
                                          student_pseudo_target, teacher_consistency)


def test_ramp_endpoints_and_middle():
    assert ramp_weight(0, 1000, 0.4, 0.2) == 0.0
    assert ramp_weight(200, 1000, 0.4, 0.2) == pytest.approx(math.exp(-5 * 0.25))
    assert ramp_weight(400, 1000, 0.4, 0.2) == 1.0
    assert ramp_weight(800, 1000, 0.4, 0.2) == 1.0
    assert ramp_weight(900, 1000, 0.4, 0.2) == pytest.approx(math.exp(-12.5 * 0.25))
    assert ramp_weight(1000, 1000, 0.4, 0.2) == pytest.approx(math.exp(-12.5))
    assert ramp_weight(5000, 1000, 0.4, 0.2) == pytest.approx(math.exp(-12.5))  # clamped


def test_ramp_scales_with_schedule():
    # Same fraction of two schedules gives the same weight (not hard-coded epochs).
    assert ramp_weight(30, 150, 0.4, 0.0) == pytest.approx(ramp_weight(300, 1500, 0.4, 0.0))


def test_ramp_no_ramps_is_one():
    assert ramp_weight(0, 10, 0.0, 0.0) == 1.0
    assert ramp_weight(10, 10, 0.0, 0.0) == 1.0


def test_ramp_monotone():
    w = [ramp_weight(s, 300, 0.4, 0.3) for s in range(301)]
    up, down = w[:121], w[210:]
    assert all(a <= b for a, b in zip(up, up[1:]))
    assert all(a >= b for a, b in zip(down, down[1:]))
    assert all(0.0 <= x <= 1.0 for x in w)


def test_ramp_bad_args():
    with pytest.raises(ValueError):
        ramp_weight(0, 0, 0.1, 0.1)
    with pytest.raises(ValueError):
        ramp_weight(0, 10, 0.7, 0.5)


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
