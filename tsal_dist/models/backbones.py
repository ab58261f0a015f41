"""Feature extractors of the landmark detector (plain torch; no torchvision/timm, no downloads).

Each backbone maps a NORMALISED image (B, 3, S, S) to one feature map (B, out_channels, S/stride,
S/stride) and exposes ``out_channels`` and ``stride``:

- :class:`VGG16CPMBackbone`: TSAL/SBR CPM-VGG16 trunk (VGG-16 conv1_1..conv4_3, 3 pools) plus
  CPM_feature (512 -> 256 -> 128); stride 8. Layer indices of ``features`` match torchvision's
  ``vgg16().features`` so ImageNet weights could be loaded by a user who has them.
- :class:`ResNetBackbone`: ResNet-18-style basic blocks with an FPN neck back to stride 4.
- :class:`MobileNetV2Backbone`: MobileNetV2 inverted residuals (width multiplier) with a
  depthwise-separable FPN neck back to stride 4; the fast default.

Backbones initialise themselves with :func:`kaiming_init_`; heads use TSAL's :func:`init_weights_`.
Not here: heads, input normalisation (LandmarkDetector).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VGG16CPMBackbone",
    "ResNetBackbone",
    "MobileNetV2Backbone",
    "MobileNetV2Features",
    "FPNNeck",
    "BasicBlock",
    "InvertedResidual",
    "make_divisible",
    "init_weights_",
    "kaiming_init_",
    "count_parameters",
    "separable_conv",
    "conv_bn_relu",
]

# VGG-16 configuration up to conv4_3; "M" = 2x2 max-pool (SBR cpm_vgg16 drops pool4 and conv5).
_VGG16_TO_CONV4_3: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                            512, 512, 512)

# MobileNetV2 (t = expansion, c = channels, n = repeats, s = first stride).
_MBV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (torchvision/TF MobileNet rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:  # never go down by more than 10 %
        new += divisor
    return new


def init_weights_(module: nn.Module, *, conv_std: float = 0.01, deconv_std: float = 0.001) -> None:
    """TSAL initialisation (docs/method_notes.md §1.2.5), in place, over every submodule.

    Convs and linears ~ N(0, conv_std) with zero bias; transposed convs ~ N(0, deconv_std); norm
    layers weight 1, bias 0. Heads set their special output layers afterwards.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=conv_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=deconv_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def kaiming_init_(module: nn.Module) -> None:
    """From-scratch init of a backbone, in place: Kaiming-normal (fan_out, ReLU) convs with zero
    bias, norm layers 1/0 (torchvision's ResNet/MobileNetV2/VGG rule).

    TSAL's backbone was ImageNet-pretrained, so docs/method_notes.md §1.2.5 gives no init for it.
    N(0, 0.01) would vanish through VGG's BN-free convs, and on BN nets it makes Adam's fixed-size
    steps huge relative to the weights; the heads keep TSAL's init (:func:`init_weights_`).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                  relu6: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
    )


def separable_conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """Depthwise k x k + BN + ReLU, then pointwise 1x1 + BN + ReLU."""
    return nn.Sequential(conv_bn_relu(cin, cin, k, groups=cin), conv_bn_relu(cin, cout, 1))


# ------------------------------------------------------------------------------------ CPM-VGG16


class VGG16CPMBackbone(nn.Module):
    """VGG-16 conv1_1..conv4_3 (3 pools) + CPM_feature; (B, 3, S, S) -> (B, 128, S/8, S/8).

    No ImageNet weights are available here, so the trunk is initialised with Kaiming-normal
    (fan_out) instead of TSAL's pretrained VGG-16 (:func:`kaiming_init_`).
    """

    stride = 8

    def __init__(self, *, out_channels: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_TO_CONV4_3:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.cpm_feature = nn.Sequential(
            nn.Conv2d(512, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, out_channels, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.out_channels = out_channels
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.cpm_feature(self.features(x))


# ---------------------------------------------------------------------------------------- necks


class FPNNeck(nn.Module):
    """Top-down FPN merged to the finest input level.

    Lateral 1x1 conv + BN per level, nearest 2x upsampling + add from coarse to fine, then one
    smoothing block at the finest level (separable or full 3x3 conv + BN + ReLU).

    Args:
        in_channels: channels of the input levels, finest first; each level halves the size.
        out_channels: channels of the output map.
        separable: depthwise-separable smoothing (cheap) instead of a full 3x3 conv.
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int, separable: bool) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
            for c in in_channels
        )
        self.smooth = (separable_conv(out_channels, out_channels) if separable
                       else conv_bn_relu(out_channels, out_channels))

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """levels: finest first, e.g. strides (4, 8, 16, 32). Returns the finest-level map."""
        x = self.lateral[-1](levels[-1])
        for i in range(len(levels) - 2, -1, -1):
            lat = self.lateral[i](levels[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
        return self.smooth(x)


# --------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet basic block: 2 x (conv3x3 + BN), identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNetBackbone(nn.Module):
    """ResNet-18-style trunk (7x7 stem, max-pool, 4 stages of basic blocks) + FPN to stride 4.

    Args:
        width: channel multiplier of the stages (1.0 = 64, 128, 256, 512).
        blocks: basic blocks per stage (ResNet-18: 2, 2, 2, 2).
        neck_channels: channels of the stride-4 output.
    """

    stride = 4

    def __init__(self, *, width: float = 1.0, blocks: Sequence[int] = (2, 2, 2, 2),
                 neck_channels: int = 128) -> None:
        super().__init__()
        chans = [make_divisible(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, chans[0], 7, 2, 3, bias=False), nn.BatchNorm2d(chans[0]),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        cin = chans[0]
        for i, (c, n) in enumerate(zip(chans, blocks)):
            stride = 1 if i == 0 else 2
            blocks_i = [BasicBlock(cin if j == 0 else c, c, stride if j == 0 else 1)
                        for j in range(n)]
            stages.append(nn.Sequential(*blocks_i))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.neck = FPNNeck(in_channels=chans, out_channels=neck_channels, separable=False)
        self.out_channels = neck_channels
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        levels = []
        for stage in self.stages:
            x = stage(x)
            levels.append(x)
        return self.neck(levels)


# ---------------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (t > 1) -> 3x3 depthwise (stride) -> 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hidden, 1, relu6=True))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, relu6=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Features(nn.Module):
    """MobileNetV2 trunk; returns the last map of each stride (4, 8, 16, 32) or the pooled top.

    Args:
        width: width multiplier alpha (channels rounded to multiples of 8).
        last_channels: 1x1 conv after the last block (1280 in MobileNetV2; scaled up when
            width > 1); 0 = no top conv (what the detector uses).
    """

    def __init__(self, *, width: float = 1.0, last_channels: int = 0) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        self.stem = conv_bn_relu(3, cin, 3, 2, relu6=True)
        blocks: list[nn.Module] = []
        # index of the block after which each stride level (4, 8, 16, 32) ends
        self.level_ends: list[int] = []
        self.level_channels: list[int] = []
        stride = 2
        for t, c, n, s in _MBV2_SETTINGS:
            cout = make_divisible(c * width)
            if s == 2 and stride >= 4:
                self.level_ends.append(len(blocks) - 1)
                self.level_channels.append(cin)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            stride *= s
        self.level_ends.append(len(blocks) - 1)
        self.level_channels.append(cin)
        self.blocks = nn.ModuleList(blocks)
        self.top: nn.Module = nn.Identity()
        self.out_channels = cin
        if last_channels > 0:
            top = make_divisible(last_channels * max(1.0, width))
            self.top = conv_bn_relu(cin, top, 1, relu6=True)
            self.out_channels = top
        kaiming_init_(self)

    def forward_levels(self, x: Tensor) -> list[Tensor]:
        """(B, 3, S, S) -> maps at strides 4, 8, 16, 32 (channels ``level_channels``)."""
        x = self.stem(x)
        levels = []
        ends = set(self.level_ends)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in ends:
                levels.append(x)
        return levels

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, out_channels, S/32, S/32) after the optional top conv."""
        return self.top(self.forward_levels(x)[-1])


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 (no top conv) + depthwise-separable FPN neck; output stride 4.

    Args:
        width: MobileNetV2 width multiplier.
        neck_channels: channels of the stride-4 output (before the width multiplier).
    """

    stride = 4

    def __init__(self, *, width: float = 1.0, neck_channels: int = 64) -> None:
        super().__init__()
        self.body = MobileNetV2Features(width=width, last_channels=0)
        neck = make_divisible(neck_channels * width)
        self.neck = FPNNeck(in_channels=self.body.level_channels, out_channels=neck, separable=True)
        self.out_channels = neck
        kaiming_init_(self.neck)

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.body.forward_levels(x))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

