"""Cost units and the MACs proxy: what a plan's cost is the sum of, and its MACs without surgery.

:func:`cost_units` lists the layers that price a plan, in forward order: ``graph.layers`` (convs,
depthwise convs, linears, BNs) plus the activations and pools between them, each with the channel
groups that prune its input and output channels. Both cost models are sums over these units:
:class:`MacsModel` / :func:`macs_for_kept` here count MACs analytically, the way Torch-Pruning's
``count_ops_and_params`` counts them on the physically pruned model, and the per-layer latency table
(:mod:`pruning_env.latency`) times each unit.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from .engine import LayerInfo, ModelGraph
from .tracing import trace_leaf_calls

__all__ = ["CostUnit", "cost_units", "kept_vector", "MacsModel", "macs_for_kept"]

# Modules Torch-Pruning's op counter prices (by output / input elements); mirrored by MacsModel.
_TP_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.PReLU)
_ACTIVATIONS = _TP_ACTIVATIONS + (nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Mish)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)


@dataclass(frozen=True)
class CostUnit:
    """A priced layer; ``kind`` in conv, depthwise, linear, bn, act, pool. Single-axis kinds use ``out_*``."""

    name: str
    kind: str
    module: nn.Module
    in_channels: int
    out_channels: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_groups: tuple[int, ...]
    out_groups: tuple[int, ...]

    @property
    def two_axes(self) -> bool:
        return self.kind in ("conv", "linear")


_UNITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cost_units(graph: ModelGraph) -> list[CostUnit]:
    """``graph.layers`` plus the activations and pools between them, in forward order (cached per graph).

    An activation or pool takes the channel groups of the last layer with parameters before it when its
    channel count matches (conv -> BN -> ReLU; the ReLU after a residual add follows the BN of the branch).
    """
    if graph in _UNITS:
        return _UNITS[graph]
    info: dict[str, LayerInfo] = {li.name: li for li in graph.layers}
    units: list[CostUnit] = []
    seen: set[str] = set()
    owner: tuple[int, tuple[int, ...]] | None = None  # (channels, out_groups) of the last layer
    for name, m, ish, osh in trace_leaf_calls(graph.model, graph.example_inputs):
        if ish is None:  # the first input is not a tensor: nothing to price
            continue
        if name in info:
            if name in seen:
                continue  # a module called twice: LayerInfo describes its first call
            seen.add(name)
            li = info[name]
            units.append(CostUnit(name, li.kind, m, li.in_channels, li.out_channels, tuple(li.in_shape),
                                  tuple(li.out_shape), tuple(li.in_groups), tuple(li.out_groups)))
            owner = (li.out_channels, tuple(li.out_groups))
        elif isinstance(m, _ACTIVATIONS + _POOLS) and ish:
            c = int(ish[0])
            groups = owner[1] if owner is not None and owner[0] == c else ()
            kind = "pool" if isinstance(m, _POOLS) else "act"
            units.append(CostUnit(name, kind, m, c, c, ish, osh, groups, groups))
    _UNITS[graph] = units
    return units


def kept_vector(channels: np.ndarray, kept: Sequence[int] | np.ndarray) -> np.ndarray:
    """``kept`` as float64, checked against the groups' full ``channels``: one count per group, in ``[1, full]``."""
    k = np.asarray(kept, dtype=np.float64)
    if k.shape != channels.shape:
        raise ValueError(f"expected {channels.size} kept counts (one per group), got shape {k.shape}")
    if np.any(k < 1) or np.any(k > channels):
        bad = int(np.argmax((k < 1) | (k > channels)))
        raise ValueError(f"kept[{bad}] = {k[bad]:g} is outside [1, {int(channels[bad])}] (group {bad})")
    return k


def _incidence(units: Sequence[CostUnit], n_groups: int, side: str) -> np.ndarray:
    a = np.zeros((len(units), n_groups))
    for i, u in enumerate(units):
        if side == "out" or u.two_axes:
            for g in (u.out_groups if side == "out" else u.in_groups):
                a[i, g] += 1.0
    return a


class MacsModel:
    """MACs of a plan per sample, analytically, as Torch-Pruning's op counter counts the pruned model.

    Conv: ``H'W' * k * k * kept_out * kept_in / groups`` (+ bias); linear: ``kept_in * kept_out`` (+ bias);
    BN: 2 per element; ReLU-family activations: 1 per output element; pooling: 1 per input element.
    """

    def __init__(self, graph: ModelGraph) -> None:
        units = cost_units(graph)
        self.channels = np.array([g.channels for g in graph.groups], dtype=np.float64)
        self._a_in = _incidence(units, len(self.channels), "in")
        self._a_out = _incidence(units, len(self.channels), "out")
        self._in_full = np.array([u.in_channels for u in units], dtype=np.float64)
        self._out_full = np.array([u.out_channels for u in units], dtype=np.float64)
        c_io, c_o = np.zeros(len(units)), np.zeros(len(units))
        for i, u in enumerate(units):
            m = u.module
            if u.kind in ("conv", "depthwise"):
                spatial, kk = math.prod(u.out_shape[1:]), math.prod(m.kernel_size)
                bias = spatial if m.bias is not None else 0
                if u.kind == "depthwise":  # groups follow the kept channels: one input channel per group
                    c_o[i] = spatial * kk * (m.in_channels // m.groups) + bias
                else:
                    c_io[i], c_o[i] = spatial * kk / m.groups, bias
            elif u.kind == "linear":
                c_io[i], c_o[i] = math.prod(u.out_shape[:-1]), (1 if m.bias is not None else 0)
            elif u.kind == "bn":
                c_o[i] = (2 if getattr(m, "affine", True) else 1) * math.prod(u.in_shape[1:])
            elif u.kind == "act" and isinstance(m, _TP_ACTIVATIONS):
                c_o[i] = math.prod(u.out_shape[1:])
            elif u.kind == "pool":
                c_o[i] = math.prod(u.in_shape[1:])
        self._c_io, self._c_o = c_io, c_o
        self.base_macs = self.predict(self.channels)

    def predict(self, kept: Sequence[int] | np.ndarray) -> int:
        """MACs per sample when group ``i`` keeps ``kept[i]`` channels."""
        removed = self.channels - kept_vector(self.channels, kept)
        k_in = self._in_full - self._a_in @ removed
        k_out = self._out_full - self._a_out @ removed
        return int(round(float(self._c_io @ (k_in * k_out) + self._c_o @ k_out)))


_MACS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def macs_for_kept(graph: ModelGraph, kept: Sequence[int] | np.ndarray) -> int:
    """MACs per sample of ``graph``'s model with ``kept[i]`` channels kept in group ``i`` (no surgery)."""
    if graph not in _MACS:
        _MACS[graph] = MacsModel(graph)
    return _MACS[graph].predict(kept)
