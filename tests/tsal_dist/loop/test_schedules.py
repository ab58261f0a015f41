import math

import pytest

from tsal_dist.loop.schedules import is_sync_step, lr_at, ramp_weight, version_to_apply


def test_warmup_then_cosine_endpoints():
    kw = dict(base_lr=1.0, total_steps=101, warmup_steps=10, schedule="cosine", min_ratio=0.0)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(100, **kw) == pytest.approx(0.0, abs=1e-12)
    mid = 10 + 45
    assert lr_at(mid, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_multistep():
    kw = dict(base_lr=1.0, total_steps=100, warmup_steps=0, schedule="multistep",
              milestones=(0.5, 0.8), gamma=0.1)
    assert lr_at(49, **kw) == 1.0
    assert lr_at(50, **kw) == pytest.approx(0.1)
    assert lr_at(80, **kw) == pytest.approx(0.01)


def test_sync_versions_are_a_function_of_the_step():
    # sync every 5 steps: syncs after steps 4, 9, 14 (0-based) = pushes at versions 5, 10, 15
    assert [s for s in range(15) if is_sync_step(s, 5)] == [4, 9, 14]
    assert version_to_apply(4, 5, 1) is None  # nothing pushed before the first sync
    assert version_to_apply(9, 5, 1) == 5  # previous sync's push
    assert version_to_apply(14, 5, 1) == 10
    assert version_to_apply(14, 5, 2) == 5
    assert version_to_apply(9, 5, 2) is None


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
