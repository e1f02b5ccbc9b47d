"""What a user of Torch-Pruning would do instead: global magnitude / LAMP pruning and uniform pruning,
each matched to a cost target, as plans of our pipeline.

A Torch-Pruning user compresses a network in five lines::

    imp = tp.importance.GroupMagnitudeImportance(p=2)        # or tp.importance.LAMPImportance()
    pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=0.5, global_pruning=True,
                                  ignored_layers=[model.fc], round_to=8)
    pruner.step()

and tries ratios until the network is fast enough. This module is exactly that, inside our pipeline:

* :func:`global_prune` / :func:`global_plan` run ``MetaPruner`` with ``global_pruning=True`` on a copy of
  ``graph.model`` (ignoring the layers our :class:`~pruning_env.engine.ModelGraph` ignores: the
  classifier and whatever it was told) and translate Torch-Pruning's choice into a
  :class:`~pruning_env.engine.PruningPlan`: ``apply_plan(graph.model, plan, graph.example_inputs)``
  rebuilds the very network Torch-Pruning produced (same weights, same outputs).
* :func:`uniform_plan`: one prune ratio for every group, keeping each group's highest-magnitude channels.
* :func:`match_target`: the smallest ratio whose plan's price meets a target, for any of the above
  (:func:`plan_family` makes the ``ratio -> plan`` function), so all the alternatives an RL search is
  compared with come from one function family and one matching rule.

Prices (what ``match_target`` holds under the target) are any ``PruningPlan -> float``; all of these are
valid, and only their units differ:

* :func:`macs_price`: MACs per sample (deterministic, hardware-free);
* :func:`table_price`: the latency table's prediction (deterministic, calibrated to one machine);
* :func:`measured_price`: the wall-clock latency of the pruned network, measured. This is what issue 17
  asks for ("compress to a measured speedup"). Measurements are noisy and cost seconds each, so bracket
  with the table first and measure only near its answer::

      make = plan_family(graph, "global-magnitude")
      table_ms = table_price(graph, table)
      _, r0 = match_target(table_ms, make, table_ms(graph.full_plan()) / speedup)
      base_ms = measurer.measure(graph.model)
      plan, r = match_target(measured_price(graph, measurer), make, base_ms / speedup,
                             lo=max(0.0, r0 - 0.05), hi=min(0.95, r0 + 0.05), grid=1)

  (an answer of exactly ``lo`` means the crossing may lie lower: widen the bracket).

Torch-Pruning behaviour worth knowing (torch-pruning 1.6; see :func:`global_prune`): global pruning ranks
channels of all groups by normalised score against one threshold, so it prunes groups very unevenly; a group
whose every channel falls under the threshold (or whose kept count ``round_to`` floors to zero) is left
whole, not pruned to a minimum; and ``max_pruning_ratio`` does not cap a group in one-shot pruning (it caps
the global ratio; per group it only acts between ``iterative_steps``). So a one-shot global plan's cost is
not monotone in the ratio at high ratios: :func:`match_target` scans a grid before it bisects. Progressive
pruning (``iterative_steps > 1``, what Torch-Pruning's own benchmarks do to reach a speedup) prunes a little
at a time and so keeps every group pruned rather than whole.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from pruning_env.engine import ModelGraph, apply_plan
from pruning_env.plan import PruningPlan

__all__ = [
    "TargetNotReached",
    "IMPORTANCES", "METHODS", "tp_importance", "global_prune", "global_plan", "uniform_plan", "plan_family",
    "match_target", "macs_price", "table_price", "measured_price",
]

IMPORTANCES = ("magnitude", "lamp")
"""Channel scores :func:`global_plan` accepts: Torch-Pruning's group L2 magnitude, or LAMP."""

METHODS = ("uniform", "global-magnitude", "global-lamp")
"""Plan families :func:`plan_family` builds."""


def tp_importance(name: str) -> tp.importance.Importance:
    """Torch-Pruning's importance for ``name`` with the defaults a user gets: ``"magnitude"`` (group L2 norm,
    ``GroupMagnitudeImportance(p=2)``, called ``MagnitudeImportance`` before torch-pruning 1.4) or ``"lamp"``
    (``LAMPImportance(p=2)``)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "magnitude":
        cls = getattr(tp.importance, "GroupMagnitudeImportance", None) or tp.importance.MagnitudeImportance
        return cls(p=2)
    if key == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {name!r}")


def _check_ratio(ratio: float, what: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0.0 <= ratio < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1) (the fraction of channels pruned), got {ratio!r}")
    return float(ratio)


def _check_round_to(round_to: int) -> int:
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1 (1: no rounding), got {round_to!r}")
    return round_to


def global_prune(
    graph: ModelGraph,
    ratio: float,
    importance: str = "magnitude",
    round_to: int = 8,
    max_prune_ratio: float = 1.0,
    iterative_steps: int = 1,
) -> tuple[nn.Module, PruningPlan]:
    """Torch-Pruning's global pruning of a copy of ``graph.model``: the pruned copy and the same network as a plan.

    Runs ``tp.pruner.MetaPruner(copy, graph.example_inputs, importance=tp_importance(importance),
    pruning_ratio=ratio, global_pruning=True, round_to=round_to, max_pruning_ratio=max_prune_ratio,
    iterative_steps=iterative_steps, ignored_layers=...)`` and steps it ``iterative_steps`` times, reading
    each pruned group's indices (``step(interactive=True)``) before pruning it. The ignored layers are every
    Conv2d / Linear outside ``graph``'s groups, so Torch-Pruning sees exactly our groups.

    Args:
        graph: the graph of the (unpruned) model; ``graph.model`` itself is not modified.
        ratio: fraction in [0, 1) of all prunable channels (summed over the groups) to remove; Torch-Pruning
            removes those scoring under one global threshold. ``0`` keeps everything.
        importance: ``"magnitude"`` or ``"lamp"`` (:func:`tp_importance`). Both are normalised per group
            (by its mean, or LAMP's cumulative normalisation) before the global ranking.
        round_to: kept channels of each pruned group are a multiple of this, rounded *down* (Torch-Pruning's
            rule; :func:`uniform_plan` rounds up). ``1``: no rounding.
        max_prune_ratio: Torch-Pruning's ``max_pruning_ratio``, in (0, 1]. It caps the global ratio; per group
            it only holds across ``iterative_steps`` (a group already past it is not pruned further), not
            within one step. Its default, 1.0, is Torch-Pruning's.
        iterative_steps: prune in this many steps of growing ratio, re-scoring in between (Torch-Pruning's
            progressive pruning; importance is not recomputed with data, weights are not trained between).

    Returns:
        ``(pruned, plan)``: Torch-Pruning's pruned copy (same device and train/eval mode as ``graph.model``)
        and a plan for which ``apply_plan(graph.model, plan, graph.example_inputs)`` gives the same network.
        ``plan.meta`` records the method, ratio, importance, rounding, the Torch-Pruning version, ``refused``:
        groups Torch-Pruning would have pruned away entirely at some step and so did not prune at that step,
        and ``left_whole``: those of them that it never pruned (kept at full width).

    Raises:
        ValueError: a bad argument, or a graph Torch-Pruning cannot prune the way it traced it.
    """
    if not isinstance(graph, ModelGraph):
        raise TypeError(f"graph must be a pruning_env.engine.ModelGraph, got {type(graph).__name__}")
    ratio = _check_ratio(ratio)
    imp = tp_importance(importance)
    round_to = _check_round_to(round_to)
    if isinstance(max_prune_ratio, bool) or not isinstance(max_prune_ratio, (int, float)) \
            or not 0.0 < max_prune_ratio <= 1.0:
        raise ValueError(f"max_prune_ratio must be in (0, 1], got {max_prune_ratio!r}")
    if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ValueError(f"iterative_steps must be an integer >= 1, got {iterative_steps!r}")

    model = copy.deepcopy(graph.model)
    was_training = model.training
    model.eval()  # tracing runs a forward pass: it must not move BatchNorm statistics
    covered = {name for g in graph.groups for name in g.out_layers}
    ignored = [m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in covered]
    names = {m: n for n, m in model.named_modules()}
    owner = {name: g for g in graph.groups for name in g.out_layers}  # module name -> our group
    survivors = {g.name: list(range(g.channels)) for g in graph.groups}  # original indices still kept
    refused: list[str] = []
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            model, graph.example_inputs, importance=imp, pruning_ratio=ratio, global_pruning=True,
            max_pruning_ratio=float(max_prune_ratio), iterative_steps=iterative_steps, ignored_layers=ignored,
            round_to=round_to if round_to > 1 else None, root_module_types=[nn.Conv2d, nn.Linear],
        )
        accept = pruner.DG.check_pruning_group

        def watched(group: Any) -> bool:  # Torch-Pruning silently skips a group it would prune away entirely
            ok = accept(group)
            if not ok:
                g = owner.get(names.get(group[0].dep.target.module, ""))
                if g is not None and g.name not in refused:
                    refused.append(g.name)
            return ok

        pruner.DG.check_pruning_group = watched
        for _ in range(iterative_steps):
            for group in pruner.step(interactive=True):
                if len(group[0].idxs) == 0:  # round_to rounded this group's share down to nothing
                    group.prune()
                    continue
                root_name = names.get(group[0].dep.target.module, "?")
                g = owner.get(root_name)
                if g is None:
                    raise ValueError(
                        f"Torch-Pruning pruned a group rooted at {root_name!r} that the ModelGraph does not have; "
                        "build the graph and the pruner on the same model (a graph of another model?)"
                    )
                root = model.get_submodule(g.name)
                idxs = next(
                    (list(i) for dep, i in group
                     if dep.target.module is root and pruner.DG.is_out_channel_pruning_fn(dep.handler)),
                    None,
                )
                if idxs is None:
                    raise ValueError(f"Torch-Pruning's group of {root_name!r} does not prune {g.name!r}'s outputs")
                current = survivors[g.name]
                removed = {int(i) for i in idxs}
                survivors[g.name] = [c for pos, c in enumerate(current) if pos not in removed]
                group.prune()
    model.train(was_training)
    meta = {
        "method": f"global-{importance.strip().lower()}", "ratio": ratio, "importance": importance.strip().lower(),
        "round_to": round_to, "max_prune_ratio": float(max_prune_ratio), "iterative_steps": iterative_steps,
        "torch_pruning": getattr(tp, "__version__", "?"), "refused": refused,
        "left_whole": [name for name in refused if len(survivors[name]) == graph.group(name).channels],
    }
    plan = PruningPlan(
        keep={name: sorted(k) for name, k in survivors.items()}, channels={g.name: g.channels for g in graph.groups},
        graph_signature=graph.signature, meta=meta,
    )
    graph.check_plan(plan)
    return model, plan


def global_plan(
    graph: ModelGraph,
    ratio: float,
    importance: str = "magnitude",
    round_to: int = 8,
    max_prune_ratio: float = 1.0,
    iterative_steps: int = 1,
) -> PruningPlan:
    """The plan of Torch-Pruning's global pruning at ``ratio`` (:func:`global_prune` without the pruned copy)."""
    return global_prune(graph, ratio, importance, round_to, max_prune_ratio, iterative_steps)[1]


def uniform_plan(
    graph: ModelGraph,
    ratio: float,
    round_to: int = 8,
    scores: Mapping[str, torch.Tensor] | str | None = "magnitude",
) -> PruningPlan:
    """Prune ``ratio`` of every group (``graph.plan_from_ratios`` with one ratio), keeping the top-scoring channels.

    Kept counts are rounded *up* to a multiple of ``round_to`` (and of each group's step), at least one unit.
    ``scores``: a name of :data:`IMPORTANCES` (scored now, on ``graph.model``), per-group scores
    (``graph.scores(...)``; pass them when making many plans), or ``None`` to keep the first channels.
    """
    if not isinstance(graph, ModelGraph):
        raise TypeError(f"graph must be a pruning_env.engine.ModelGraph, got {type(graph).__name__}")
    ratio = _check_ratio(ratio)
    round_to = _check_round_to(round_to)
    if isinstance(scores, str):
        scores = graph.scores(tp_importance(scores))
    return graph.plan_from_ratios(
        [ratio] * len(graph), scores, round_to=round_to, meta={"method": "uniform", "ratio": ratio,
                                                             "round_to": round_to},
    )


def plan_family(graph: ModelGraph, method: str, round_to: int = 8, **kwargs: Any) -> Callable[[float], PruningPlan]:
    """``ratio -> plan`` for ``method`` in :data:`METHODS`, the ``make_plan`` of :func:`match_target`.

    ``"uniform"`` scores the channels once (``kwargs``: ``scores``, default ``"magnitude"``);
    ``"global-magnitude"`` / ``"global-lamp"`` run Torch-Pruning per ratio (``kwargs``: ``max_prune_ratio``,
    ``iterative_steps``; see :func:`global_prune`).
    """
    key = method.strip().lower() if isinstance(method, str) else method
    _check_round_to(round_to)
    if key == "uniform":
        extra = set(kwargs) - {"scores"}
        if extra:
            raise TypeError(f"uniform plans take only scores=..., got {sorted(extra)}")
        scores = kwargs.get("scores", "magnitude")
        if isinstance(scores, str):
            scores = graph.scores(tp_importance(scores))
        return lambda ratio: uniform_plan(graph, ratio, round_to, scores)
    if key in ("global-magnitude", "global-lamp"):
        extra = set(kwargs) - {"max_prune_ratio", "iterative_steps"}
        if extra:
            raise TypeError(f"global plans take only max_prune_ratio=... and iterative_steps=..., got {sorted(extra)}")
        importance = key.split("-", 1)[1]
        return lambda ratio: global_plan(graph, ratio, importance, round_to, **kwargs)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


class TargetNotReached(ValueError):
    """No ratio in the searched range meets the target (:func:`match_target`): widen the range or relax it."""


def match_target(
    price: Callable[[PruningPlan], float],
    make_plan: Callable[[float], PruningPlan],
    target: float,
    lo: float = 0.0,
    hi: float = 0.95,
    iters: int = 12,
    grid: int = 8,
) -> tuple[PruningPlan, float]:
    """The smallest ratio in ``[lo, hi]`` whose plan meets the target: ``price(make_plan(ratio)) <= target``.

    If ``lo`` meets the target it is the answer. Otherwise ``grid`` equally spaced ratios above ``lo`` are
    priced in increasing order up to the first that meets the target, and the bracket between it and the
    ratio before it is bisected ``iters`` times. The answer is thus the first crossing of the target, found
    to ``(hi - lo) / grid / 2**iters``: one ratio less (by that much) misses it. With a price that falls as
    the ratio grows, it is the smallest such ratio; ``grid=1`` is plain bisection on ``[lo, hi]``. The scan
    matters for Torch-Pruning's one-shot global plans, whose cost rises again at high ratios (groups it
    would prune away entirely are left whole): bisection alone could miss every crossing.

    A plan equal to one already priced (same kept channels) is not priced again, which saves measurements:
    with ``round_to=8`` neighbouring ratios often give the same plan.

    Args:
        price: cost of a plan, in the units of ``target``: :func:`macs_price`, :func:`table_price` or
            :func:`measured_price` (the measured latency, what "compress to a measured speedup" means; noisy,
            so bracket with the table first: see the module docstring). For a speedup ``s`` over the
            unpruned network, ``target = price(graph.full_plan()) / s``.
        make_plan: ``ratio -> plan`` (:func:`plan_family`).
        target: the largest acceptable price (> 0).
        lo, hi: the ratios searched, ``0 <= lo < hi < 1``.
        iters: bisection steps (>= 1); grid: ratios scanned before bisecting (>= 1).

    Returns:
        ``(plan, ratio)``; ``plan.meta["match"]`` records target, price, ratio, resolution and how many
        plans were priced.

    Raises:
        ValueError: bad arguments or a price that is not a finite number; :class:`TargetNotReached` (a
            ValueError) when no scanned ratio meets the target
            (the message gives the price at ``hi``: raise ``hi`` or relax the target).
    """
    if not callable(price) or not callable(make_plan):
        raise TypeError("price and make_plan must be callables: PruningPlan -> float and float -> PruningPlan")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise ValueError(f"target must be a positive number (in the units of price), got {target!r}")
    for name, value in (("lo", lo), ("hi", hi)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= lo < hi < 1.0:
        raise ValueError(f"need 0 <= lo < hi < 1, got lo={lo!r}, hi={hi!r}")
    for name, value in (("iters", iters), ("grid", grid)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    priced: dict[str, float] = {}

    def cost(ratio: float) -> tuple[PruningPlan, float]:
        plan = make_plan(ratio)
        if not isinstance(plan, PruningPlan):
            raise TypeError(f"make_plan({ratio}) returned {type(plan).__name__}, not a PruningPlan")
        key = json.dumps(plan.keep, sort_keys=True)
        if key not in priced:
            value = price(plan)
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"price returned {value!r} for the plan at ratio {ratio}: it must be a finite number")
            priced[key] = value
        return plan, priced[key]

    def done(plan: PruningPlan, ratio: float, value: float, resolution: float) -> tuple[PruningPlan, float]:
        match = {"target": float(target), "price": value, "ratio": ratio, "lo": float(lo), "hi": float(hi),
                 "resolution": resolution, "plans_priced": len(priced)}
        return dataclasses.replace(plan, meta={**plan.meta, "match": match}), ratio

    plan, value = cost(float(lo))
    if value <= target:
        return done(plan, float(lo), value, 0.0)
    below = float(lo)
    for k in range(1, grid + 1):
        ratio = lo + (hi - lo) * k / grid
        plan, value = cost(ratio)
        if value <= target:
            break
        below = ratio
    else:
        raise TargetNotReached(
            f"no ratio in [{lo}, {hi}] meets the target {target:g}: the price at {hi} is {value:g}. Raise hi, relax "
            "the target, or (one-shot global pruning) try a finer grid or iterative_steps"
        )
    above, best, best_value = ratio, plan, value
    for _ in range(iters):
        mid = 0.5 * (below + above)
        plan, value = cost(mid)
        if value <= target:
            above, best, best_value = mid, plan, value
        else:
            below = mid
    return done(best, above, best_value, above - below)


def macs_price(graph: ModelGraph) -> Callable[[PruningPlan], float]:
    """Price: MACs per sample of the pruned network (``pruning_env.latency.macs_for_kept``; deterministic)."""
    from pruning_env.macs import macs_for_kept

    return lambda plan: float(macs_for_kept(graph, graph.kept_counts(plan)))


def table_price(graph: ModelGraph, table: Any) -> Callable[[PruningPlan], float]:
    """Price: a latency table's prediction for the plan (``table.predict(graph.kept_counts(plan))``, ms)."""
    if not hasattr(table, "predict"):
        raise TypeError(f"table must have predict(kept) (a LatencyTable), got {type(table).__name__}")
    return lambda plan: float(table.predict(graph.kept_counts(plan)))


def measured_price(graph: ModelGraph, measurer: Any) -> Callable[[PruningPlan], float]:
    """Price: the measured latency of the pruned network (``measurer.measure(apply_plan(...))``, ms).

    Each call prunes a fresh copy of ``graph.model`` and times it with the measurer's protocol (a
    :class:`~pruning_env.measure.LatencyMeasurer`); the answer is noisy, so compare against a base latency
    measured by the same measurer, in the same session.
    """
    if not hasattr(measurer, "measure"):
        raise TypeError(f"measurer must have measure(model) (a LatencyMeasurer), got {type(measurer).__name__}")
    return lambda plan: float(measurer.measure(apply_plan(graph.model, plan, graph.example_inputs).eval()))
