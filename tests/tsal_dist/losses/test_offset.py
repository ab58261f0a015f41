import pytest
import torch

from tsal_dist.losses.offset import gather_at, offset_loss


def test_gather_at_reads_row_major_cell():
    maps = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).reshape(2, 3, 2, 3)
    idx = torch.tensor([1 * 3 + 2, 0 * 3 + 1])  # frame 0: y=1, x=2; frame 1: y=0, x=1
    out = gather_at(maps, idx)
    assert torch.equal(out[0], maps[0, :, 1, 2])
    assert torch.equal(out[1], maps[1, :, 0, 1])


def test_gather_at_rejects_bad_index():
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        gather_at(torch.zeros(1, 2, 2, 3), torch.tensor([6]))


def test_hand_computed_2x2():
    # K=1 -> 2 channels; 2x2 map; GT centroid at (x=1, y=0) -> index 1.
    offsets = torch.zeros(1, 2, 2, 2)
    offsets[0, 0, 0, 1] = 0.5  # dx: err 0.5 -> smooth-L1 0.5 * 0.25 = 0.125
    offsets[0, 1, 0, 1] = 3.0  # dy: err 2.0 -> smooth-L1 2 - 0.5 = 1.5
    offsets[0, :, 1, 1] = 100.0  # another cell: never read
    target = torch.tensor([[0.0, 1.0]])
    mask = torch.ones(1, 2)
    loss = offset_loss(offsets, torch.tensor([1]), target, mask)
    assert loss.item() == pytest.approx((0.125 + 1.5) / (2 + 1e-4), rel=1e-6)


def test_masked_coords_and_unlabeled_frames_contribute_nothing():
    torch.manual_seed(0)
    offsets = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.randn(2, 4)
    target[1] = float("nan")  # unlabeled frame: its target is garbage
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    idx = torch.tensor([4, 0])
    loss = offset_loss(offsets, idx, target, mask)
    pred = offsets.detach()[0, :2, 1, 1]
    d = (pred - target[0, :2]).abs()
    sl1 = torch.where(d < 1, 0.5 * d**2, d - 0.5)
    assert loss.item() == pytest.approx(sl1.sum().item() / (2 + 1e-4), rel=1e-6)
    loss.backward()
    g = offsets.grad
    assert torch.all(g[1] == 0)
    assert torch.all(g[0, 2:] == 0)
    assert torch.all(g[0, :2, 1, 1] != 0)
    g00 = g[0, :2].clone()
    g00[:, 1, 1] = 0
    assert torch.all(g00 == 0)  # only the GT centroid cell gets a gradient


def test_all_masked_is_zero():
    offsets = torch.randn(1, 2, 2, 2, requires_grad=True)
    loss = offset_loss(offsets, torch.tensor([0]), torch.zeros(1, 2), torch.zeros(1, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(offsets.grad == 0)
