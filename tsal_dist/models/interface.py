"""What every landmark network shares: raw-pixel input, and one inference interface.

Every landmark model (the heatmap :class:`~tsal_dist.models.LandmarkDetector`, the coordinate
:class:`~tsal_dist.models.MobileNetV2Regressor`) is a :class:`LandmarkModel`:

- input: (B, 3, S, S) uint8 or float 0..255 RGB, NCHW; ImageNet mean/std live in buffers on the
  0-255 scale, so training, evaluation and the exported graph share one preprocessing;
- ``forward(images)``: the model's own raw outputs, what its training losses read (a detector's
  dict of maps, a regressor's coordinates; docs/CONTRACTS.md, Models);
- ``decode(outputs)``: those outputs -> :class:`Prediction`, the same structure for every model;
- ``predict(images)`` = ``decode(forward(images))``: what evaluation, export and distillation
  targets call. A DDP-wrapped model is called as the wrapper (``forward``) and decoded with the
  unwrapped model's ``decode``.

Not here: the networks (``detector``, ``regressor``), decoding maps (tsal_dist.codec).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Prediction", "LandmarkModel", "IMAGENET_MEAN", "IMAGENET_STD", "normalize_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on the 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)


class Prediction(NamedTuple):
    """The landmarks of a batch, as every landmark model returns them.

    Attributes:
        landmarks: (B, K, 2) crop-normalised (x, y), ``(px + 0.5) / S`` (the export contract).
        scores: (B, K) confidence: a detector's heatmap peak values; 1 for a regressor.
        heatmaps: (B, K + 1, h, w) last-stage maps (channel K = background) of a heatmap model,
            None for a regressor.
    """

    landmarks: Tensor
    scores: Tensor
    heatmaps: Tensor | None = None


class LandmarkModel(nn.Module):
    """Base of the landmark networks: geometry, input normalisation and :meth:`predict`.

    Subclasses define ``forward`` (raw outputs) and :meth:`decode` (raw outputs -> Prediction).

    Args:
        num_points: K.
        input_size: crop side S in px.

    Attributes:
        num_points, input_size, mean, std (buffers, (1, 3, 1, 1), 0..255 scale).
    """

    num_points: int
    input_size: int

    def __init__(self, *, num_points: int, input_size: int) -> None:
        super().__init__()
        if num_points <= 0:
            raise ValueError(f"num_points must be > 0, got {num_points}")
        self.num_points = num_points
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 or float 0..255 -> ImageNet-normalised, in the weights' dtype."""
        return normalize_images(images, self.mean, self.std, _weight_dtype(self))

    def decode(self, outputs: Any) -> Prediction:
        """This model's ``forward`` outputs -> :class:`Prediction`."""
        raise NotImplementedError

    def predict(self, images: Tensor) -> Prediction:
        """(B, 3, S, S) uint8/float 0..255 RGB -> :class:`Prediction` (``decode(forward(x))``)."""
        return self.decode(self(images))


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
