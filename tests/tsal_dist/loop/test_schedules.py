import math

import pytest

from tsal_dist.loop.schedules import is_sync_step, lr_at, version_to_apply


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
