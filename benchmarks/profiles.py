"""Benchmark profiles: which scenarios, agents, seeds and budgets a benchmark runs.

A profile is a list of scenarios (environment keyword arguments) crossed with agents and
seeds. ``quick`` runs offline on the embedded default; ``cifar10`` needs CIFAR-10 under
``$PRUNING_ENV_DATA`` (or a torchvision download); ``paper`` is the paper's CIFAR-100 setting;
``transfer`` asks whether a policy learned on one scenario carries over to another: CIFAR-10's animals
against its vehicles (class subsets, ``cifar10:classes=...``) on ResNet-20, and a ResNet-20 policy on
ResNet-32 and ResNet-56 (the observation does not depend on the depth). A transfer scenario names its
source (``transfer_from``) and the scenario whose own search it is compared with (``compare_with``).
``paper-cifar10`` runs the paper's three networks at its speedups on CIFAR-10.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["BenchScenario", "Profile", "PROFILES", "get_profile", "REFERENCE_ROWS"]

AGENTS = ["ppo", "ddpg", "sac", "amc", "random", "uniform", "heuristic"]


@dataclass(frozen=True)
class BenchScenario:
    """A named environment configuration."""

    name: str
    env_kwargs: dict[str, Any]
    env_id: str = "DataAwarePrune-v0"
    transfer_from: str | None = None  # a transfer: the scenario whose policy runs here (agents.transfer)
    compare_with: str | None = None  # a transfer: the scenario (these env_kwargs) whose own search it is compared with


@dataclass(frozen=True)
class Profile:
    name: str
    scenarios: list[BenchScenario]
    agents: list[str] = field(default_factory=lambda: list(AGENTS))
    seeds: int = 3
    episodes: int = 60
    finetune_epochs: int = 0  # 0: the best plan is measured (test accuracy, latency) without fine-tuning
    transfer_episodes: int = 3  # deterministic episodes a transferred policy plays on its target scenario
    description: str = ""


def _data_root() -> str | None:
    return os.environ.get("PRUNING_ENV_DATA")


def _cifar(model: str, **kw: Any) -> BenchScenario:
    root = _data_root()
    # The published weights are adapted to the data they are pruned on (400 cached SGD steps): the
    # offline copy in ../shared/data is JPEG-degraded and costs them ~10 accuracy points otherwise.
    args: dict[str, Any] = {"model": model, "dataset": "cifar10", "val_samples": 1000, "adapt_steps": 400, **kw}
    if root:
        args["data_root"] = root
    return BenchScenario(f"cifar10-{model}", args)


# CIFAR-10 class subsets: the six animals and the four vehicles (indices in CIFAR-10's class order).
ANIMALS, VEHICLES = "2,3,4,5,6,7", "0,1,8,9"


def _subset(model: str, group: str, classes: str) -> BenchScenario:
    """CIFAR-10 restricted to ``classes``; base: the published weights' rows of those classes, adapted.

    20 recovery steps per episode: after BatchNorm recalibration alone, plans at 2x all sit near 20-45%
    accuracy and the search's reward does not rank them (docs/results.md, "the search's proxy")."""
    return replace(_cifar(model, dataset=f"cifar10:classes={classes}", finetune_steps=20),
                   name=f"cifar10-{group}-{model}")


def _transfer(source: BenchScenario, target: BenchScenario) -> BenchScenario:
    """``source``'s policy run on ``target``, compared with ``target``'s own search."""
    return BenchScenario(f"{source.name}->{target.name}", dict(target.env_kwargs), target.env_id,
                         transfer_from=source.name, compare_with=target.name)


# The paper's measured speedups per network (Yang et al. 2022, CIFAR-100), targets of both paper profiles.
PAPER_SPEEDUPS = {"vgg19": 3.63, "resnet56": 3.35, "efficientnet_b0": 1.14}
# ResNet-56 cannot reach 3x with the environment's defaults (max_prune_ratio 0.8, widths in multiples of
# 8: pruning everything as far as allowed predicts 2.9x); these settings reach 3.35x (docs/results.md).
_REACH = {"resnet56": {"max_prune_ratio": 0.9, "round_to": 4}}

_ANIMALS20, _VEHICLES20 = _subset("resnet20", "animals", ANIMALS), _subset("resnet20", "vehicles", VEHICLES)
_ANIMALS32, _ANIMALS56 = _subset("resnet32", "animals", ANIMALS), _subset("resnet56", "animals", ANIMALS)

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        # 8 recovery steps per episode: without them every plan at 2x keeps 15-75% of the base accuracy,
        # and the search ranks wrecked networks (docs/results.md, "the search's proxy").
        "quick", [BenchScenario("digits-small_resnet", {"finetune_steps": 8})], seeds=3, episodes=60,
        description="embedded default (sklearn digits + small ResNet) with 8 recovery steps per episode, offline, "
                    "about 20 minutes on 2 cores",
    ),
    "cifar10": Profile(
        "cifar10", [_cifar("resnet20"), _cifar("resnet56")], seeds=3, episodes=100, finetune_epochs=2,
        description="ResNet-20/56 on CIFAR-10 ($PRUNING_ENV_DATA or torchvision download); base weights from "
                    "<data_root>/pretrained/cifar10_<model>.pth or python -m pruning_env.pretrain",
    ),
    "paper": Profile(
        "paper",
        [BenchScenario(f"cifar100-{m}", {"model": m, "dataset": "cifar100", "val_samples": 2000,
                                          "target_latency": round(1 / x, 4), **_REACH.get(m, {}),
                                          **({"data_root": _data_root()} if _data_root() else {})})
         for m, x in PAPER_SPEEDUPS.items()],
        seeds=3, episodes=300, finetune_epochs=30,
        description="the paper's setting (VGG-19, ResNet-56, EfficientNet-B0 on CIFAR-100); a GPU makes it practical",
    ),
    "paper-cifar10": Profile(
        "paper-cifar10",
        # VGG-19 and EfficientNet-B0 have no published weights to adapt: pretrain trains them on this data
        [_cifar(m, target_latency=round(1 / x, 4), finetune_steps=20, **_REACH.get(m, {}),
                **({} if m == "resnet56" else {"adapt_steps": 0}))
         for m, x in PAPER_SPEEDUPS.items()],
        seeds=3, episodes=300, finetune_epochs=30,
        description="the paper's three networks at its speedups (3.63x, 3.35x, 1.14x, as measured latency here) on "
                    "CIFAR-10, whose images are available offline (CIFAR-100's are not). ResNet-56: the published "
                    "weights, adapted. VGG-19-BN and EfficientNet-B0 have no published CIFAR-10 weights: train "
                    "each first (a GPU makes it minutes) with python -m pruning_env.pretrain --model vgg19 "
                    "--dataset cifar10 --data-root <data_root> --epochs 30 --out "
                    "<data_root>/pretrained/cifar10_vgg19.pth (and efficientnet_b0)",
    ),
    "transfer": Profile(
        "transfer",
        [_ANIMALS20, _VEHICLES20, _ANIMALS32, _ANIMALS56,
         _transfer(_ANIMALS20, _VEHICLES20), _transfer(_VEHICLES20, _ANIMALS20),
         _transfer(_ANIMALS20, _ANIMALS32), _transfer(_ANIMALS20, _ANIMALS56)],
        agents=["ppo", "amc"], seeds=1, episodes=60, transfer_episodes=3,
        description="zero-shot transfer (agents.transfer): a policy searched on CIFAR-10's animals (classes "
                    f"{ANIMALS}) run deterministically, without learning, on its vehicles ({VEHICLES}) and back "
                    "(ResNet-20), and a ResNet-20 policy on ResNet-32/56 (animals); each against the target's own "
                    "search at equal episodes and at 10% of them, uniform, and the source's best plan. Base: the "
                    "published CIFAR-10 weights (<data_root>/pretrained) sliced to the subset's classes and adapted "
                    "400 steps per subset. ResNet-44 has no published weights here, so it is left out. Needs "
                    "CIFAR-10 ($PRUNING_ENV_DATA); with 20 recovery steps per episode, about an hour with 2 workers at "
                    "1 seed and 60 episodes on 2 CPU cores",
    ),
}

# Published numbers, quoted (not measured here); shown in leaderboards, clearly marked.
REFERENCE_ROWS = [
    {"scenario": "cifar10-resnet56", "agent": "AMC (He et al., 2018), quoted", "speedup": "2x fewer FLOPs",
     "accuracy_change": "-0.90 pts"},
    {"scenario": "cifar100-vgg19", "agent": "Yang et al., 2022, quoted", "speedup": "3.63x",
     "accuracy_change": "-2.05 pts"},
    {"scenario": "cifar100-resnet56", "agent": "Yang et al., 2022, quoted", "speedup": "3.35x",
     "accuracy_change": "-1.93 pts"},
    {"scenario": "cifar100-efficientnet_b0", "agent": "Yang et al., 2022, quoted", "speedup": "1.14x",
     "accuracy_change": "-5.66 pts"},
]


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown benchmark profile {name!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[name]
