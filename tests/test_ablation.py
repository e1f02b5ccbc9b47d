"""benchmarks.ablation: the same searches with and without the data features, compared over seeds."""

from __future__ import annotations

import pandas as pd

from benchmarks.ablation import main


def test_ablation_runs_both_observations_and_reports_the_gap(tmp_path):
    df = main(["--agents", "random", "--seeds", "0", "1", "--episodes", "3", "--out", str(tmp_path),
               "--env-kwargs", '{"val_samples": 200}'])
    assert sorted(set(df["features"])) == ["all", "no_data"] and len(df) == 4
    assert (df["episodes"] == 3).all() and df["best_val_accuracy"].between(0, 1).all()
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == [f"small_resnet-{f}-random-s{s}" for f in ("all", "no_data") for s in (0, 1)]
    config = (tmp_path / "runs" / "small_resnet-no_data-random-s0" / "config.json").read_text()
    assert '"observation_features": "no_data"' in config and "att_mean" not in config.split('"feature_names"')[1][:400]
    text = (tmp_path / "ablation.md").read_text()
    assert "| random | no_data | 2 |" in text and "`all` minus `no_data` best reward" in text
    assert len(pd.read_csv(tmp_path / "ablation.csv")) == 4


def test_ablation_fine_tunes_and_measures_each_best_plan_once(tmp_path):
    args = ["--agents", "random", "--seeds", "0", "--episodes", "2", "--out", str(tmp_path),
            "--ablations", "no_data", "sensitivity", "--env-kwargs", '{"val_samples": 200}', "--finetune-steps", "3"]
    df = main(args)
    assert list(df["features"]) == ["no_data", "sensitivity"] and (df["finetune_steps"] == 3).all()
    assert df["test_accuracy"].between(0, 1).all() and (df["speedup_measured"] > 1).all()
    final = tmp_path / "runs" / "small_resnet-sensitivity-random-s0" / "final.json"
    assert '"max_steps": 3' in final.read_text()
    stamp = final.stat().st_mtime_ns
    again = main(args)  # searches resume finished, fine-tunes are reused
    assert final.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again, df)
    text = (tmp_path / "ablation.md").read_text()
    assert "measured speedup" in text and "`no_data` minus `sensitivity` test accuracy after fine-tune" in text
