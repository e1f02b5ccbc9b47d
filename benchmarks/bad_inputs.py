"""Bad inputs and the errors they get: ``python -m benchmarks.bad_inputs``.

Every case feeds the project something wrong (an unknown name, a damaged file, a file that would
need pickle, an impossible target, ...) and records the exception and its message. The same list is
asserted by ``tests/test_hardening.py``: each case must raise the expected exception type with a
message that says what to do. This script prints the catalogue as a Markdown table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["Case", "cases", "run_case", "main"]


@dataclass(frozen=True)
class Case:
    what: str
    call: Callable[[], object]
    error: type[BaseException]
    fragment: str  # a part of the message that tells the user what to do or what is wrong


class _Untraceable(nn.Module):
    """A model whose second layer cannot take the first one's output (wrong channel count)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


def _default_env(**kw):
    import gymnasium as gym

    import pruning_env  # noqa: F401

    return gym.make("DataAwarePrune-v0", **kw)


def _step(env, action) -> None:
    env.reset(seed=0)
    env.step(action)


def cases(tmp: Path) -> list[Case]:
    """The catalogue; files it needs are written under ``tmp``."""
    from agents.factory import make_agent
    from pruning_env.data import load_dataset
    from pruning_env.engine import ModelGraph
    from pruning_env.export import load_pruned
    from pruning_env.importance import make_importance
    from pruning_env.models import build_model
    from pruning_env.plan import PruningPlan
    from pruning_env.rewards import make_reward
    from pruning_env.scenario import load_checkpoint

    tmp.mkdir(parents=True, exist_ok=True)
    r20 = build_model("resnet20")
    good = tmp / "resnet20.pth"
    torch.save(r20.state_dict(), good)
    truncated = tmp / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pickled = tmp / "whole_module.pth"
    torch.save(r20, pickled)  # a pickled nn.Module: loading it would run code
    other = tmp / "resnet32.pth"
    torch.save(build_model("resnet32").state_dict(), other)
    x = torch.zeros(1, 3, 32, 32)
    graph20 = ModelGraph(r20, x)
    plan = graph20.plan_from_ratios([0.5] * len(graph20), graph20.scores(make_importance("l1")))
    plan_file = tmp / "plan.json"
    plan.save(plan_file)
    cut_plan = tmp / "plan_truncated.json"
    cut_plan.write_text(plan_file.read_text()[:200])
    other_graph = ModelGraph(build_model("resnet32"), x)
    bad_env = {}

    def env():  # built once, lazily: the default environment (cached scenario)
        if "env" not in bad_env:
            bad_env["env"] = _default_env()
        return bad_env["env"]

    offline_root = tmp / "empty_root"
    offline_root.mkdir(exist_ok=True)

    def offline_cifar():
        old = os.environ.get("PRUNING_ENV_OFFLINE")
        os.environ["PRUNING_ENV_OFFLINE"] = "1"
        try:
            return load_dataset("cifar10", data_root=offline_root)
        finally:
            if old is None:
                os.environ.pop("PRUNING_ENV_OFFLINE")
            else:
                os.environ["PRUNING_ENV_OFFLINE"] = old

    return [
        Case("unknown model name", lambda: _default_env(model="resnet99"), ValueError, "valid names: "),
        Case("unknown dataset name", lambda: load_dataset("imagenet5"), ValueError, "valid names: digits"),
        Case("class subset with an unknown class", lambda: load_dataset("digits:classes=0,dgo"), ValueError,
             "the classes of digits are 0, 1"),
        Case("class subset of one class", lambda: load_dataset("digits:classes=3"), ValueError,
             "list two or more, e.g. digits:classes=0,1"),
        Case("class subset index out of range", lambda: load_dataset("digits:classes=0,12"), ValueError,
             "indices 0-9"),
        Case("unknown reward name", lambda: make_reward("speed"), ValueError, "valid names: "),
        Case("unknown importance name", lambda: make_importance("magic"), ValueError, "valid names: attention"),
        Case("unknown agent name", lambda: make_agent("dqn", env()), ValueError, "ppo"),
        Case("checkpoint of another model", lambda: load_checkpoint(build_model("resnet20"), other), ValueError,
             "unexpected keys"),
        Case("truncated checkpoint", lambda: load_checkpoint(build_model("resnet20"), truncated), ValueError,
             "truncated or corrupt"),
        Case("checkpoint that pickles a whole module", lambda: load_checkpoint(build_model("resnet20"), pickled),
             ValueError, "torch.save(model.state_dict(), path)"),
        Case("pickled file given as a pruned model", lambda: load_pruned(pickled), ValueError, "weights_only"),
        Case("truncated plan JSON", lambda: PruningPlan.load(cut_plan), ValueError, "truncated or corrupt"),
        Case("plan for another model", lambda: other_graph.check_plan(PruningPlan.load(plan_file)), ValueError,
             "another model"),
        Case("dataset missing offline", offline_cifar, FileNotFoundError, "Looked in"),
        Case("target latency 0", lambda: _default_env(target_latency=0.0), ValueError, "(0, 1]"),
        Case("target latency 1.5", lambda: _default_env(target_latency=1.5), ValueError, "(0, 1]"),
        Case("target latency that cannot be met", lambda: _default_env(target_latency=0.01), ValueError,
             "Raise target_latency or max_prune_ratio"),
        Case("model that cannot run the example input", lambda: ModelGraph(_Untraceable(), x), ValueError,
             "layer 'head'"),
        Case("NaN action", lambda: _step(env(), np.array([np.nan], np.float32)), ValueError, "finite"),
        Case("action of the wrong shape", lambda: _step(env(), np.zeros(3, np.float32)), ValueError, "shape (1,)"),
        Case("reward callable returning NaN", lambda: make_reward(lambda m: float("nan"))(_fake_metrics()),
             ValueError, "non-finite"),
        Case("corrupt benchmark profile name", lambda: _profile("fast"), ValueError, "valid: quick"),
        Case("benchmark scenario without base weights", lambda: _bench_without_weights(tmp), FileNotFoundError,
             "python -m pruning_env.pretrain --model vgg19 --dataset cifar10 --out"),
    ]


def _fake_metrics():
    from pruning_env.rewards import EpisodeMetrics

    return EpisodeMetrics(accuracy=0.5, base_accuracy=0.9, latency_ms=1.0, base_latency_ms=2.0, target_latency_ms=1.0,
                          macs=1, base_macs=2, params=1, base_params=2)


def _profile(name: str):
    from benchmarks.profiles import get_profile

    return get_profile(name)


def _bench_without_weights(tmp: Path):
    """The paper-cifar10 profile's VGG-19 where no weights are: stops before loading anything."""
    from dataclasses import replace

    from benchmarks.profiles import Profile, get_profile
    from benchmarks.run import run_benchmark

    (vgg,) = [s for s in get_profile("paper-cifar10").scenarios if s.name == "cifar10-vgg19"]
    vgg = replace(vgg, env_kwargs={**vgg.env_kwargs, "data_root": str(tmp / "no-data")})
    return run_benchmark(Profile("p", [vgg], agents=["uniform"], seeds=1, episodes=1), out=tmp / "bench")


def run_case(case: Case) -> tuple[str, str]:
    """(exception type, message) the case raised; ('none', '') if it did not raise."""
    try:
        case.call()
    except Exception as exc:  # the point: record what the user sees
        return type(exc).__name__, str(exc)
    return "none", ""


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for c in cases(Path(tmp)):
            kind, msg = run_case(c)
            msg = msg.replace(tmp, "<tmp>").replace("\n", " ").replace("|", "\\|")
            rows.append(f"| {c.what} | {kind} | {msg[:300]}{'...' if len(msg) > 300 else ''} |")
        print("| bad input | error | message |\n|---|---|---|\n" + "\n".join(rows))
    print(json.dumps({"cases": len(rows)}))


if __name__ == "__main__":
    main()
