"""Zero-shot transfer: a search's learned policy, and its best plan, run on another scenario.

::

    python -m agents.transfer --source runs/<search on A> --name A-to-B --episodes 3 \\
        --env-kwargs model=resnet20 dataset=cifar10:classes=0,1,8,9 adapt_steps=400

For the run folder of a search on scenario A (written by ``python -m agents.train``), this plays on
scenario B's environment, learning nothing:

1. **policy transfer**: the agent A's search saved last (same algorithm, same seed) plays ``episodes``
   episodes with ``predict(obs, deterministic=True)``; its observations are computed on B (B's model,
   data features and cost model). Only agents whose actions are a learned function of the observation
   have a policy to transfer (:func:`agents.protocol.has_observation_policy`: the SB3 algorithms and the
   AMC preset); random, uniform, heuristic and CEM are refused with a ``ValueError``. B's observation
   space must be A's (same ``observation_features`` and ``observation_mode``). The observation does not
   depend on the number of groups (positions are fractions of the episode, widths fractions of the
   widest group), so a ResNet-20 policy runs on ResNet-32/56 as it is.
2. **plan transfer**: A's best plan's per-group prune ratios, requested on B (the action wall may raise
   them to keep B's target reachable); only when B has A's groups (the same model), else skipped with
   the reason.
3. **uniform**: B's uniform baseline (one ratio for every group), the reference for both.

Each plays ``episodes`` episodes from the same environment seed. A deterministic policy on this MDP
repeats its plan, so episodes differ only through the random BatchNorm-recalibration batches; each
of the three reports its best episode, as a search reports its best.

The run folder is written like a search's (``config.json``, ``episodes.csv`` and ``best_plan.json`` of
the policy's episodes, ``state.json``), so :mod:`agents.finetune` and the benchmarks read it as any
run, plus ``transfer.json``: the source and the three results.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .baselines import UniformAgent, ratios_to_actions
from .protocol import get_agent_class, has_observation_policy, step_index
from .train import (
    EpisodeRecorder,
    build_parser,
    env_description,
    options_from_args,
    run_metadata,
    seed_everything,
    write_json,
)

__all__ = ["TransferOptions", "run_transfer", "play", "main"]


@dataclass(frozen=True)
class TransferOptions:
    """Options of running a search's policy and best plan on another scenario."""

    source: str
    """run folder of the search on scenario A (python -m agents.train)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of gym.make for scenario B"""
    env: str | None = None
    """environment id of scenario B (default: the source run's)"""
    episodes: int = 3
    """deterministic episodes on B for the policy, and as many for the plan and uniform baselines"""
    seed: int = 0
    """seed of the environment's first reset (BatchNorm batches) and of python, numpy and torch"""
    run_dir: str = "runs"
    """folder that holds run folders"""
    name: str | None = None
    """run folder name (default {source name}__transfer__{unix time})"""
    torch_threads: int | None = None
    """torch intra-op threads (None: leave torch's default)"""

    def run_name(self) -> str:
        return self.name or f"{Path(self.source).name}__transfer__{int(time.time())}"


def play(env: gym.Env, act: Callable[[Any], Any], episodes: int, seed: int) -> list[dict[str, Any]]:
    """Play ``episodes`` episodes with ``act(obs) -> action`` (the first reset seeded, then the env's own
    stream); per episode its return, accuracy, predicted speedup and applied ratios."""
    out = []
    for i in range(int(episodes)):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        total, done, info = 0.0, False, {}
        while not done:
            action = np.asarray(act(obs), dtype=np.float32).reshape(env.action_space.shape)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = terminated or truncated
        out.append({"reward": total, "accuracy": float(info["accuracy"]), "speedup": float(info["speedup"]),
                    "ratios": [round(float(r), 6) for r in info["ratios"]]})
    return out


def _best(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(episodes, key=lambda e: e["reward"])
    distinct = len({json.dumps(e["ratios"]) for e in episodes})
    return {**best, "episodes": len(episodes), "mean_reward": float(np.mean([e["reward"] for e in episodes])),
            "distinct_plans": distinct}


def _check_spaces(agent: Any, env: gym.Env, algo: str) -> None:
    space = getattr(getattr(agent, "model", None), "observation_space", None)
    if space is not None and space != env.observation_space:
        raise ValueError(f"the {algo} policy was trained on observations {space}, scenario B gives "
                         f"{env.observation_space}: build B with A's observation_features and observation_mode")


def _plan_transfer(env: gym.Env, source: Path, episodes: int, seed: int) -> dict[str, Any]:
    from pruning_env.plan import PruningPlan

    plan_path = source / "best_plan.json"
    if not plan_path.exists():
        return {"skipped": f"{plan_path} does not exist"}
    ratios = PruningPlan.load(plan_path).ratios()
    names = [g.name for g in env.unwrapped.groups]
    if sorted(ratios) != sorted(names):
        return {"skipped": f"scenario B has other groups than A ({len(names)} vs {len(ratios)}: another model); "
                           "a plan carries over only to the same model"}
    actions = ratios_to_actions(env, np.array([ratios[n] for n in names]))
    return _best(play(env, lambda obs: [actions[step_index(env, obs)]], episodes, seed))


def run_transfer(opts: TransferOptions) -> dict[str, Any]:
    """Run A's policy, A's best plan and B's uniform baseline on B; returns ``transfer.json``'s content.

    Raises:
        FileNotFoundError: ``opts.source`` is not a search run folder with a checkpoint.
        ValueError: the source agent has no observation policy, or B's observations differ from A's.
    """
    source = Path(opts.source)
    if not (source / "state.json").exists() or not (source / "config.json").exists():
        raise FileNotFoundError(f"{source} is not a search run folder with a checkpoint (state.json, config.json)")
    if opts.episodes < 1:
        raise ValueError(f"need episodes >= 1, got {opts.episodes}")
    src_config = json.loads((source / "config.json").read_text())
    src_state = json.loads((source / "state.json").read_text())
    algo = src_config["options"]["algo"]
    if not has_observation_policy(algo):
        raise ValueError(f"agent {algo!r} has no learned policy from observations to actions, so there is nothing "
                         f"to transfer: run {algo} on scenario B itself (its plan does not depend on what it saw on A)")
    env_id = opts.env or src_config["options"]["env"]
    if env_id.startswith("DataAwarePrune"):
        import pruning_env  # noqa: F401  (registers the environments)

    run = Path(opts.run_dir) / opts.run_name()
    run.mkdir(parents=True, exist_ok=True)
    for stale in ("episodes.csv", "best_plan.json", "state.json", "transfer.json"):  # a transfer restarts whole
        (run / stale).unlink(missing_ok=True)
    if opts.torch_threads is not None:
        torch.set_num_threads(opts.torch_threads)
    seed_everything(opts.seed)
    env = gym.make(env_id, **opts.env_kwargs)
    try:
        agent = get_agent_class(algo).load(source / src_state["agent_file"])
        _check_spaces(agent, env, algo)
        source_record = {"run": str(source), "algo": algo, "episodes": int(src_state.get("episodes", 0)),
                         "env_kwargs": src_config["options"].get("env_kwargs", {}),
                         "best_reward": (src_state.get("best") or {}).get("reward")}
        write_json(run / "config.json", {
            "options": {"algo": algo, "env": env_id, "seed": opts.seed, "episodes": opts.episodes,
                        "env_kwargs": opts.env_kwargs, "hyperparams": src_config["options"].get("hyperparams", {})},
            "transfer": asdict(opts), "source": source_record, "run": run.name, "env": env_description(env),
            **run_metadata(), "command": sys.argv, "started": dt.datetime.now().isoformat(timespec="seconds"),
        })
        recorder = EpisodeRecorder(env, run)
        policy = _best(play(recorder, lambda obs: agent.predict(obs, deterministic=True), opts.episodes, opts.seed))
        wall = recorder.wall_time
        uniform = _best(play(env, UniformAgent(env).act, opts.episodes, opts.seed))
        plan = _plan_transfer(env, source, opts.episodes, opts.seed)
    finally:
        env.close()
    result = {"source": source_record, "policy": policy, "uniform": uniform, "plan": plan,
              "run_dir": str(run), "best_reward": policy["reward"], "best_episode": recorder.best["episode"]}
    write_json(run / "transfer.json", result)
    write_json(run / "state.json", {"episodes": recorder.episodes, "agent_file": None, "wall_time": round(wall, 3),
                                     "best": {**recorder.best, "plan": recorder.best_plan}, "finished": True})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = options_from_args(TransferOptions, build_parser(TransferOptions, __doc__.split("\n\n")[0],
                                                           prog="python -m agents.transfer").parse_args(argv))
    result = run_transfer(opts)
    print(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
