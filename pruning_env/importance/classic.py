"""Classic channel criteria as ``torch_pruning`` importance objects, and the criteria registry.

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
               activation rank (``combine=`` picks another way)
=============  ===================================================================================

Higher scores mean more important; :func:`make_importance` builds any of them by name.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch_pruning.pruner import function

from pruning_env.importance.attention import GroupAttentionImportance, _frozen, _split, calibration_batches

__all__ = [
    "CalibratedTaylorImportance",
    "MeanActivationImportance",
    "SeededRandomImportance",
    "IMPORTANCES",
    "make_importance",
    "available_importances",
]


def _module_names(model: nn.Module | None) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()} if model is not None else {}


class CalibratedTaylorImportance(tp.importance.GroupTaylorImportance):
    """First-order Taylor importance (Molchanov et al., CVPR 2019) on stored calibration gradients.

    :meth:`calibrate` accumulates the gradient of the mean cross-entropy over a few training
    batches and keeps a copy, so scoring does not depend on whatever ``.grad`` holds later.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._grads: dict[str, torch.Tensor] = {}
        self._names: dict[nn.Module, str] = {}

    def calibrate(
        self, model: nn.Module, data: Any, num_batches: int = 8, batch_size: int = 64
    ) -> CalibratedTaylorImportance:
        self._names = _module_names(model)
        grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        was_training = model.training
        saved = {n: p.grad for n, p in model.named_parameters()}
        model.eval()  # BN statistics stay untouched
        try:
            for x, y in calibration_batches(data, num_batches * batch_size, batch_size):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                for n, p in model.named_parameters():
                    if p.grad is not None:
                        grads[n] += p.grad / num_batches
        finally:
            model.train(was_training)
            for n, p in model.named_parameters():
                p.grad = saved[n]
        self._grads = grads
        return self

    def __call__(self, group: tp.Group) -> torch.Tensor:
        if not self._grads:
            return super().__call__(group)  # Torch-Pruning's behaviour: use the current .grad
        saved = []
        for dep, _ in group:
            mod = dep.target.module
            name = dep.target._name or self._names.get(mod)
            for pname in ("weight", "bias"):
                p = getattr(mod, pname, None)
                g = self._grads.get(f"{name}.{pname}")
                if isinstance(p, torch.Tensor) and g is not None and g.shape == p.shape:
                    saved.append((p, p.grad))
                    p.grad = g
        try:
            return super().__call__(group)
        finally:
            for p, g in saved:
                p.grad = g


class MeanActivationImportance(tp.importance.GroupMagnitudeImportance):
    """Mean absolute activation a channel feeds into its consumers, averaged over the group.

    For a conv block this is the mean post-ReLU activation of the channel; for a residual group it
    is averaged over every block reading the stream. Call :meth:`calibrate` first.
    """

    def __init__(self, group_reduction: str = "mean", normalizer: str | None = "mean") -> None:
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer)
        self._act: dict[str, torch.Tensor] = {}
        self._names: dict[nn.Module, str] = {}

    @torch.no_grad()
    def calibrate(
        self, model: nn.Module, data: Any, num_batches: int = 8, batch_size: int = 64
    ) -> MeanActivationImportance:
        self._names = _module_names(model)
        sums: dict[str, torch.Tensor] = {}
        count = {"n": 0}

        def hook(name: str) -> Callable:
            def pre_hook(module: nn.Module, args: tuple) -> None:
                x = args[0].detach().abs()
                # per sample: spatial (conv) or token (linear) mean, then summed over the batch
                s = x.mean((2, 3)) if x.dim() == 4 else x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)
                sums[name] = sums.get(name, 0) + s.sum(0).double()

            return pre_hook

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            with _frozen(model):
                for x, _y in calibration_batches(data, num_batches * batch_size, batch_size):
                    model(x)
                    count["n"] += x.shape[0]
        finally:
            for h in handles:
                h.remove()
        self._act = {n: (s / count["n"]).float() for n, s in sums.items()}
        return self

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        if not self._act:
            raise RuntimeError("MeanActivationImportance needs calibrate(model, data) before scoring")
        imps, root = [], []
        for i, (dep, idxs) in enumerate(group):
            if dep.handler not in (function.prune_conv_in_channels, function.prune_linear_in_channels):
                continue
            name = dep.target._name or self._names.get(dep.target.module)
            act = self._act.get(name)
            if act is None:
                continue
            imps.append(act[torch.as_tensor(list(idxs), dtype=torch.long)])
            root.append(group[i].root_idxs)
        if not imps:
            return None
        return self._normalize(self._reduce(imps, root), self.normalizer)


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random scores, a function of (seed, root layer name, channel): call order does not matter."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def __call__(self, group: tp.Group) -> torch.Tensor:
        dep, idxs = group[0]
        name = dep.target._name or str(dep.target.module)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        width = max(int(i) for i in idxs) + 1
        return torch.rand(width, generator=gen)[torch.as_tensor(list(idxs), dtype=torch.long)]


# -- registry ----------------------------------------------------------------------------------
def _need(name: str, **things: Any) -> None:
    missing = [k for k, v in things.items() if v is None]
    if missing:
        raise ValueError(f"importance {name!r} needs {', '.join(missing)} (calibration on data)")


def _attention(model=None, graph=None, data=None, seed=0, **kw) -> tp.importance.Importance:
    _need("attention", model=model, graph=graph, data=data)
    return GroupAttentionImportance.fit(model, graph, data, seed=seed, **kw)


def _taylor(model=None, graph=None, data=None, seed=0, num_batches=8, batch_size=64, **kw):
    _need("taylor", model=model, data=data)
    return CalibratedTaylorImportance(**kw).calibrate(model, _split(data), num_batches, batch_size)


def _activation(model=None, graph=None, data=None, seed=0, num_batches=8, batch_size=64, **kw):
    _need("activation", model=model, data=data)
    return MeanActivationImportance(**kw).calibrate(model, _split(data), num_batches, batch_size)


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
