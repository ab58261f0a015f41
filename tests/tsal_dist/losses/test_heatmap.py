import math

import numpy as np
import pytest
import torch

from tsal_dist.losses.heatmap import heatmap_loss


def test_hand_computed_2x2():
    # B=2 frames, K+1=2 channels, 2x2 maps. Frame 1 unannotated (all-zero mask).
    target = torch.zeros(2, 2, 2, 2)
    target[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    target[0, 1] = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    s1 = torch.zeros(2, 2, 2, 2)
    s1[0, 0] = torch.tensor([[0.5, 0.0], [0.0, 0.0]])  # err^2: 0.25
    s1[0, 1] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # err^2: 1
    s1[1] = 7.0  # unannotated frame: ignored
    s2 = target.clone()
    s2[0, 0, 1, 1] = 2.0  # err^2: 4
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss = heatmap_loss([s1, s2], target, mask)
    # (0.25 + 1 + 4) / (2 * 1 annotated frame)
    assert loss.item() == pytest.approx(5.25 / 2)


def test_masked_channel_contributes_nothing_and_gets_no_gradient():
    torch.manual_seed(0)
    target = torch.rand(3, 4, 5, 5)
    pred = torch.rand(3, 4, 5, 5, requires_grad=True)
    mask = torch.ones(3, 4)
    mask[1, 2] = 0.0  # invisible landmark
    mask[2] = 0.0  # unannotated frame
    loss = heatmap_loss([pred], target, mask)
    diff = (pred.detach() - target).numpy() ** 2
    m = mask.numpy()[:, :, None, None]
    expected = (diff * m).sum() / (2 * 2)  # two annotated frames
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert torch.all(pred.grad[1, 2] == 0)
    assert torch.all(pred.grad[2] == 0)
    assert torch.all(pred.grad[0] != 0)


def test_nothing_labeled_is_zero_with_graph():
    pred = torch.rand(2, 3, 4, 4, requires_grad=True)
    loss = heatmap_loss([pred, pred * 2], torch.rand(2, 3, 4, 4), torch.zeros(2, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_sum_over_stages_matches_numpy():
    rng = np.random.default_rng(1)
    t = rng.random((2, 3, 4, 4)).astype(np.float32)
    stages = [rng.random((2, 3, 4, 4)).astype(np.float32) for _ in range(3)]
    mask = np.array([[1, 0, 1], [1, 1, 1]], np.float32)
    expected = sum(((s - t) ** 2 * mask[:, :, None, None]).sum() for s in stages) / 4
    got = heatmap_loss([torch.from_numpy(s) for s in stages], torch.from_numpy(t),
                       torch.from_numpy(mask))
    assert math.isclose(got.item(), float(expected), rel_tol=1e-5)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="stage 0"):
        heatmap_loss([torch.zeros(1, 2, 3, 3)], torch.zeros(1, 2, 4, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="mask"):
        heatmap_loss([torch.zeros(1, 2, 3, 3)], torch.zeros(1, 2, 3, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="empty"):
        heatmap_loss([], torch.zeros(1, 2, 3, 3), torch.ones(1, 2))
