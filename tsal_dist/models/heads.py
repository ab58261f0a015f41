"""Detector heads: landmark heatmap stages and the centroid/offset (CenterNet) branch.

Heatmap heads map features (B, C, h, w) to a list of (B, K + 1, h, w) maps, one per stage (the
last is final; channel K is the background). Centroid heads map the same features to
(center logits (B, 1, h, w), offsets (B, 2K, h, w) in cells, interleaved dx0, dy0, dx1, ...).

- :class:`CPMStages` and :class:`CenterNetBranch`: TSAL's ``cpm_vgg16`` heads (docs/method_notes.md
  §1.2).
- :class:`RefineHeatmapHead` and :class:`CentroidHead`: the light heads of the resnet and
  mobilenetv2 detectors, same outputs, a fraction of the cost.

Initialisation follows docs/method_notes.md §1.2.5: convs N(0, 0.01), deconvs N(0, 0.001), BN 1/0,
centroid output bias -2.19 (CenterNet prior, sigmoid = 0.1), offset output N(0, 0.001) with zero
bias. Not here: the backbones, input normalisation, target making and decoding (tsal_dist.codec).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsal_dist.models.backbones import conv_bn_relu, init_weights_, separable_conv

__all__ = ["CPMStages", "CenterNetBranch", "RefineHeatmapHead", "CentroidHead", "CENTER_PRIOR_BIAS"]

CENTER_PRIOR_BIAS = -2.19  # CenterNet: sigmoid(-2.19) ~= 0.1 initial centroid probability


def _init_outputs_(center: nn.Conv2d, offsets: nn.Conv2d) -> None:
    nn.init.constant_(center.bias, CENTER_PRIOR_BIAS)
    nn.init.normal_(offsets.weight, std=0.001)
    nn.init.zeros_(offsets.bias)


class _RefinementStages(nn.Module):
    """Multi-stage heatmap head (CPM): stage 1 reads the features, stage t >= 2 reads
    concat(features, stage t - 1's maps); every stage's maps are returned (deep supervision).
    Subclasses build the stage blocks; the weights are initialised here (docs/method_notes.md
    §1.2.5)."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(blocks)
        init_weights_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [self.stages[0](x)]
        for stage in self.stages[1:]:
            outs.append(stage(torch.cat([x, outs[-1]], dim=1)))
        return outs


# ----------------------------------------------------------------------------------- CPM-VGG16


class CPMStages(_RefinementStages):
    """TSAL/SBR CPM heatmap stages on the 128-channel ``xfeature``.

    Stage 1: 4 x [conv3x3 128->128, ReLU], conv1x1 128->512, ReLU, conv1x1 512->K+1.
    Stage t >= 2 on concat(xfeature, previous): 3 x [conv7x7, ReLU] (C+K+1 -> 128 -> 128 -> 128),
    4 x [conv3x3 128->128, ReLU], conv1x1 128->128, ReLU, conv1x1 128->K+1.

    Args:
        in_channels: xfeature channels (128).
        out_channels: K + 1.
        stages: number of stages (TSAL 3).
    """

    def __init__(self, *, in_channels: int, out_channels: int, stages: int) -> None:
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")

        def conv(cin: int, cout: int, k: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, padding=(k - 1) // 2), nn.ReLU(inplace=True)]

        first: list[nn.Module] = []
        for _ in range(4):
            first += conv(in_channels, in_channels, 3)
        first += conv(in_channels, 512, 1) + [nn.Conv2d(512, out_channels, 1)]
        blocks = [nn.Sequential(*first)]
        for _ in range(stages - 1):
            layers = conv(in_channels + out_channels, 128, 7)
            layers += conv(128, 128, 7) + conv(128, 128, 7)
            for _ in range(4):
                layers += conv(128, 128, 3)
            layers += conv(128, 128, 1) + [nn.Conv2d(128, out_channels, 1)]
            blocks.append(nn.Sequential(*layers))
        super().__init__(blocks)


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4), BN momentum 0.1, as CenterNet's ``pose_resnet``."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=0.1)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=0.1)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, momentum=0.1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout, momentum=0.1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class CenterNetBranch(nn.Module):
    """TSAL's CenterNet branch on xfeature: (B, C, h, w) -> (center logits, offsets), both h x w.

    layer3 (6 bottlenecks, planes 256, stride 2) -> layer4 (3 bottlenecks, planes 512, stride 2)
    -> 3 x [ConvTranspose 4x4 s2 (no bias), BN, ReLU] with 256 channels (now 2h x 2w) -> two heads
    [conv3x3 stride 2 (256 -> 128, bias), ReLU, conv1x1 128 -> C], C = 1 (``hm``) and 2K
    (``hmhp_offset``). Needs h divisible by 4.

    Args:
        in_channels: xfeature channels (128).
        num_points: K.
        head_channels: hidden channels of the two heads (128).
    """

    def __init__(self, *, in_channels: int, num_points: int, head_channels: int = 128) -> None:
        super().__init__()
        self.layer3 = self._layer(in_channels, 256, 6)
        self.layer4 = self._layer(256 * 4, 512, 3)
        deconv: list[nn.Module] = []
        cin = 512 * 4
        for _ in range(3):
            deconv += [nn.ConvTranspose2d(cin, 256, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(256, momentum=0.1), nn.ReLU(inplace=True)]
            cin = 256
        self.deconv = nn.Sequential(*deconv)
        self.hm = nn.Sequential(nn.Conv2d(256, head_channels, 3, 2, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(head_channels, 1, 1))
        self.offset = nn.Sequential(nn.Conv2d(256, head_channels, 3, 2, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(head_channels, 2 * num_points, 1))
        init_weights_(self)
        _init_outputs_(self.hm[-1], self.offset[-1])

    @staticmethod
    def _layer(cin: int, planes: int, blocks: int) -> nn.Sequential:
        layers = [Bottleneck(cin, planes, 2)]
        layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"CenterNetBranch needs feature sides divisible by 4, got "
                             f"{tuple(x.shape[-2:])}")
        y = self.deconv(self.layer4(self.layer3(x)))
        return self.hm(y), self.offset(y)


# -------------------------------------------------------------------------------- light heads


class RefineHeatmapHead(_RefinementStages):
    """Cheap multi-stage heatmap head (CPM idea with separable convs).

    Stage 1: separable 3x3 (C -> mid), conv1x1 -> K+1.
    Stage t >= 2 on concat(features, previous): 1x1 (C+K+1 -> mid) + BN + ReLU, separable 5x5
    (mid -> mid), conv1x1 -> K+1.

    Args:
        in_channels: feature channels C.
        out_channels: K + 1.
        stages: number of stages, all returned (deep supervision).
        mid_channels: hidden channels.
    """

    def __init__(self, *, in_channels: int, out_channels: int, stages: int,
                 mid_channels: int) -> None:
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        blocks = [nn.Sequential(separable_conv(in_channels, mid_channels, 3),
                                nn.Conv2d(mid_channels, out_channels, 1))]
        for _ in range(stages - 1):
            blocks.append(nn.Sequential(
                conv_bn_relu(in_channels + out_channels, mid_channels, 1),
                separable_conv(mid_channels, mid_channels, 5),
                nn.Conv2d(mid_channels, out_channels, 1),
            ))
        super().__init__(blocks)


class CentroidHead(nn.Module):
    """Centroid logits + landmark offsets: two [3x3 conv, ReLU, conv1x1] heads.

    Args:
        in_channels: feature channels C.
        num_points: K (offsets have 2K channels).
        mid_channels: hidden channels of each head.
        separable: depthwise-separable 3x3 (dw3x3 + BN + ReLU + 1x1) instead of a full 3x3 conv.
    """

    def __init__(self, *, in_channels: int, num_points: int, mid_channels: int,
                 separable: bool) -> None:
        super().__init__()

        def hidden() -> nn.Module:
            if separable:
                return separable_conv(in_channels, mid_channels, 3)
            return nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1),
                                 nn.ReLU(inplace=True))

        self.hm = nn.Sequential(hidden(), nn.Conv2d(mid_channels, 1, 1))
        self.offset = nn.Sequential(hidden(), nn.Conv2d(mid_channels, 2 * num_points, 1))
        init_weights_(self)
        _init_outputs_(self.hm[-1], self.offset[-1])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.hm(x), self.offset(x)
