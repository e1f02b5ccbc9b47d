"""Model zoo: the base networks the pruning environment knows by name.

Every builder has the signature ``builder(num_classes=10, input_size=32, **kwargs) -> nn.Module``
and returns a freshly initialised model; :func:`build_model` looks one up by name. A user's own
``nn.Module`` does not need to be registered: the environment accepts it as it is.

===================  =====================================================================
name                 model
===================  =====================================================================
``resnet20..56``     CIFAR ResNets, state-dict compatible with pytorch-cifar-models weights
``vgg11/16/19``      VGG with BN, global-pool + linear head for 32x32 inputs
``mobilenet_v2``     torchvision MobileNetV2, strides reduced for inputs <= 64 px
``efficientnet_b0``  torchvision EfficientNet-B0, stem stride 1 for inputs <= 64 px
``small_resnet``     ~43 k-parameter two-stage ResNet for the digits scenario
===================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pruning_env.models.cifar_resnet import BasicBlock, CifarResNet, resnet20, resnet32, resnet44, resnet56
from pruning_env.models.mobile import efficientnet_b0, mobilenet_v2
from pruning_env.models.small import small_resnet
from pruning_env.models.vgg import VGG, vgg11, vgg16, vgg19

__all__ = [
    "MODELS",
    "build_model",
    "available_models",
    "BasicBlock",
    "CifarResNet",
    "VGG",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
    "small_resnet": small_resnet,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int = 10, input_size: int = 32, **kwargs) -> nn.Module:
    """Build the registered model ``name`` (case-insensitive) for ``num_classes`` classes.

    ``input_size`` is the side length of the (square) input images; the mobile networks use it
    to pick strides, the others accept any size. Extra keyword arguments go to the builder.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(available_models())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return MODELS[key](num_classes=num_classes, input_size=input_size, **kwargs)
