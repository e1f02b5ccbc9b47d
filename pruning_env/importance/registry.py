"""The channel criteria by name: :func:`make_importance` and the registry it reads.

=============  ===================================================================================
name           criterion
=============  ===================================================================================
``l1``         group L1 norm of the weights of every coupled layer (Torch-Pruning ``GroupMagnitudeImportance(p=1)``)
``bn``         |gamma| of the group's BN layers, Network Slimming (Torch-Pruning ``BNScaleImportance``)
``taylor``     |w * dL/dw| summed per channel over the group (Torch-Pruning ``GroupTaylorImportance``),
               on gradients accumulated over calibration batches by :meth:`CalibratedTaylorImportance.calibrate`
``random``     uniform random scores, reproducible per (seed, group)
``activation`` mean |input| a channel feeds to the layers consuming it, over calibration batches
``attention``  group attention (:mod:`pruning_env.importance.attention`), the default: the first 30 % of
               a group removed where gate, activation and L1 ranks agree, the rest by gate and
               activation rank
=============  ===================================================================================

Higher scores mean more important. ``taylor``, ``activation`` and ``random`` are in
:mod:`pruning_env.importance.classic`; ``l1`` and ``bn`` are Torch-Pruning's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn
import torch_pruning as tp

from pruning_env.calibration import training_split
from pruning_env.importance.attention import GroupAttentionImportance
from pruning_env.importance.classic import CalibratedTaylorImportance, MeanActivationImportance, SeededRandomImportance

__all__ = ["IMPORTANCES", "make_importance", "available_importances"]


def _need(name: str, **things: Any) -> None:
    missing = [k for k, v in things.items() if v is None]
    if missing:
        raise ValueError(f"importance {name!r} needs {', '.join(missing)} (calibration on data)")


def _attention(model=None, graph=None, data=None, seed=0, **kw) -> tp.importance.Importance:
    _need("attention", model=model, graph=graph, data=data)
    return GroupAttentionImportance.fit(model, graph, data, seed=seed, **kw)


def _taylor(model=None, graph=None, data=None, seed=0, num_batches=8, batch_size=64, **kw):
    _need("taylor", model=model, data=data)
    return CalibratedTaylorImportance(**kw).calibrate(model, training_split(data), num_batches, batch_size)


def _activation(model=None, graph=None, data=None, seed=0, num_batches=8, batch_size=64, **kw):
    _need("activation", model=model, data=data)
    return MeanActivationImportance(**kw).calibrate(model, training_split(data), num_batches, batch_size)


IMPORTANCES: dict[str, Callable[..., tp.importance.Importance]] = {
    "attention": _attention,
    "l1": lambda model=None, graph=None, data=None, seed=0, **kw: tp.importance.GroupMagnitudeImportance(p=1, **kw),
    "bn": lambda model=None, graph=None, data=None, seed=0, **kw: tp.importance.BNScaleImportance(**kw),
    "taylor": _taylor,
    "random": lambda model=None, graph=None, data=None, seed=0, **kw: SeededRandomImportance(seed, **kw),
    "activation": _activation,
}


def available_importances() -> list[str]:
    """Names :func:`make_importance` accepts, the default (``attention``) first."""
    return list(IMPORTANCES)


def make_importance(
    name: str = "attention",
    model: nn.Module | None = None,
    graph: Any = None,
    data: Any = None,
    seed: int = 0,
    **kw: Any,
) -> tp.importance.Importance:
    """Build the channel criterion ``name`` (see the module docstring).

    ``attention``, ``taylor`` and ``activation`` calibrate on ``data`` (a ``DatasetSplits``, whose
    train split is used, or a ``TensorImageDataset``) with ``model``; ``attention`` also needs the
    ``graph`` and caches its gates. ``seed`` seeds ``random`` and the attention training. Other
    keyword arguments go to the criterion's builder (e.g. ``steps=`` for attention).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones), or missing model/data.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in IMPORTANCES:
        raise ValueError(f"unknown importance {name!r}; valid names: {', '.join(available_importances())}")
    return IMPORTANCES[key](model=model, graph=graph, data=data, seed=seed, **kw)
