"""A network that is not in the model zoo, for the compress tests (``user_model:plain_cnn``)."""

from __future__ import annotations

import torch.nn as nn


def plain_cnn(num_classes: int = 10) -> nn.Module:
    """Three conv-BN-ReLU stages and a linear head, for 3x32x32 images; deterministic initial weights."""
    import torch

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )
