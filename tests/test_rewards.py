"""Reward objects: values, bounds, flags, registry errors."""

from __future__ import annotations

import math

import pytest

from pruning_env.rewards import REWARDS, EpisodeMetrics, make_reward


def _m(acc=0.9, lat=5.0, macs=1_000_000) -> EpisodeMetrics:
    return EpisodeMetrics(accuracy=acc, base_accuracy=0.95, latency_ms=lat, base_latency_ms=10.0,
                          target_latency_ms=5.0, macs=macs, base_macs=4_000_000, params=10, base_params=40)


def test_default_reward_prefers_accuracy_at_equal_latency_and_speed_at_equal_accuracy() -> None:
    r = make_reward("latency_accuracy")
    assert r(_m(acc=0.93)) > r(_m(acc=0.90))
    assert r(_m(lat=4.0)) > r(_m(lat=5.0))
    assert r(_m(acc=0.95, lat=10.0)) == pytest.approx(0.0)
    # R = (acc - base_acc) / base_acc + 0.1 log(base_lat / lat): half the accuracy at twice the speed
    assert r(_m(acc=0.475, lat=5.0)) == pytest.approx(-0.5 + 0.1 * math.log(2))
    # and clipped to its bounds: no accuracy at 10x the latency, full accuracy 1e10x faster
    assert r(_m(acc=0.0, lat=100.0)) == r.low == -1.0  # unclipped: -1 - 0.1 log 10
    assert r(_m(acc=0.95, lat=1e-9)) == r.high == pytest.approx(1 + 0.1 * math.log(1e3))  # unclipped: 0.1 log 1e10


def test_amc_reward_is_minus_error_times_log_macs() -> None:
    r = make_reward("amc")
    assert r(_m(acc=0.9, macs=1000)) == pytest.approx(-0.1 * math.log(1000))
    assert r.platform_dependent is False


def test_accuracy_under_budget_is_hard() -> None:
    r = make_reward("accuracy")
    assert r(_m(acc=0.8, lat=5.0)) == pytest.approx(0.8)
    assert r(_m(acc=0.8, lat=6.0)) == -1.0


def test_soft_constraint_follows_mnasnet() -> None:
    r = make_reward("soft")
    assert r(_m(acc=0.8, lat=5.0)) == pytest.approx(0.8)
    assert r(_m(acc=0.8, lat=10.0)) == pytest.approx(0.8 * 2 ** -0.07)


def test_registry_and_callables() -> None:
    assert set(REWARDS) == {"latency_accuracy", "amc", "accuracy", "soft"}
    with pytest.raises(ValueError, match="valid names: latency_accuracy"):
        make_reward("speed")
    custom = make_reward(lambda m: m.accuracy * 2)
    assert custom(_m(acc=0.4)) == pytest.approx(0.8)
    bad = make_reward(lambda m: float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        bad(_m())
    for name in REWARDS:
        d = make_reward(name).describe()
        assert d["name"] == name and "deterministic" in d and d["low"] <= d["high"]
