"""Classic channel criteria as ``torch_pruning`` importance objects (higher = more important).

Torch-Pruning provides ``l1`` (``GroupMagnitudeImportance``) and ``bn`` (``BNScaleImportance``)
as they are; this module adds what they lack for a search on a fixed model:

* :class:`CalibratedTaylorImportance`: Taylor importance on gradients stored at calibration, so
  scores do not depend on whatever ``.grad`` holds later;
* :class:`MeanActivationImportance`: the mean ``|input|`` a channel feeds its consumers;
* :class:`SeededRandomImportance`: random scores reproducible per (seed, group).

:func:`pruning_env.importance.make_importance` builds any criterion by name.
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

from pruning_env.calibration import calibration_batches, frozen

__all__ = [
    "CalibratedTaylorImportance",
    "MeanActivationImportance",
    "SeededRandomImportance",
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
            with frozen(model):
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
