"""Pure schedule functions indexed by step (nanoGPT get_lr, dinov2 CosineScheduler).

Nothing here holds state: a resumed run recomputes the same values from the step alone.
"""

from __future__ import annotations

import math
from typing import Sequence


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, schedule: str,
          milestones: Sequence[float] = (), gamma: float = 0.5, min_ratio: float = 0.01) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warmup from 0 over ``warmup_steps``, then ``constant``, ``cosine`` (down to
    ``min_ratio * base_lr`` at the last step) or ``multistep`` (times ``gamma`` at each milestone,
    milestones given as fractions of ``total_steps``).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps - 1)
        t = min(1.0, max(0.0, (step - warmup_steps) / span))
        return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule == "multistep":
        k = sum(step >= int(m * total_steps) for m in milestones)
        return base_lr * gamma**k
    raise ValueError(f"unknown schedule {schedule!r}")


def is_sync_step(step: int, sync_every: int) -> bool:
    """True after optimizer step ``step`` (0-based) if a teacher push/sync happens there."""
    return (step + 1) % sync_every == 0


def version_to_apply(step: int, sync_every: int, max_staleness: int) -> int | None:
    """Server version (= the 1-based step of its push) that every rank applies at sync ``step``.

    At sync point k (step = k * sync_every - 1) we use the version pushed ``max_staleness`` syncs
    earlier: a function of the step, not of timing, so a repeated or resumed run replays exactly
    the same teacher, while each push still overlaps ``max_staleness`` whole intervals of training.
    """
    k = (step + 1) // sync_every
    src = k - max_staleness
    if src < 1:
        return None
    return src * sync_every
