"""Channel importance criteria: group attention (the project's method) and classic baselines.

Every criterion is a ``torch_pruning.importance.Importance``: ``imp(group) -> 1-D tensor`` with one
score per channel of a Torch-Pruning group, higher = more important, so it plugs into
:meth:`pruning_env.engine.ModelGraph.scores` and into Torch-Pruning's own pruners.
:func:`make_importance` builds one by name (``attention``, ``l1``, ``bn``, ``taylor``, ``random``,
``activation``); data-driven criteria calibrate on the training split.

Modules: :mod:`~pruning_env.importance.gates` (the attention gates, their training and
statistics), :mod:`~pruning_env.importance.attention` (the attention criterion: channel scores
from the gates), :mod:`~pruning_env.importance.classic` (the classic criteria),
:mod:`~pruning_env.importance.registry` (criteria by name). The calibration data and hook helpers
they share are :mod:`pruning_env.calibration`.
"""

from typing import Any

from pruning_env.calibration import calibration_batches, dataset_key
from pruning_env.importance.attention import ATTENTION_VERSION, DEFAULT_COMBINE, GroupAttentionImportance
from pruning_env.importance.classic import CalibratedTaylorImportance, MeanActivationImportance, SeededRandomImportance
from pruning_env.importance.gates import GateStats, GroupAttention, train_group_attention
from pruning_env.importance.registry import IMPORTANCES, available_importances, make_importance


def scoring_version(name: Any) -> str:
    """What ``make_importance(name)`` scores with in this version, for run folders to record.

    A run resumed, or a result reused, under another scoring would mix two criteria under one name.
    ``attention``: its version and scoring (:data:`DEFAULT_COMBINE`); the classic criteria have not changed.
    """
    if name == "attention":
        return f"attention-v{ATTENTION_VERSION}-{DEFAULT_COMBINE}"
    return name if isinstance(name, str) else type(name).__name__


__all__ = [
    "scoring_version",
    "ATTENTION_VERSION",
    "DEFAULT_COMBINE",
    "GateStats",
    "GroupAttention",
    "GroupAttentionImportance",
    "train_group_attention",
    "CalibratedTaylorImportance",
    "MeanActivationImportance",
    "SeededRandomImportance",
    "IMPORTANCES",
    "make_importance",
    "available_importances",
    "calibration_batches",
    "dataset_key",
]
