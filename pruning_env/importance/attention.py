"""The group attention criterion: channel scores from trained gates, as a ``torch_pruning`` importance.

:class:`GroupAttentionImportance` turns the :class:`~pruning_env.importance.gates.GateStats` of
trained group attention (:mod:`pruning_env.importance.gates`) into one score per channel of a
Torch-Pruning group, and :meth:`GroupAttentionImportance.fit` trains the gates or loads them from
the on-disk cache. The score is the channel's position in a removal order,
:func:`consensus_order` (:data:`DEFAULT_COMBINE`): the first 30 % of a group's channels to go
are those whose mean rank by mean gate, by the ``activation`` criterion and by the ``l1``
criterion is lowest; the rest go by the mean of the gate and activation ranks alone. The gates of
the channels the attention keeps saturate near 1, so the gates alone order them by noise; the
activation rank orders them, and a removal all three signals agree on is the safe one at mild
pruning. Other scorings of the same gates, and how they compare, are in
``benchmarks/attention_scorings.py`` and docs/results.md.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from pruning_env.cache import cache_dir, cached_tensors, stable_hash, state_dict_hash
from pruning_env.calibration import dataset_key
from pruning_env.importance.gates import ATTENTION_VERSION, GateStats, train_group_attention

__all__ = [
    "ATTENTION_VERSION",
    "DEFAULT_COMBINE",
    "CONSENSUS_SHARE",
    "GroupAttentionImportance",
    "channel_ranks",
    "consensus_order",
]

# The scoring GroupAttentionImportance applies, recorded with ATTENTION_VERSION by
# ``pruning_env.importance.scoring_version``: give a new scoring a new name, so that runs searched
# with the old one are not mixed with new ones.
DEFAULT_COMBINE = "consensus"
CONSENSUS_SHARE = 0.3  # share of a group's channels removed in the consensus order first

# every training setting with its default: all of them key the cache, so a new default trains anew
_TRAIN_DEFAULTS = {k: p.default for k, p in inspect.signature(train_group_attention).parameters.items()
                   if p.default is not inspect.Parameter.empty}


def channel_ranks(t: torch.Tensor) -> torch.Tensor:
    """Ranks of ``t`` scaled to ``[0, 1]`` (0 = smallest; tied values share their average rank)."""
    _, inverse, counts = torch.unique(t.flatten(), return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    r = (first + (counts - 1) / 2.0)[inverse].to(torch.float32)
    return r / max(1, t.numel() - 1)


def _lex_order(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """Indices sorted by ``primary``, ties by ``secondary``, then by index (ascending)."""
    o = torch.argsort(secondary, stable=True)
    return o[torch.argsort(primary[o], stable=True)]


def consensus_order(
    gate: torch.Tensor, act: torch.Tensor, l1: torch.Tensor, share: float = CONSENSUS_SHARE
) -> torch.Tensor:
    """Removal position of every channel of a group, scaled to ``[0, 1]`` (0 = removed first).

    Channels are removed one at a time. A removal made while at most ``share`` of the group is
    gone takes the channel with the lowest mean of its gate, activation and L1 ranks (where all
    three agree a channel is unimportant; ties go by the next rule); later removals take the lowest
    mean of gate and activation ranks. The order is nested: every ratio's set of removed channels
    contains every smaller ratio's.
    """
    c = gate.numel()
    late = (channel_ranks(gate) + channel_ranks(act)) / 2
    early = (channel_ranks(gate) + channel_ranks(act) + channel_ranks(l1)) / 3
    k = sum(1 for j in range(c) if j / c <= share)  # removal j starts with j of c channels gone
    first = _lex_order(early, late)[:k]
    rest = torch.ones(c, dtype=torch.bool)
    rest[first] = False
    rest_idx = rest.nonzero().flatten()
    order = torch.cat([first, rest_idx[torch.argsort(late[rest_idx], stable=True)]])
    pos = torch.empty(c, dtype=torch.float32)
    pos[order] = torch.arange(c, dtype=torch.float32)
    return pos / max(1, c - 1)


class GroupAttentionImportance(tp.importance.Importance):
    """Channel importance from trained group attention (higher = more important).

    A channel's score is its position in the group's :func:`consensus_order` of mean gate,
    ``activation`` score (both from ``stats``) and ``l1`` weight magnitude (from the group's
    weights, when called).

    Looks a group up by its root module's name (Torch-Pruning records it on the dependency
    node), so it scores groups of the model it was trained on, of deep copies of it, and groups
    rooted at any out-layer of a coupled set (e.g. a BN or another conv of a residual stage).

    Args:
        stats: trained :class:`~pruning_env.importance.gates.GateStats` (with activation scores).
        model: optional; maps modules without a recorded name (other graphs) to names.
    """

    def __init__(self, stats: GateStats, model: nn.Module | None = None) -> None:
        if set(stats.activation) != set(stats.mean):
            raise ValueError("these GateStats carry no activation statistics: train them with train_group_attention")
        self.stats = stats
        self._names = {m: n for n, m in model.named_modules()} if model is not None else {}
        self._l1 = tp.importance.GroupMagnitudeImportance(p=1)  # the ``l1`` criterion

    def group_key(self, name: str) -> str:
        """The key in ``stats`` of the group ``name`` (a group name or any of its out-layers)."""
        key = self.stats.aliases.get(name, name)
        if key not in self.stats.mean:
            raise KeyError(
                f"no attention scores for layer {name!r}; scored groups: {sorted(self.stats.mean)[:8]}... "
                "Train the attention on this architecture (GroupAttentionImportance.fit)."
            )
        return key

    def locate(self, group: tp.Group) -> tuple[str, torch.Tensor]:
        """The key in ``stats`` of a Torch-Pruning ``group`` and the indices of its channels there."""
        dep, idxs = group[0]
        name = dep.target._name or self._names.get(dep.target.module)
        return self.group_key(name), torch.as_tensor(list(idxs), dtype=torch.long)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        key, idx = self.locate(group)
        l1 = self._l1(group).detach().float().cpu()
        return consensus_order(self.stats.mean[key][idx], self.stats.activation[key][idx], l1)

    @classmethod
    def fit(
        cls, model: nn.Module, graph: Any, data: Any, cache: bool = True, **train_kwargs: Any
    ) -> GroupAttentionImportance:
        """Train (or load from the cache) group attention for ``model`` on ``data``'s train split.

        The cache key is the model's weights, the data fingerprint, the graph signature and
        every training setting (``train_kwargs`` merged with the defaults of
        :func:`~pruning_env.importance.gates.train_group_attention`).
        """
        if "combine" in train_kwargs:  # the criterion had several scorings before; say where they went
            raise TypeError(f"combine= is gone: the attention criterion scores with {DEFAULT_COMBINE!r}; the other "
                            "scorings of the gates are in benchmarks/attention_scorings.py")
        unknown = set(train_kwargs) - set(_TRAIN_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown attention settings {sorted(unknown)}; valid: {sorted(_TRAIN_DEFAULTS)}")
        settings = {**_TRAIN_DEFAULTS, **train_kwargs}
        build = lambda: train_group_attention(model, graph, data, **settings).to_dict()
        if not cache:
            return cls(GateStats.from_dict(build()), model)
        key = stable_hash({
            "version": ATTENTION_VERSION, "weights": state_dict_hash(model), "data": dataset_key(data),
            "graph": graph.signature, "settings": settings,
        })
        path = cache_dir("attention") / f"gates_{key}.pt"
        return cls(GateStats.from_dict(cached_tensors(path, build, what="group attention training")), model)
