"""ResNet-50 backbone with mmdet's parameter names (style 'pytorch', BN in eval mode).

mmdet's ResNet names its layers like torchvision (``conv1``, ``bn1``, ``layer1.0.conv2``,
``layer1.0.downsample.0``, ...), without the classifier, and puts the stride on the 3x3 conv of each
bottleneck ('pytorch' style, the same as torchvision's ResNet v1.5). Detection checkpoints are
evaluated with frozen running statistics, so callers keep the module in ``eval()`` mode.

``frozen_stages`` is mmdet's ResNet option of the same name (``mmdet/models/backbones/resnet.py``,
``ResNet._freeze_stages``): the stem (``conv1``, ``bn1``) and the first ``frozen_stages`` stages get
``requires_grad = False``. Every mmdet R50 detection config sets 1, and mmcv's
``get_model_complexity_info`` (what mmdet's ``tools/analysis_tools/get_flops.py`` and the
upsampler papers report) counts only parameters that require gradients: 225,344 parameters of
ResNet-50 (stem 9,536, ``layer1`` 215,808) are in the checkpoints but not in those totals.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-5


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet returning the outputs of the four stages (C2..C5, strides 4..32)."""

    def __init__(self, depths: tuple[int, int, int, int] = (3, 4, 6, 3), frozen_stages: int = -1) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= len(depths):
            raise ValueError(f"frozen_stages must be -1 (none) to {len(depths)}, not {frozen_stages}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.out_channels: list[int] = []
        in_channels = 64
        for index, blocks in enumerate(depths):
            planes = 64 * 2**index
            stride = 1 if index == 0 else 2
            layer, in_channels = self._make_layer(in_channels, planes, blocks, stride)
            self.add_module(f"layer{index + 1}", layer)
            self.out_channels.append(in_channels)
        self.frozen_stages = frozen_stages
        frozen = ([self.conv1, self.bn1] if frozen_stages >= 0 else [])
        frozen += [getattr(self, f"layer{i}") for i in range(1, frozen_stages + 1)]
        for module in frozen:
            for param in module.parameters():
                param.requires_grad_(False)

    @staticmethod
    def _make_layer(in_channels: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=BN_EPS),
            )
        layers = [Bottleneck(in_channels, planes, stride, downsample)]
        layers += [Bottleneck(out_channels, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers), out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            outs.append(x)
        return tuple(outs)


def resnet50(frozen_stages: int = -1) -> ResNet:
    return ResNet((3, 4, 6, 3), frozen_stages)
