"""benchmarks.proxy: the search's accuracy against accuracy after fine-tuning, over plans at one target."""

from __future__ import annotations

from benchmarks.proxy import main


def test_proxy_measures_both_accuracies_and_their_rank_correlation(tmp_path, one_thread):
    df = main(["--plans", "4", "--steps", "5", "--out", str(tmp_path), "--env-kwargs", '{"val_samples": 200}'])
    assert list(df["plan"]) == ["random-0", "random-1", "random-2", "random-3", "uniform"]
    assert df["proxy_accuracy"].between(0, 1).all() and df["finetuned_accuracy"].between(0, 1).all()
    assert (df["speedup_table"] >= 2.0 - 1e-6).all()  # every plan meets the target (0.5 of the base latency)
    assert df["finetuned_accuracy"].mean() > df["proxy_accuracy"].mean()  # five SGD steps already recover some
    text = (tmp_path / "proxy.md").read_text()
    assert "Rank correlation: Spearman" in text and "5 plans" in text
