"""CIFAR ResNets (He et al., 2016, section 4.2): ResNet-20/32/44/56 with projection shortcuts.

Three stages of ``n`` basic blocks (widths 16/32/64, stages 2 and 3 start with stride 2), a 3x3
stem without max-pool, global average pooling and a linear head: ``6n + 2`` layers.

Parameter names follow the public pytorch-cifar-models layout (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, projection shortcut ``layer{2,3}.0.downsample.{0,1}``,
head ``fc``) so that their state dicts load with ``strict=True``. The shortcut is "option B": a
1x1 stride-2 convolution plus BN wherever the shape changes, identity elsewhere.

Every ReLU is its own non-inplace module so that forward hooks on a BN or ReLU see the tensor
they were called with (in-place activations would overwrite a hooked BN output).

:class:`CifarResNet` is also the backbone of :func:`pruning_env.models.small.small_resnet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convolutions."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """A ResNet for small images: 3x3 stem, ``len(widths)`` stages of basic blocks, GAP, ``fc``.

    Args:
        blocks: number of basic blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
        widths: output channels per stage; every stage after the first starts with stride 2.
        num_classes: size of the linear head.
        in_channels: channels of the input images.
        stem_width: output channels of the stem; defaults to ``widths[0]``.
        stem_stride: stride of the stem convolution (1 for CIFAR; 2 halves every later map).
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
        stem_width: int | None = None,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise ValueError(f"blocks {tuple(blocks)}, widths {tuple(widths)}: need equal non-zero lengths")
        stem_width = widths[0] if stem_width is None else stem_width
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        in_planes = stem_width
        for i, (n, width) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            # layer1, layer2, ... as in the pretrained state dicts
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _cifar_resnet(depth: int, num_classes: int, **kwargs) -> CifarResNet:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), (16, 32, 64), num_classes=num_classes, **kwargs)


def resnet20(num_classes: int = 10, input_size: int = 32, **kwargs) -> CifarResNet:
    """ResNet-20 (0.27 M parameters); any input size works thanks to global pooling."""
    return _cifar_resnet(20, num_classes, **kwargs)


def resnet32(num_classes: int = 10, input_size: int = 32, **kwargs) -> CifarResNet:
    """ResNet-32 (0.46 M parameters)."""
    return _cifar_resnet(32, num_classes, **kwargs)


def resnet44(num_classes: int = 10, input_size: int = 32, **kwargs) -> CifarResNet:
    """ResNet-44 (0.66 M parameters)."""
    return _cifar_resnet(44, num_classes, **kwargs)


def resnet56(num_classes: int = 10, input_size: int = 32, **kwargs) -> CifarResNet:
    """ResNet-56 (0.85 M parameters)."""
    return _cifar_resnet(56, num_classes, **kwargs)
