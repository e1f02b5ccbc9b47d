"""Baselines every search is compared with, as agents under the same protocol.

* ``random``: uniformly random actions; its best episode is random search.
* ``uniform``: one prune ratio for every group, the smallest that meets the latency target according
  to the environment's cost model (bisection, no episode needed).
* ``heuristic``: prunes more where the group attention is low: ratio_i proportional to
  ``1 - mean attention_i`` (plus a small floor so that every group can contribute), scaled by
  bisection to the smallest scale that meets the target.

``uniform`` and ``heuristic`` are deterministic: they play ``repeats`` episodes (default 1) in
total, however many ``learn`` is asked for, since further episodes would repeat the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from .protocol import EpisodeCallback, EpisodicAgent, register_agent, step_index

__all__ = [
    "RandomAgent", "UniformAgent", "AttentionHeuristicAgent", "cost_fraction", "scale_to_budget",
    "attention_feature", "ratios_to_actions",
]


def _pruning_env(env: gym.Env) -> Any:
    base = env.unwrapped
    for attr in ("cost", "kept_for_ratios", "action_for_ratio", "base_cost", "target_cost", "max_prune_ratio",
                 "n_groups"):
        if not hasattr(base, attr):
            raise TypeError(f"{type(base).__name__} is not a DataAwarePrune environment (no {attr!r})")
    return base


def cost_fraction(env: gym.Env, ratios: np.ndarray) -> float:
    """Cost of pruning ``ratios`` (one per group) as a fraction of the base cost, by the env's cost model."""
    base = _pruning_env(env)
    return base.cost(base.kept_for_ratios(ratios)) / float(base.base_cost)


def scale_to_budget(env: gym.Env, weights: np.ndarray, iters: int = 40) -> np.ndarray:
    """Ratios ``min(max_ratio, s * weights)`` with the smallest ``s`` whose cost meets the target.

    Raises ``ValueError`` when even the largest scale misses the target.
    """
    base = _pruning_env(env)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (base.n_groups,) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError(f"weights must be {base.n_groups} non-negative numbers, not all zero; got {w}")
    top = base.max_prune_ratio
    ratios: Callable[[float], np.ndarray] = lambda s: np.minimum(top, s * w)
    target = base.target_cost / base.base_cost
    lo, hi = 0.0, top / w[w > 0].min()  # at hi every weighted group is at max_prune_ratio
    if cost_fraction(env, ratios(hi)) > target:
        raise ValueError(f"these weights cannot reach the target {target:.3f} of the base cost")
    if cost_fraction(env, ratios(lo)) <= target:
        return ratios(lo)
    for _ in range(iters):  # cost is monotone (non-increasing) in s
        mid = 0.5 * (lo + hi)
        if cost_fraction(env, ratios(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return ratios(hi)


def ratios_to_actions(env: gym.Env, ratios: np.ndarray) -> np.ndarray:
    """Actions in [-1, 1] that request ``ratios`` (the inverse of the env's action mapping)."""
    base = _pruning_env(env)
    return np.array([base.action_for_ratio(float(r)) for r in np.asarray(ratios, dtype=np.float64)])


def attention_feature(env: gym.Env) -> tuple[str, np.ndarray]:
    """(name, per-group values) of the mean group attention among the env's data features."""
    base = _pruning_env(env)
    feats = base.data_features
    names = list(feats.feature_names)
    att = [n for n in names if n.startswith("att")]
    if not att:
        raise ValueError(f"the environment has no attention feature (data features: {names})")
    name = next((n for n in att if "mean" in n), att[0])
    values = np.asarray(feats.features, dtype=np.float64)[:, names.index(name)]
    return name, values


@register_agent("random")
class RandomAgent(EpisodicAgent):
    """Uniformly random actions (seeded); learning does not change it."""

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        low, high = self.env.action_space.low, self.env.action_space.high
        return self.rng.uniform(low, high).astype(np.float32)


class _FixedPlanAgent(EpisodicAgent):
    """A deterministic agent that requests fixed per-group ratios (computed once)."""

    def __init__(self, env: gym.Env, seed: int = 0, repeats: int = 1) -> None:
        super().__init__(env, seed)
        self.repeats = int(repeats)
        self.ratios = self.compute_ratios() if env is not None else None
        self.actions = ratios_to_actions(env, self.ratios) if env is not None else None

    def compute_ratios(self) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"repeats": self.repeats}

    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        return np.array([self.actions[step_index(self.env, obs)]], dtype=np.float32)

    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> _FixedPlanAgent:
        return super().learn(min(int(total_episodes), max(0, self.repeats - self.num_episodes)), callback)


@register_agent("uniform")
class UniformAgent(_FixedPlanAgent):
    """The same prune ratio for every group: the smallest that meets the latency target."""

    def compute_ratios(self) -> np.ndarray:
        base = _pruning_env(self.env)
        return scale_to_budget(self.env, np.full(base.n_groups, base.max_prune_ratio))


@register_agent("heuristic")
class AttentionHeuristicAgent(_FixedPlanAgent):
    """Prune where attention is low: ratios proportional to ``floor + (1 - mean attention)``, scaled
    to the smallest scale that meets the target.

    Args:
        floor: added to every weight so that groups of high attention can still be pruned a little
            (and the target stays reachable when attention is 1 somewhere).
    """

    def __init__(self, env: gym.Env, seed: int = 0, repeats: int = 1, floor: float = 0.05) -> None:
        self.floor = float(floor)
        super().__init__(env, seed, repeats)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "floor": self.floor}

    def compute_ratios(self) -> np.ndarray:
        self.feature, att = attention_feature(self.env)  # att_mean: mean gate of the group, in [0, 1]
        return scale_to_budget(self.env, self.floor + (1.0 - np.clip(att, 0.0, 1.0)))
