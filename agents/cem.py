"""A complete agent that is not from Stable-Baselines3: the cross-entropy method (CEM) over the
vector of per-group actions, written against :class:`agents.protocol.EpisodicAgent`.

Rubinstein & Kroese, "The Cross-Entropy Method", Springer 2004; de Boer et al., "A Tutorial on the
Cross-Entropy Method", Annals of Operations Research 2005.

The search distribution is a diagonal Gaussian over ``a in R^n_groups`` (actions, clipped to
[-1, 1] when played). Each generation samples ``population`` vectors, plays one episode per vector
(open loop: step ``t`` plays ``a[t]``), keeps the ``elite_frac`` best by return, and moves the mean
and standard deviation towards the elites' (with smoothing ``alpha``; the std never falls below
``min_std`` so that the search keeps exploring). ``predict(deterministic=True)`` plays the best vector
seen so far (its return is known); ``deterministic=False`` plays the current mean.

``start_kept`` starts the search from a given plan (its kept channels per group, e.g. Torch-Pruning's
global magnitude plan at the same target): the mean starts in the middle of the action interval that
keeps each group's width (not on an edge, where half the samples would round to the next width), and
the first episode plays the plan itself, so the best plan found is never one the search scored below
it. A local search around a strong baseline, where a search from scratch has to find the region first.

This file is also the example of ``docs/custom_agents.md``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .protocol import EpisodicAgent, episode_length, register_agent, step_index

__all__ = ["CEMAgent", "actions_for_kept"]


def actions_for_kept(env: gym.Env, kept: list[int], resolution: int = 2001) -> np.ndarray:
    """Per group, the middle of the action interval that keeps ``kept[i]`` channels (wall aside).

    Where no action keeps exactly that width (a plan pruned beyond ``max_prune_ratio``, or a width the
    environment does not allow), the interval of the nearest width it can keep.
    """
    base = env.unwrapped
    kept = np.asarray(kept, dtype=np.int64)
    if kept.shape != (base.n_groups,):
        raise ValueError(f"start_kept needs {base.n_groups} widths (one per group), got {kept.shape}")
    grid = np.linspace(-1.0, 1.0, resolution)
    keeps = np.array([base.kept_for_ratios(np.full(len(kept), base.ratio_for_action(a))) for a in grid])
    out = np.empty(len(kept))
    for g, want in enumerate(kept):
        nearest = keeps[np.argmin(np.abs(keeps[:, g] - want)), g]
        out[g] = grid[keeps[:, g] == nearest].mean()
    return out


@register_agent("cem")
class CEMAgent(EpisodicAgent):
    """Cross-entropy method over per-group actions.

    Args:
        env: a pruning environment (one step per group).
        seed: seeds the sampling.
        population: vectors (episodes) per generation.
        elite_frac: fraction of a generation kept as elites (at least 1 vector).
        init_mean: initial mean action (-1: prune nothing, 1: prune ``max_prune_ratio``).
        init_std: initial standard deviation, in action units.
        min_std: lower bound of the standard deviation.
        alpha: smoothing; new = alpha * elite statistic + (1 - alpha) * old.
        start_kept: kept channels per group of a plan to start from (overrides ``init_mean``).
    """

    def __init__(self, env: gym.Env | None, seed: int = 0, population: int = 8, elite_frac: float = 0.25,
                 init_mean: float = 0.0, init_std: float = 0.5, min_std: float = 0.05, alpha: float = 0.7,
                 n_dims: int | None = None, start_kept: list[int] | None = None) -> None:
        super().__init__(env, seed)
        if population < 2 or not 0.0 < elite_frac <= 1.0:
            raise ValueError(f"need population >= 2 and 0 < elite_frac <= 1, got {population}, {elite_frac}")
        self.n_dims = int(n_dims if n_dims is not None else episode_length(env))
        self.population, self.elite_frac = int(population), float(elite_frac)
        self.init_mean, self.init_std = float(init_mean), float(init_std)
        self.min_std, self.alpha = float(min_std), float(alpha)
        self.start_kept = None if start_kept is None else [int(k) for k in start_kept]
        self.mean = np.full(self.n_dims, self.init_mean) if start_kept is None else actions_for_kept(env, start_kept)
        self.std = np.full(self.n_dims, self.init_std)
        self.generation = 0
        self._candidates: list[list[float]] = []  # this generation's vectors...
        self._returns: list[float] = []  # ...and the returns of those played so far
        self.best_vector: np.ndarray | None = None
        self.best_return = -np.inf
        self._playing = self.mean

    def get_config(self) -> dict[str, Any]:
        return {"population": self.population, "elite_frac": self.elite_frac, "init_mean": self.init_mean,
                "init_std": self.init_std, "min_std": self.min_std, "alpha": self.alpha, "n_dims": self.n_dims,
                "start_kept": self.start_kept}

    # -- the method ------------------------------------------------------------------------------------
    def begin_episode(self) -> None:
        if not self._candidates:  # a new generation
            samples = self.rng.normal(self.mean, self.std, size=(self.population, self.n_dims))
            if self.generation == 0 and self.start_kept is not None:
                samples[0] = self.mean  # the start plan itself
            self._candidates = np.clip(samples, -1.0, 1.0).tolist()
            self._returns = []
        self._playing = np.asarray(self._candidates[len(self._returns)])

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        if deterministic:
            vector = self.best_vector if self.best_vector is not None else self.mean
        else:
            vector = self._playing
        t = min(step_index(self.env, obs), self.n_dims - 1)
        return np.array([np.clip(vector[t], -1.0, 1.0)], dtype=np.float32)

    def end_episode(self, episode_return: float, info: dict[str, Any]) -> None:
        self._returns.append(float(episode_return))
        if episode_return > self.best_return:
            self.best_return, self.best_vector = float(episode_return), self._playing.copy()
        if len(self._returns) == self.population:
            self._update()

    def _update(self) -> None:
        n_elite = max(1, int(round(self.elite_frac * self.population)))
        order = np.argsort(self._returns)[::-1][:n_elite]
        elites = np.asarray(self._candidates)[order]
        self.mean = self.alpha * elites.mean(axis=0) + (1 - self.alpha) * self.mean
        self.std = np.maximum(self.min_std, self.alpha * elites.std(axis=0) + (1 - self.alpha) * self.std)
        self.generation += 1
        self._candidates, self._returns = [], []

    # -- persistence: a generation in progress is saved too, so a resumed search loses nothing ----------
    def get_state(self) -> dict[str, Any]:
        best = None if self.best_vector is None else self.best_vector.tolist()
        return {**super().get_state(), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "generation": self.generation, "candidates": self._candidates, "returns": self._returns,
                "best_vector": best, "best_return": self.best_return if best is not None else None}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.mean, self.std = np.asarray(state["mean"]), np.asarray(state["std"])
        self.generation = int(state["generation"])
        self._candidates, self._returns = list(state["candidates"]), list(state["returns"])
        if state["best_vector"] is not None:
            self.best_vector, self.best_return = np.asarray(state["best_vector"]), float(state["best_return"])
