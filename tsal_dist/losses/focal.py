"""CornerNet / CenterNet focal loss on the facial-centroid heatmap.

Targets come from ``tsal_dist.codec.CentroidCodec``; this module only holds the loss math.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["centroid_focal_loss"]


def centroid_focal_loss(
    logits: Tensor,
    target: Tensor,
    valid: Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 4.0,
    eps: float = 1e-4,
) -> Tensor:
    """Penalty-reduced pixel-wise focal loss (CornerNet ``_neg_loss``) over valid frames only.

    With ``p = clamp(sigmoid(logits), eps, 1 - eps)`` and target ``y``:
    ``loss = -(1 / N_pos) * [sum_{y == 1} (1 - p)^alpha log p
                             + sum_{y < 1} (1 - y)^beta p^alpha log(1 - p)]``,
    where ``N_pos`` counts target cells equal to 1 (the negative sum alone when ``N_pos == 0``).

    Fixes docs/method_notes.md §1.3 T4 (unlabeled frames got a fake peak at cell (0, 0) and were
    not masked): only frames with ``valid`` enter the loss. Fixes T5 (a (N, h, w) target against
    an (N, 1, h, w) prediction broadcast to (N, N, h, w)): both must be exactly (B, 1, h, w).

    Args:
        logits: (B, 1, h, w) centroid logits (before the sigmoid).
        target: (B, 1, h, w) Gaussian target with peak exactly 1 at the centroid cell.
        valid: (B,) bool, True for frames that have a centroid label.
        alpha: focal exponent on the prediction.
        beta: exponent of the penalty reduction ``(1 - y)`` around the peak.
        eps: clamp of the sigmoid, keeping both logarithms finite.

    Returns:
        Unweighted scalar; 0 (attached to ``logits``' graph) when no frame is valid.

    Raises:
        ValueError: on shape mismatch.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"centroid_focal_loss: logits must be (B, 1, h, w), got "
                         f"{tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"centroid_focal_loss: target {tuple(target.shape)} must have the shape "
                         f"of logits {tuple(logits.shape)} (no broadcasting)")
    if valid.shape != logits.shape[:1]:
        raise ValueError(f"centroid_focal_loss: valid must be (B,) = ({logits.shape[0]},), got "
                         f"{tuple(valid.shape)}")
    valid = valid.to(torch.bool)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    # fp32 whatever the forward's precision: in fp16/bf16 ``1 - eps`` rounds to 1 and a saturated
    # positive would give log(0) (NaN through the product).
    x = logits[valid]
    pred = torch.sigmoid(x.to(torch.promote_types(x.dtype, torch.float32))).clamp(eps, 1.0 - eps)
    gt = target[valid].detach().to(pred.dtype)
    pos = gt.eq(1).to(pred.dtype)
    neg = gt.lt(1).to(pred.dtype)
    pos_loss = (torch.log(pred) * (1.0 - pred).pow(alpha) * pos).sum()
    neg_loss = (torch.log(1.0 - pred) * pred.pow(alpha) * (1.0 - gt).pow(beta) * neg).sum()
    num_pos = pos.sum()
    if float(num_pos) == 0.0:
        return -neg_loss
    return -(pos_loss + neg_loss) / num_pos
