"""benchmarks.proxy: the search's accuracy against accuracy after fine-tuning, over plans at one target."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.proxy import collect_plans, main, make_env


def test_proxy_measures_both_accuracies_and_their_rank_correlation(tmp_path, one_thread):
    df = main(["--plans", "4", "--steps", "5", "--out", str(tmp_path), "--env-kwargs", '{"val_samples": 200}'])
    assert list(df["plan"]) == ["random-0", "random-1", "random-2", "random-3", "uniform"]
    assert df["proxy_accuracy"].between(0, 1).all() and df["finetuned_accuracy"].between(0, 1).all()
    assert (df["speedup_table"] >= 2.0 - 1e-6).all()  # every plan meets the target (0.5 of the base latency)
    assert df["finetuned_accuracy"].mean() > df["proxy_accuracy"].mean()  # five SGD steps already recover some
    text = (tmp_path / "proxy.md").read_text()
    assert "Rank correlation: Spearman" in text and "5 plans" in text


def test_bn_after_finetune_compares_running_and_recalibrated_statistics_per_budget(tmp_path, one_thread, capsys):
    from benchmarks.bn_after_finetune import main as bn_main

    df = bn_main(["--plans", "1", "--steps", "2", "12", "--out", str(tmp_path), "--env-kwargs", '{"val_samples": 200}'])
    assert len(set(df["kept"])) == len(df) // 2 and sorted(set(df["steps"])) == [2, 12]  # distinct plans only
    cols = ["val_running", "test_running", "val_recalibrated", "test_recalibrated"]
    assert df[cols].apply(lambda c: c.between(0, 1)).all().all()
    assert (df["test_running"] != df["test_recalibrated"]).any()  # the two statistics are not the same network
    assert (tmp_path / "bn_after_finetune.csv").exists() and "  12 steps:" in capsys.readouterr().out


def test_proxy_plans_are_distinct_and_a_small_space_says_so(one_thread):
    # widths in multiples of 16 on the default network: few plans meet the target, random episodes repeat them
    a = argparse.Namespace(model="small_resnet", dataset="digits", adapt_steps=0, target=0.5,
                           env_kwargs={"val_samples": 100, "round_to": 16})
    env = make_env(a)
    rows = collect_plans(env, 6, seed=0)
    kept = [tuple(r["kept"]) for r in rows]
    assert len(set(kept)) == len(kept) and sum(r["plan"].startswith("random") for r in rows) == 6
    with pytest.warns(UserWarning, match="distinct plans in 4 random episodes"):
        few = collect_plans(env, 50, seed=0, max_tries=4)
    assert 1 <= sum(r["plan"].startswith("random") for r in few) <= 4
    env.close()
