"""MobileNetV2 and EfficientNet-B0 from torchvision, adapted to 32x32 inputs.

Both networks downsample 32x by design (224 -> 7). On a 32x32 CIFAR image that leaves a 1x1
map after the fourth stride-2 stage, which wastes most of the network. When
``input_size <= 64`` these builders therefore make the same changes CIFAR ports usually make:

* MobileNetV2: the stem convolution gets stride 1 instead of 2, and the first stride-2
  inverted-residual stage (24 channels) gets stride 1. Total stride 8: 32x32 -> 4x4 final map.
* EfficientNet-B0: the stem convolution gets stride 1 instead of 2. Total stride 16:
  32x32 -> 2x2 final map.

Between 65 and 127 pixels and at native resolution (``input_size >= 128``) the torchvision
architectures are left as they are. Layer names and shapes never change, only strides, so the
modules remain torchvision's own classes (``features``, ``classifier``).

In every case the in-place modules (``ReLU6``/``SiLU``/``Dropout`` with ``inplace=True``) are made
non-inplace: the outputs are identical, but forward hooks that keep a BN output (activation
statistics, attention gates) would otherwise see it overwritten by the module that follows.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

__all__ = ["SMALL_INPUT_MAX", "mobilenet_v2", "efficientnet_b0"]

SMALL_INPUT_MAX = 64  # pixels: inputs up to this side length get the CIFAR stride changes

# torchvision's MobileNetV2 setting: expansion t, channels c, repeats n, first stride s.
_MOBILENET_V2_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if getattr(m, "inplace", False) is True:  # activations and dropout
            m.inplace = False
    return model


def _set_stem_stride_1(model: nn.Module) -> None:
    stem_conv = model.features[0][0]
    assert isinstance(stem_conv, nn.Conv2d), type(stem_conv)
    stem_conv.stride = (1, 1)


def mobilenet_v2(num_classes: int = 10, input_size: int = 32, **kwargs) -> nn.Module:
    """torchvision ``mobilenet_v2(weights=None)``; stem and 24-channel stage at stride 1 for small inputs.

    Extra keyword arguments (``width_mult``, ``dropout``, ...) go to torchvision's ``MobileNetV2``.
    """
    small = input_size <= SMALL_INPUT_MAX
    if small and "inverted_residual_setting" not in kwargs:
        setting = [list(row) for row in _MOBILENET_V2_SETTING]
        setting[1][3] = 1  # first stride-2 stage (24 channels) -> stride 1
        kwargs["inverted_residual_setting"] = setting
    kwargs.setdefault("weights", None)
    model = tvm.mobilenet_v2(num_classes=num_classes, **kwargs)
    if small:
        _set_stem_stride_1(model)
    return _no_inplace(model)


def efficientnet_b0(num_classes: int = 10, input_size: int = 32, **kwargs) -> nn.Module:
    """torchvision ``efficientnet_b0(weights=None)``; stem at stride 1 for small inputs.

    Extra keyword arguments (``dropout``, ``stochastic_depth_prob``, ...) go to torchvision.
    """
    kwargs.setdefault("weights", None)
    model = tvm.efficientnet_b0(num_classes=num_classes, **kwargs)
    if input_size <= SMALL_INPUT_MAX:
        _set_stem_stride_1(model)
    return _no_inplace(model)
