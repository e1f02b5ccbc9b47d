"""Pruning engine: groups, plans, surgery equivalence, MACs counting."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from pruning_env.engine import ModelGraph, apply_plan, count_macs_params, zero_removed_channels
from pruning_env.models import build_model
from pruning_env.plan import PlanMismatchError, PruningPlan


def _random_plan(graph: ModelGraph, seed: int) -> PruningPlan:
    gen = torch.Generator().manual_seed(seed)
    ratios = (torch.rand(len(graph.groups), generator=gen) * 0.9).tolist()
    scores = {g.name: torch.rand(g.channels, generator=gen) for g in graph.groups}
    return graph.plan_from_ratios(ratios, scores)


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenet_v2", "efficientnet_b0", "small_resnet"])
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_model_equals_zeroed_consumers(name: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10).eval()
    # Non-trivial BN statistics so that removed channels would matter if surgery were wrong.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 32, 32)
    graph = ModelGraph(model, x[:1])
    plan = _random_plan(graph, seed)
    pruned = apply_plan(model, plan, x[:1]).eval()
    reference = zero_removed_channels(graph, plan).eval()
    with torch.no_grad():
        out_p, out_r, out_full = pruned(x), reference(x), model(x)
    assert out_p.shape == (4, 10)
    torch.testing.assert_close(out_p, out_r, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out_full, out_p, atol=1e-4), "the plan pruned nothing that matters"
    # Parameters actually went away.
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_groups_are_in_forward_order_and_classifier_is_never_pruned() -> None:
    model = build_model("resnet56")
    graph = ModelGraph(model, torch.zeros(1, 3, 32, 32))
    names = [g.name for g in graph.groups]
    # 27 blocks with a free inner conv + 3 residual stage groups (the stem belongs to stage 1).
    assert len(graph.groups) == 30
    assert names[0] == "conv1"
    assert "fc" not in names and graph.classifier_name == "fc"
    assert all(g.index == i for i, g in enumerate(graph.groups))
    # Residual coupling: the stem's group carries every conv2 of stage 1.
    stem = graph.group("conv1")
    assert {f"layer1.{i}.conv2" for i in range(9)} <= set(stem.out_layers)
    full = graph.full_plan()
    pruned = apply_plan(model, full, torch.zeros(1, 3, 32, 32))
    assert pruned.fc.out_features == 10


def test_plan_round_trip_and_replay_is_deterministic(tmp_path) -> None:
    model = build_model("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    graph = ModelGraph(model, x)
    plan = _random_plan(graph, 3)
    path = plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(path)
    assert loaded == plan
    a, b = apply_plan(model, loaded, x), apply_plan(model, plan, x)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The base model was not touched.
    assert model.conv1.out_channels == 16


def test_plan_for_another_model_is_refused() -> None:
    x = torch.zeros(1, 3, 32, 32)
    plan = ModelGraph(build_model("resnet20"), x).full_plan()
    with pytest.raises(PlanMismatchError, match="another model"):
        apply_plan(build_model("resnet32"), plan, x)


def test_corrupt_plan_json_gets_a_clear_error(tmp_path) -> None:
    model = build_model("resnet20")
    plan = ModelGraph(model, torch.zeros(1, 3, 32, 32)).full_plan()
    text = plan.to_json()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        PruningPlan.load(tmp_path / "cut.json")
    with pytest.raises(ValueError, match="not a DataAwarePrune plan"):
        PruningPlan.from_json(json.dumps({"keep": {}}))
    bad = plan.to_dict()
    first = next(iter(bad["keep"]))
    bad["keep"][first] = [0, 10_000]
    with pytest.raises(PlanMismatchError, match="invalid channel indices"):
        apply_plan(model, PruningPlan.from_dict(bad), torch.zeros(1, 3, 32, 32))


def test_uniform_half_pruning_cuts_macs_about_four_times() -> None:
    model = build_model("resnet56").eval()
    x = torch.zeros(1, 3, 32, 32)
    graph = ModelGraph(model, x)
    base_macs, base_params = count_macs_params(model, x)
    assert 120e6 < base_macs < 130e6  # ResNet-56 on CIFAR: ~125.5 M MACs
    assert 0.84e6 < base_params < 0.87e6
    pruned = apply_plan(model, graph.plan_from_ratios([0.5] * len(graph.groups)), x)
    macs, params = count_macs_params(pruned, x)
    assert 3.5 < base_macs / macs < 4.5
    assert 3.5 < base_params / params < 4.5


def test_n_keep_rounding() -> None:
    assert ModelGraph.n_keep(64, 0.5) == 32
    assert ModelGraph.n_keep(64, 1.0) == 1
    assert ModelGraph.n_keep(64, 0.3, round_to=8) == 48
    assert ModelGraph.n_keep(10, 0.95, min_channels=2) == 2
