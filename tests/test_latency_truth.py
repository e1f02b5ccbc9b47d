"""The environment's predicted speedups against speedups measured on this machine (held-out plans).

Slow: it builds a real table with the environment's default settings (batch 64, one thread,
``round_to=8``, calibrated) for ResNet-20 and times 12 pruned models against the full one. The
tolerance is the issue's (median 10%, worst 20%), which ResNet-20 meets with a wide margin on a quiet
2-core machine (0.8% / 2.6% over 20 plans). The default small network is not used here: its worst
case (17% of 20 plans) sits too near the bar for a test that must not flake.
(``python -m benchmarks.latency_table_error`` prints the full comparison for all three.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.latency_table_error import random_plans
from pruning_env.engine import ModelGraph, apply_plan
from pruning_env.latency import LatencyTable
from pruning_env.measure import LatencyMeasurer
from pruning_env.models import build_model


@pytest.mark.slow
def test_default_table_predicts_measured_speedups_of_held_out_plans():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    graph = ModelGraph(model, torch.randn(1, 3, 32, 32))
    measurer = LatencyMeasurer(batch_size=64, threads=1, repeats=20)
    table = LatencyTable.build(graph, measurer, cache=False, calibrate=True, round_to=8)
    # seed 123: not the calibration models (those come from seed 0 inside the table build)
    plans = random_plans(graph, 12, seed=123, round_to=8, max_prune_ratio=0.8)
    pruned = [apply_plan(model, p, graph.example_inputs) for p in plans]
    base, *stats = measurer.measure_many([model, *pruned])
    measured = np.array([base["median_ms"] / s["median_ms"] for s in stats])
    predicted = np.array([table.base_ms / table.predict(graph.kept_counts(p)) for p in plans])
    errors = np.abs(predicted / measured - 1.0)
    assert measured.max() > 1.4, "the held-out plans should include real speedups"
    assert np.median(errors) <= 0.10, (predicted.round(2), measured.round(2))
    assert errors.max() <= 0.20, (predicted.round(2), measured.round(2))
