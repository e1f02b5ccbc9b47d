"""Other scorings of the trained group-attention gates, for :mod:`benchmarks.criteria` to compare.

The package scores channels one way, the consensus order of
:class:`~pruning_env.importance.GroupAttentionImportance`. The benchmark also measures the scorings
that came before it, on the same trained gates, so that docs/results.md can show what the default
is ahead of:

===================  ==========================================================================
``combine``          score of a channel within its group
===================  ==========================================================================
``consensus``        the package's scoring (:func:`~pruning_env.importance.attention.consensus_order`)
``activation_rank``  mean of its rank by mean gate and by the ``activation`` criterion (version 3's default)
``none``             its mean gate over calibration data (the first default)
``activation``       mean gate x its ``activation`` score relative to the group's mean
``activation_odds``  log-odds of the mean gate + log ``activation`` score
===================  ==========================================================================
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from pruning_env.importance import DEFAULT_COMBINE, GateStats, GroupAttentionImportance
from pruning_env.importance.attention import channel_ranks

__all__ = ["COMBINE", "AttentionScoring"]

COMBINE = ("consensus", "activation_rank", "none", "activation", "activation_odds")


class AttentionScoring(GroupAttentionImportance):
    """Group attention scored with ``combine`` (one of :data:`COMBINE`) instead of the package's scoring.

    Args:
        stats: trained :class:`~pruning_env.importance.GateStats`, e.g. ``make_importance("attention", ...).stats``.
        model: optional; maps modules without a recorded name to names, as for the package's scoring.
        combine: the scoring; ``"consensus"`` is exactly the package's.
    """

    def __init__(self, stats: GateStats, model: nn.Module | None = None, combine: str = DEFAULT_COMBINE) -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {', '.join(map(repr, COMBINE))}, got {combine!r}")
        super().__init__(stats, model)
        self.combine = combine

    def group_scores(self, name: str) -> torch.Tensor:
        """Scores of every channel of the group ``name`` (a group name or any of its out-layers).

        Not for ``consensus``, which needs the group's weights: call the importance on a group.
        """
        if self.combine == "consensus":
            raise ValueError(
                "combine='consensus' needs the group's weights: call the importance on a torch_pruning group"
            )
        key = self.group_key(name)
        s = self.stats.mean[key]
        if self.combine == "none":
            return s
        act = self.stats.activation[key].clamp_min(1e-12)
        if self.combine == "activation":
            return s * act / act.mean()  # relative activation: the group's scale cancels
        if self.combine == "activation_odds":
            g = s.double().clamp(1e-6, 1.0 - 1e-6)
            return (torch.log(g) - torch.log1p(-g) + act.double().log()).float()
        return (channel_ranks(s) + channel_ranks(act)) / 2  # activation_rank

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        if self.combine == "consensus":
            return super().__call__(group)
        key, idx = self.locate(group)
        return self.group_scores(key)[idx].clone()
