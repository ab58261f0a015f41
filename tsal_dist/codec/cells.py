"""Units of landmark coordinates and their conversions, and the shape checks every codec makes.

Units follow docs/CONTRACTS.md: "crop px" are pixels of the S x S crop (pixel i's centre at i);
"cells" are heatmap cells, cell u's centre at crop px ``u * stride + (stride - 1) / 2``;
"crop-normalised" is ``(px + 0.5) / S``, [0, 1] across the crop (what models predict and the
exported graph outputs).

Not here: making or reading maps (``heatmap``, ``centroid``, ``decode`` beside this module).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["px_to_cell", "cell_to_px", "px_to_norm", "norm_to_px", "map_size", "check_points",
           "FLOAT64_EPS"]

# np.finfo(float).eps: what SBR's peak decode and CenterNet's "umich" Gaussian compare against
FLOAT64_EPS = float(torch.finfo(torch.float64).eps)


def px_to_cell(px: Tensor | float, stride: int) -> Tensor | float:
    """Crop px -> cells: ``(px - (stride - 1) / 2) / stride``."""
    return (px - (stride - 1) / 2.0) / stride


def cell_to_px(cell: Tensor | float, stride: int) -> Tensor | float:
    """Cells -> crop px: ``cell * stride + (stride - 1) / 2``."""
    return cell * stride + (stride - 1) / 2.0


def px_to_norm(px: Tensor, input_size: int) -> Tensor:
    """Crop px -> crop-normalised: ``(px + 0.5) / S``."""
    return (px + 0.5) / float(input_size)


def norm_to_px(norm: Tensor, input_size: int) -> Tensor:
    """Crop-normalised -> crop px: ``norm * S - 0.5``."""
    return norm * float(input_size) - 0.5


def map_size(input_size: int, stride: int) -> int:
    """Side h = w of the maps of an S x S crop, S / stride; raises unless S is a positive
    multiple of the stride."""
    if input_size <= 0 or stride <= 0 or input_size % stride != 0:
        raise ValueError(f"input_size ({input_size}) must be a positive multiple of "
                         f"stride ({stride})")
    return input_size // stride


def check_points(landmarks: Tensor, visible: Tensor, num_points: int) -> None:
    """Raise unless ``landmarks`` is (B, K, 2) and ``visible`` (B, K) with K = ``num_points``."""
    if landmarks.dim() != 3 or landmarks.shape[1:] != (num_points, 2):
        raise ValueError(f"landmarks must be (B, {num_points}, 2), got {tuple(landmarks.shape)}")
    if visible.shape != landmarks.shape[:2]:
        raise ValueError(f"visible must be (B, {num_points}), got {tuple(visible.shape)}")
