"""Data-aware group profiles: shapes, bounds, caching, and that they depend on the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from pruning_env import profiling
from pruning_env.data import load_dataset
from pruning_env.engine import ModelGraph
from pruning_env.image_dataset import TensorImageDataset
from pruning_env.importance import GateStats, train_group_attention
from pruning_env.models import build_model
from pruning_env.profiling import FEATURE_NAMES, GroupProfile, profile_groups

EX = torch.randn(1, 3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = build_model("small_resnet").eval()
    return model, ModelGraph(model, EX)


def _finite(p: GroupProfile) -> None:
    # (profile_groups clips every feature into [low, high] = [0, 1], so checking that range here could
    # never fail; NaN passes the clipping, and the values themselves are checked on a known input below)
    assert p.features.dtype == np.float32
    assert np.isfinite(p.features).all()


class _KnownNet(nn.Module):
    """1x1 convolutions with hand-set weights: the activations of group ``conv1`` are known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 1)
        self.conv2 = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():  # channel c computes relu(w_c x + b_c): dead, x, relu(x - 2), 2 x
            self.conv1.weight.copy_(torch.tensor([0.0, 1.0, 1.0, 2.0]).view(4, 1, 1, 1))
            self.conv1.bias.copy_(torch.tensor([0.0, 0.0, -2.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_activation_and_class_features_on_a_known_input():
    """Every image is constant, x = 1 (class 0) or x = 3 (class 1): the features follow by hand."""
    x = torch.tensor([1, 3] * 4, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    data = TensorImageDataset(x, torch.tensor([0, 1] * 4), mean=[0.0], std=[1 / 255], hflip=False)
    model = _KnownNet().eval()
    graph = ModelGraph(model, torch.zeros(1, 1, 4, 4))
    row = profile_groups(model, graph, data, num_batches=1, batch_size=8, cache=False).row("conv1")
    # per channel, class 0 / class 1: dead 0 / 0, x 1 / 3, relu(x - 2) 0 / 1, 2x 2 / 6
    m = np.array([0.0, 2.0, 0.5, 4.0])  # mean |a| per channel
    assert row["act_mean"] == pytest.approx(m.mean() / (1 + m.mean()), abs=1e-5)  # 1.625 / 2.625
    assert row["act_spread"] == pytest.approx((0 + 1 / 3 + 1 / 2 + 1 / 3) / 4, abs=1e-5)  # s_c / (m_c + s_c)
    assert row["act_channel_dispersion"] == pytest.approx(m.std() / (m.mean() + m.std()), abs=1e-5)
    assert row["act_zero_share"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert row["act_dead_share"] == pytest.approx(1 / 4)
    # the class decides every live channel exactly (no within-class variance): F / (1 + F) = 0, 1, 1, 1
    assert row["fisher_mean"] == pytest.approx(3 / 4, abs=1e-4)
    assert row["fisher_q90"] == pytest.approx(1.0, abs=1e-4)
    # (top class mean - the other's) / their sum: 0 (dead), (3-1)/4, (1-0)/1, (6-2)/8
    assert row["class_selectivity"] == pytest.approx((0 + 0.5 + 1 + 0.5) / 4, abs=1e-5)


def test_profile_shapes_bounds_and_neutral_attention(small, digits):
    model, graph = small
    p = profile_groups(model, graph, digits, num_batches=2, cache=False)
    assert p.feature_names == FEATURE_NAMES and len(FEATURE_NAMES) == 16
    assert p.features.shape == (len(graph), len(FEATURE_NAMES))
    assert p.low.shape == p.high.shape == (len(FEATURE_NAMES),)
    assert p.group_names == [g.name for g in graph.groups]
    _finite(p)
    assert p.meta["has_attention"] is False and p.meta["samples"] == 128
    neutral = {"att_mean": 1.0, "att_std": 0.0, "att_q10": 1.0, "att_q50": 1.0, "att_q90": 1.0,
               "att_entropy": 1.0, "att_low_share": 0.0, "att_data_std": 0.0}
    for i in range(len(graph)):
        row = p.row(i)
        assert {k: row[k] for k in neutral} == neutral
    # post-ReLU feature maps of a ReLU network: a sizeable share of exact zeros
    assert p.features[:, FEATURE_NAMES.index("act_zero_share")].min() > 0.1


def test_attention_features_follow_the_gates(small, digits):
    model, graph = small
    names = [g.name for g in graph.groups]
    gates = {}
    for g in graph.groups:
        v = torch.full((g.channels,), 0.9)
        v[: g.channels // 4] = 0.01  # a quarter of the channels switched off
        gates[g.name] = v
    stats = GateStats(mean=gates, std={n: torch.full_like(v, 0.05) for n, v in gates.items()},
                      aliases={n: n for n in names})
    p = profile_groups(model, graph, digits, attention_stats=stats, num_batches=1, cache=False)
    _finite(p)
    col = {n: p.features[:, FEATURE_NAMES.index(n)] for n in FEATURE_NAMES}
    np.testing.assert_allclose(col["att_low_share"], 0.25, atol=1e-6)
    np.testing.assert_allclose(col["att_q10"], 0.01, atol=1e-6)
    np.testing.assert_allclose(col["att_q90"], 0.9, atol=1e-6)
    np.testing.assert_allclose(col["att_data_std"], 0.1, atol=1e-6)
    assert (col["att_entropy"] < 1.0).all() and (col["att_entropy"] > 0.5).all()
    np.testing.assert_allclose(col["att_mean"], 0.25 * 0.01 + 0.75 * 0.9, atol=1e-5)


def test_profile_with_trained_attention_and_dead_channels(digits):
    torch.manual_seed(0)
    model = build_model("small_resnet").eval()
    graph = ModelGraph(model, EX)
    g = graph.group("layer1.0.conv1")
    with torch.no_grad():  # half of this block's channels output exactly zero
        model.get_submodule("layer1.0.bn1").weight[: g.channels // 2] = 0.0
        model.get_submodule("layer1.0.bn1").bias[: g.channels // 2] = 0.0
    stats = train_group_attention(model, graph, digits, steps=3, batch_size=16, calib_samples=32)
    p = profile_groups(model, graph, digits, attention_stats=stats, num_batches=2, cache=False)
    _finite(p)
    assert p.meta["has_attention"] is True
    row = p.row("layer1.0.conv1")
    assert row["act_dead_share"] == pytest.approx(0.5)
    assert row["act_zero_share"] >= 0.5
    others = [p.row(n)["act_dead_share"] for n in p.group_names if n != "layer1.0.conv1"]
    assert max(others) < 0.5


def test_profile_of_mobilenet_v2(digits):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=10, input_size=32).eval()
    graph = ModelGraph(model, EX)
    p = profile_groups(model, graph, digits, num_batches=1, batch_size=32, cache=False)
    assert p.features.shape == (len(graph), len(FEATURE_NAMES)) and len(graph) > 10
    _finite(p)
    # the linear bottlenecks (project convs, no ReLU) have almost no exact zeros; expansions do
    zero = p.features[:, FEATURE_NAMES.index("act_zero_share")]
    assert zero.min() < 0.05 < 0.2 < zero.max()


def test_profile_cache_and_json_round_trip(small, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_ENV_CACHE", str(tmp_path))
    model, graph = small
    first = profile_groups(model, graph, digits, num_batches=1)
    files = list((tmp_path / "profiles").glob("profile_*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["format"] == "dataawareprune.profile"  # plain JSON, no pickle

    def no_profiling(*args, **kwargs):
        raise AssertionError("profiled again although cached")

    monkeypatch.setattr(profiling, "_activation_features", no_profiling)
    second = profile_groups(model, graph, digits, num_batches=1)
    np.testing.assert_array_equal(first.features, second.features)
    assert second.feature_names == first.feature_names and second.meta == first.meta
    with pytest.raises(AssertionError, match="profiled again"):  # other settings, other key
        profile_groups(model, graph, digits, num_batches=2)
    path = first.save(tmp_path / "p.json")
    loaded = GroupProfile.load(path)
    np.testing.assert_array_equal(loaded.features, first.features)
    np.testing.assert_array_equal(loaded.high, first.high)
    with pytest.raises(ValueError, match="not a DataAwarePrune group profile"):
        GroupProfile.from_dict({"features": []})


def test_same_model_different_data_gives_different_profiles(small, digits, shared_data):
    """The features describe the data: digits vs CIFAR-10 through the same seeded network."""
    model, graph = small
    cifar = load_dataset("cifar10", data_root=shared_data, download=False, max_train=512)
    pd = profile_groups(model, graph, digits, num_batches=4, cache=False)
    pc = profile_groups(model, graph, cifar, num_batches=4, cache=False)
    diff = np.abs(pd.features - pc.features)
    act = [FEATURE_NAMES.index(n) for n in FEATURE_NAMES if not n.startswith("att_")]
    assert diff[:, act].mean() > 0.03
    # class structure: digits classes are far easier to separate than CIFAR-10 classes, in every group
    fisher = FEATURE_NAMES.index("fisher_mean")
    assert (pd.features[:, fisher] > pc.features[:, fisher] + 0.05).all()
    # a second profile of the same data is identical (deterministic calibration batches)
    again = profile_groups(model, graph, digits, num_batches=4, cache=False)
    np.testing.assert_array_equal(again.features, pd.features)


def test_relative_features_are_ranks_among_the_groups_with_ties_shared():
    from pruning_env.features import DataFeatures

    f = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 2.0], [3.0, 5.0, 1.0]], dtype=np.float32)
    df = DataFeatures(scores={}, features=f, feature_names=["a", "b", "c"], low=np.zeros(3), high=np.ones(3) * 5)
    np.testing.assert_allclose(df.relative(), [[0.0, 0.5, 0.75], [0.75, 0.5, 0.75], [0.75, 0.5, 0.0]])
    one = DataFeatures(scores={}, features=f[:1], feature_names=["a", "b", "c"], low=np.zeros(3), high=np.ones(3))
    np.testing.assert_array_equal(one.relative(), [[0.5, 0.5, 0.5]])
