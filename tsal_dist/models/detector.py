"""LandmarkDetector: input normalisation + backbone + heatmap head + centroid head.

The detector takes raw pixels (uint8 or float, 0..255, RGB, NCHW) so that training, evaluation and
the exported ONNX graph share one preprocessing; ImageNet mean/std live in buffers on the 0-255
scale. Output dict (docs/CONTRACTS.md, Models):

- ``heatmaps``: list of (B, K + 1, h, w) per stage; the last is final; channel K = background.
- ``center``: (B, 1, h, w) centroid LOGITS.
- ``offsets``: (B, 2K, h, w) landmark offsets from the centroid cell, in cells, interleaved.

Not here: decoding (tsal_dist.codec), losses, export wrappers (NHWC, crop-normalised outputs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LandmarkDetector", "IMAGENET_MEAN", "IMAGENET_STD", "normalize_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on the 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)


class LandmarkDetector(nn.Module):
    """Heatmap + centroid landmark detector (TSAL teacher/student architecture).

    Args:
        backbone: normalised (B, 3, S, S) -> features (B, C, S/stride, S/stride); has ``stride``.
        heatmap_head: features -> list of (B, K + 1, h, w).
        centroid_head: features -> (center logits (B, 1, h, w), offsets (B, 2K, h, w)).
        num_points: K.
        input_size: crop side S in px (multiple of the stride).

    Attributes:
        num_points, input_size, stride, heatmap_size (= S / stride), mean, std (buffers,
        (1, 3, 1, 1), 0..255 scale).
    """

    def __init__(self, *, backbone: nn.Module, heatmap_head: nn.Module, centroid_head: nn.Module,
                 num_points: int, input_size: int) -> None:
        super().__init__()
        stride = int(getattr(backbone, "stride"))
        if input_size % stride:
            raise ValueError(f"input_size ({input_size}) must be a multiple of the backbone "
                             f"stride ({stride})")
        self.backbone = backbone
        self.heatmap_head = heatmap_head
        self.centroid_head = centroid_head
        self.num_points = num_points
        self.input_size = input_size
        self.stride = stride
        self.heatmap_size = input_size // stride
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 or float 0..255 -> ImageNet-normalised, in the weights' dtype."""
        return normalize_images(images, self.mean, self.std, _weight_dtype(self))

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) 0..255 -> backbone features (B, C, h, w)."""
        return self.backbone(self.normalize(images))

    def forward_head(self, features: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Features (B, C, h, w) -> {"heatmaps": [...], "center": logits, "offsets": cells}."""
        heatmaps = self.heatmap_head(features)
        center, offsets = self.centroid_head(features)
        return {"heatmaps": heatmaps, "center": center, "offsets": offsets}

    def forward(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """(B, 3, S, S) uint8/float 0..255 RGB -> output dict (see module docstring)."""
        return self.forward_head(self.forward_features(images))


def normalize_images(images: Tensor, mean: Tensor, std: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 3, S, S) uint8 or float 0..255 -> ``(x - mean) / std`` cast to ``dtype``.

    The subtraction runs in the input's float dtype (fp32 for uint8), the result takes the dtype
    of the first layer's weights: DeepSpeed fp16/bf16 casts the weights but keeps the mean/std
    buffers in fp32, so following the buffers would feed fp32 into a bf16 convolution.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, S, S), got {tuple(images.shape)}")
    x = images.to(mean.dtype) if not images.is_floating_point() else images
    return ((x - mean.to(x.dtype)) / std.to(x.dtype)).to(dtype)


def _weight_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
