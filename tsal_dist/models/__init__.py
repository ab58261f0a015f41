"""Landmark networks: build_model(cfg.model, num_points) -> LandmarkDetector.

Backbones: ``cpm_vgg16`` (TSAL's CPM-VGG16 + CenterNet branch, stride 8), ``resnet`` (ResNet-18
basic blocks + FPN, stride 4) and ``mobilenetv2`` (inverted residuals + separable FPN, stride 4,
the fast default). All random init (no pretrained weights exist here). The KD-Loss student
regressor is :class:`MobileNetV2Regressor` (:func:`build_student_model` builds either student).
Every model is a :class:`LandmarkModel`: ``predict(images)`` returns a :class:`Prediction`
(crop-normalised landmarks, scores, last-stage heatmaps where it has them); a detector carries
the :class:`~tsal_dist.codec.HeatmapCodec` of its config, so it decodes itself.
Not here: targets and decoders (tsal_dist.codec), losses, training.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from tsal_dist.codec import HeatmapCodec
from tsal_dist.config import ModelConfig
from tsal_dist.models.backbones import (
    MobileNetV2Backbone,
    ResNetBackbone,
    VGG16CPMBackbone,
    count_parameters,
)
from tsal_dist.models.detector import LandmarkDetector
from tsal_dist.models.heads import CenterNetBranch, CentroidHead, CPMStages, RefineHeatmapHead
from tsal_dist.models.interface import LandmarkModel, Prediction
from tsal_dist.models.regressor import MobileNetV2Regressor

__all__ = [
    "build_model",
    "build_student_model",
    "cpm_vgg16",
    "resnet",
    "mobilenetv2",
    "LandmarkModel",
    "Prediction",
    "LandmarkDetector",
    "MobileNetV2Regressor",
    "count_parameters",
]


def cpm_vgg16(*, codec: HeatmapCodec, stages: int) -> LandmarkDetector:
    """TSAL CPM-VGG16: VGG16 trunk + CPM_feature (128 ch, stride 8), CPM stages, CenterNet branch.

    ``codec`` (stride 8) gives K and S; the heatmap side S / 8 must be divisible by 4 (the
    CenterNet branch goes down to S / 32).
    """
    k = codec.num_points
    return LandmarkDetector(
        backbone=VGG16CPMBackbone(out_channels=128),
        heatmap_head=CPMStages(in_channels=128, out_channels=k + 1, stages=stages),
        centroid_head=CenterNetBranch(in_channels=128, num_points=k, head_channels=128),
        codec=codec,
    )


def resnet(*, codec: HeatmapCodec, stages: int, width: float = 1.0) -> LandmarkDetector:
    """ResNet-18-style detector, stride 4, 128-channel FPN features (times ``width``)."""
    backbone = ResNetBackbone(width=width, neck_channels=max(32, round(128 * width)))
    return _light_detector(backbone, codec=codec, stages=stages, separable=False)


def mobilenetv2(*, codec: HeatmapCodec, stages: int, width: float = 1.0) -> LandmarkDetector:
    """MobileNetV2 detector, stride 4, separable FPN (64 channels times ``width``) and heads."""
    backbone = MobileNetV2Backbone(width=width, neck_channels=64)
    return _light_detector(backbone, codec=codec, stages=stages, separable=True)


def _light_detector(backbone: ResNetBackbone | MobileNetV2Backbone, *, codec: HeatmapCodec,
                    stages: int, separable: bool) -> LandmarkDetector:
    """A light backbone + RefineHeatmapHead + CentroidHead, the heads as wide as its features."""
    c, k = backbone.out_channels, codec.num_points
    return LandmarkDetector(
        backbone=backbone,
        heatmap_head=RefineHeatmapHead(in_channels=c, out_channels=k + 1, stages=stages,
                                       mid_channels=c),
        centroid_head=CentroidHead(in_channels=c, num_points=k, mid_channels=c,
                                   separable=separable),
        codec=codec,
    )


def build_model(cfg: ModelConfig, num_points: int) -> LandmarkDetector:
    """Build the detector of ``cfg`` (backbone, input_size, width, cpm_stages) for K points, with
    the codec of its codec constants (heatmap sigma, decode window, method and blur)."""

    def codec(stride: int) -> HeatmapCodec:
        return HeatmapCodec.for_model(cfg, stride=stride, num_points=num_points)

    if cfg.backbone == "cpm_vgg16":
        return cpm_vgg16(codec=codec(VGG16CPMBackbone.stride), stages=cfg.cpm_stages)
    if cfg.backbone == "resnet":
        return resnet(codec=codec(ResNetBackbone.stride), stages=cfg.cpm_stages, width=cfg.width)
    if cfg.backbone == "mobilenetv2":
        return mobilenetv2(codec=codec(MobileNetV2Backbone.stride), stages=cfg.cpm_stages,
                           width=cfg.width)
    raise ValueError(f"model.backbone: unknown backbone {cfg.backbone!r}")


def build_student_model(head: Literal["regression", "heatmap"], model_cfg: ModelConfig,
                        num_points: int, *, width: float, input_size: int,
                        dropout: float = 0.0) -> LandmarkModel:
    """A distilled student: ``regression`` = :class:`MobileNetV2Regressor` (dropout before its
    linear layer), ``heatmap`` = a MobileNetV2 ``LandmarkDetector`` with ``model_cfg``'s heads.

    Args:
        width: MobileNetV2 width multiplier.
        input_size: crop side S in px.
    """
    if head == "regression":
        return MobileNetV2Regressor(num_points, input_size, width=width, dropout=dropout)
    if head == "heatmap":
        return build_model(dataclasses.replace(model_cfg, backbone="mobilenetv2", width=width,
                                               input_size=input_size), num_points)
    raise ValueError(f"unknown student head {head!r} (expected regression or heatmap)")
