"""How much each group alone costs in accuracy when pruned: a measured, data-aware observation feature.

The data features of :mod:`pruning_env.profiling` describe how the data flows through a group's
channels; they say nothing directly about what the rest of the network loses when those channels go.
:func:`group_sensitivity` measures that, in the spirit of the per-layer sensitivity scans of Li et
al. (2017) and Distiller: for every group alone (all others full), keep its highest-scored channels at
a third, two thirds and all of ``max_prune_ratio``, recalibrate BatchNorm, and measure the validation
accuracy the episode's reward uses. The feature is the relative accuracy drop
``(base - accuracy) / base``, clipped to ``[0, 1]``:

=========== =================================================================================
feature     definition
=========== =================================================================================
sens_33     relative accuracy drop with the group alone pruned by 1/3 of ``max_prune_ratio``
sens_67     the same at 2/3 of ``max_prune_ratio``
sens_100    the same at ``max_prune_ratio`` (the most the group may lose)
=========== =================================================================================

Widths are the back end's allowed ones (``round_to``), so the scan prices exactly the choices the
agent has. It costs three evaluations per group (no recovery steps), computed once per scenario and
back-end settings and cached as JSON.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .cache import cache_dir, cached_json, stable_hash
from .importance import scoring_version

__all__ = ["SENSITIVITY_FEATURES", "SENSITIVITY_LEVELS", "group_sensitivity"]

log = logging.getLogger(__name__)

SENSITIVITY_VERSION = 1
SENSITIVITY_LEVELS = (1 / 3, 2 / 3, 1.0)  # fractions of max_prune_ratio
SENSITIVITY_FEATURES = ["sens_33", "sens_67", "sens_100"]


def _scan(backend: Any) -> dict[str, Any]:
    base = float(backend.base_accuracy)
    ratio = float(backend.config.max_prune_ratio)
    rows, t0 = [], time.perf_counter()
    for i in range(backend.n_groups):
        row = []
        for level in SENSITIVITY_LEVELS:
            kept = backend.channels.copy()
            kept[i] = backend.keep_for_ratio(i, level * ratio)
            acc = base if kept[i] == backend.channels[i] else backend.accuracy(kept)
            row.append(min(1.0, max(0.0, (base - acc) / max(base, 1e-12))))
        rows.append(row)
        log.info("sensitivity scan: group %d/%d (%s) drops %s, %.0f s so far", i + 1, backend.n_groups,
                 backend.groups[i].name, " / ".join(f"{x:.3f}" for x in row), time.perf_counter() - t0)
    return {"feature_names": SENSITIVITY_FEATURES, "levels": list(SENSITIVITY_LEVELS),
            "group_names": [g.name for g in backend.groups], "features": rows, "base_accuracy": base}


def group_sensitivity(backend: Any, cache: bool = True) -> np.ndarray:
    """``[groups, 3]`` float32: the relative accuracy drop of each group pruned alone (module docstring).

    ``backend``: a :class:`~pruning_env.backend.PruningBackend` (its scores, allowed widths, BatchNorm
    batches and validation subset are used).
    """
    if not cache:
        return np.asarray(_scan(backend)["features"], dtype=np.float32)
    cfg = backend.config
    key = stable_hash({
        "version": SENSITIVITY_VERSION, "scenario": backend.scenario.id, "graph": backend.graph.signature,
        "scoring": scoring_version(cfg.importance), "seed": cfg.seed,
        "round_to": cfg.round_to, "min_channels": cfg.min_channels, "max_prune_ratio": cfg.max_prune_ratio,
        "bn_batches": cfg.bn_batches, "val_samples": cfg.val_samples, "levels": SENSITIVITY_LEVELS,
    })
    out = cached_json(cache_dir("sensitivity") / f"sensitivity_{key}.json", lambda: _scan(backend),
                      what="sensitivity scan of the groups")
    return np.asarray(out["features"], dtype=np.float32)
