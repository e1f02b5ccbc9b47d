"""Stable-Baselines3 algorithms behind the agent protocol: :class:`SB3Agent` and one class per algorithm.

Learning is counted in episodes (:meth:`SB3Agent.learn`), and two conventions make the YAML
hyperparameters (``agents/hyperparams/<algo>.yml``, read by :mod:`agents.factory`) independent of
the model being pruned, whose episodes last ``n_groups`` steps:

* a key ``<name>_in_episodes`` is converted to ``<name> = value * episode length`` (e.g.
  ``n_steps_in_episodes: 8`` is ``n_steps = 8 * n_groups``);
* ``noise_type`` (``normal`` or ``ornstein-uhlenbeck``) with ``noise_std`` builds the
  ``action_noise`` of DDPG/TD3/SAC (std in the normalised [-1, 1] action units);
* ``policy_kwargs.activation_fn`` may name a ``torch.nn`` class (``"ReLU"``, ``"Tanh"``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch.nn as nn
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from .protocol import EpisodeCallback, episode_length, register_agent

__all__ = [
    "SB3Agent", "PPOAgent", "A2CAgent", "DDPGAgent", "SACAgent", "TD3Agent", "SB3_ALGOS", "EPISODES_SUFFIX",
    "episodes_to_steps",
]

SB3_ALGOS = ("a2c", "ddpg", "ppo", "sac", "td3")
EPISODES_SUFFIX = "_in_episodes"  # hyperparameters given in episodes, converted to steps


def episodes_to_steps(hyperparams: dict[str, Any], length: int) -> dict[str, Any]:
    """Replace every ``<name>_in_episodes: k`` by ``<name>: k * length``."""
    out = {}
    for key, value in hyperparams.items():
        if key.endswith(EPISODES_SUFFIX):
            out[key[: -len(EPISODES_SUFFIX)]] = int(round(float(value) * length))
        else:
            out[key] = value
    return out


def _sb3_kwargs(hp: dict[str, Any], action_space: gym.Space) -> dict[str, Any]:
    """Turn YAML-friendly values into what SB3 constructors take."""
    hp = dict(hp)
    noise_type, noise_std = hp.pop("noise_type", None), float(hp.pop("noise_std", 0.1))
    if noise_type is not None:
        dim = int(np.prod(action_space.shape))
        mean, sigma = np.zeros(dim), noise_std * np.ones(dim)
        if noise_type == "normal":
            hp["action_noise"] = NormalActionNoise(mean, sigma)
        elif noise_type == "ornstein-uhlenbeck":
            hp["action_noise"] = OrnsteinUhlenbeckActionNoise(mean, sigma)
        else:
            raise ValueError(f"noise_type must be 'normal' or 'ornstein-uhlenbeck', got {noise_type!r}")
    if isinstance(hp.get("train_freq"), list):
        hp["train_freq"] = tuple(hp["train_freq"])
    pk = hp.get("policy_kwargs")
    if isinstance(pk, dict) and isinstance(pk.get("activation_fn"), str):
        pk = dict(pk)
        pk["activation_fn"] = getattr(nn, pk["activation_fn"])
        hp["policy_kwargs"] = pk
    return hp


class _EpisodeBridge(BaseCallback):
    """Counts finished episodes, forwards their terminal infos and stops SB3 after ``episodes``.

    SB3 drops the step on which a callback returns ``False`` (an off-policy algorithm would lose the
    terminal transition, which carries the reward), so the stop is deferred to the next step: the
    first step of the next episode, which :meth:`SB3Agent.learn` discards by resetting the env.
    """

    def __init__(self, episodes: int, callback: EpisodeCallback | None) -> None:
        super().__init__()
        self.episodes, self.callback, self.done, self.stop = episodes, callback, 0, False

    def _on_step(self) -> bool:
        if self.stop:
            return False
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if not done:
                continue
            self.done += 1
            ret = float(info["episode"]["r"]) if "episode" in info else float("nan")  # Monitor's raw return
            if self.callback is not None and self.callback({**info, "reward": ret}) is False:
                self.stop = True
        self.stop = self.stop or self.done >= self.episodes
        return True


class SB3Agent:
    """A Stable-Baselines3 algorithm as an :class:`~agents.protocol.Agent` (learning counted in episodes).

    Args:
        env: the (non-vectorised) environment; SB3 wraps it in ``Monitor`` and ``DummyVecEnv``.
        seed: SB3's seed (python, numpy, torch, action space).
        tensorboard_log: folder for SB3's TensorBoard logs, or None.
        verbose: SB3 verbosity.
        policy: SB3 policy name.
        **hyperparams: constructor arguments of the algorithm, with the conventions of this module
            (``*_in_episodes``, ``noise_type``/``noise_std``). ``device`` defaults to ``"cpu"``.
    """

    algo_class: type[BaseAlgorithm] = PPO
    agent_name = "sb3"
    observation_policy = True  # the actor maps observations to actions: it can run on another scenario

    def __init__(self, env: gym.Env, seed: int = 0, tensorboard_log: str | None = None, verbose: int = 0,
                 policy: str = "MlpPolicy", **hyperparams: Any) -> None:
        self.env = env
        kwargs = _sb3_kwargs(episodes_to_steps(hyperparams, episode_length(env)), env.action_space)
        kwargs.setdefault("device", "cpu")  # small MLPs: the GPU only adds transfer time
        if (issubclass(self.algo_class, OffPolicyAlgorithm) and isinstance(env.observation_space, gym.spaces.Dict)
                and kwargs.get("n_steps", 1) > 1):
            warnings.warn(f"{self.algo_class.__name__}: SB3 has no n-step returns for Dict observations; "
                          f"using 1-step targets instead of n_steps={kwargs['n_steps']} (flat observations keep them)",
                          stacklevel=2)
            kwargs["n_steps"] = 1
        self.model = self.algo_class(policy, env, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose,
                                     **kwargs)

    @classmethod
    def _wrap(cls, model: BaseAlgorithm, env: gym.Env | None) -> SB3Agent:
        agent = cls.__new__(cls)
        agent.env, agent.model = env, model
        return agent

    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> SB3Agent:
        """Run SB3's ``learn`` until ``total_episodes`` more episodes have finished."""
        if total_episodes <= 0:
            return self
        if self.model.get_env() is None:
            raise ValueError("this agent has no environment: load it with env=...")
        length = episode_length(self.model.get_env().envs[0])
        # An upper bound in steps: the bridge stops SB3 at the episode count.
        budget = (int(total_episodes) + 2) * length + int(getattr(self.model, "n_steps", 0))
        bridge = _EpisodeBridge(int(total_episodes), callback)
        self.model._last_obs = None  # start with a fresh episode (SB3 resets the env when this is None)
        self.model.learn(total_timesteps=budget, callback=bridge, reset_num_timesteps=False,
                         tb_log_name=self.agent_name, progress_bar=False)
        return self

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=deterministic)
        return action

    def _replay_path(self, path: Path) -> Path:
        return path.with_name(path.stem + "_replay_buffer.pkl")

    def save(self, path: str | Path) -> Path:
        """Write the SB3 zip (``.zip`` added if missing) and, for off-policy algorithms, the replay buffer."""
        path = Path(path)
        if path.suffix != ".zip":
            path = path.with_name(path.name + ".zip")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(path)
        if isinstance(self.model, OffPolicyAlgorithm):
            self.model.save_replay_buffer(self._replay_path(path))
        return path

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None, **kwargs: Any) -> SB3Agent:
        """Load the zip (and the replay buffer beside it, if any); ``kwargs`` go to SB3's ``load``."""
        path = Path(path)
        kwargs.setdefault("device", "cpu")
        with warnings.catch_warnings():  # the saved NStepReplayBuffer and its n_steps kwargs are restored as saved
            warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored because a custom `replay_buffer")
            model = cls.algo_class.load(path, env=env, **kwargs)
        agent = cls._wrap(model, env)
        replay = agent._replay_path(path if path.suffix == ".zip" else path.with_name(path.name + ".zip"))
        if isinstance(model, OffPolicyAlgorithm) and replay.exists():
            model.load_replay_buffer(replay)
        return agent


@register_agent("ppo")
class PPOAgent(SB3Agent):
    """PPO (Schulman et al., 2017, https://arxiv.org/abs/1707.06347)."""

    algo_class = PPO


@register_agent("a2c")
class A2CAgent(SB3Agent):
    """A2C (Mnih et al., 2016, https://arxiv.org/abs/1602.01783)."""

    algo_class = A2C


@register_agent("ddpg")
class DDPGAgent(SB3Agent):
    """DDPG (Lillicrap et al., 2016, https://arxiv.org/abs/1509.02971)."""

    algo_class = DDPG


@register_agent("sac")
class SACAgent(SB3Agent):
    """SAC (Haarnoja et al., 2018, https://arxiv.org/abs/1801.01290)."""

    algo_class = SAC


@register_agent("td3")
class TD3Agent(SB3Agent):
    """TD3 (Fujimoto et al., 2018, https://arxiv.org/abs/1802.09477)."""

    algo_class = TD3
