"""The agent protocol: what every search agent offers, the registry of agents by name, and a base
class for agents that learn from whole episodes without Stable-Baselines3.

An agent searches for a pruning plan by playing episodes of a pruning environment. Whatever its
algorithm, it offers the four methods of :class:`Agent`, so that the search CLI
(``python -m agents.train``), the benchmarks and the tests drive SB3 algorithms, the AMC preset,
the baselines and users' own agents alike::

    from agents import make_agent, register_agent, EpisodicAgent

    @register_agent("my_agent")
    class MyAgent(EpisodicAgent):
        def act(self, obs, deterministic=False):
            ...

    agent = make_agent("my_agent", env, seed=0)
    agent.learn(total_episodes=50, callback=lambda info: print(info["reward"]))

Episode callbacks receive the terminal ``info`` of every finished episode (the environment's
metrics: accuracy, latency_ms, speedup, plan, ...) plus ``"reward"``, the episode's return as the
environment gave it; returning ``False`` stops learning after that episode.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

__all__ = [
    "Agent",
    "EpisodeCallback",
    "EpisodicAgent",
    "register_agent",
    "get_agent_class",
    "available_agents",
    "episode_length",
    "step_index",
    "has_observation_policy",
]

EpisodeCallback = Callable[[dict[str, Any]], "bool | None"]
"""Called with the terminal info of each finished episode; ``False`` stops learning."""


@runtime_checkable
class Agent(Protocol):
    """What a search agent offers. SB3 algorithms are adapted to it by :mod:`agents.sb3`.

    * ``learn(total_episodes, callback=None) -> self``: play (and learn from) ``total_episodes`` more
      episodes; call ``callback(info)`` after each, and stop early when it returns ``False``.
    * ``predict(obs, deterministic=True) -> action``: the action for one observation.
    * ``save(path) -> Path``: write everything needed to continue learning; may add a suffix to
      ``path`` and returns the file actually written.
    * ``load(path, env=None, **kwargs) -> Agent`` (classmethod): the agent saved at ``path``, attached
      to ``env`` to continue learning.

    An agent class may set ``observation_policy = True`` when its actions are a learned function of the
    observation (the SB3 algorithms, the AMC preset): only such a policy can be run on another scenario
    (:mod:`agents.transfer`). Agents without it (random, uniform, heuristic, CEM) have nothing to transfer.
    """

    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> Agent: ...

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray: ...

    def save(self, path: str | Path) -> Path: ...

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None, **kwargs: Any) -> Agent: ...


_REGISTRY: dict[str, type] = {}
# The built-in agents by entry point, "module:Class", imported on first use as Gymnasium's registry
# does: listing agents stays cheap (no Stable-Baselines3), and the agent modules depend on this one,
# never the other way round.
_BUILTINS: dict[str, str] = {
    "ppo": "agents.sb3:PPOAgent", "a2c": "agents.sb3:A2CAgent", "ddpg": "agents.sb3:DDPGAgent",
    "sac": "agents.sb3:SACAgent", "td3": "agents.sb3:TD3Agent", "amc": "agents.amc:AMCAgent",
    "random": "agents.baselines:RandomAgent", "uniform": "agents.baselines:UniformAgent",
    "heuristic": "agents.baselines:AttentionHeuristicAgent", "cem": "agents.cem:CEMAgent",
}


def register_agent(name: str) -> Callable[[type], type]:
    """Class decorator: make an agent class available to :func:`agents.make_agent` as ``name``.

    The class is constructed as ``cls(env, seed=seed, **hyperparams)`` (plus ``tensorboard_log`` and
    ``verbose`` when its ``__init__`` accepts them). Registering a taken name (a built-in one
    included) raises ``ValueError`` unless it is the same class (re-imports are harmless).
    """
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise ValueError(f"agent names are non-empty lower-case strings without spaces, got {name!r}")

    def decorator(cls: type) -> type:
        entry = f"{cls.__module__}:{cls.__qualname__}"
        old = _REGISTRY.get(name)
        taken = f"{old.__module__}:{old.__qualname__}" if old is not None else _BUILTINS.get(name)
        if taken is not None and taken != entry:
            raise ValueError(f"agent name {name!r} is already registered to {taken.replace(':', '.')}")
        _REGISTRY[name] = cls
        cls.agent_name = name
        return cls

    return decorator


def available_agents() -> list[str]:
    """Names :func:`agents.make_agent` accepts, sorted."""
    return sorted({*_REGISTRY, *_BUILTINS})


def get_agent_class(name: str) -> type:
    """The class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _REGISTRY and key in _BUILTINS:
        importlib.import_module(_BUILTINS[key].partition(":")[0])  # its @register_agent decorator registers it
    if key not in _REGISTRY:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(available_agents())}")
    return _REGISTRY[key]


def has_observation_policy(name: str) -> bool:
    """Whether agent ``name`` learns a policy from observations to actions (one that can be transferred)."""
    return bool(getattr(get_agent_class(name), "observation_policy", False))


def episode_length(env: gym.Env) -> int:
    """Steps per episode: ``n_groups`` for a pruning environment, else the spec's step limit."""
    base = env.unwrapped if hasattr(env, "unwrapped") else env
    n = getattr(base, "n_groups", None)
    if n is None:
        spec = getattr(env, "spec", None)
        n = getattr(spec, "max_episode_steps", None)
    if n is None:
        raise ValueError(f"cannot tell the episode length of {env}: it has no n_groups and no max_episode_steps")
    return int(n)


def step_index(env: gym.Env, obs: np.ndarray) -> int:
    """The group the agent decides now: the environment's ``current_step`` (clamped to the last group).

    Environments without ``current_step`` (other pruning environments following the same observation
    layout) are read from the observation's ``position`` feature.
    """
    n = episode_length(env)
    base = env.unwrapped if hasattr(env, "unwrapped") else env
    step = getattr(base, "current_step", None)
    if step is not None:
        return min(int(step), n - 1)
    flat = obs["layer"] if isinstance(obs, dict) else obs
    return int(round(float(np.asarray(flat).reshape(-1)[0]) * max(1, n - 1)))


class EpisodicAgent:
    """Base class for agents that act from a per-episode decision and learn between episodes.

    Subclasses implement :meth:`act` and usually :meth:`begin_episode` (choose this episode's
    behaviour) and :meth:`end_episode` (learn from its return); :meth:`get_state` /
    :meth:`set_state` return / restore a JSON-serialisable dict, which :meth:`save` and
    :meth:`load` write and read. The loop, seeding, callbacks and the episode counter are here.

    Args:
        env: the environment to search in (not vectorised).
        seed: seeds the agent's generator ``self.rng`` and the first ``env.reset``.
    """

    agent_name = "episodic"
    observation_policy = False  # actions come from the episode's decision, not a learned function of obs

    def __init__(self, env: gym.Env, seed: int = 0) -> None:
        self.env = env
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.num_episodes = 0  # episodes played so far, over all calls to learn()

    # -- to implement -----------------------------------------------------------------------------
    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """The action for ``obs``; ``deterministic`` asks for the current best guess."""
        raise NotImplementedError

    def begin_episode(self) -> None:
        """Called before each learning episode."""

    def end_episode(self, episode_return: float, info: dict[str, Any]) -> None:
        """Called after each learning episode with its return and terminal info."""

    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments (besides env and seed) that :meth:`load` passes back."""
        return {}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state (extend it in subclasses, calling ``super().get_state()``)."""
        return {"seed": self.seed, "num_episodes": self.num_episodes, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.num_episodes = int(state["num_episodes"])
        self.rng.bit_generator.state = state["rng"]

    # -- the loop -----------------------------------------------------------------------------------
    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> EpisodicAgent:
        """Play ``total_episodes`` more episodes, learning after each."""
        if self.env is None:
            raise ValueError(f"{type(self).__name__} has no environment: load it with env=...")
        for _ in range(int(total_episodes)):
            self.begin_episode()
            episode_return, info = self.run_episode(deterministic=False)
            self.end_episode(episode_return, info)
            self.num_episodes += 1
            if callback is not None and callback({**info, "reward": episode_return}) is False:
                break
        return self

    def run_episode(self, deterministic: bool = True) -> tuple[float, dict[str, Any]]:
        """Play one episode with :meth:`act`; returns (return, terminal info)."""
        seed = self.seed if self.num_episodes == 0 else None  # seed the env once, then let it run on
        obs, info = self.env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = self.env.step(self.act(obs, deterministic=deterministic))
            total += float(reward)
            done = terminated or truncated
        return total, info

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        return self.act(obs, deterministic=deterministic)

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``{"agent", "config", "state"}`` as JSON (``.json`` is added if missing)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path.with_name(path.name + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = {"agent": self.agent_name, "config": self.get_config(), "state": self.get_state()}
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None, **kwargs: Any) -> EpisodicAgent:
        """The agent saved at ``path``; ``kwargs`` override the saved constructor arguments."""
        data = json.loads(Path(path).read_text())
        if data.get("agent") != cls.agent_name:
            raise ValueError(f"{path} holds a {data.get('agent')!r} agent, not {cls.agent_name!r}")
        agent = cls(env, seed=data["state"]["seed"], **{**data.get("config", {}), **kwargs})
        agent.set_state(data["state"])
        return agent
