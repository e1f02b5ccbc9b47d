"""Per-group channel scores and data features of a scenario, as the environment consumes them.

This module glues the channel criterion (:mod:`pruning_env.importance`) and the data profile
(:mod:`pruning_env.profiling`): it scores every group's channels once, and computes the
data-aware observation features once, both cached on disk per scenario.

The ``att_*`` observation features are statistics of the group attention gates when the
criterion is group attention (the default). With another criterion they are the same
statistics of that criterion's scores, each group's scores divided by their maximum, so the
agent always sees the distribution of importance that actually decides which channels go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp

from .importance import GateStats, GroupAttentionImportance, make_importance
from .profiling import profile_groups
from .scenario import Scenario

__all__ = ["DataFeatures", "build_data_features"]


@dataclass
class DataFeatures:
    """Channel scores per group and the data features of each group (graph order)."""

    scores: dict[str, torch.Tensor]
    features: np.ndarray  # float32 [groups, features]
    feature_names: list[str]
    low: np.ndarray
    high: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def normalised(self) -> np.ndarray:
        """Features mapped to [0, 1] with the profile's bounds."""
        span = np.maximum(self.high - self.low, 1e-12)
        return np.clip((self.features - self.low) / span, 0.0, 1.0).astype(np.float32)

    def relative(self) -> np.ndarray:
        """Each feature as the group's rank among the network's groups, in ``[0, 1]``.

        0 is the group with the lowest value in this network, 1 the highest; ties share their mean
        rank, and a feature equal in every group (or a single group) is 0.5. Ranks say how a group
        compares with the rest of *this* network, which absolute values do not: an attention mean of
        0.4 is high in one network and low in another. Ranks depend only on the order, so they are
        the same whatever the features' scale.
        """
        x = np.asarray(self.features, dtype=np.float64)
        n = x.shape[0]
        if n < 2:
            return np.full(x.shape, 0.5, dtype=np.float32)
        less = (x[None, :, :] < x[:, None, :]).sum(axis=1)  # per group and feature: groups below it
        ties = (x[None, :, :] == x[:, None, :]).sum(axis=1) - 1  # groups equal to it, itself excluded
        return ((less + ties / 2.0) / (n - 1)).astype(np.float32)


def _stats_from_scores(scores: dict[str, torch.Tensor]) -> GateStats:
    mean = {}
    for name, s in scores.items():
        s = s.float().clamp_min(0)
        top = float(s.max())
        mean[name] = s / top if top > 0 else torch.ones_like(s)
    return GateStats(mean=mean, std={n: torch.zeros_like(v) for n, v in mean.items()},
                     aliases={n: n for n in mean}, meta={"source": "criterion scores"})


def build_data_features(
    scenario: Scenario, importance: str | tp.importance.Importance = "attention", seed: int = 0,
    importance_kwargs: dict[str, Any] | None = None, profile_kwargs: dict[str, Any] | None = None,
) -> DataFeatures:
    """Score every group's channels with ``importance`` and profile the groups on the train split."""
    sc = scenario
    if isinstance(importance, str):
        kw = dict(importance_kwargs or {})
        if importance == "attention" and "steps" not in kw:
            # About three passes over a small training set (digits: 60 steps), at most 300 steps.
            kw["steps"] = int(min(300, max(50, 3 * len(sc.data.train) // 64)))
        imp = make_importance(importance, model=sc.model, graph=sc.graph, data=sc.data, seed=seed, **kw)
        name = importance
    else:
        imp, name = importance, type(importance).__name__
    scores = sc.graph.scores(imp)
    stats = imp.stats if isinstance(imp, GroupAttentionImportance) else _stats_from_scores(scores)
    profile = profile_groups(sc.model, sc.graph, sc.data, attention_stats=stats, **(profile_kwargs or {}))
    return DataFeatures(
        scores=scores, features=profile.features, feature_names=list(profile.feature_names),
        low=profile.low, high=profile.high, meta={"importance": name, **profile.meta},
    )
