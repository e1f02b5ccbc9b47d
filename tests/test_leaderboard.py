"""The measured columns of a benchmark row: measured reward, target misses, table error."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.measured import MISS_TOLERANCE, measured_columns, reward_name
from pruning_env.rewards import make_reward


def row(agent: str, seed: int, val: float, table: float, measured: float, best: float, **kw) -> dict:
    """A ``done/*.json`` row as ``benchmarks.run.run_one`` writes it, before the measured columns."""
    return {"scenario": "s", "agent": agent, "seed": seed, "best_reward": best, "val_accuracy": val,
            "base_val_accuracy": 0.9, "test_accuracy": val - 0.01, "base_test_accuracy": 0.89,
            "finetune_epochs": 0, "speedup_table": table, "speedup_measured": measured, "base_latency_ms": 40.0,
            "latency_ms": 40.0 / measured, "macs_ratio": 3.0, "target_latency": 0.5, "latency_mode": "table",
            "reward": "latency_accuracy", "reward_note": "", "macs": 1000, "params": 100, "base_macs": 3000,
            "base_params": 300, "ratios": json.dumps({"conv1": 0.5}), **kw}


def test_reward_measured_is_the_run_reward_with_the_measured_latency() -> None:
    r = row("a", 0, val=0.8, table=2.0, measured=1.6, best=0.0)
    # latency_accuracy: (0.8 - 0.9) / 0.9 + 0.1 * ln(1.6) = -0.111111 + 0.047000 = -0.064111
    assert measured_columns(r)["reward_measured"] == pytest.approx(-0.0641108, abs=1e-6)
    # accuracy under budget: 40 ms / 1.6 = 25 ms is over the 20 ms target (+2%): -1; at 2.0x exactly, the accuracy.
    assert measured_columns({**r, "reward": "accuracy"})["reward_measured"] == -1.0
    assert measured_columns({**r, "reward": "accuracy", "speedup_measured": 2.0})["reward_measured"] == 0.8
    # amc uses the MACs of the plan: -(1 - 0.8) * ln(1000) = -1.381551
    assert measured_columns({**r, "reward": "amc"})["reward_measured"] == pytest.approx(-1.381551, abs=1e-6)
    # soft: 0.8 * (25 / 20) ** -0.07 = 0.8 * exp(-0.07 * 0.223144) = 0.787601
    assert measured_columns({**r, "reward": "soft"})["reward_measured"] == pytest.approx(0.787601, abs=1e-6)


def test_target_speedup_error_and_miss_flag_of_a_hand_made_row() -> None:
    r = row("a", 0, val=0.8, table=2.0, measured=1.6, best=0.0)
    cols = measured_columns(r)
    assert cols["target_speedup"] == 2.0 and cols["speedup_error"] == pytest.approx(0.25)
    assert cols["misses_target"] is True  # 1.6x < 0.9 * 2x
    limit = (1 - MISS_TOLERANCE) * 2.0
    assert measured_columns({**r, "speedup_measured": limit + 1e-6})["misses_target"] is False
    assert measured_columns({**r, "speedup_measured": limit - 1e-6})["misses_target"] is True
    assert measured_columns({**r, "target_latency": 0.25, "speedup_measured": 3.5})["misses_target"] is True
    assert measured_columns({**r, "target_latency": None})["misses_target"] is None  # unknown, not "met"
    assert math.isnan(measured_columns({**r, "latency_mode": "macs"})["speedup_error"])


def test_a_reward_that_is_not_a_registered_name_is_not_recomputed() -> None:
    described = json.loads(json.dumps(make_reward("latency_accuracy").describe()))
    assert reward_name({}, described) == ("latency_accuracy", "")
    assert reward_name({"reward": "soft"}, json.loads(json.dumps(make_reward("soft").describe()))) == ("soft", "")
    other = {**described, "latency_weight": 0.3}  # make_reward("latency_accuracy", latency_weight=0.3)
    name, note = reward_name({}, other)
    assert name is None and "0.3" in note
    name, note = reward_name({"reward": "<function my_reward at 0x7f>"}, {"name": "my_reward"})
    assert name is None and "not a registered name" in note
    cols = measured_columns({**row("a", 0, 0.8, 2.0, 1.6, 0.0), "reward": None, "reward_note": note})
    assert math.isnan(cols["reward_measured"]) and cols["reward_note"] == note
