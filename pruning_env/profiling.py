"""Data-aware statistics per pruning group: the data features of the RL observation.

:func:`profile_groups` summarises, for every group of a :class:`~pruning_env.engine.ModelGraph`,
how the data flows through its channels. The feature map of a group is what its channels feed to
the layers that consume them (the group's ``in_layers``): the post-BN/ReLU output of a conv block,
or, for a residual group, every block output of the stage (each distinct tensor counted once per
forward pass). Statistics come from the first ``num_batches * batch_size`` training samples
(class-balanced, not augmented), the model in eval mode.

Every feature lies in ``[0, 1]`` (``GroupProfile.low`` / ``high``):

======================== ==========================================================================
feature                  definition (``g`` = mean gate per channel, ``a`` = activation, ``z`` = GAP of ``a``)
======================== ==========================================================================
att_mean                 mean of ``g`` over the group's channels
att_std                  2 x std of ``g`` over channels (a [0, 1] variable has std <= 0.5)
att_q10/q50/q90          10 / 50 / 90 % quantiles of ``g``
att_entropy              entropy of ``g / sum(g)`` divided by ``log(channels)`` (1 = uniform attention)
att_low_share            share of channels with ``g < gate_threshold`` (default 0.1)
att_data_std             2 x mean over channels of the std of the gate over samples (input dependence)
act_mean                 ``m / (1 + m)``, ``m`` = mean ``|a|`` over channels, samples and positions
act_spread               mean over channels of ``s_c / (m_c + s_c)`` (``s_c`` std, ``m_c`` mean of ``|a|``)
act_channel_dispersion   ``std_c(m_c) / (mean_c(m_c) + std_c(m_c))``: how unequal the channels are
act_zero_share           share of activations that are exactly 0 (after ReLU)
act_dead_share           share of channels that are 0 at >= 99% of positions
fisher_mean              mean over channels of ``F / (1 + F)``, ``F`` = between-class / within-class
                         variance of ``z`` (Fisher ratio)
fisher_q90               90 % quantile over channels of ``F / (1 + F)``
class_selectivity        mean over channels of ``(mu_max - mu_rest) / (mu_max + mu_rest)`` of the class
                         means of mean ``|a|`` (Morcos et al., 2018)
======================== ==========================================================================

Without attention statistics the ``att_*`` features take the values of uniform full attention
(mean, quantiles and entropy 1, the rest 0) and ``GroupProfile.meta["has_attention"]`` is false.
Profiles are cached as JSON, keyed by the model's weights, the data, the graph, the attention
statistics and the settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pruning_env.cache import atomic_write_json, cache_dir, cached_json, stable_hash, state_dict_hash
from pruning_env.calibration import calibration_batches, dataset_key, frozen, training_split
from pruning_env.importance.gates import GateStats

__all__ = ["GroupProfile", "profile_groups", "FEATURE_NAMES"]

PROFILE_VERSION = 1
ATTENTION_FEATURES = ["att_mean", "att_std", "att_q10", "att_q50", "att_q90", "att_entropy", "att_low_share",
                      "att_data_std"]
ACTIVATION_FEATURES = ["act_mean", "act_spread", "act_channel_dispersion", "act_zero_share", "act_dead_share"]
CLASS_FEATURES = ["fisher_mean", "fisher_q90", "class_selectivity"]
FEATURE_NAMES = ATTENTION_FEATURES + ACTIVATION_FEATURES + CLASS_FEATURES
_NEUTRAL_ATTENTION = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # uniform full attention
_ZERO = 1e-6  # |a| at or below this counts as a zero activation


@dataclass
class GroupProfile:
    """Per-group data features: ``features[i]`` describes ``group_names[i]`` (graph order)."""

    group_names: list[str]
    feature_names: list[str]
    features: np.ndarray  # float32 [num_groups, num_features]
    low: np.ndarray  # float32 [num_features]
    high: np.ndarray  # float32 [num_features]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32).reshape(len(self.group_names), -1)
        self.low = np.asarray(self.low, dtype=np.float32)
        self.high = np.asarray(self.high, dtype=np.float32)
        if self.features.shape[1] != len(self.feature_names):
            raise ValueError(f"{self.features.shape[1]} feature columns for {len(self.feature_names)} names")

    def row(self, group: int | str) -> dict[str, float]:
        """Features of one group (index or name) by feature name."""
        i = group if isinstance(group, int) else self.group_names.index(group)
        return dict(zip(self.feature_names, map(float, self.features[i])))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "dataawareprune.profile", "version": PROFILE_VERSION, "group_names": self.group_names,
                "feature_names": self.feature_names, "features": self.features.tolist(),
                "low": self.low.tolist(), "high": self.high.tolist(), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupProfile:
        if d.get("format") != "dataawareprune.profile":
            raise ValueError("not a DataAwarePrune group profile (format 'dataawareprune.profile')")
        return cls(list(d["group_names"]), list(d["feature_names"]), np.asarray(d["features"], dtype=np.float32),
                   np.asarray(d["low"]), np.asarray(d["high"]), dict(d.get("meta") or {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> GroupProfile:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _attention_features(g: torch.Tensor, sample_std: torch.Tensor | None, threshold: float) -> list[float]:
    g = g.double().clamp(0, 1)
    q = torch.quantile(g, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    p = g / g.sum().clamp_min(1e-12)
    ent = float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(len(g))) if len(g) > 1 else 1.0
    data_std = float(2 * sample_std.double().mean()) if sample_std is not None else 0.0
    std = float(2 * g.std(unbiased=False))
    return [float(g.mean()), std, *map(float, q), ent, float((g < threshold).double().mean()), data_std]


class _Accumulator:
    """Running sums for one group's feature map."""

    def __init__(self, channels: int) -> None:
        self.abs_sum = torch.zeros(channels, dtype=torch.float64)
        self.sq_sum = torch.zeros(channels, dtype=torch.float64)
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.zeros = torch.zeros(channels, dtype=torch.float64)
        self.count = 0  # positions per channel (samples x H x W, over every tensor)
        self.z: list[torch.Tensor] = []  # per batch: B x C GAP of a (averaged over the group's tensors)
        self.za: list[torch.Tensor] = []  # per batch: B x C GAP of |a|
        self.batch_z: torch.Tensor | None = None
        self.batch_za: torch.Tensor | None = None
        self.tensors = 0

    def add(self, a: torch.Tensor) -> None:  # a: B x C x H x W (or B x C)
        a = a.double() if a.dim() == 4 else a.double()[:, :, None, None]
        ab = a.abs()
        self.abs_sum += ab.sum((0, 2, 3))
        self.sq_sum += (a * a).sum((0, 2, 3))
        self.sum += a.sum((0, 2, 3))
        self.zeros += (ab <= _ZERO).sum((0, 2, 3))
        self.count += a.shape[0] * a.shape[2] * a.shape[3]
        z, za = a.mean((2, 3)), ab.mean((2, 3))
        self.batch_z = z if self.batch_z is None else self.batch_z + z
        self.batch_za = za if self.batch_za is None else self.batch_za + za
        self.tensors += 1

    def end_batch(self) -> None:
        if self.batch_z is not None:
            self.z.append(self.batch_z / self.tensors)
            self.za.append(self.batch_za / self.tensors)
        self.batch_z = self.batch_za = None
        self.tensors = 0

    def features(self, labels: torch.Tensor, num_classes: int) -> list[float]:
        n = max(self.count, 1)
        m_c = self.abs_sum / n
        mean_c = self.sum / n
        s_c = (self.sq_sum / n - mean_c**2).clamp_min(0).sqrt()
        m = float(m_c.mean())
        spread = float((s_c / (m_c + s_c).clamp_min(1e-12)).mean())
        disp = float(m_c.std(unbiased=False) / (m_c.mean() + m_c.std(unbiased=False)).clamp_min(1e-12))
        zero_c = self.zeros / n
        z, za = torch.cat(self.z), torch.cat(self.za)
        onehot = torch.nn.functional.one_hot(labels, num_classes).double()  # N x K
        nk = onehot.sum(0).clamp_min(1)
        present = onehot.sum(0) > 0
        mu_k = (onehot.T @ z) / nk[:, None]  # K x C
        mu = z.mean(0)
        between = ((onehot.sum(0)[:, None] * (mu_k - mu) ** 2).sum(0)) / len(z)
        within = ((z - onehot @ mu_k) ** 2).mean(0)
        fisher = between / (within + 1e-12 + 1e-6 * z.var(0, unbiased=False).mean())
        fn = fisher / (1 + fisher)
        mua = ((onehot.T @ za) / nk[:, None])[present]  # K' x C, non-negative
        top = mua.max(0).values
        rest = (mua.sum(0) - top) / max(int(present.sum()) - 1, 1)
        sel = ((top - rest) / (top + rest).clamp_min(1e-12)).clamp(0, 1)
        return [m / (1 + m), spread, disp, float(zero_c.mean()), float((zero_c >= 0.99).double().mean()),
                float(fn.mean()), float(torch.quantile(fn, 0.9)), float(sel.mean())]


@torch.no_grad()
def _activation_features(model: nn.Module, graph: Any, data: Any, num_samples: int, batch_size: int,
                         num_classes: int) -> list[list[float]]:
    accs = [_Accumulator(g.channels) for g in graph.groups]
    seen: list[set] = [set() for _ in graph.groups]

    def hook(i: int, c: Any):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape))
            if key in seen[i]:
                return  # the same tensor read by another consumer (e.g. conv1 and the shortcut)
            seen[i].add(key)
            width = graph.groups[i].channels
            if c.identity:
                a = x
            elif not c.linear:
                a = x.new_zeros(x.shape[0], width, *x.shape[2:]).index_copy(1, c.root_idxs, x[:, c.idxs])
            else:  # a flattened C x H x W feature: average the positions of each channel
                flat = x.reshape(x.shape[0], -1)
                a = flat.new_zeros(x.shape[0], width).index_reduce_(1, c.root_idxs, flat[:, c.idxs], "mean",
                                                                    include_self=False)
            accs[i].add(a)

        return pre_hook

    def reset(module: nn.Module, args: tuple) -> None:  # a new forward pass: new tensors
        for s in seen:
            s.clear()

    handles = [model.register_forward_pre_hook(reset)]
    for g in graph.groups:
        for c in graph.consumers(g.index):
            handles.append(model.get_submodule(c.name).register_forward_pre_hook(hook(g.index, c)))
    labels = []
    try:
        with frozen(model):
            for x, y in calibration_batches(data, num_samples, batch_size):
                model(x)
                for acc in accs:
                    acc.end_batch()
                labels.append(y)
    finally:
        for h in handles:
            h.remove()
    y = torch.cat(labels)
    return [acc.features(y, num_classes) if acc.z else [0.0] * 8 for acc in accs]


def profile_groups(
    model: nn.Module,
    graph: Any,
    data: Any,
    attention_stats: GateStats | None = None,
    num_batches: int = 8,
    batch_size: int = 64,
    gate_threshold: float = 0.1,
    cache: bool = True,
) -> GroupProfile:
    """Data features of every group of ``graph`` (see the module docstring for their definitions).

    Args:
        model: the network ``graph`` was built on (or a copy with the same layer names).
        graph: its :class:`~pruning_env.engine.ModelGraph`.
        data: a ``DatasetSplits`` (its train split is used) or a ``TensorImageDataset``.
        attention_stats: trained :class:`~pruning_env.importance.gates.GateStats`, or ``None``.
        num_batches, batch_size: calibration data = the first ``num_batches * batch_size`` samples.
        gate_threshold: gate below which a channel counts as near-zero (``att_low_share``).
        cache: load/store the profile under the cache folder.
    """
    ds = training_split(data)
    num_classes = int(getattr(data, "num_classes", 0) or int(ds.y.max()) + 1)
    settings = {"num_batches": num_batches, "batch_size": batch_size, "gate_threshold": gate_threshold}

    def build() -> dict[str, Any]:
        act = _activation_features(model, graph, ds, num_batches * batch_size, batch_size, num_classes)
        rows = []
        for g, a in zip(graph.groups, act):
            if attention_stats is None:
                att = list(_NEUTRAL_ATTENTION)
            else:
                key = attention_stats.aliases.get(g.name, g.name)
                att = _attention_features(attention_stats.mean[key], attention_stats.std.get(key), gate_threshold)
            rows.append([min(max(v, 0.0), 1.0) for v in att + a])
        meta = {"has_attention": attention_stats is not None, "data": dataset_key(data),
                "samples": min(num_batches * batch_size, len(ds)), **settings}
        return GroupProfile([g.name for g in graph.groups], list(FEATURE_NAMES), np.asarray(rows),
                            np.zeros(len(FEATURE_NAMES)), np.ones(len(FEATURE_NAMES)), meta).to_dict()

    if not cache:
        return GroupProfile.from_dict(build())
    key = stable_hash({
        "version": PROFILE_VERSION, "weights": state_dict_hash(model), "data": dataset_key(data),
        "graph": graph.signature, "attention": attention_stats.fingerprint() if attention_stats else None,
        "settings": settings,
    })
    return GroupProfile.from_dict(cached_json(cache_dir("profiles") / f"profile_{key}.json", build,
                                              what="data profile of the groups"))
