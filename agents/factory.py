""":func:`make_agent`, the one factory for every registered agent (SB3 algorithms, the AMC preset,
the baselines, custom agents), and the default hyperparameters it reads.

Default hyperparameters live in ``agents/hyperparams/<algo>.yml`` keyed by environment id, with a
``default`` key as fallback (as in rl-baselines3-zoo); the conventions that make them independent
of the model being pruned (``*_in_episodes``, ``noise_type``) are :mod:`agents.sb3`'s. The SB3
agent classes are re-exported from :mod:`agents.sb3` for older imports.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from .protocol import Agent, get_agent_class
from .sb3 import (
    EPISODES_SUFFIX,
    SB3_ALGOS,
    A2CAgent,
    DDPGAgent,
    PPOAgent,
    SACAgent,
    SB3Agent,
    TD3Agent,
    episodes_to_steps,
)

__all__ = [
    "SB3Agent", "PPOAgent", "A2CAgent", "DDPGAgent", "SACAgent", "TD3Agent", "SB3_ALGOS",
    "make_agent", "load_agent", "load_hyperparams", "resolve_hyperparams", "episodes_to_steps",
]

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"


def load_hyperparams(algo: str, env_id: str | None) -> dict[str, Any]:
    """Defaults of ``algo`` for ``env_id`` from ``hyperparams/<algo>.yml`` (``default`` key as fallback)."""
    path = HYPERPARAMS_DIR / f"{algo}.yml"
    if not path.exists():
        return {}
    table = yaml.safe_load(path.read_text()) or {}
    entry = table.get(env_id) if env_id in table else table.get("default", {})
    return copy.deepcopy(entry or {})


def resolve_hyperparams(algo: str, env_id: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """YAML defaults updated with ``overrides``; an override of ``x`` replaces a default
    ``x_in_episodes`` and vice versa."""
    hp = load_hyperparams(algo, env_id)
    for key, value in (overrides or {}).items():
        twin = key[: -len(EPISODES_SUFFIX)] if key.endswith(EPISODES_SUFFIX) else f"{key}{EPISODES_SUFFIX}"
        hp.pop(twin, None)
        hp[key] = value
    return hp


def _accepts(cls: type, name: str) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def make_agent(algo: str, env: gym.Env, seed: int = 0, hyperparams: dict[str, Any] | None = None,
               tensorboard_log: str | None = None, verbose: int = 0, env_id: str | None = None,
               **kwargs: Any) -> Agent:
    """Build the agent registered as ``algo`` for ``env``.

    Args:
        algo: a name from :func:`agents.available_agents` (``ppo``, ``a2c``, ``ddpg``, ``sac``, ``td3``,
            ``amc``, ``random``, ``uniform``, ``heuristic``, ``cem`` or a registered custom agent).
        env: the environment to search in (not vectorised).
        seed: the agent's seed.
        hyperparams: overrides of the YAML defaults (``hyperparams/<algo>.yml``, keyed by env id).
        tensorboard_log: TensorBoard folder, for agents that log there (the SB3 ones).
        verbose: verbosity, for agents that take it.
        env_id: the id keying the YAML defaults; default ``env.spec.id``.
        **kwargs: more overrides, merged over ``hyperparams``.

    Raises:
        ValueError: for an unknown ``algo`` (the message lists the valid names).
    """
    cls = get_agent_class(algo)
    if env_id is None and getattr(env, "spec", None) is not None:
        env_id = env.spec.id
    hp = resolve_hyperparams(algo, env_id, {**(hyperparams or {}), **kwargs})
    if tensorboard_log is not None and _accepts(cls, "tensorboard_log"):
        hp["tensorboard_log"] = tensorboard_log
    if _accepts(cls, "verbose"):
        hp["verbose"] = verbose
    return cls(env, seed=seed, **hp)


def load_agent(algo: str, path: str | Path, env: gym.Env | None = None, **kwargs: Any) -> Agent:
    """Load an agent of type ``algo`` saved with its ``save`` method."""
    return get_agent_class(algo).load(path, env=env, **kwargs)
