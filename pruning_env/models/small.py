"""A small residual CNN for the default scenario (scikit-learn digits served as 3x32x32).

It is a two-stage :class:`~pruning_env.models.cifar_resnet.CifarResNet`: a 3x3 stem (3 -> 32),
two basic blocks at 32 channels, two at 64 channels (the first with stride 2 and a 1x1
projection shortcut), global average pooling and a linear head: 170 thousand parameters, about
73 M multiply-accumulates per 32x32 image. It keeps what makes pruning non-trivial -- residual
adds that couple channels across blocks, a projection shortcut -- and trains to 98% test
accuracy on digits in about two minutes on two CPU cores.

Why 32/64 channels: pruned widths are multiples of 8 by default (``round_to=8``, what CPU and GPU
kernels run fast), and at 16/32 channels a group had only 2-4 such widths, so every plan at a 0.5
latency target was nearly the same network.

Why a stride-1 stem by default: with ``stem_stride=2`` (16x16 first stage, ~5x cheaper to train)
the network is so small that even at batch 64 its CPU latency is dominated by per-layer
framework overhead, so channel pruning cannot make it meaningfully faster and latency targets
such as 0.5x become unreachable. At full resolution convolutions dominate, as in real CNNs.
"""

from __future__ import annotations

from collections.abc import Sequence

from pruning_env.models.cifar_resnet import CifarResNet

__all__ = ["small_resnet"]


def small_resnet(
    num_classes: int = 10,
    input_size: int = 32,
    widths: Sequence[int] = (32, 64),
    blocks: Sequence[int] = (2, 2),
    stem_stride: int = 1,
    in_channels: int = 3,
    **kwargs,
) -> CifarResNet:
    """Small two-stage ResNet; ``widths``/``blocks`` set channels and basic blocks per stage."""
    return CifarResNet(
        blocks, widths, num_classes=num_classes, in_channels=in_channels, stem_stride=stem_stride, **kwargs
    )
