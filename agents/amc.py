"""The AMC-style DDPG preset: SB3's DDPG with the exploration and reward handling of AMC.

He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices", ECCV 2018
(https://arxiv.org/abs/1802.03494; reference code https://github.com/mit-han-lab/amc) search
per-layer compression with DDPG and three additions, all reproduced here on top of SB3's DDPG:

* warm-up: the first ``warmup_episodes`` episodes take uniformly random actions, and gradient
  updates start only after them (``learning_starts = warmup_episodes * episode length``);
* exploration: after the warm-up, the actor's action ``mu`` is perturbed with a normal
  distribution truncated to the action bounds, ``TN(mu, sigma_e, low, high)``, whose width decays
  once per episode, ``sigma_e = noise_sigma * noise_decay ** (e - warmup_episodes)``
  (AMC: 0.5 and 0.95, ``noise_sigma`` being a fraction of the action range);
* a moving reward baseline: the return ``R`` of every finished episode is stored in the replay
  buffer as ``R - b`` where ``b`` is an exponential moving average of past returns,
  ``b <- b + baseline_alpha * (R - b)`` (AMC: 0.5), which reduces the variance of the critic's
  targets. Monitor and the episode logs still see the raw return;
* the episode's reward on every step: once an episode ends, all its transitions in the replay
  buffer get ``R - b`` as reward (AMC's "variant form of Bellman's equation", discount 1), so
  the decision for the first layer is credited as directly as the last one. Updates happen after
  each episode (``train_freq=(1, "episode")``), when the rewards are in place.

AMC also uses separate learning rates for the actor (1e-4) and the critic (1e-3), which SB3's
DDPG does not offer: ``actor_learning_rate`` sets the actor's.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise

from .protocol import episode_length, register_agent
from .sb3 import SB3Agent

__all__ = ["AMCDDPG", "AMCAgent", "truncated_normal"]


def truncated_normal(mu: np.ndarray, sigma: float, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Samples of ``N(mu, sigma)`` truncated to ``[low, high]`` (one per entry of ``mu``)."""
    mu = np.clip(np.asarray(mu, dtype=np.float64), low, high)
    if sigma <= 0:
        return mu
    a, b = (low - mu) / sigma, (high - mu) / sigma
    return truncnorm.rvs(a, b, loc=mu, scale=sigma, size=mu.shape, random_state=rng)


class AMCDDPG(DDPG):
    """DDPG with AMC's warm-up, decaying truncated-normal exploration and moving reward baseline.

    Args (besides DDPG's):
        warmup_episodes: episodes of uniformly random actions before the actor acts.
        noise_sigma: initial exploration width, as a fraction of the action range (AMC: 0.5).
        noise_decay: multiplicative decay of the width per episode after the warm-up (AMC: 0.95).
        baseline_alpha: step size of the moving average of returns (AMC: 0.5); 0 disables it.
        actor_learning_rate: the actor's learning rate (AMC: 1e-4); None uses ``learning_rate``.
        reward_all_steps: store the episode's (baselined) return as the reward of every transition of
            the episode, not only the last (AMC's "variant form of Bellman's equation", with gamma 1).
    """

    def __init__(self, *args: Any, warmup_episodes: int = 100, noise_sigma: float = 0.5, noise_decay: float = 0.95,
                 baseline_alpha: float = 0.5, actor_learning_rate: float | None = None, reward_all_steps: bool = True,
                 **kwargs: Any) -> None:
        if not 0.0 <= baseline_alpha <= 1.0:
            raise ValueError(f"baseline_alpha must be in [0, 1], got {baseline_alpha}")
        if noise_sigma < 0 or not 0.0 < noise_decay <= 1.0:
            raise ValueError(f"need noise_sigma >= 0 and 0 < noise_decay <= 1, got {noise_sigma}, {noise_decay}")
        self.warmup_episodes = int(warmup_episodes)
        self.noise_sigma = float(noise_sigma)
        self.noise_decay = float(noise_decay)
        self.baseline_alpha = float(baseline_alpha)
        self.actor_learning_rate = actor_learning_rate
        self.reward_all_steps = bool(reward_all_steps)
        self.reward_baseline: float | None = None
        self._episode_returns: np.ndarray | None = None
        self._episode_slots: list[list[int]] = []
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        if getattr(self, "_noise_rng", None) is None:  # a loaded model keeps its saved generator
            self._noise_rng = np.random.default_rng(self.seed)
        self._set_actor_lr()

    def _set_actor_lr(self) -> None:
        if self.actor_learning_rate is not None:
            for group in self.actor.optimizer.param_groups:
                group["lr"] = float(self.actor_learning_rate)

    # -- exploration --------------------------------------------------------------------------------
    def current_sigma(self, episode: int | None = None) -> float:
        """Exploration width (fraction of the action range) at ``episode`` (default: the current one)."""
        e = self._episode_num if episode is None else int(episode)
        return self.noise_sigma * self.noise_decay ** max(0, e - self.warmup_episodes)

    def in_warmup(self) -> bool:
        return self._episode_num < self.warmup_episodes

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if self.in_warmup():
            scaled = self.policy.scale_action(np.array([self.action_space.sample() for _ in range(n_envs)]))
        else:
            mu, _ = self.predict(self._last_obs, deterministic=True)
            # In SB3's normalised action space [-1, 1] the range is 2 wide.
            scaled = truncated_normal(self.policy.scale_action(mu), 2.0 * self.current_sigma(), -1.0, 1.0,
                                      self._noise_rng)
        scaled = scaled.astype(np.float32)
        return self.policy.unscale_action(scaled), scaled

    # -- moving reward baseline, episode reward on every step ----------------------------------------
    def _store_transition(self, replay_buffer: ReplayBuffer, buffer_action: np.ndarray, new_obs: Any,
                          reward: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        n_envs = len(reward)
        if self._episode_returns is None or len(self._episode_returns) != n_envs:
            self._episode_returns = np.zeros(n_envs)
            self._episode_slots = [[] for _ in range(n_envs)]
        self._episode_returns += reward
        reward = np.array(reward, dtype=np.float32, copy=True)
        finished = {}
        for i, done in enumerate(dones):
            if done:
                ret = float(self._episode_returns[i])
                baseline = ret if self.reward_baseline is None else self.reward_baseline  # AMC: starts at R_1
                finished[i] = ret - baseline if self.baseline_alpha > 0 else ret
                if self.baseline_alpha > 0:
                    self.reward_baseline = baseline + self.baseline_alpha * (ret - baseline)
                reward[i] = finished[i]
                self._episode_returns[i] = 0.0
        pos = replay_buffer.pos  # where SB3 writes this transition
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if not self.reward_all_steps:
            return
        for i in range(n_envs):
            self._episode_slots[i].append(pos)
            if i in finished:  # AMC: every transition of the episode carries its (baselined) return
                replay_buffer.rewards[self._episode_slots[i], i] = finished[i]
                self._episode_slots[i] = []

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        super()._update_learning_rate(optimizers)  # SB3 sets one rate for both: restore the actor's
        self._set_actor_lr()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_episode_returns", "_episode_slots"]


@register_agent("amc")
class AMCAgent(SB3Agent):
    """The AMC preset as an agent: ``warmup_episodes`` also sets ``learning_starts`` unless given."""

    algo_class = AMCDDPG

    def __init__(self, env: gym.Env, seed: int = 0, tensorboard_log: str | None = None, verbose: int = 0,
                 policy: str = "MlpPolicy", **hyperparams: Any) -> None:
        warmup = int(hyperparams.setdefault("warmup_episodes", 100))
        if "learning_starts" not in hyperparams and "learning_starts_in_episodes" not in hyperparams:
            hyperparams["learning_starts"] = warmup * episode_length(env)
        super().__init__(env, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose, policy=policy,
                         **hyperparams)
