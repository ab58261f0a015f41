"""Direct coordinate regressor: the MobileNetV2 student of KD-Loss (docs/method_notes.md §5.2).

MobileNetV2 (width alpha, top 1x1 conv to 1280) -> global average pool -> dropout 0.5 ->
Linear(1280, 2K, no bias, Glorot-uniform) as KD's ``O_L`` layer. Outputs crop-normalised
coordinates ``(px + 0.5) / S`` (docs/CONTRACTS.md). The linear layer regresses the offset from the
crop centre (output = 0.5 + linear), so a fresh net predicts the centre: KD's "hyperface"
normalisation is centred too, without its sign flip.

Input convention and inference interface are every landmark model's
(:class:`~tsal_dist.models.interface.LandmarkModel`): (B, 3, S, S) uint8 or float 0..255 RGB,
ImageNet-normalised inside; ``predict`` gives the coordinates with scores 1. (KD scales by
1/255 without mean subtraction; normalisation is an affine reparametrisation the first conv
absorbs, and sharing the detector's convention keeps one export path.)
Not here: the KD loss (tsal_dist.losses), soft landmarks (ASM).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsal_dist.models.backbones import MobileNetV2Features
from tsal_dist.models.interface import LandmarkModel, Prediction

__all__ = ["MobileNetV2Regressor"]


class MobileNetV2Regressor(LandmarkModel):
    """MobileNetV2 landmark regressor.

    Args:
        num_points: K.
        input_size: crop side S in px (KD uses 224).
        width: MobileNetV2 width multiplier alpha.
        dropout: dropout before the linear layer (KD 0.5).

    Attributes:
        num_points, input_size, mean, std.
    """

    def __init__(self, num_points: int, input_size: int, width: float = 1.0,
                 dropout: float = 0.5) -> None:
        super().__init__(num_points=num_points, input_size=input_size)
        if input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")
        self.features = MobileNetV2Features(width=width, last_channels=1280)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.features.out_channels, 2 * num_points, bias=False)
        # features: Kaiming (done by MobileNetV2Features); O_L: Keras' Glorot-uniform default.
        nn.init.xavier_uniform_(self.fc.weight)

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) 0..255 -> pooled features (B, 1280)."""
        return self.features(self.normalize(images)).mean(dim=(2, 3))

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, 1280) -> (B, K, 2) crop-normalised (x, y)."""
        out = self.fc(self.dropout(features))
        return 0.5 + out.view(-1, self.num_points, 2)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) uint8/float 0..255 RGB -> (B, K, 2) crop-normalised coordinates."""
        return self.forward_head(self.forward_features(images))

    def decode(self, outputs: Tensor) -> Prediction:
        """Forward outputs (the coordinates) -> :class:`Prediction` in fp32; a regressor has no
        confidence, so every score is 1, and no heatmaps."""
        landmarks = outputs.float()
        return Prediction(landmarks, torch.ones_like(landmarks[..., 0]))
