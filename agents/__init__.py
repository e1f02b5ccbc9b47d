"""Search agents for DataAwarePrune: SB3 algorithms, the AMC-style DDPG preset, baselines, the custom
agent protocol and registry, the search CLI and the after-search fine-tuning.

::

    import gymnasium as gym
    import pruning_env  # noqa: F401  (registers the environments)
    from agents import make_agent, available_agents

    env = gym.make("DataAwarePrune-v0")
    agent = make_agent("ppo", env, seed=0)       # defaults from agents/hyperparams/ppo.yml
    agent.learn(total_episodes=100, callback=lambda info: print(info["reward"], info["speedup"]))

Command lines::

    python -m agents.train --algo ppo --env DataAwarePrune-v0 --episodes 300 --seed 0
    python -m agents.finetune --run runs/<name>

Modules: :mod:`agents.protocol` (the :class:`Agent` protocol, registry, :class:`EpisodicAgent`),
:mod:`agents.factory` (:func:`make_agent`, YAML defaults), :mod:`agents.sb3` (the SB3 agents), :mod:`agents.amc`,
:mod:`agents.baselines`, :mod:`agents.cem`, :mod:`agents.train`, :mod:`agents.finetune`.
Names are imported lazily: ``import agents`` does not import Stable-Baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Agent": "protocol", "EpisodicAgent": "protocol", "EpisodeCallback": "protocol", "register_agent": "protocol",
    "available_agents": "protocol", "get_agent_class": "protocol", "has_observation_policy": "protocol",
    "make_agent": "factory", "load_agent": "factory", "SB3Agent": "sb3", "load_hyperparams": "factory",
    "resolve_hyperparams": "factory",
    "AMCDDPG": "amc", "AMCAgent": "amc",
    "RandomAgent": "baselines", "UniformAgent": "baselines", "AttentionHeuristicAgent": "baselines",
    "CEMAgent": "cem",
    "TrainOptions": "train", "run_search": "train",
    "FinetuneOptions": "finetune", "finetune_run": "finetune",
    "TransferOptions": "transfer", "run_transfer": "transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
