"""Supervised landmark-heatmap loss (TSAL ``MSE-none`` with ``lossnorm``).

Only the loss math lives here; targets and masks come from ``tsal_dist.codec.HeatmapCodec``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["heatmap_loss"]


def heatmap_loss(stages: Sequence[Tensor], target: Tensor, mask: Tensor) -> Tensor:
    """Masked summed squared error over all CPM stages, normalised per annotated frame.

    ``loss = sum_s sum_{b,c,u,v} (mask[b,c] * (stage_s - target))^2 / (2 * n_annotated)``, where
    ``n_annotated`` is the number of frames whose mask has any non-zero entry (TSAL ``lossnorm``:
    the sum over elements is halved and divided by the annotated frames, not by the elements).

    Args:
        stages: per-stage predicted heatmaps, each (B, K+1, h, w); the last is the final stage.
        target: (B, K+1, h, w) target heatmaps (channel K = background).
        mask: (B, K+1) per-channel weights in {0, 1}: landmark visibility, and 1 on the background
            channel of annotated frames. Unannotated frames have an all-zero mask.

    Returns:
        Unweighted scalar. Exactly 0 (still attached to the graph of ``stages``) when no frame
        is annotated, so a caller can always add it and call ``backward``.

    Raises:
        ValueError: if ``stages`` is empty or a shape does not match.
    """
    if len(stages) == 0:
        raise ValueError("heatmap_loss: `stages` is empty")
    if target.dim() != 4:
        raise ValueError(f"heatmap_loss: target must be (B, K+1, h, w), got {tuple(target.shape)}")
    if mask.shape != target.shape[:2]:
        raise ValueError(
            f"heatmap_loss: mask {tuple(mask.shape)} must be (B, K+1) = {tuple(target.shape[:2])}"
        )
    for i, stage in enumerate(stages):
        if stage.shape != target.shape:
            raise ValueError(
                f"heatmap_loss: stage {i} has shape {tuple(stage.shape)}, target has "
                f"{tuple(target.shape)}"
            )
    target = target.detach()
    weights = mask.detach().to(target.dtype)[:, :, None, None]
    n_annotated = (mask != 0).any(dim=1).sum()
    # (mask * (pred - target))^2 == TSAL's MSE-sum of (pred * mask, target * mask).
    total = torch.stack([((stage - target) * weights).pow(2).sum() for stage in stages]).sum()
    if int(n_annotated) == 0:
        return total * 0.0
    return total / (2.0 * n_annotated.to(total.dtype))
