import math

import numpy as np
import pytest
import torch

from tsal_dist.losses.focal import centroid_focal_loss


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_hand_computed_2x2():
    # One frame; positive at (0,0) with p=0.8; negatives with y = 0.5, 0, 0 and p = 0.3, 0.1, 0.2.
    p = [[0.8, 0.3], [0.1, 0.2]]
    y = [[1.0, 0.5], [0.0, 0.0]]
    logits = torch.tensor([[[[_logit(v) for v in row] for row in p]]], dtype=torch.float64)
    target = torch.tensor([[y]], dtype=torch.float64)
    loss = centroid_focal_loss(logits, target, torch.tensor([True]))
    pos = (1 - 0.8) ** 2 * math.log(0.8)
    neg = ((1 - 0.5) ** 4 * 0.3**2 * math.log(0.7) + 0.1**2 * math.log(0.9)
           + 0.2**2 * math.log(0.8))
    assert loss.item() == pytest.approx(-(pos + neg) / 1, rel=1e-9)


def _numpy_focal(logits, target):
    p = np.clip(1 / (1 + np.exp(-logits)), 1e-4, 1 - 1e-4)
    pos = target == 1
    pos_l = (np.log(p) * (1 - p) ** 2)[pos].sum()
    neg_l = (np.log(1 - p) * p**2 * (1 - target) ** 4)[~pos].sum()
    n = pos.sum()
    return -(pos_l + neg_l) / n if n else -neg_l


def test_invalid_frames_ignored_and_no_broadcasting():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1, 4, 4))
    target = rng.random((3, 1, 4, 4)) * 0.9
    target[0, 0, 1, 2] = 1.0
    target[2, 0, 3, 3] = 1.0
    valid = np.array([True, False, True])
    lt = torch.tensor(logits, requires_grad=True)
    loss = centroid_focal_loss(lt, torch.tensor(target), torch.tensor(valid))
    # Per-frame pairing (T5): equals the loss of the valid frames alone, frame by frame.
    expected = _numpy_focal(logits[valid], target[valid])
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert torch.all(lt.grad[1] == 0)  # unlabeled frame: no gradient (T4)
    assert torch.any(lt.grad[0] != 0)


def test_no_valid_frame_is_zero_with_graph():
    lt = torch.randn(2, 1, 3, 3, requires_grad=True)
    loss = centroid_focal_loss(lt, torch.zeros(2, 1, 3, 3), torch.tensor([False, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(lt.grad == 0)


def test_no_positive_uses_negative_sum():
    logits = np.zeros((1, 1, 2, 2))
    target = np.full((1, 1, 2, 2), 0.5)
    loss = centroid_focal_loss(torch.tensor(logits), torch.tensor(target), torch.tensor([True]))
    assert loss.item() == pytest.approx(-4 * 0.5**4 * 0.25 * math.log(0.5))


def test_clamp_keeps_loss_finite():
    logits = torch.tensor([[[[-100.0, 100.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    loss = centroid_focal_loss(logits, target, torch.tensor([True]))
    assert torch.isfinite(loss)
    p = 1e-4
    expected = -((1 - p) ** 2 * math.log(p) + (1 - p) ** 2 * math.log(p))
    assert loss.item() == pytest.approx(expected, rel=1e-3)


def test_shape_errors():
    with pytest.raises(ValueError, match="no broadcasting"):
        centroid_focal_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 3, 3), torch.ones(2).bool())
    with pytest.raises(ValueError, match="valid"):
        centroid_focal_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3), torch.ones(3).bool())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_with_a_saturated_positive_stay_finite(dtype):
    """In bf16/fp16, 1 - 1e-4 rounds to 1: the clamp must run in fp32 or log(1 - p) is -inf."""
    logits = torch.full((1, 1, 3, 3), -20.0)
    logits[0, 0, 1, 1] = 30.0  # saturated positive: sigmoid == 1 in any precision
    target = torch.zeros(1, 1, 3, 3)
    target[0, 0, 1, 1] = 1.0
    low = centroid_focal_loss(logits.to(dtype).requires_grad_(), target.to(dtype),
                              torch.tensor([True]))
    ref = centroid_focal_loss(logits, target, torch.tensor([True]))
    assert torch.isfinite(low) and low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), abs=1e-6)
