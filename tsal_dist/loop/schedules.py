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


def ramp_weight(step: int, total_steps: int, up_frac: float, down_frac: float) -> float:
    """Weight of the unsupervised terms at optimizer step ``step`` (TSAL ``rampweight``).

    With T = total_steps, U = up_frac * T and D = down_frac * T:
    ``w = exp(-5 (1 - step/U)^2)`` for step < U (and w = 0 at step 0),
    ``w = exp(-12.5 (1 - (T - step)/D)^2)`` for step > T - D (down to exp(-12.5) at T),
    ``w = 1`` in between. Steps outside [0, T] are clamped.

    Fixes docs/method_notes.md §1.9 / §6.10: the code hard-coded the ramp to epochs 60 and 110
    whatever the schedule length; here both ends are fractions of the schedule (TSAL: 60/150 = 0.4
    up, 40/150 ~ 0.267 down).

    Args:
        step: current optimizer step (0-based).
        total_steps: steps of the whole run, >= 1.
        up_frac: fraction of the schedule spent ramping up, in [0, 1] (0 = start at 1).
        down_frac: fraction at the end spent ramping down, in [0, 1] (0 = never).

    Returns:
        The weight in [0, 1].
    """
    if total_steps < 1:
        raise ValueError(f"ramp_weight: total_steps must be >= 1, got {total_steps}")
    if not (0.0 <= up_frac <= 1.0 and 0.0 <= down_frac <= 1.0 and up_frac + down_frac <= 1.0):
        raise ValueError(f"ramp_weight: need 0 <= up_frac, down_frac and up_frac + down_frac <= 1,"
                         f" got up_frac={up_frac}, down_frac={down_frac}")
    t = float(min(max(step, 0), total_steps))
    up_end = up_frac * total_steps
    down_len = down_frac * total_steps
    if up_end > 0 and t < up_end:
        if t == 0:
            return 0.0
        return math.exp(-5.0 * (1.0 - t / up_end) ** 2)
    if down_len > 0 and t > total_steps - down_len:
        return math.exp(-12.5 * (1.0 - (total_steps - t) / down_len) ** 2)
    return 1.0


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
