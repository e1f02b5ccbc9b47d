"""Channel importance: group attention and the classic criteria, on real (small) networks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.attention_scorings import AttentionScoring
from pruning_env.engine import ModelGraph, apply_plan
from pruning_env.importance import (
    IMPORTANCES,
    GateStats,
    GroupAttention,
    GroupAttentionImportance,
    SeededRandomImportance,
    attention,
    available_importances,
    make_importance,
    train_group_attention,
)
from pruning_env.models import build_model

EX = torch.randn(1, 3, 32, 32)
FAST_ATTENTION = dict(steps=3, batch_size=16, calib_samples=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_small(digits):
    """small_resnet trained 4 epochs on digits (a few seconds): a real model with real features."""
    torch.manual_seed(0)
    model = build_model("small_resnet")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(4):
        for x, y in digits.train.iter_batches(64, shuffle=True, generator=gen):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=10, input_size=32)
    with torch.no_grad():  # BN statistics of real-scale activations (at init the logits are ~1e-10)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
                nn.init.uniform_(m.weight, 0.5, 1.5)
        model.train()
        for _ in range(4):
            model(torch.randn(32, 3, 32, 32))
    return model.eval(), ModelGraph(model, EX)


def _check_scores(graph: ModelGraph, imp) -> dict[str, torch.Tensor]:
    scores = graph.scores(imp)  # raises when a length is wrong
    assert set(scores) == {g.name for g in graph.groups}
    for g in graph.groups:
        s = scores[g.name]
        assert s.shape == (g.channels,), g.name
        assert torch.isfinite(s).all(), g.name
    return scores


@pytest.mark.parametrize("name", available_importances())
def test_every_criterion_scores_every_group_of_small_resnet(name, trained_small, digits):
    model = copy.deepcopy(trained_small)
    graph = ModelGraph(model, EX)
    kw = dict(FAST_ATTENTION, cache=False) if name == "attention" else {}
    before = copy.deepcopy(model.state_dict())
    scores = _check_scores(graph, make_importance(name, model=model, graph=graph, data=digits, **kw))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # scoring never edits weights
    assert all(p.grad is None for p in model.parameters())  # calibration leaves no gradients behind
    assert all(p.requires_grad for p in model.parameters())
    if name != "random":  # data/weight criteria separate channels
        assert any(s.std() > 0 for s in scores.values())


@pytest.mark.parametrize("name", available_importances())
def test_every_criterion_scores_every_group_of_mobilenet_v2(name, mobilenet, digits):
    model, graph = mobilenet
    kw = dict(FAST_ATTENTION, cache=False) if name == "attention" else {"num_batches": 1, "batch_size": 16}
    kw = kw if name in ("attention", "taylor", "activation") else {}
    _check_scores(graph, make_importance(name, model=model, graph=graph, data=digits, **kw))


def _kill_channels(model: nn.Module, graph: ModelGraph, group: int, channels: list[int]) -> None:
    """Make channels of a group dead: zero the conv weights and BN affine of every out-layer."""
    with torch.no_grad():
        for name in graph.group(group).out_layers:
            m = model.get_submodule(name)
            if isinstance(m, nn.Conv2d):
                m.weight[channels] = 0.0
            elif isinstance(m, nn.BatchNorm2d):
                m.weight[channels] = 0.0
                m.bias[channels] = 0.0


def test_attention_ranks_dead_channels_lowest(trained_small, digits):
    model = copy.deepcopy(trained_small)
    graph = ModelGraph(model, EX)
    block = next(g.index for g in graph.groups if g.name == "layer1.0.conv1")  # a block's inner channels
    stream = next(g.index for g in graph.groups if len(g.out_layers) > 4)  # a residual stage, coupled
    dead = {block: [1, 5, 9], stream: [2, 3, 11]}
    for gi, ch in dead.items():
        _kill_channels(model, graph, gi, ch)
    stats = train_group_attention(model, graph, digits, steps=60, batch_size=64, calib_samples=256)
    assert stats.meta["final_mean_gate"] < 0.9  # the sparsity pressure moved the gates
    combined = graph.scores(AttentionScoring(stats, combine="activation"))  # gate x activation
    ranked = graph.scores(AttentionScoring(stats, combine="activation_rank"))  # gate + activation rank
    default = graph.scores(GroupAttentionImportance(stats))  # consensus order (+ L1 rank for the first 30%)
    for gi, ch in dead.items():
        name = graph.group(gi).name
        alive = [i for i in range(graph.group(gi).channels) if i not in ch]
        for s in (stats.mean[name], combined[name], ranked[name], default[name]):
            assert set(torch.argsort(s)[: len(ch)].tolist()) == set(ch), (name, s)
            assert s[ch].max() < s[alive].min()
        assert torch.all(stats.activation[name][ch] == 0)  # dead channels feed exact zeros
    # the activation the default combines with is the activation criterion's own score, channel for channel
    activation = graph.scores(make_importance("activation", model=model, graph=graph, data=digits))
    for g in graph.groups:
        torch.testing.assert_close(stats.activation[g.name], activation[g.name])


def _forced_gates(att: GroupAttention, keep: dict[int, list[int]]) -> None:
    """Gates exactly 0/1: kept channels open, the others shut (no dependence on data)."""
    with torch.no_grad():
        for i, gate in enumerate(att.gates):
            gate.fc2.weight.zero_()
            bias = torch.full_like(gate.fc2.bias, -60.0)
            bias[keep[i]] = 60.0
            gate.fc2.bias.copy_(bias)


@pytest.mark.parametrize("arch", ["small_resnet", "mobilenet_v2"])
def test_shut_gates_compute_the_pruned_network(arch, trained_small, mobilenet):
    """A gate of 0 is pruning: the gated full model equals the physically pruned one."""
    if arch == "small_resnet":
        model = copy.deepcopy(trained_small)
        graph = ModelGraph(model, EX)
    else:
        model, graph = mobilenet
    gen = torch.Generator().manual_seed(1)
    scores = {g.name: torch.rand(g.channels, generator=gen) for g in graph.groups}
    plan = graph.plan_from_ratios([0.5] * len(graph), scores)
    att = GroupAttention(graph)
    _forced_gates(att, {g.index: plan.keep[g.name] for g in graph.groups})
    x = torch.randn(4, 3, 32, 32, generator=gen)
    pruned = apply_plan(model, plan, EX).eval()
    with torch.no_grad(), att.attach(model):
        gated = model(x)
    with torch.no_grad():
        scale = float(gated.abs().max())
        assert scale > 1e-3
        assert torch.allclose(gated, pruned(x), atol=1e-4 * scale, rtol=1e-4)
        assert not torch.allclose(gated, model(x), atol=1e-2 * scale)  # hooks are gone after the context


def test_attention_importance_looks_groups_up_by_any_coupled_layer(trained_small, digits):
    model = copy.deepcopy(trained_small)
    graph = ModelGraph(model, EX)
    imp = GroupAttentionImportance(train_group_attention(model, graph, digits, **FAST_ATTENTION))
    stream = next(g for g in graph.groups if len(g.out_layers) > 4)
    bn = next(n for n in stream.out_layers if isinstance(model.get_submodule(n), nn.BatchNorm2d) and n != stream.name)
    module = model.get_submodule(bn)
    group = graph.dg.get_pruning_group(module, graph.dg.get_pruner_of_module(module).prune_out_channels, [3, 0, 7])
    key, idx = imp.locate(group)
    assert key == stream.name and idx.tolist() == [3, 0, 7]
    gate = AttentionScoring(imp.stats, combine="none")  # scores = the mean gates: the lookup is visible
    assert torch.equal(gate(group), imp.stats.mean[stream.name][[3, 0, 7]])
    # a deep copy (new module objects, same names) is scored the same way
    twin = copy.deepcopy(model)
    twin_graph = ModelGraph(twin, EX)
    assert all(torch.equal(a, b) for a, b in zip(graph.scores(imp).values(), twin_graph.scores(imp).values()))
    with pytest.raises(ValueError, match="combine must be"):
        AttentionScoring(imp.stats, combine="product")
    with pytest.raises(TypeError, match="combine= is gone.*benchmarks/attention_scorings.py"):
        make_importance("attention", model=model, graph=graph, data=digits, combine="none")
    other = ModelGraph(build_model("resnet20").eval(), EX)
    with pytest.raises(KeyError, match="no attention scores"):
        other.scores(imp)


def test_attention_cache_round_trip(trained_small, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_ENV_CACHE", str(tmp_path))
    model = copy.deepcopy(trained_small)
    graph = ModelGraph(model, EX)
    first = GroupAttentionImportance.fit(model, graph, digits, **FAST_ATTENTION)
    files = list((tmp_path / "attention").glob("gates_*.pt"))
    assert len(files) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although cached")

    monkeypatch.setattr(attention, "train_group_attention", no_training)
    second = GroupAttentionImportance.fit(model, graph, digits, **FAST_ATTENTION)
    assert second.stats.mean.keys() == first.stats.mean.keys()
    assert all(torch.equal(second.stats.mean[k], first.stats.mean[k]) for k in first.stats.mean)
    assert second.stats.aliases == first.stats.aliases and second.stats.meta == first.stats.meta
    with pytest.raises(AssertionError, match="trained again"):  # other settings, other key
        GroupAttentionImportance.fit(model, graph, digits, **dict(FAST_ATTENTION, steps=4))
    with pytest.raises(TypeError, match="unknown attention settings"):
        GroupAttentionImportance.fit(model, graph, digits, no_such_setting=1)


def test_registry_errors_and_names():
    assert available_importances()[0] == "attention"
    assert set(IMPORTANCES) == {"attention", "l1", "bn", "taylor", "random", "activation"}
    with pytest.raises(ValueError, match="unknown importance 'fisher'.*attention, l1, bn, taylor, random, activation"):
        make_importance("fisher")
    with pytest.raises(ValueError, match="'taylor' needs model, data"):
        make_importance("taylor")
    with pytest.raises(ValueError, match="'attention' needs model, graph, data"):
        make_importance("attention")


def test_attention_settings_are_checked(trained_small, digits):
    graph = ModelGraph(copy.deepcopy(trained_small), EX)
    with pytest.raises(ValueError, match="mask must be 'subnet' or 'soft'"):
        train_group_attention(graph.model, graph, digits, mask="hard")
    with pytest.raises(ValueError, match="batch_norm must be 'frozen' or 'batch'"):
        train_group_attention(graph.model, graph, digits, batch_norm="running")


def test_random_importance_is_seeded_and_order_free(trained_small):
    graph = ModelGraph(copy.deepcopy(trained_small), EX)
    a = graph.scores(SeededRandomImportance(seed=3))
    b = {g.name: SeededRandomImportance(seed=3)(graph.tp_group(g.index)) for g in reversed(graph.groups)}
    c = graph.scores(SeededRandomImportance(seed=4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)


def test_taylor_uses_its_calibration_gradients(trained_small, digits):
    model = copy.deepcopy(trained_small)
    graph = ModelGraph(model, EX)
    imp = make_importance("taylor", model=model, graph=graph, data=digits, num_batches=2, batch_size=32)
    before = graph.scores(imp)
    for p in model.parameters():  # unrelated gradients set later must not change the scores
        p.grad = torch.randn_like(p)
    after = graph.scores(imp)
    assert all(torch.equal(before[k], after[k]) for k in before)
    g = graph.group("layer1.0.conv1")
    conv, w = model.get_submodule(g.name), model.get_submodule(g.name).weight
    direct = (w * imp._grads[f"{g.name}.weight"]).abs().flatten(1).sum(1)  # the conv's own Taylor term
    assert torch.corrcoef(torch.stack([direct, before[g.name]]))[0, 1] > 0.5
    assert conv.weight.grad is not None  # our gradients were restored, not replaced


def test_rank_combination_orders_saturated_gates_by_activation():
    # gates saturated near 1 (as for the channels the attention keeps) carry no order: activation decides;
    # a channel the attention shuts loses its lead in activation
    gates = torch.tensor([0.999, 0.999, 0.999, 0.05])
    act = torch.tensor([0.2, 3.0, 1.0, 5.0])
    stats = GateStats(mean={"g": gates}, std={"g": torch.zeros(4)}, activation={"g": act}, aliases={"g": "g"})
    rank = AttentionScoring(stats, combine="activation_rank").group_scores("g")
    # mean of the two ranks in [0, 1]; the three tied gates share the rank (1 + 2 + 3) / 3 / 3 = 2/3
    assert rank.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2, 1 / 2])
    assert torch.argsort(rank[:3]).tolist() == [0, 2, 1]
    assert rank[3] < rank[1]
    assert torch.argsort(AttentionScoring(stats, combine="none").group_scores("g")).tolist()[0] == 3
    odds = AttentionScoring(stats, combine="activation_odds").group_scores("g")
    assert torch.argsort(odds).tolist() == [3, 0, 2, 1]  # log-odds of the gate + log activation


def test_consensus_order_removes_the_agreed_channels_first_then_follows_gate_and_activation():
    # ranks 0..9 by gate and activation, L1 ranks reversed except for channels 4-9
    gate = torch.arange(10.0) / 10
    act = torch.arange(10.0) + 1
    l1 = torch.tensor([9.0, 8, 7, 6, 0, 1, 2, 3, 4, 5])
    pos = attention.consensus_order(gate, act, l1, share=0.3)  # removals 0..3 start with <= 30 % of 10 gone
    order = torch.argsort(pos).tolist()
    # mean of the three ranks: ch 4 (4+4+0), 0 (9), 1 (10), then 2 and 5 tie (11): the gate+activation rank breaks it
    assert order[:4] == [4, 0, 1, 2]
    assert order[4:] == [3, 5, 6, 7, 8, 9]  # then by gate + activation rank alone
    assert sorted(pos.tolist()) == pytest.approx([i / 9 for i in range(10)])
    # without the L1 consensus the first four would be 0..3: channel 4 is kept at 30 % by activation_rank
    stats = GateStats(mean={"g": gate}, std={"g": torch.zeros(10)}, activation={"g": act}, aliases={"g": "g"})
    rank = AttentionScoring(stats, combine="activation_rank")
    assert torch.argsort(rank.group_scores("g")).tolist()[:4] == [0, 1, 2, 3]
    # share 0: only the first removal (made with nothing gone yet) is the consensus one
    assert torch.argsort(attention.consensus_order(gate, act, l1, share=0.0)).tolist() == [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert torch.argsort(attention.consensus_order(gate, act, l1, share=0.1)).tolist()[:3] == [4, 0, 1]
    with pytest.raises(ValueError, match="needs the group's weights"):
        AttentionScoring(stats).group_scores("g")  # the default is the consensus order


def test_consensus_scores_real_groups_with_the_l1_criterion_and_nests_the_ratios(trained_small, digits):
    model = copy.deepcopy(trained_small)
    graph = ModelGraph(model, EX)
    stats = train_group_attention(model, graph, digits, **FAST_ATTENTION)
    scores = _check_scores(graph, GroupAttentionImportance(stats))
    benchmarked = graph.scores(AttentionScoring(stats, model, combine="consensus"))  # the benchmark's `attention`
    assert all(torch.equal(benchmarked[k], scores[k]) for k in scores)
    l1 = graph.scores(make_importance("l1"))
    for g in graph.groups:
        expected = attention.consensus_order(stats.mean[g.name], stats.activation[g.name], l1[g.name])
        assert torch.equal(scores[g.name], expected), g.name
    kept = {r: graph.plan_from_ratios([r] * len(graph), scores) for r in (0.3, 0.5, 0.7)}
    for g in graph.groups:  # every ratio keeps a subset of what a smaller ratio keeps
        k3, k5, k7 = (set(kept[r].keep[g.name]) for r in (0.3, 0.5, 0.7))
        assert k7 <= k5 <= k3, g.name
