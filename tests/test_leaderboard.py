"""The leaderboard ranks agents on measured latency: measured reward, target misses, table error, old rows."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from benchmarks.measured import MISS_TOLERANCE, measured_columns, reward_name, with_measured
from benchmarks.report import backfill_run_facts, leaderboard, write_report
from pruning_env.rewards import make_reward


def row(agent: str, seed: int, val: float, table: float, measured: float, best: float, **kw) -> dict:
    """A ``done/*.json`` row as ``benchmarks.run.run_one`` writes it, before the measured columns."""
    return {"scenario": "s", "agent": agent, "seed": seed, "best_reward": best, "val_accuracy": val,
            "base_val_accuracy": 0.9, "test_accuracy": val - 0.01, "base_test_accuracy": 0.89,
            "finetune_epochs": 0, "speedup_table": table, "speedup_measured": measured, "base_latency_ms": 40.0,
            "latency_ms": 40.0 / measured, "macs_ratio": 3.0, "target_latency": 0.5, "latency_mode": "table",
            "reward": "latency_accuracy", "reward_note": "", "macs": 1000, "params": 100, "base_macs": 3000,
            "base_params": 300, "ratios": json.dumps({"conv1": 0.5}), **kw}


def table_rows(board: str) -> list[list[str]]:
    """Cells of the leaderboard's agent rows (the header and rule left out)."""
    lines = [ln for ln in board.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


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


def test_leaderboard_ranks_by_measured_reward_and_flags_misses() -> None:
    # "fast" wins the search (its table promised 2x) but is 1.5x when measured; "true" keeps its 2x.
    df = pd.DataFrame([row("fast", 0, val=0.70, table=2.0, measured=1.5, best=-0.15),
                       row("fast", 1, val=0.70, table=2.0, measured=1.5, best=-0.15),
                       row("true", 0, val=0.69, table=2.0, measured=2.0, best=-0.16),
                       row("true", 1, val=0.69, table=2.0, measured=1.95, best=-0.16)])
    assert df.groupby("agent")["best_reward"].mean().idxmax() == "fast"  # the old ordering
    board = leaderboard(df)
    assert "Ranked by mean `reward_measured`" in board
    rows = table_rows(board)
    assert [(r[0], r[1]) for r in rows] == [("1", "true"), ("2", "fast")]
    header = next(ln for ln in board.splitlines() if ln.startswith("| rank"))
    misses = [c.strip() for c in header.strip("|").split("|")].index("misses target (measured)")
    assert rows[0][misses] == "0/2" and rows[1][misses] == "⚠ 2/2"
    assert "fast seeds 0 (1.50x), 1 (1.50x)" in board and "true seed" not in board
    error = [c.strip() for c in header.strip("|").split("|")].index("error %")
    assert rows[1][error] == "+33.3 ± 0.0"  # 2.0 / 1.5 - 1
    assert "(se " in rows[0][3]  # the ranking column carries its standard error
    assert "Target speedup 2.00x" in board and "below 1.80x" in board


def test_old_rows_without_the_new_columns_still_produce_a_leaderboard(tmp_path) -> None:
    keep = ("scenario", "agent", "seed", "best_reward", "val_accuracy", "base_val_accuracy", "test_accuracy",
            "base_test_accuracy", "finetune_epochs", "speedup_table", "speedup_measured", "base_latency_ms",
            "latency_ms", "macs_ratio", "ratios")
    old = pd.DataFrame([{k: v for k, v in r.items() if k in keep} for r in (
        row("a", 0, 0.70, 2.0, 1.5, -0.15), row("b", 0, 0.60, 2.0, 2.0, -0.20), row("b", 1, 0.60, 2.0, 2.0, -0.30))])
    full = with_measured(old)
    assert full["speedup_error"].tolist() == pytest.approx([1 / 3, 0.0, 0.0])  # from the columns it has
    assert full["reward_measured"].isna().all() and full["misses_target"].isna().all()
    board = leaderboard(old)
    assert [(r[0], r[1]) for r in table_rows(board)] == [("-", "a"), ("-", "b")]  # by search reward
    assert "Not ranked on measured latency" in board and "Target speedup unknown" in board
    write_report(old, tmp_path)
    assert (tmp_path / "leaderboard.md").read_text().endswith(board)
    assert "reward_measured" in pd.read_csv(tmp_path / "results.csv").columns
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "accuracy_vs_speedup_s.png", "ratios_s.png"]


def test_old_rows_get_their_run_facts_from_the_run_folder(tmp_path) -> None:
    old = pd.DataFrame([{k: v for k, v in row("a", 0, 0.8, 2.0, 1.6, -0.05).items()
                         if k not in ("target_latency", "latency_mode", "reward", "reward_note", "macs", "params",
                                      "base_macs", "base_params")}])
    run = tmp_path / "runs" / "s__a__0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"options": {"env_kwargs": {}}, "env": {
        "target_fraction": 0.5, "latency_mode": "table", "reward": make_reward("latency_accuracy").describe()}}))
    (run / "final.json").write_text(json.dumps({"pruned": {"macs": 1000, "params": 100},
                                                "base": {"macs": 3000, "params": 300}}))
    filled = with_measured(backfill_run_facts(old, tmp_path))
    assert filled.loc[0, "reward"] == "latency_accuracy" and filled.loc[0, "target_speedup"] == 2.0
    assert filled.loc[0, "reward_measured"] == pytest.approx(-0.0641108, abs=1e-6)
    assert bool(filled.loc[0, "misses_target"]) is True
