"""DataAwarePrune: data-aware, RL-driven channel pruning as a Gymnasium environment.

Importing this package registers the environments::

    import gymnasium as gym
    import pruning_env  # noqa: F401

    env = gym.make("DataAwarePrune-v0")  # embedded default: digits + a small ResNet, offline

Registered ids:

* ``DataAwarePrune-v0``: latency from the per-layer lookup table (deterministic).
* ``DataAwarePruneMACs-v0``: MACs as the cost (deterministic, hardware-independent).
* ``DataAwarePruneMeasured-v0``: wall-clock latency of the pruned model (nondeterministic).
"""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

ENV_IDS = ("DataAwarePrune-v0", "DataAwarePruneMACs-v0", "DataAwarePruneMeasured-v0")
DETERMINISTIC_ENV_IDS = ("DataAwarePrune-v0", "DataAwarePruneMACs-v0")


def _register() -> None:
    specs = {
        "DataAwarePrune-v0": ({}, False),
        "DataAwarePruneMACs-v0": ({"latency": "macs"}, False),
        "DataAwarePruneMeasured-v0": ({"latency": "measured"}, True),
    }
    for env_id, (kwargs, nondeterministic) in specs.items():
        if env_id not in registry:
            register(
                id=env_id,
                entry_point="pruning_env.env:DataAwarePruneEnv",
                kwargs=kwargs,
                nondeterministic=nondeterministic,
                disable_env_checker=False,
            )


_register()


def __getattr__(name: str):  # lazy public API: importing the package stays cheap
    table = {
        "DataAwarePruneEnv": ("env", "DataAwarePruneEnv"),
        "make_backend": ("env", "make_backend"),
        "PruningBackend": ("backend", "PruningBackend"),
        "BackendConfig": ("backend", "BackendConfig"),
        "ModelGraph": ("engine", "ModelGraph"),
        "PruningPlan": ("plan", "PruningPlan"),
        "apply_plan": ("engine", "apply_plan"),
        "count_macs_params": ("engine", "count_macs_params"),
        "load_scenario": ("scenario", "load_scenario"),
        "Scenario": ("scenario", "Scenario"),
        "make_reward": ("rewards", "make_reward"),
        "EpisodeMetrics": ("rewards", "EpisodeMetrics"),
        "load_pruned": ("export", "load_pruned"),
        "save_pruned": ("export", "save_pruned"),
    }
    if name in table:
        import importlib

        mod, attr = table[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'pruning_env' has no attribute {name!r}")


__all__ = [
    "ENV_IDS", "DETERMINISTIC_ENV_IDS", "DataAwarePruneEnv", "ModelGraph", "PruningPlan", "apply_plan",
    "count_macs_params", "make_backend", "PruningBackend", "BackendConfig", "load_scenario", "Scenario",
    "make_reward", "EpisodeMetrics", "load_pruned", "save_pruned",
]
