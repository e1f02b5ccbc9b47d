"""Grouped convolutions (ResNeXt, RegNet): whole-block plans, exact surgery, torchvision models in the env."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from pruning_env.engine import ModelGraph, apply_plan, count_macs_params, zero_removed_channels
from pruning_env.macs import macs_for_kept
from pruning_env.plan import PlanMismatchError

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _cbr(cin: int, cout: int, k: int, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class TinyResNeXt(nn.Module):
    """A stem and one ResNeXt bottleneck: 1x1 reduce, 3x3 conv in ``groups`` groups, 1x1 expand, residual add."""

    def __init__(self, num_classes: int = 10, width: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.reduce = _cbr(16, width, 1)
        self.grouped = _cbr(width, width, 3, groups=groups)
        self.expand = _cbr(width, 16, 1, relu=False)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(x.mean((2, 3)))


class ConcatIntoGroups(nn.Module):
    """Two branches concatenated into a grouped conv: each branch holds only part of its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc(x.mean((2, 3)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that a wrongly removed channel changes the output."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _scores(graph: ModelGraph, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.channels, generator=gen) for g in graph.groups}


def _assert_whole_blocks(graph: ModelGraph, plan) -> None:
    """Each group keeps a multiple of its step, the same positions in every block."""
    for g in graph.groups:
        kept = plan.keep[g.name]
        block = g.channels // g.step
        assert len(kept) % g.step == 0, (g.name, len(kept), g.step)
        by_block = [sorted(i % block for i in kept if i // block == b) for b in range(g.step)]
        assert all(b == by_block[0] for b in by_block), g.name


def test_groups_touching_a_grouped_conv_step_by_its_conv_groups() -> None:
    graph = ModelGraph(TinyResNeXt().eval(), X[:1])
    steps = {g.name: g.step for g in graph.groups}
    assert steps == {"stem.0": 1, "reduce.0": 4, "grouped.0": 4}
    assert all(g.channels % g.step == 0 for g in graph.groups)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_grouped_conv_surgery_is_exact(ratio: float) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(TinyResNeXt())
    graph = ModelGraph(model, X[:1])
    plan = graph.plan_from_ratios([ratio] * len(graph), _scores(graph, 1))
    _assert_whole_blocks(graph, plan)
    pruned = apply_plan(model, plan, X[:1]).eval()
    conv = pruned.grouped[0]
    kept_in, kept_out = plan.keep["reduce.0"], plan.keep["grouped.0"]
    assert conv.groups == 4 and (conv.in_channels, conv.out_channels) == (len(kept_in), len(kept_out))
    assert conv.in_channels < 32 and conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    # The layer alone: the original conv with the removed inputs zeroed, read at the kept outputs.
    z = torch.randn(2, 32, 8, 8)
    masked = torch.zeros_like(z)
    masked[:, kept_in] = z[:, kept_in]
    with torch.no_grad():
        torch.testing.assert_close(conv(z[:, kept_in]), model.grouped[0](masked)[:, kept_out])
        out_p, out_r = pruned(X), zero_removed_channels(graph, plan).eval()(X)
    assert out_p.shape == (4, 10)
    torch.testing.assert_close(out_p, out_r, atol=1e-5, rtol=1e-5)


def test_regnet_plan_with_scores_prunes_exactly() -> None:
    """Issue 20: scored channels of RegNet's group-width-16 convs used to crash the surgery."""
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.regnet_x_400mf(num_classes=10))
    graph = ModelGraph(model, X[:1])
    grouped = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    # Every grouped conv has 16 channels per conv group; its feeding group steps by its conv groups.
    for name, groups in grouped.items():
        assert graph.group(name).step == groups == graph.group(name).channels // 16
    ratios = (torch.rand(len(graph), generator=torch.Generator().manual_seed(2)) * 0.9).tolist()
    plan = graph.plan_from_ratios(ratios, _scores(graph, 2))
    _assert_whole_blocks(graph, plan)
    pruned = apply_plan(model, plan, X[:1]).eval()
    for name, groups in grouped.items():
        conv = pruned.get_submodule(name)
        assert conv.groups == groups and conv.in_channels % groups == 0 and conv.out_channels % groups == 0
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), zero_removed_channels(graph, plan).eval()(X), atol=1e-4, rtol=1e-4)
    # The cost model prices grouped convs with their groups kept: it agrees with the pruned model.
    assert macs_for_kept(graph, graph.kept_counts(plan)) == count_macs_params(pruned, X[:1])[0]


def test_kept_counts_are_rounded_up_to_the_step() -> None:
    assert ModelGraph.n_keep(32, 0.5, step=2) == 16
    assert ModelGraph.n_keep(400, 0.3, step=25) == 300  # 280 rounded up to a multiple of 25
    assert ModelGraph.n_keep(64, 1.0, step=4) == 4
    assert ModelGraph.n_keep(64, 0.3, round_to=8, step=4) == 48
    assert ModelGraph.n_keep(48, 0.3, round_to=8, step=6) == 48  # lcm 24: 33.6 -> 48
    assert ModelGraph.n_keep(40, 0.95, min_channels=6, step=4) == 8
    graph = ModelGraph(TinyResNeXt().eval(), X[:1])
    plan = graph.plan_from_kept([5, 5, 30])  # stem, reduce (step 4), grouped (step 4)
    assert graph.kept_counts(plan) == [5, 8, 32]
    assert plan.keep["reduce.0"] == [0, 1, 8, 9, 16, 17, 24, 25]


def test_plan_that_splits_conv_groups_unevenly_is_refused() -> None:
    model = TinyResNeXt().eval()
    graph = ModelGraph(model, X[:1])
    plan = graph.full_plan()
    plan.keep["reduce.0"] = list(range(16))  # conv groups 0 and 1 whole, 2 and 3 empty
    with pytest.raises(PlanMismatchError, match="same positions in each of its 4 blocks of 8"):
        apply_plan(model, plan, X[:1])


def test_concatenation_into_a_grouped_conv_is_refused_with_a_remedy() -> None:
    model = ConcatIntoGroups().eval()
    with pytest.raises(ValueError, match=r"'grouped' \(Conv2d, 4 channel groups\) shares only part") as err:
        ModelGraph(model, X[:1])
    assert "ignored_layers=[model.get_submodule('a')]" in str(err.value) or "get_submodule('b')" in str(err.value)
    graph = ModelGraph(model, X[:1], ignored_layers=[model.a, model.b])  # the remedy, for both branches
    assert [g.name for g in graph.groups] == ["grouped"] and graph.group("grouped").step == 4


def test_shufflenet_is_still_refused_up_front() -> None:
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    with pytest.raises(ValueError, match="Torch-Pruning could not trace ShuffleNetV2"):
        ModelGraph(model, X[:1])


ENV_MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=10),
    "tiny_resnext": TinyResNeXt,
}


@pytest.mark.slow  # a latency table per model: 15-35 s each on one core (110 s for all five), 70 s once cached
@pytest.mark.parametrize("name", list(ENV_MODELS))
def test_torchvision_model_runs_an_episode_on_digits(name: str, one_thread) -> None:
    torch.manual_seed(0)
    base = ENV_MODELS[name]()
    # Batch 8 keeps the latency tables quick; fixed overheads then weigh more, hence a mild target.
    e = gym.make("DataAwarePrune-v0", model=base, val_samples=64, latency_batch_size=8, target_latency=0.9)
    env = e.unwrapped
    e.reset(seed=0)
    rng = np.random.default_rng(0)
    done = False
    while not done:
        _, reward, term, trunc, info = e.step(rng.uniform(-1, 1, size=(1,)).astype(np.float32))
        done = term or trunc
    assert math.isfinite(info["speedup"]) and info["speedup"] > 1.0 and math.isfinite(reward)
    plan = info["plan"]
    env.graph.check_plan(plan)
    _assert_whole_blocks(env.graph, plan)
    with torch.no_grad():
        out = env.last_model.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    before = {n: m.groups for n, m in env.scenario.model.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m for n, m in env.last_model.named_modules() if isinstance(m, nn.Conv2d)}
    for n, groups in before.items():
        conv = after[n]
        if groups > 1 and groups != env.scenario.model.get_submodule(n).out_channels:  # grouped, not depthwise
            assert conv.groups == groups and conv.in_channels % groups == 0 and conv.out_channels % groups == 0
    if name in ("regnet_x_400mf", "tiny_resnext"):
        assert any(g.step > 1 for g in env.graph.groups)
    e.close()
