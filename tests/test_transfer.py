"""Zero-shot transfer (agents.transfer, the benchmark's transfer rows) on two digit subsets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from agents import has_observation_policy
from agents.transfer import TransferOptions, run_transfer
from benchmarks.profiles import PROFILES, BenchScenario, Profile
from benchmarks.run import plan_runs, run_benchmark
from benchmarks.transfer import TRANSFER_COLUMNS

# first run on a machine: the 5-class scenario's caches (~60 s, shared with test_subsets.py)
ENV = {"val_samples": 200, "threads": 1, "eval_threads": 1}
LOW = BenchScenario("digits-low", {"dataset": "digits:classes=0,1,2,3,4", **ENV})
HIGH = BenchScenario("digits-high", {"dataset": "digits:classes=5,6,7,8,9", **ENV})
LOW_TO_HIGH = BenchScenario("digits-low->digits-high", dict(HIGH.env_kwargs), transfer_from="digits-low",
                            compare_with="digits-high")


def test_only_agents_with_an_observation_policy_are_transferred(tmp_path) -> None:
    assert has_observation_policy("ppo") and has_observation_policy("amc") and has_observation_policy("sac")
    for name in ("random", "uniform", "heuristic", "cem"):
        assert not has_observation_policy(name), name
    prof = Profile("t", [LOW, HIGH, LOW_TO_HIGH], agents=["ppo", "uniform"], seeds=2, episodes=3)
    specs = plan_runs(prof, tmp_path, seeds=2, episodes=3, threads=1, transfer_episodes=2)
    assert sorted((s.scenario.name, s.agent) for s in specs if s.scenario.transfer_from) == [
        ("digits-low->digits-high", "ppo")] * 2
    assert len(specs) == 2 * 2 * 2 + 2 and {s.transfer_episodes for s in specs} == {2}


def test_transfer_profile_is_animals_vehicles_and_depth_on_class_subsets() -> None:
    prof = PROFILES["transfer"]
    by_name = {s.name: s for s in prof.scenarios}
    assert by_name["cifar10-animals-resnet20"].env_kwargs["dataset"] == "cifar10:classes=2,3,4,5,6,7"
    assert by_name["cifar10-vehicles-resnet20"].env_kwargs["dataset"] == "cifar10:classes=0,1,8,9"
    transfers = [s for s in prof.scenarios if s.transfer_from]
    assert {(s.transfer_from, s.compare_with) for s in transfers} == {
        ("cifar10-animals-resnet20", "cifar10-vehicles-resnet20"),
        ("cifar10-vehicles-resnet20", "cifar10-animals-resnet20"),
        ("cifar10-animals-resnet20", "cifar10-animals-resnet32"),
        ("cifar10-animals-resnet20", "cifar10-animals-resnet56")}
    for s in transfers:  # a transfer runs on exactly its comparison's environment
        assert s.env_kwargs == by_name[s.compare_with].env_kwargs and s.transfer_from in by_name
        assert by_name[s.compare_with].env_kwargs["adapt_steps"] > 0


def test_transfer_refuses_agents_without_a_policy_and_other_observations(tmp_path, one_thread) -> None:
    from agents.train import TrainOptions, run_search

    for algo in ("uniform", "ppo"):
        run_search(TrainOptions(algo=algo, episodes=1, env_kwargs=LOW.env_kwargs, run_dir=str(tmp_path),
                                name=algo, progress=False, tensorboard=False))
    with pytest.raises(ValueError, match="nothing to transfer"):
        run_transfer(TransferOptions(source=str(tmp_path / "uniform"), env_kwargs=HIGH.env_kwargs,
                                     run_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="build B with A's observation_features"):
        run_transfer(TransferOptions(source=str(tmp_path / "ppo"), run_dir=str(tmp_path),
                                     env_kwargs={**HIGH.env_kwargs, "observation_features": "no_data"}))
    with pytest.raises(FileNotFoundError, match="not a search run folder"):
        run_transfer(TransferOptions(source=str(tmp_path / "missing"), env_kwargs=HIGH.env_kwargs))


@pytest.mark.slow  # ~60 s on one core (three runs, each measured after its search); make test still runs it
@pytest.mark.e2e
def test_transfer_benchmark_on_two_digit_subsets_writes_transfer_columns(tmp_path, one_thread) -> None:
    prof = Profile("tiny-transfer", [LOW, HIGH, LOW_TO_HIGH], agents=["ppo"], seeds=1, episodes=4,
                   transfer_episodes=2, description="test")
    df = run_benchmark(prof, out=tmp_path)
    assert len(df) == 3
    row = df[df["scenario"] == "digits-low->digits-high"].iloc[0]
    assert set(TRANSFER_COLUMNS) <= set(df.columns)
    assert row["source_scenario"] == "digits-low" and row["source_episodes"] == 4
    assert row["transfer_episodes"] == 2 and row["episodes"] == 2
    own = pd.read_csv(tmp_path / "runs" / "digits-high__ppo__0" / "episodes.csv")["reward"]
    assert row["own_reward"] == pytest.approx(own.max()) and row["own_reward_10pct"] == pytest.approx(own.iloc[0])
    for col in ("best_reward", "uniform_reward", "plan_transfer_reward", "test_accuracy", "speedup_measured"):
        assert math.isfinite(float(row[col])), col
    gain = row["own_reward"] - row["uniform_reward"]
    if gain > 1e-12:  # the share of B's own gain over uniform
        assert row["transfer_gain_share"] == pytest.approx((row["best_reward"] - row["uniform_reward"]) / gain)
    # the transfer played deterministic episodes on B and learned nothing: its folder reads like a search's
    run = tmp_path / "runs" / "digits-low-digits-high__ppo__0"
    result = json.loads((run / "transfer.json").read_text())
    assert result["policy"]["distinct_plans"] == 1 and len(pd.read_csv(run / "episodes.csv")) == 2
    assert result["source"]["run"].endswith("digits-low__ppo__0")
    assert Path(run / "final.json").exists() and (run / "best_plan.json").exists()
    assert "### Transfer" in (tmp_path / "leaderboard.md").read_text()
