"""Landmark-offset regression loss at the ground-truth centroid cell, and the gather it uses.

Offsets are in heatmap cells (docs/CONTRACTS.md), interleaved (dx0, dy0, dx1, dy1, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gather_at", "offset_loss"]


def gather_at(offsets: Tensor, index: Tensor) -> Tensor:
    """Read every channel of a dense map at one flat cell per frame.

    Args:
        offsets: (B, C, h, w) dense map (e.g. the (B, 2K, h, w) offset head, in cells).
        index: (B,) long flat cell index ``y * w + x`` (row-major; the transposed
            ``x * h + y`` of the original code, docs/method_notes.md T1, is NOT used).

    Returns:
        (B, C) values at the indexed cells, differentiable w.r.t. ``offsets``.

    Raises:
        ValueError: on shape mismatch or an index outside ``[0, h * w)``.
    """
    if offsets.dim() != 4:
        raise ValueError(f"gather_at: offsets must be (B, C, h, w), got {tuple(offsets.shape)}")
    b, c, h, w = offsets.shape
    if index.shape != (b,):
        raise ValueError(f"gather_at: index must be (B,) = ({b},), got {tuple(index.shape)}")
    if b == 0:
        return offsets.new_zeros((0, c))
    index = index.to(device=offsets.device, dtype=torch.long)
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= h * w:
        raise ValueError(f"gather_at: index must be in [0, {h * w}) for a {h}x{w} map, got "
                         f"values in [{lo}, {hi}]")
    flat = offsets.reshape(b, c, h * w)
    return flat.gather(2, index.view(b, 1, 1).expand(b, c, 1)).squeeze(2)


def offset_loss(
    offsets: Tensor,
    center_index: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    beta: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """Smooth-L1 between offsets read at the GT centroid cell and the target offsets.

    ``loss = sum(mask * smooth_l1(gather_at(offsets, center_index), target)) / (sum(mask) + eps)``
    (CenterNet ``RegL1Loss`` with smooth-L1, as TSAL). The target must follow the fixed unit
    convention of docs/method_notes.md T3 (cells: ``p_j / stride - c``, masked by visibility and
    inside the map); unlabeled frames carry an all-zero mask and therefore contribute nothing (T4).

    Args:
        offsets: (B, 2K, h, w) predicted offsets in cells.
        center_index: (B,) long flat GT centroid cell ``y * w + x``.
        target: (B, 2K) target offsets in cells.
        mask: (B, 2K) per-coordinate weights in {0, 1}.
        beta: smooth-L1 transition point (Huber delta), in cells.
        eps: keeps the normaliser positive when nothing is labeled.

    Returns:
        Unweighted scalar; 0 (attached to ``offsets``) when the mask is all zero.
    """
    pred = gather_at(offsets, center_index)
    if target.shape != pred.shape or mask.shape != pred.shape:
        raise ValueError(f"offset_loss: target {tuple(target.shape)} and mask "
                         f"{tuple(mask.shape)} must be (B, 2K) = {tuple(pred.shape)}")
    weights = mask.detach().to(pred.dtype)
    # Masked-out targets may hold anything (even NaN); zero them so they cannot leak through 0 * x.
    target = target.detach().to(pred.dtype).masked_fill(weights == 0, 0.0)
    per_coord = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    return (per_coord * weights).sum() / (weights.sum() + eps)
