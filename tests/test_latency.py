"""Latency measurer, latency lookup table and MACs proxy: real models, real timings, robust assertions."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from pruning_env.engine import ModelGraph, apply_plan, count_macs_params
from pruning_env.latency import TABLE_FORMAT_VERSION, LatencyTable
from pruning_env.macs import MacsModel, macs_for_kept
from pruning_env.measure import LatencyMeasurer

X = torch.randn(1, 3, 32, 32)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        idt = x if self.short is None else self.short(x)
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + idt)


class TinyResNet(nn.Module):
    """Stem, two residual stages (16 and 32 channels, projection shortcut), pool, linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Block(16, 16), Block(16, 16))
        self.layer2 = nn.Sequential(Block(16, 32, 2), Block(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


pytestmark = pytest.mark.usefixtures("one_thread")


def fast_measurer(**kw) -> LatencyMeasurer:
    return LatencyMeasurer(threads=1, warmup=1, repeats=3, **kw)


@pytest.fixture(scope="module")
def graph() -> ModelGraph:
    torch.manual_seed(0)
    return ModelGraph(TinyResNet().eval(), X)


@pytest.fixture(scope="module")
def table(graph) -> LatencyTable:
    return LatencyTable.build(graph, fast_measurer(), cache=False)


# -- measurer -------------------------------------------------------------------------------------
class ThreadProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return self.conv(x)


def test_measurer_positive_finite_and_restores_threads_and_mode():
    probe = ThreadProbe().train()
    m = LatencyMeasurer(threads=2, warmup=2, repeats=5)
    try:
        torch.set_num_threads(1)
        ms = m.measure(probe)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    assert math.isfinite(ms) and ms > 0
    assert set(probe.seen) == {2} and len(probe.seen) == 7  # 2 warm-up + 5 timed runs, all at 2 threads
    assert probe.training  # eval during the measurement, the caller's mode afterwards


def test_measure_stats_are_ordered_and_described():
    m = LatencyMeasurer(threads=1, warmup=1, repeats=9, input_shape=(3, 16, 16))
    s = m.measure_stats(nn.Conv2d(3, 8, 3))
    assert s["runs"] == 9
    assert 0 < s["min"] <= s["p10"] <= s["median_ms"] <= s["p90"]
    d = m.describe()
    assert d["backend"] == "torch" and d["threads"] == 1 and d["batch_size"] == 1 and d["torch"] == torch.__version__


def test_measure_many_interleaves_every_model():
    models = [ThreadProbe(), ThreadProbe()]
    stats = LatencyMeasurer(threads=1, warmup=1, repeats=4).measure_many(models, rounds=2)
    assert [s["runs"] for s in stats] == [4, 4]
    assert [len(p.seen) for p in models] == [5, 5]


def test_onnxruntime_backend_gives_positive_latency():
    pytest.importorskip("onnxruntime")
    ms = fast_measurer(backend="onnxruntime").measure(TinyResNet())
    assert math.isfinite(ms) and ms > 0


def test_onnxruntime_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"pip install dataawareprune\[onnx\]"):
        LatencyMeasurer(backend="onnxruntime")


def test_measurer_rejects_bad_settings():
    with pytest.raises(ValueError, match="backend"):
        LatencyMeasurer(backend="tvm")
    with pytest.raises(ValueError, match="repeats"):
        LatencyMeasurer(repeats=0)



# -- lookup table ---------------------------------------------------------------------------------
def test_table_predicts_base_for_full_plan(graph, table):
    full = [g.channels for g in graph.groups]
    assert table.predict(full) == pytest.approx(table.base_ms, rel=1e-6)
    assert table.predict_plan(graph.full_plan()) == pytest.approx(table.base_ms, rel=1e-6)
    assert table.base_ms > 0


def test_table_predicts_less_for_heavily_pruned_plan(graph, table):
    plan = graph.plan_from_ratios([0.9] * len(graph.groups))
    assert table.predict_plan(plan) < table.base_ms
    assert table.predict([1] * len(graph.groups)) <= table.predict_plan(plan)


def test_table_is_monotone_in_each_group(graph, table):
    assert not table.scanned  # torch at batch 1: no scans by default
    full = [g.channels for g in graph.groups]
    for i, g in enumerate(graph.groups):
        preds = [table.predict(full[:i] + [k] + full[i + 1:]) for k in range(1, g.channels + 1)]
        assert all(b >= a - 1e-12 for a, b in zip(preds, preds[1:])), (g.name, preds)
        assert preds[0] < preds[-1]


def test_table_group_share(graph, table):
    share = table.group_share()
    assert len(share) == len(graph.groups)
    assert all(s > 0 for s in share)  # (group_share caps each at 1: an upper bound here could not fail)


def test_table_rejects_bad_kept(graph, table):
    n = len(graph.groups)
    with pytest.raises(ValueError, match="one per group"):
        table.predict([1] * (n + 1))
    with pytest.raises(ValueError, match="outside"):
        table.predict([0] * n)
    with pytest.raises(ValueError, match="outside"):
        table.predict([g.channels + 1 for g in graph.groups])


def test_table_predict_is_fast(graph, table):
    kept = np.array([g.channels // 2 for g in graph.groups])
    t = time.perf_counter()
    for _ in range(200):
        table.predict(kept)
    assert (time.perf_counter() - t) / 200 < 2e-3  # s per call; typically ~0.05 ms


def test_table_dict_round_trip(graph, table):
    again = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    kept = [max(1, g.channels // 3) for g in graph.groups]
    assert again.predict(kept) == table.predict(kept)
    assert again.group_share() == table.group_share()
    with pytest.raises(ValueError, match="latency table"):
        LatencyTable.from_dict({"format": "something else"})


def test_table_rejects_input_shape_mismatch(graph):
    with pytest.raises(ValueError, match="input_shape"):
        LatencyTable.build(graph, fast_measurer(input_shape=(3, 64, 64)), cache=False)


def test_interpolation_on_a_synthetic_table():
    """One conv between two groups; a 2 x 3 grid with known values, bilinear in between."""
    data = {
        "format": "dataawareprune.latency_table", "version": TABLE_FORMAT_VERSION, "graph_signature": "s",
        "groups": [{"name": "a", "channels": 8}, {"name": "b", "channels": 16}],
        "settings": {}, "base_ms": 10.0, "scale": 2.0, "offset_ms": 0.0,
        "configs": [{"spec": {}, "in_points": [1, 8], "out_points": [1, 8, 16], "ms": [[1, 2, 4], [2, 3, 5]]}],
        "units": [{"name": "conv", "kind": "conv", "config": 0, "in": 8, "out": 16, "in_groups": [0],
                   "out_groups": [1]}],
    }
    t = LatencyTable(data)
    assert not t.scanned
    assert t.table_ms([8, 16]) == 5.0 and t.predict([8, 16]) == 10.0
    assert t.table_ms([1, 1]) == 1.0
    assert t.table_ms([8, 12]) == pytest.approx(4.0)
    assert t.table_ms([4.5, 8]) == pytest.approx(2.5)
    # the conv (5 ms at full width, x scale 2) reads group a and writes group b: both own its 10 ms
    assert LatencyTable({**data, "base_ms": 40.0}).group_share() == pytest.approx([0.25, 0.25])
    assert LatencyTable({**data, "base_ms": 5.0}).group_share() == [1.0, 1.0]  # 10 of 5 ms: capped at 1
    # a scan along the output axis (entry j: j + 1 channels) multiplies the grid's value
    data["configs"][0]["scan_out"] = [1.0] * 11 + [1.5] + [1.0] * 4
    t = LatencyTable(data)
    assert t.scanned
    assert t.table_ms([8, 16]) == 5.0
    assert t.table_ms([8, 12]) == pytest.approx(6.0)
    assert t.table_ms([8, 11]) == pytest.approx(3.75)


def test_scanned_table_keeps_base_and_prices_every_count(graph):
    table = LatencyTable.build(graph, fast_measurer(), cache=False, scan=True, calibrate=False)
    assert table.scanned
    full = [g.channels for g in graph.groups]
    assert table.predict(full) == pytest.approx(table.base_ms, rel=1e-6)
    ratios = [r for c in table.to_dict()["configs"] for r in c.get("scan_in", []) + c.get("scan_out", [])]
    assert len(ratios) > 2 * len(graph.groups) and all(0.25 <= r <= 4.0 for r in ratios)
    assert all(math.isfinite(table.predict(full[:1] + [k] + full[2:])) for k in range(1, full[1] + 1))


# -- disk cache -----------------------------------------------------------------------------------
@pytest.fixture
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNING_ENV_CACHE", str(tmp_path))
    calls = []
    original = LatencyMeasurer.measure_many

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LatencyMeasurer, "measure_many", counting)
    return calls


def test_cache_round_trip_does_not_measure_again(graph, counted, tmp_path):
    first = LatencyTable.build(graph, fast_measurer())
    assert not first.from_cache and len(counted) > 0
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1
    counted.clear()
    second = LatencyTable.build(graph, fast_measurer())
    assert second.from_cache and counted == []
    assert second.predict([1] * len(graph.groups)) == first.predict([1] * len(graph.groups))
    # other settings are another table
    LatencyTable.build(graph, fast_measurer(batch_size=2))
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2


@pytest.mark.parametrize("garbage", ["{not json", json.dumps({"format": "dataawareprune.latency_table"})])
def test_corrupt_cache_file_is_rebuilt(graph, counted, tmp_path, garbage):
    LatencyTable.build(graph, fast_measurer())
    (path,) = (tmp_path / "latency").glob("*.json")
    path.write_text(garbage)
    counted.clear()
    table = LatencyTable.build(graph, fast_measurer())
    assert not table.from_cache and len(counted) > 0
    assert json.loads(path.read_text())["format"] == "dataawareprune.latency_table"
    assert table.predict([g.channels for g in graph.groups]) == pytest.approx(table.base_ms, rel=1e-6)


# -- MACs proxy -----------------------------------------------------------------------------------
def test_macs_proxy_matches_pruned_resnet(graph):
    full = [g.channels for g in graph.groups]
    assert MacsModel(graph).base_macs == count_macs_params(graph.model, X)[0]
    rng = np.random.default_rng(0)
    for _ in range(2):
        plan = graph.plan_from_ratios(rng.uniform(0.0, 0.9, len(full)))
        pruned = apply_plan(graph.model, plan, X)
        expected = count_macs_params(pruned, X)[0]
        assert macs_for_kept(graph, graph.kept_counts(plan)) == pytest.approx(expected, rel=0.01)


def test_macs_proxy_matches_pruned_mobilenet_v2():
    torchvision = pytest.importorskip("torchvision")
    g = ModelGraph(torchvision.models.mobilenet_v2(num_classes=10).eval(), X)
    plan = g.plan_from_ratios(np.random.default_rng(1).uniform(0.0, 0.8, len(g.groups)))
    predicted = macs_for_kept(g, g.kept_counts(plan))
    assert predicted < macs_for_kept(g, [grp.channels for grp in g.groups])
    pruned = apply_plan(g.model, plan, graph=g, inplace=True)  # the graph is not used afterwards
    assert predicted == pytest.approx(count_macs_params(pruned, X)[0], rel=0.01)


def test_other_load_sees_a_process_busy_on_another_core():
    """other_load (what compress records with every timing) counts other processes' CPU time, not ours."""
    import os
    import subprocess

    from pruning_env.measure import other_load

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = other_load(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.7 < busy <= (os.cpu_count() or 1) + 0.01
