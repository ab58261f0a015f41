"""Landmark networks: build_model(cfg.model, num_points) -> LandmarkDetector.

Backbones: ``cpm_vgg16`` (TSAL's CPM-VGG16 + CenterNet branch, stride 8), ``resnet`` (ResNet-18
basic blocks + FPN, stride 4) and ``mobilenetv2`` (inverted residuals + separable FPN, stride 4,
the fast default). All random init (no pretrained weights exist here). The KD-Loss student
regressor is :class:`MobileNetV2Regressor` (:func:`build_student_model` builds either student).
Not here: targets/decoding (tsal_dist.codec), losses, training.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import nn

from tsal_dist.config import ModelConfig
from tsal_dist.models.backbones import (
    MobileNetV2Backbone,
    ResNetBackbone,
    VGG16CPMBackbone,
    count_parameters,
)
from tsal_dist.models.detector import LandmarkDetector
from tsal_dist.models.heads import CenterNetBranch, CentroidHead, CPMStages, RefineHeatmapHead
from tsal_dist.models.regressor import MobileNetV2Regressor

__all__ = [
    "build_model",
    "build_student_model",
    "cpm_vgg16",
    "resnet",
    "mobilenetv2",
    "LandmarkDetector",
    "MobileNetV2Regressor",
    "count_parameters",
]


def cpm_vgg16(*, num_points: int, input_size: int, stages: int) -> LandmarkDetector:
    """TSAL CPM-VGG16: VGG16 trunk + CPM_feature (128 ch, stride 8), CPM stages, CenterNet branch.

    The heatmap side S / 8 must be divisible by 4 (the CenterNet branch goes down to S / 32).
    """
    backbone = VGG16CPMBackbone(out_channels=128)
    return LandmarkDetector(
        backbone=backbone,
        heatmap_head=CPMStages(in_channels=128, out_channels=num_points + 1, stages=stages),
        centroid_head=CenterNetBranch(in_channels=128, num_points=num_points, head_channels=128),
        num_points=num_points,
        input_size=input_size,
    )


def resnet(*, num_points: int, input_size: int, stages: int,
           width: float = 1.0) -> LandmarkDetector:
    """ResNet-18-style detector, stride 4, 128-channel FPN features (times ``width``)."""
    backbone = ResNetBackbone(width=width, neck_channels=max(32, round(128 * width)))
    c = backbone.out_channels
    return LandmarkDetector(
        backbone=backbone,
        heatmap_head=RefineHeatmapHead(in_channels=c, out_channels=num_points + 1, stages=stages,
                                       mid_channels=c),
        centroid_head=CentroidHead(in_channels=c, num_points=num_points, mid_channels=c,
                                   separable=False),
        num_points=num_points,
        input_size=input_size,
    )


def mobilenetv2(*, num_points: int, input_size: int, stages: int,
                width: float = 1.0) -> LandmarkDetector:
    """MobileNetV2 detector, stride 4, separable FPN (64 channels times ``width``) and heads."""
    backbone = MobileNetV2Backbone(width=width, neck_channels=64)
    c = backbone.out_channels
    return LandmarkDetector(
        backbone=backbone,
        heatmap_head=RefineHeatmapHead(in_channels=c, out_channels=num_points + 1, stages=stages,
                                       mid_channels=c),
        centroid_head=CentroidHead(in_channels=c, num_points=num_points, mid_channels=c,
                                   separable=True),
        num_points=num_points,
        input_size=input_size,
    )


def build_model(cfg: ModelConfig, num_points: int) -> LandmarkDetector:
    """Build the detector of ``cfg`` (backbone, input_size, width, cpm_stages) for K points."""
    if num_points <= 0:
        raise ValueError(f"num_points must be > 0, got {num_points}")
    if cfg.backbone == "cpm_vgg16":
        return cpm_vgg16(num_points=num_points, input_size=cfg.input_size, stages=cfg.cpm_stages)
    if cfg.backbone == "resnet":
        return resnet(num_points=num_points, input_size=cfg.input_size, stages=cfg.cpm_stages,
                      width=cfg.width)
    if cfg.backbone == "mobilenetv2":
        return mobilenetv2(num_points=num_points, input_size=cfg.input_size,
                           stages=cfg.cpm_stages, width=cfg.width)
    raise ValueError(f"model.backbone: unknown backbone {cfg.backbone!r}")


def build_student_model(head: Literal["regression", "heatmap"], model_cfg: ModelConfig,
                        num_points: int, *, width: float, input_size: int,
                        dropout: float = 0.0) -> nn.Module:
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
