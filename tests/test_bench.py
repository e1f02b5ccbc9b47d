"""The benchmark runner end to end on the embedded default: results, leaderboard, plots, resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmarks.profiles import BenchScenario, Profile
from benchmarks.run import run_benchmark


@pytest.mark.e2e
def test_quick_benchmark_writes_report_and_skips_finished_runs(tmp_path) -> None:
    prof = Profile("tiny", [BenchScenario("digits-small_resnet", {})], agents=["uniform", "random"], seeds=1,
                   episodes=2, description="test")
    df = run_benchmark(prof, out=tmp_path)
    assert len(df) == 2 and set(df["agent"]) == {"uniform", "random"}
    for col in ("best_reward", "val_accuracy", "test_accuracy", "speedup_measured", "macs_ratio", "torch_threads"):
        assert df[col].notna().all(), col
    assert (df["macs_ratio"] > 1.0).all()
    board = (tmp_path / "leaderboard.md").read_text()
    assert "uniform" in board and "±" in board
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "accuracy_vs_speedup.png", "learning_digits-small_resnet.png", "ratios_digits-small_resnet.png"]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
    # A rerun skips both finished runs: their result files are untouched.
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "done").glob("*.json")}
    run_benchmark(prof, out=tmp_path)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "done").glob("*.json")}
    row = json.loads((tmp_path / "done" / "digits-small_resnet__uniform__0.json").read_text())
    assert row["episodes"] == 2
