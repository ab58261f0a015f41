"""LandmarkDetector: input normalisation + backbone + heatmap head + centroid head, and its codec.

The detector takes raw pixels (see ``interface``). ``forward`` returns the dict the training
losses read (docs/CONTRACTS.md, Models):

- ``heatmaps``: list of (B, K + 1, h, w) per stage; the last is final; channel K = background.
- ``center``: (B, 1, h, w) centroid LOGITS.
- ``offsets``: (B, 2K, h, w) landmark offsets from the centroid cell, in cells, interleaved.

``decode`` / ``predict`` read the last stage with the detector's own
:class:`~tsal_dist.codec.HeatmapCodec` (``codec.locate``, the configured inference decode).
Not here: the decoders (tsal_dist.codec), losses, export wrappers (NHWC input).
"""

from __future__ import annotations

from torch import Tensor, nn

from tsal_dist.codec import HeatmapCodec, px_to_norm
from tsal_dist.models.interface import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LandmarkModel,
    Prediction,
    normalize_images,
)

__all__ = ["LandmarkDetector", "IMAGENET_MEAN", "IMAGENET_STD", "normalize_images"]


class LandmarkDetector(LandmarkModel):
    """Heatmap + centroid landmark detector (TSAL teacher/student architecture).

    Args:
        backbone: normalised (B, 3, S, S) -> features (B, C, S/stride, S/stride); has ``stride``.
        heatmap_head: features -> list of (B, K + 1, h, w).
        centroid_head: features -> (center logits (B, 1, h, w), offsets (B, 2K, h, w)).
        codec: the heatmap codec of this geometry (K, S, the backbone's stride): targets for
            training, and the inference decode of :meth:`decode`.

    Attributes:
        num_points, input_size, stride, heatmap_size (= S / stride), codec, mean, std.
    """

    def __init__(self, *, backbone: nn.Module, heatmap_head: nn.Module, centroid_head: nn.Module,
                 codec: HeatmapCodec) -> None:
        super().__init__(num_points=codec.num_points, input_size=codec.input_size)
        stride = int(getattr(backbone, "stride"))
        if stride != codec.stride:
            raise ValueError(f"the codec's stride ({codec.stride}) is not the backbone's "
                             f"({stride})")
        self.backbone = backbone
        self.heatmap_head = heatmap_head
        self.centroid_head = centroid_head
        self.codec = codec
        self.stride = stride
        self.heatmap_size = codec.heatmap_size

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

    def decode(self, outputs: dict[str, Tensor | list[Tensor]]) -> Prediction:
        """Forward outputs -> :class:`Prediction`: the last stage's maps through
        ``codec.locate``; scores are the maps' peak values. The centroid outputs are unused."""
        heatmaps = outputs["heatmaps"][-1]
        px, scores = self.codec.locate(heatmaps)
        return Prediction(px_to_norm(px, self.input_size), scores, heatmaps)
