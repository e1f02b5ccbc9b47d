"""Torch-Pruning's global pruning as plans of our pipeline, and matching plan families to a cost target."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from agents.global_pruning import (
    global_plan,
    global_prune,
    macs_price,
    match_target,
    measured_price,
    plan_family,
    table_price,
    tp_importance,
    uniform_plan,
)
from pruning_env.engine import ModelGraph, apply_plan
from pruning_env.models import build_model
from pruning_env.plan import PruningPlan

pytestmark = pytest.mark.usefixtures("one_thread")


def _graph(name: str = "small_resnet", seed: int = 0) -> ModelGraph:
    """A model with non-trivial BN parameters and statistics (so that a wrong channel would show)."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return ModelGraph(model, torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def graph() -> ModelGraph:
    return _graph()


def _same_network(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("importance", ["magnitude", "lamp"])
@pytest.mark.parametrize("steps", [1, 3])
def test_plan_rebuilds_the_network_torch_pruning_made(graph, importance, steps):
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}
    tp_model, plan = global_prune(graph, 0.5, importance, round_to=8, iterative_steps=steps)
    ours = apply_plan(graph.model, plan, graph.example_inputs)
    _same_network(tp_model, ours, torch.randn(4, 3, 32, 32))
    kept = graph.kept_counts(plan)
    assert sum(kept) < sum(g.channels for g in graph.groups)
    assert all(k % 8 == 0 for k in kept)  # round_to
    assert plan.meta["method"] == f"global-{importance}" and plan.meta["ratio"] == 0.5
    # The base model is untouched (no surgery, no BN statistics moved by tracing).
    assert all(torch.equal(v, before[k]) for k, v in graph.model.state_dict().items())
    assert PruningPlan.from_json(plan.to_json()).keep == plan.keep


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_plan_rebuilds_torch_pruning_on_mobilenet(ratio):
    # Depthwise convs, residual groups rooted elsewhere than ours, and groups Torch-Pruning yields with
    # nothing to prune (round_to rounded their share down to zero).
    graph = _graph("mobilenet_v2")
    tp_model, plan = global_prune(graph, ratio, "magnitude")
    _same_network(tp_model, apply_plan(graph.model, plan, graph.example_inputs), torch.randn(2, 3, 32, 32))


def test_lamp_and_magnitude_choose_differently(graph):
    mag, lamp = global_plan(graph, 0.4, "magnitude"), global_plan(graph, 0.4, "lamp")
    assert graph.kept_counts(mag) != graph.kept_counts(lamp)
    assert global_plan(graph, 0.0).keep == graph.full_plan().keep


def test_torch_pruning_leaves_whole_the_groups_it_would_prune_away(graph):
    # One-shot global pruning at a high ratio: every channel of some groups falls under the global
    # threshold; Torch-Pruning then skips those groups instead of keeping a minimum (torch-pruning 1.6).
    plan = global_plan(graph, 0.9, "magnitude")
    assert plan.meta["left_whole"], "Torch-Pruning's one-shot behaviour changed: revisit the module docstring"
    for name in plan.meta["left_whole"]:
        assert len(plan.keep[name]) == graph.group(name).channels
    # Progressive pruning (iterative_steps) prunes every group instead.
    steps = global_plan(graph, 0.9, "magnitude", iterative_steps=4)
    assert not steps.meta["left_whole"]
    assert all(k < g.channels for k, g in zip(graph.kept_counts(steps), graph.groups))


def test_uniform_plan_prunes_every_group_alike(graph):
    plan = uniform_plan(graph, 0.5)
    assert graph.kept_counts(plan) == [g.channels // 2 for g in graph.groups]
    first = uniform_plan(graph, 0.5, scores=None)
    assert all(first.keep[g.name] == list(range(g.channels // 2)) for g in graph.groups)
    assert plan.keep != first.keep  # magnitude picks channels, not the first ones
    assert plan.meta["method"] == "uniform"


@pytest.mark.parametrize("method", ["uniform", "global-magnitude", "global-lamp"])
def test_match_target_meets_the_target_with_the_smallest_ratio(graph, method):
    price = macs_price(graph)
    make = plan_family(graph, method)
    target = 0.5 * price(graph.full_plan())
    plan, ratio = match_target(price, make, target)
    match = plan.meta["match"]
    assert price(plan) <= target and match["price"] == price(plan) and match["ratio"] == ratio
    assert 0.0 < match["resolution"] < 1e-4
    assert price(make(ratio - match["resolution"])) > target  # one step less misses it
    assert plan.keep == make(ratio).keep
    assert match["plans_priced"] < 25  # identical plans are priced once


def test_match_target_finds_the_first_crossing_of_a_non_monotone_price(graph):
    # A price that dips under the target on [0.4, 0.6] only, as one-shot global plans can (groups left
    # whole at high ratios make them expensive again): bisection alone misses it, the scan does not.
    # The first group (32 channels) keeps round(32 * (1 - ratio)): 13..19 for ratios in (0.390625, 0.609375].
    make = lambda r: uniform_plan(graph, r, round_to=1, scores=None)
    price = lambda plan: 1.0 if 13 <= graph.kept_counts(plan)[0] <= 19 else 2.0
    plan, ratio = match_target(price, make, 1.5, grid=8)
    assert 0.390625 < ratio < 0.390625 + 1e-4
    with pytest.raises(ValueError, match="no ratio"):
        match_target(price, make, 1.5, grid=1)


def test_match_target_returns_lo_when_it_already_meets_the_target(graph):
    plan, ratio = match_target(macs_price(graph), plan_family(graph, "uniform"), 1e12, lo=0.1)
    assert ratio == 0.1 and plan.meta["match"]["plans_priced"] == 1


def test_prices_from_a_table_and_a_measurer(graph):
    class Table:
        def predict(self, kept):
            return float(sum(kept))

    class Measurer:
        def measure(self, model):
            return float(sum(p.numel() for p in model.parameters()))

    plan = uniform_plan(graph, 0.5)
    assert table_price(graph, Table())(plan) == sum(graph.kept_counts(plan))
    pruned = apply_plan(graph.model, plan, graph.example_inputs)
    assert measured_price(graph, Measurer())(plan) == sum(p.numel() for p in pruned.parameters())
    plan, ratio = match_target(table_price(graph, Table()), plan_family(graph, "uniform"), 100.0)
    assert sum(graph.kept_counts(plan)) <= 100


def test_bad_arguments_say_what_to_do(graph):
    for ratio in (1.0, -0.1, math.nan, "0.5", True):
        with pytest.raises(ValueError, match="ratio"):
            global_plan(graph, ratio)
        with pytest.raises(ValueError, match="ratio"):
            uniform_plan(graph, ratio)
    with pytest.raises(ValueError, match="importance must be one of"):
        global_plan(graph, 0.5, "l1")
    with pytest.raises(ValueError, match="importance must be one of"):
        tp_importance("taylor")
    with pytest.raises(ValueError, match="round_to"):
        global_plan(graph, 0.5, round_to=0)
    with pytest.raises(ValueError, match="max_prune_ratio"):
        global_plan(graph, 0.5, max_prune_ratio=0.0)
    with pytest.raises(ValueError, match="iterative_steps"):
        global_plan(graph, 0.5, iterative_steps=0)
    with pytest.raises(TypeError, match="ModelGraph"):
        global_plan(graph.model, 0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        plan_family(graph, "global-taylor")
    with pytest.raises(TypeError, match="max_prune_ratio"):
        plan_family(graph, "global-lamp", scores="magnitude")

    price, make = macs_price(graph), plan_family(graph, "uniform")
    for target in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="target must be a positive number"):
            match_target(price, make, target)
    for lo, hi in ((0.5, 0.5), (0.6, 0.5), (-0.1, 0.5), (0.0, 1.0)):
        with pytest.raises(ValueError, match="lo < hi"):
            match_target(price, make, 1e6, lo=lo, hi=hi)
    with pytest.raises(ValueError, match="iters"):
        match_target(price, make, 1e6, iters=0)
    with pytest.raises(ValueError, match="no ratio in .* meets the target"):
        match_target(price, make, 1.0)  # 1 MAC: unreachable
    with pytest.raises(TypeError, match="not a PruningPlan"):
        match_target(price, lambda r: graph.kept_counts(make(r)), 1e6)
    with pytest.raises(ValueError, match="finite number"):
        match_target(lambda plan: math.nan, make, 1e6)
