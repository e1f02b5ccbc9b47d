"""VGG-11/16/19 with batch norm, in the usual CIFAR form (Simonyan & Zisserman, 2015).

The convolutional part is the standard configuration (3x3 conv + BN + ReLU, 2x2 max-pool after
each stage); the ImageNet classifier (three fully connected layers on a 7x7 map) is replaced by
global average pooling and one ``Linear(512, num_classes)``, as CIFAR ports usually do. At 32x32
the five max-pools leave a 1x1 map, so the pooling is exact there and any larger input also works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["VGG", "VGG_CONFIGS", "vgg11", "vgg16", "vgg19"]

# Output channels of each 3x3 conv; "M" is a 2x2 max-pool with stride 2.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """``features`` (conv/BN/ReLU/max-pool stack), ``avgpool``, ``classifier`` (one linear layer)."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(v)
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _vgg(name: str, num_classes: int, input_size: int, **kwargs) -> VGG:
    n_pools = VGG_CONFIGS[name].count("M")
    if input_size < 2**n_pools:
        raise ValueError(f"{name} needs input_size >= {2**n_pools} ({n_pools} max-pools), got {input_size}")
    return VGG(VGG_CONFIGS[name], num_classes=num_classes, **kwargs)


def vgg11(num_classes: int = 10, input_size: int = 32, **kwargs) -> VGG:
    """VGG-11 with BN (9.2 M parameters for 10 classes)."""
    return _vgg("vgg11", num_classes, input_size, **kwargs)


def vgg16(num_classes: int = 10, input_size: int = 32, **kwargs) -> VGG:
    """VGG-16 with BN (14.7 M parameters for 10 classes)."""
    return _vgg("vgg16", num_classes, input_size, **kwargs)


def vgg19(num_classes: int = 10, input_size: int = 32, **kwargs) -> VGG:
    """VGG-19 with BN (20.0 M parameters for 10 classes)."""
    return _vgg("vgg19", num_classes, input_size, **kwargs)
