"""Unsupervised consistency on unlabeled clips: the teacher's single-source term and the
student's multi-source (heatmap + centroid) pseudo-target and term. Their weight's ramp over the
schedule is ``tsal_dist.loop.schedules.ramp_weight``.

Frame pairing (all functions here): predictions on frame t+1 are compared with predictions on
frame t carried into frame t+1's geometry, in one of two spaces (``loss.consistency_space``):

- "image" (TSAL): the model runs on the registered IMAGE ``warped[t]`` (frame t resampled into
  frame t+1's geometry, docs/CONTRACTS.md) and its outputs are the target as they are;
- "output": the model runs on frame t itself (its own view) and its OUTPUTS are carried through
  the clip's tracking grid: heatmaps resampled (:func:`warp_heatmaps`), points moved through the
  inverse of the grid (:func:`points_through_inverse_grid`). With per-frame view jitter the two
  inputs are different views, so the term asks for equivariance, not just agreement on
  near-identical images.

Decoding heatmaps/centroids into coordinates belongs to ``tsal_dist.codec``, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "grid_to_cells",
    "nearest_candidate",
    "points_through_inverse_grid",
    "warp_heatmaps",
    "student_consistency",
    "student_pseudo_target",
    "teacher_consistency",
]


def teacher_consistency(pred_next: Sequence[Tensor], target_warped: Tensor) -> Tensor:
    """Teacher's single-source term: heatmaps on frame t+1 vs its own heatmaps on warp(t -> t+1).

    ``loss = sum_s sum((pred_next[s] - stopgrad(target_warped))^2) / (2 N)``: the same units as
    ``heatmap_loss`` (summed squared error per frame, halved), so ``loss.unsup_weight`` weighs the
    unlabeled frames against the labeled ones on one scale. (The original code used a pixel MEAN,
    which made this term ~1e-4 of the supervised one: the teacher's unlabeled signal vanished.)

    Fixes docs/method_notes.md §1.6 "Off-by-one (CODE)": the code compared the prediction on frame t
    with the warped image that reconstructs frame t+1. Callers pass predictions on frames 1..T-1 of
    each clip and targets from ``warped[0..T-2]``.

    Args:
        pred_next: per-stage teacher heatmaps on frames t+1, each (N, K+1, h, w), with grad.
        target_warped: (N, K+1, h, w) the teacher's final-stage heatmaps on frame t warped into
            t+1 (computed under no_grad; detached here anyway).

    Returns:
        Unweighted scalar.
    """
    if len(pred_next) == 0:
        raise ValueError("teacher_consistency: `pred_next` is empty")
    for i, stage in enumerate(pred_next):
        if stage.shape != target_warped.shape:
            raise ValueError(f"teacher_consistency: stage {i} has shape {tuple(stage.shape)}, "
                             f"target_warped has {tuple(target_warped.shape)}")
    target = target_warped.detach()
    n = max(1, target.shape[0])
    return torch.stack([F.mse_loss(stage, target, reduction="sum") for stage in pred_next]
                       ).sum() / (2 * n)


def nearest_candidate(hm_coords: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Per frame, the candidate shape nearest (L2 over all K points) to the heatmap shape.

    Args:
        hm_coords: (N, K, 2) landmark locations from the heatmaps, crop px.
        candidates: (N, k, K, 2) candidate shapes from the centroid branch, crop px.

    Returns:
        (nearest (N, K, 2) crop px, index (N,) long into the k candidates).
    """
    if hm_coords.dim() != 3 or hm_coords.shape[2] != 2:
        raise ValueError(f"student_pseudo_target: hm_coords must be (N, K, 2), got "
                         f"{tuple(hm_coords.shape)}")
    n, k_pts, _ = hm_coords.shape
    if candidates.dim() != 4 or candidates.shape[0] != n or candidates.shape[2:] != (k_pts, 2):
        raise ValueError(f"student_pseudo_target: candidates must be (N, k, K, 2) = "
                         f"({n}, k, {k_pts}, 2), got {tuple(candidates.shape)}")
    if candidates.shape[1] == 0:
        raise ValueError("student_pseudo_target: candidates has no candidate (k = 0)")
    sq_dist = (candidates - hm_coords[:, None]).pow(2).sum(dim=(2, 3))  # (N, k)
    index = sq_dist.argmin(dim=1)
    nearest = candidates[torch.arange(n, device=candidates.device), index]
    return nearest, index


def student_pseudo_target(hm_coords: Tensor, candidates: Tensor, mu: float) -> Tensor:
    """Student's multi-source pseudo-target: ``mu * heatmap shape + (1 - mu) * nearest candidate``.

    Both sources are decoded from the student's predictions on the warped frames (frame t warped
    into t+1). Fixes docs/method_notes.md §1.6 L_unsup^S bugs: the code fused pixel heatmap
    locations with centroid shapes in heatmap CELLS; here both are crop px (the codec decodes
    candidates to px). The code's stride-10 ``index_select`` on a 9B-row tensor is replaced by a
    per-frame gather.

    Args:
        hm_coords: (N, K, 2) soft-argmax locations from the student's heatmaps, crop px.
        candidates: (N, k, K, 2) centroid + offset candidate shapes (top-k peaks), crop px.
        mu: weight on the heatmap source, in [0, 1] (TSAL 0.5).

    Returns:
        (N, K, 2) detached target, crop px.
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"student_pseudo_target: mu must be in [0, 1], got {mu}")
    hm_coords = hm_coords.detach()
    nearest, _ = nearest_candidate(hm_coords, candidates.detach())
    return (mu * hm_coords + (1.0 - mu) * nearest.to(hm_coords.dtype)).detach()


def student_consistency(pred_coords: Tensor, target: Tensor, stride: int | float) -> Tensor:
    """Student's term: MSE between its locations on frames t+1 and the pseudo-target, in cells.

    ``loss = mean(((pred_coords - stopgrad(target)) / stride)^2)``; dividing the px difference by
    the stride gives the same scale as the heatmap cells (the (stride-1)/2 shift cancels).

    Args:
        pred_coords: (N, K, 2) differentiable soft-argmax locations of the student on frames t+1,
            crop px.
        target: (N, K, 2) from :func:`student_pseudo_target`, crop px.
        stride: heatmap stride, crop px per cell.

    Returns:
        Unweighted scalar.
    """
    if stride <= 0:
        raise ValueError(f"student_consistency: stride must be > 0, got {stride}")
    if pred_coords.shape != target.shape or pred_coords.dim() != 3 or pred_coords.shape[2] != 2:
        raise ValueError(f"student_consistency: pred_coords {tuple(pred_coords.shape)} and target "
                         f"{tuple(target.shape)} must both be (N, K, 2)")
    return F.mse_loss(pred_coords / stride, target.detach().to(pred_coords.dtype) / stride)


def grid_to_cells(grid_px: Tensor, stride: int) -> Tensor:
    """A crop-px tracking grid as a ``grid_sample`` grid over heatmap cells.

    Args:
        grid_px: (N, S, S, 2) for every crop pixel of frame t+1, its (x, y) in frame t, crop px.
        stride: crop px per heatmap cell (S must be a multiple).

    Returns:
        (N, h, w, 2) normalised coordinates (align_corners=True) of each CELL centre of frame t+1
        in frame t's heatmap: the mean of the grid over the cell's stride x stride pixels (exact
        for an affine grid: that mean is the grid at the cell centre), converted px -> cells.
    """
    if grid_px.dim() != 4 or grid_px.shape[3] != 2 or grid_px.shape[1] % stride:
        raise ValueError(f"grid_to_cells: grid must be (N, S, S, 2) with S a multiple of "
                         f"{stride}, got {tuple(grid_px.shape)}")
    g = F.avg_pool2d(grid_px.permute(0, 3, 1, 2).float(), stride)  # (N, 2, h, w) px
    h = g.shape[2]
    cells = (g - (stride - 1) / 2.0) / stride
    return (cells / max(1, h - 1) * 2.0 - 1.0).permute(0, 2, 3, 1)


def warp_heatmaps(maps: Tensor, cell_grid: Tensor) -> tuple[Tensor, Tensor]:
    """Frame t's heatmaps resampled into frame t+1's geometry (bilinear).

    Args:
        maps: (N, C, h, w) heatmaps predicted on frame t.
        cell_grid: (N, h, w, 2) from :func:`grid_to_cells`.

    Returns:
        (warped (N, C, h, w), valid (N, 1, h, w) float: 1 where the source cell lies inside
        frame t's map, else 0 (those cells have no target and must be masked out)).
    """
    warped = F.grid_sample(maps, cell_grid.to(maps.dtype), mode="bilinear", padding_mode="zeros",
                           align_corners=True)
    valid = (cell_grid.abs() <= 1.0).all(dim=-1)[:, None].to(maps.dtype)
    return warped, valid


def points_through_inverse_grid(points: Tensor, grid_px: Tensor, iters: int = 8) -> Tensor:
    """Move points of frame t into frame t+1: solve ``grid(y) = p`` for y.

    The tracking grid maps frame t+1 -> frame t (where each pixel comes from); points go the other
    way. Fixed-point iteration ``y <- y + (p - grid(y))`` from y = p, with the grid read
    bilinearly (border values outside): converges when the grid is close to a rigid motion (the
    view jitter is a small similarity), to ~1e-3 px in a few steps.

    Args:
        points: (N, P, 2) crop px in frame t.
        grid_px: (N, S, S, 2) as for :func:`grid_to_cells`.

    Returns:
        (N, P, 2) crop px in frame t+1.
    """
    if points.dim() != 3 or points.shape[0] != grid_px.shape[0]:
        raise ValueError(f"points_through_inverse_grid: points (N, P, 2) and grid (N, S, S, 2) "
                         f"disagree: {tuple(points.shape)} vs {tuple(grid_px.shape)}")
    s = grid_px.shape[1]
    g = grid_px.permute(0, 3, 1, 2).to(points.dtype)  # (N, 2, S, S)
    y = points.clone()
    for _ in range(iters):
        norm = (y / max(1, s - 1) * 2.0 - 1.0)[:, :, None]  # (N, P, 1, 2)
        at = F.grid_sample(g, norm, mode="bilinear", padding_mode="border",
                           align_corners=True)[..., 0].permute(0, 2, 1)  # (N, P, 2)
        y = y + (points - at)
    return y
