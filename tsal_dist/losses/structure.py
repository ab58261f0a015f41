"""Facial structure invariant constraint (SIC), computed per clip.

Offsets are in heatmap cells (docs/CONTRACTS.md), interleaved (dx0, dy0, dx1, dy1, ...).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tsal_dist.losses.offset import gather_at

__all__ = ["gather_at", "structure_descriptor_terms", "structure_loss"]


def structure_descriptor_terms(
    offsets_at_center: Tensor,
    mask: Tensor | None = None,
    *,
    descriptor: Literal["pairs", "centroid"] = "pairs",
) -> tuple[Tensor, Tensor]:
    """Per-frame terms whose sum is the structure descriptor m, and their validity.

    ``"pairs"``: term_j = ||o_j - o_{j+K/2}||^2 for j < K/2 (TSAL's (j, j+34) pairs for K = 68),
    a translation-invariant face size/structure measure. ``"centroid"``: term_j = ||o_j||^2, the
    squared distance of landmark j to the centroid cell.

    Fixes docs/method_notes.md §1.6 SIC: the code reshaped the interleaved 136-vector to (2, 68)
    without de-interleaving, so its "points" mixed x and y of different landmarks. Here the vector
    is de-interleaved to (K, 2) (x, y) points first.

    Args:
        offsets_at_center: (N, 2K) offsets in cells read at each frame's GT centroid cell.
        mask: (N, 2K) per-coordinate weights in {0, 1}, or None (all valid).
        descriptor: ``"pairs"`` (K must be even) or ``"centroid"``.

    Returns:
        (terms (N, P), valid (N, P)) with P = K/2 or K; valid is 1 where every coordinate the term
        uses is unmasked.
    """
    if offsets_at_center.dim() != 2 or offsets_at_center.shape[1] % 2 != 0:
        raise ValueError(f"structure_loss: offsets_at_center must be (N, 2K), got "
                         f"{tuple(offsets_at_center.shape)}")
    n, two_k = offsets_at_center.shape
    k = two_k // 2
    if mask is None:
        mask = torch.ones_like(offsets_at_center)
    elif mask.shape != offsets_at_center.shape:
        raise ValueError(f"structure_loss: mask {tuple(mask.shape)} must have the shape of "
                         f"offsets_at_center {tuple(offsets_at_center.shape)}")
    points = offsets_at_center.reshape(n, k, 2)
    point_ok = (mask.detach().reshape(n, k, 2) != 0).all(dim=2)  # (N, K)
    point_valid = point_ok.to(points.dtype)
    # Zero masked points (where, not 0 * x) so unlabeled coordinates cannot leak NaN/inf.
    points = torch.where(point_ok[:, :, None], points, torch.zeros_like(points))
    if descriptor == "pairs":
        if k % 2 != 0:
            raise ValueError(f"structure_loss: descriptor 'pairs' needs an even K, got K={k}")
        half = k // 2
        terms = (points[:, :half] - points[:, half:]).pow(2).sum(dim=2)
        valid = point_valid[:, :half] * point_valid[:, half:]
    elif descriptor == "centroid":
        terms = points.pow(2).sum(dim=2)
        valid = point_valid
    else:
        raise ValueError(f"structure_loss: descriptor must be 'pairs' or 'centroid', got "
                         f"{descriptor!r}")
    return terms, valid


def structure_loss(
    offsets_at_center: Tensor,
    clip_ids: Tensor,
    mask: Tensor | None = None,
    *,
    descriptor: Literal["pairs", "centroid"] = "pairs",
) -> Tensor:
    """SIC: the structure descriptor of a face should not change between frames of one clip.

    For frames i < k of the SAME clip, ``d_ik = (m_i - m_k)^2`` with ``m = sum_j term_j`` (see
    :func:`structure_descriptor_terms`); ``loss = sum d_ik / (K * n_pairs)``, n_pairs = number of
    same-clip pairs in the batch.

    Fixes docs/method_notes.md §1.6 SIC / §6.5: the code compared all N frames of the batch with
    each other, across different faces, and divided by 68 * N. Here only pairs within a clip count.

    With a mask, each pair (i, k) compares the descriptor over the terms valid in BOTH frames, so a
    landmark visible in one frame only cannot produce a spurious difference (the code zeroed masked
    offsets, which turned an occlusion into a structure change). With no mask, or a full mask, this
    is exactly ``(m_i - m_k)^2``.

    Args:
        offsets_at_center: (N, 2K) offsets in cells at each frame's GT centroid cell
            (see :func:`gather_at`).
        clip_ids: (N,) long, equal for frames of the same clip.
        mask: (N, 2K) per-coordinate weights in {0, 1}, or None.
        descriptor: ``"pairs"`` or ``"centroid"``.

    Returns:
        Unweighted scalar; 0 (attached to the graph) if no clip has >= 2 frames.
    """
    terms, valid = structure_descriptor_terms(offsets_at_center, mask, descriptor=descriptor)
    n = terms.shape[0]
    k = offsets_at_center.shape[1] // 2
    if clip_ids.shape != (n,):
        raise ValueError(f"structure_loss: clip_ids must be (N,) = ({n},), got "
                         f"{tuple(clip_ids.shape)}")
    clip_ids = clip_ids.to(terms.device)
    same_clip = clip_ids[:, None] == clip_ids[None, :]
    upper = torch.ones(n, n, dtype=torch.bool, device=terms.device).triu(diagonal=1)
    pairs = same_clip & upper
    n_pairs = int(pairs.sum())
    if n_pairs == 0:
        return offsets_at_center.sum() * 0.0
    # cross[i, k] = sum_p valid_ip * valid_kp * term_ip = m_i restricted to terms valid in i and k.
    cross = (terms * valid) @ valid.t()
    diff = cross - cross.t()  # m_i - m_k over the jointly valid terms
    return (diff.pow(2) * pairs.to(diff.dtype)).sum() / (k * n_pairs)
