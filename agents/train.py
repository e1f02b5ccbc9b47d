"""The search command: one agent searches one environment for a pruning plan, and every episode is
recorded in a run folder. Interrupted runs resume.

::

    python -m agents.train --algo ppo --env DataAwarePrune-v0 --episodes 300 --seed 0 \\
        --env-kwargs target_latency=0.5 --hyperparams learning_rate=1e-3 --name my_run

writes ``runs/{env}__{algo}__{seed}__{time}`` (or ``runs/<name>``):

* ``config.json``: the resolved configuration (options, hyperparameters after YAML defaults, the
  environment's base metrics and scenario), versions, hardware, torch threads;
* ``episodes.csv``: one row per episode (episode, reward, accuracy, latency_ms, speedup, macs, params,
  ratios as a JSON list, episode_seconds, wall_time) written by :class:`EpisodeRecorder`, a gym
  wrapper, so it works for any agent;
* ``best_plan.json``: the plan of the episode with the highest reward;
* ``tb/``: TensorBoard logs (the agent's, if it writes any, and ``tb/episodes`` with the metrics of
  every episode);
* ``model.zip`` (SB3 agents) or ``model.json`` (episodic agents), with the replay buffer of
  off-policy agents, and ``state.json``: the checkpoint, written every ``checkpoint_every`` episodes,
  at the end and on Ctrl-C.

Rerunning the same command with the same ``--name`` continues from the checkpoint: rows of
``episodes.csv`` after the checkpoint are dropped (their episodes are played again), so no row is
duplicated. ``--episodes`` may be raised to extend a finished run. A resumed run continues the
saved agent but not the exact random streams, so it is not bitwise identical to an uninterrupted one.
A run folder made with other options, or under another behaviour record of the back end (``behaviour``,
``scoring``, ``latency_table_format`` in ``config.json``; :meth:`pruning_env.backend.PruningBackend.behaviour`),
is refused.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime as dt
import inspect
import json
import math
import os
import platform
import random
import subprocess
import sys
import textwrap
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from .factory import make_agent, resolve_hyperparams
from .protocol import get_agent_class
from .sb3 import SB3Agent

__all__ = ["TrainOptions", "EpisodeRecorder", "run_search", "seed_everything", "run_metadata", "env_description",
           "write_json", "main", "CSV_COLUMNS"]

CSV_COLUMNS = ["episode", "reward", "accuracy", "latency_ms", "speedup", "macs", "params", "ratios",
               "episode_seconds", "wall_time"]


@dataclass(frozen=True)
class TrainOptions:
    """Options of one search run."""

    algo: str = "ppo"
    """agent: an SB3 algorithm (ppo, a2c, ddpg, sac, td3), amc, a baseline (random, uniform, heuristic),
    cem or a registered custom agent"""
    env: str = "DataAwarePrune-v0"
    """Gymnasium environment id"""
    episodes: int = 300
    """episodes to play in total (a resumed run plays only the missing ones)"""
    seed: int = 0
    """seed of python, numpy, torch, the agent and the environment"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of gym.make, e.g. {"target_latency": 0.5}"""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """overrides of the agent's defaults in agents/hyperparams/<algo>.yml"""
    run_dir: str = "runs"
    """folder that holds run folders"""
    name: str | None = None
    """run folder name (default {env}__{algo}__{seed}__{unix time}); reuse it to resume"""
    checkpoint_every: int = 25
    """episodes between checkpoints"""
    torch_threads: int | None = None
    """torch intra-op threads (None: leave torch's default)"""
    tensorboard: bool = True
    """write TensorBoard logs under <run>/tb"""
    progress: bool = True
    """show a progress bar over episodes"""
    verbose: int = 0
    """verbosity of the agent"""

    def run_name(self) -> str:
        return self.name or f"{self.env}__{self.algo}__{self.seed}__{int(time.time())}"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the one place where global generators are seeded)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata() -> dict[str, Any]:
    """Versions, hardware and torch threads: what every result records about where it came from."""
    import stable_baselines3

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "gymnasium": gym.__version__, "stable_baselines3": stable_baselines3.__version__,
                "git_commit": _git_commit()}
    try:
        import torch_pruning

        import pruning_env

        versions.update(pruning_env=pruning_env.__version__, torch_pruning=torch_pruning.__version__)
    except ImportError:
        pass
    return {"versions": versions, "hardware": _hardware(), "torch_threads": torch.get_num_threads()}


def env_description(env: gym.Env) -> dict[str, Any]:
    """What config.json records about the environment: its spaces and, for a pruning environment, its
    back end's description (settings, base measurements, the behaviour record) and the task."""
    out: dict[str, Any] = {"observation_space": str(env.observation_space), "action_space": str(env.action_space)}
    base = env.unwrapped
    backend = getattr(base, "backend", None)
    if backend is not None:
        out.update(backend.describe())
        out.update(target_fraction=base.target_fraction, feature_names=list(base.feature_names),
                   reward=base.reward_fn.describe(), construction_seconds=base.construction_seconds)
    return out


def _behaviour(env: gym.Env) -> dict[str, Any] | None:
    backend = getattr(env.unwrapped, "backend", None)
    return backend.behaviour() if backend is not None else None


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


class EpisodeRecorder(gym.Wrapper):
    """Records every finished episode from its terminal ``info``: a row of ``episodes.csv``, the best
    plan so far, TensorBoard scalars. Works with any agent, since it wraps the environment.

    Args:
        env: the environment.
        run_dir: folder of ``episodes.csv`` and ``best_plan.json``.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` or None.
        episodes: episodes already recorded (when resuming).
        best: ``{"episode", "reward"}`` of the best episode so far (when resuming).
        time_offset: seconds of wall time already spent (when resuming).
    """

    def __init__(self, env: gym.Env, run_dir: Path, writer: Any = None, episodes: int = 0,
                 best: dict[str, Any] | None = None, time_offset: float = 0.0) -> None:
        super().__init__(env)
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "episodes.csv"
        self.plan_path = self.run_dir / "best_plan.json"
        self.writer = writer
        self.episodes = int(episodes)
        self.best: dict[str, Any] = dict(best or {"episode": None, "reward": -math.inf})
        self.best_plan: dict[str, Any] | None = None
        self.last_row: dict[str, Any] | None = None
        self.time_offset = float(time_offset)
        self.start_clock()
        self._return = 0.0
        if not self.csv_path.exists():
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(CSV_COLUMNS)

    def start_clock(self) -> None:
        """Start counting wall time (``time_offset`` seconds already spent)."""
        self._t0 = time.perf_counter() - self.time_offset

    @property
    def wall_time(self) -> float:
        return time.perf_counter() - self._t0

    def reset(self, **kwargs: Any):
        self._return = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        if terminated or truncated:
            self._record(info)
        return obs, reward, terminated, truncated, info

    def _record(self, info: dict[str, Any]) -> None:
        self.episodes += 1
        ratios = info.get("ratios")
        row = {
            "episode": self.episodes, "reward": self._return,
            **{k: info.get(k) for k in ("accuracy", "latency_ms", "speedup", "macs", "params", "episode_seconds")},
            "ratios": json.dumps([round(float(r), 6) for r in ratios]) if ratios is not None else None,
            "wall_time": round(self.wall_time, 3),
        }
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_COLUMNS).writerow(row)
        if self._return > self.best["reward"]:
            self.best = {"episode": self.episodes, "reward": self._return}
            plan = info.get("plan")
            if plan is not None:
                plan.meta.update(episode=self.episodes, reward=self._return)
                self.best_plan = plan.to_dict()
                plan.save(self.plan_path)
        if self.writer is not None:
            for key in ("reward", "accuracy", "latency_ms", "speedup", "macs", "params"):
                if row[key] is not None:
                    self.writer.add_scalar(f"episode/{key}", float(row[key]), self.episodes)
            self.writer.add_scalar("episode/best_reward", self.best["reward"], self.episodes)
        self.last_row = row


def _check_same_run(saved: dict[str, Any], opts: TrainOptions) -> None:
    """Refuse to resume a run folder made with other settings (only ``episodes`` may change)."""
    mine = asdict(opts)
    keys = ("algo", "env", "seed", "env_kwargs", "hyperparams")
    diff = {k: (saved.get(k), mine[k]) for k in keys if saved.get(k) != mine[k]}
    if diff:
        raise ValueError(f"run folder was made with other settings {diff} (saved, now); use another --name")


def run_search(opts: TrainOptions, env: gym.Env | None = None) -> dict[str, Any]:
    """Run (or resume) the search described by ``opts``; returns a summary with the run folder.

    ``env``: an already built ``gym.make(opts.env, **opts.env_kwargs)`` to reuse (it is not closed).
    """
    if opts.episodes < 0 or opts.checkpoint_every < 1:
        raise ValueError(f"need episodes >= 0 and checkpoint_every >= 1, got {opts.episodes}, {opts.checkpoint_every}")
    cls = get_agent_class(opts.algo)  # fail fast on an unknown agent
    if opts.env.startswith("DataAwarePrune"):
        import pruning_env  # noqa: F401  (registers the environments)
    run = Path(opts.run_dir) / opts.run_name()
    state_path, config_path = run / "state.json", run / "config.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    saved_config = json.loads(config_path.read_text()) if state is not None else None
    if saved_config is not None:
        _check_same_run(saved_config["options"], opts)
    run.mkdir(parents=True, exist_ok=True)

    if opts.torch_threads is not None:
        torch.set_num_threads(opts.torch_threads)
    seed_everything(opts.seed + (state["episodes"] if state else 0))  # a resumed run draws new numbers
    own_env = env is None
    if own_env:
        env = gym.make(opts.env, **opts.env_kwargs)
    elif env.spec is not None and env.spec.id != opts.env:
        raise ValueError(f"the given env is {env.spec.id!r} but the options say {opts.env!r}")
    if saved_config is not None:
        env_record = saved_config.get("env", {})
        saved = {k: env_record.get(k) for k in (_behaviour(env) or {})}
        now = _behaviour(env)
        if now is not None and saved != now:  # e.g. a run folder from before a default changed
            if own_env:
                env.close()
            raise ValueError(f"run folder {run} was searched under {saved}, this version is {now} (see the "
                             "environment manual's version history): resuming would mix the two; use another --name")
    writer = None
    if opts.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb" / "episodes"))
    tb_log = str(run / "tb") if opts.tensorboard else None

    if state is None:
        for stale in ("episodes.csv", "best_plan.json"):  # a run that died before its first checkpoint
            (run / stale).unlink(missing_ok=True)
        hyperparams = resolve_hyperparams(opts.algo, opts.env, opts.hyperparams)
        write_json(config_path, {
            "options": asdict(opts), "run": run.name, "hyperparams": hyperparams,
            "agent_class": f"{cls.__module__}.{cls.__qualname__}", "env": env_description(env),
            **run_metadata(), "command": sys.argv, "started": dt.datetime.now().isoformat(timespec="seconds"),
        })
        recorder = EpisodeRecorder(env, run, writer)
        agent = make_agent(opts.algo, recorder, seed=opts.seed, hyperparams=opts.hyperparams, tensorboard_log=tb_log,
                           verbose=opts.verbose, env_id=opts.env)
        state = {"episodes": 0, "resumes": []}
    else:
        done = int(state["episodes"])
        if (run / "episodes.csv").exists():  # drop rows played after the checkpoint: they are played again
            rows = pd.read_csv(run / "episodes.csv")
            rows[rows["episode"] <= done].to_csv(run / "episodes.csv", index=False)
        best = state.get("best") or {}
        if best.get("plan") is not None:
            write_json(run / "best_plan.json", best["plan"])
        recorder = EpisodeRecorder(env, run, writer, episodes=done, time_offset=state.get("wall_time", 0.0),
                                   best={"episode": best.get("episode"), "reward": best.get("reward", -math.inf)})
        recorder.best_plan = best.get("plan")
        kwargs = {"tensorboard_log": tb_log} if issubclass(cls, SB3Agent) else {}
        agent = cls.load(run / state["agent_file"], env=recorder, **kwargs)
        state["resumes"] = [*state.get("resumes", []), {"at_episode": done, "time": dt.datetime.now().isoformat()}]

    def checkpoint(finished: bool = False) -> None:
        path = agent.save(run / "model")
        best = {**recorder.best, "plan": recorder.best_plan}
        state.update(episodes=recorder.episodes, agent_file=path.name, wall_time=round(recorder.wall_time, 3),
                     best=best, finished=finished)
        write_json(state_path, state)  # written last: it names a complete checkpoint

    remaining = max(0, opts.episodes - recorder.episodes)
    bar = tqdm(total=opts.episodes, initial=recorder.episodes, desc=run.name, unit="ep", disable=not opts.progress)

    def on_episode(info: dict[str, Any]) -> bool:
        bar.update(1)
        bar.set_postfix(reward=f"{recorder.last_row['reward']:.4f}", best=f"{recorder.best['reward']:.4f}")
        if recorder.episodes % opts.checkpoint_every == 0:
            checkpoint()
        return True

    try:
        recorder.start_clock()
        agent.learn(remaining, callback=on_episode)
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        raise SystemExit(f"interrupted after {recorder.episodes} episodes; rerun the same command to resume") from None
    finally:
        if writer is not None:
            writer.close()
    checkpoint(finished=recorder.episodes >= opts.episodes)
    bar.close()
    if own_env:
        env.close()
    return {"run_dir": str(run), "episodes": recorder.episodes, "best_reward": recorder.best["reward"],
            "best_episode": recorder.best["episode"]}


# -- command line -----------------------------------------------------------------------------------------
def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (CleanRL style), for --help."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _parse_mapping(items: list[str] | None) -> dict[str, Any]:
    """``['{"a": 1}']`` (JSON) or ``['a=1', 'b=[64, 64]']`` (values parsed as YAML) -> dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        item = item.strip()
        if item.startswith("{"):
            out.update(json.loads(item))
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value or a JSON object, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_parser(cls: type = TrainOptions, description: str | None = None,
                 prog: str = "python -m agents.train") -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass ``cls``."""
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    docs = _field_docs(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind.startswith("dict"):
            parser.add_argument(flag, nargs="*", default=None, metavar="KEY=VALUE", help=docs.get(f.name))
        elif kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=docs.get(f.name))
        else:
            conv = int if kind.startswith("int") else float if kind.startswith("float") else str
            required = f.default is MISSING and f.default_factory is MISSING
            parser.add_argument(flag, type=conv, default=default, required=required, help=docs.get(f.name))
    return parser


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The frozen options dataclass from parsed arguments (the namespace goes no further)."""
    values = {}
    for f in fields(cls):
        value = getattr(args, f.name)
        kind = f.type if isinstance(f.type, str) else str(f.type)
        values[f.name] = _parse_mapping(value) if kind.startswith("dict") else value
    return cls(**{k: v for k, v in values.items() if v is not None})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = options_from_args(TrainOptions, build_parser(TrainOptions, __doc__.split("\n\n")[0]).parse_args(argv))
    summary = run_search(opts)
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
