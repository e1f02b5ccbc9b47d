"""The channel-criteria benchmark on the offline CIFAR-10 copy: held-apart selection samples, seeds, merging."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from benchmarks import criteria
from benchmarks.attention_scorings import COMBINE
from pruning_env.data import load_dataset
from pruning_env.importance import train_group_attention


def test_selection_samples_are_held_apart_from_the_reported_ones(shared_data):
    data = load_dataset("cifar10", data_root=shared_data)
    report, select = criteria.val_splits(data, criteria.Args(val_samples=300, select_samples=100))
    assert len(select) == 100 and len(report) == 200
    assert torch.equal(select.x, data.val.x[:100]) and torch.equal(report.x, data.val.x[100:300])
    report_only, none = criteria.val_splits(data, criteria.Args(val_samples=300))
    assert none is None and torch.equal(report_only.x, data.val.x[:300])


def test_criteria_benchmark_writes_rows_and_merges_runs(shared_data, tmp_path, capsys):
    common = ["--models", "resnet20", "--ratios", "0.5", "--val-samples", "300", "--select-samples", "100",
              "--finetune-steps", "0", "--adapt-steps", "0", "--recal-batches", "2", "--data-root", str(shared_data)]
    rows_a = criteria.main(common + ["--criteria", "l1", "random", "--random-seeds", "2",
                                     "--out", str(tmp_path / "a.json")])
    tuned = [*common]
    tuned[tuned.index("--finetune-steps") + 1] = "2"  # a 2-step fine-tune, twice: seeds 0 and 1
    rows_b = criteria.main(tuned + ["--criteria", "activation", "--finetune-seeds", "0", "1",
                                    "--out", str(tmp_path / "b.json")])
    assert [(r["criterion"], r["seed"]) for r in rows_a] == [("l1", 0), ("random", 0), ("random", 1)]
    assert [r["finetune_seed"] for r in rows_b] == [0, 1] and rows_b[0]["acc_recal"] == rows_b[1]["acc_recal"]
    assert all(0.0 <= r["acc_finetuned"] <= 1.0 for r in rows_b)
    for r in rows_a + rows_b:
        assert r["val_samples"] == 200 and 0.0 <= r["acc_recal"] <= 1.0 and 0.0 <= r["acc_recal_select"] <= 1.0
    # the published ResNet-20 keeps far more than chance at 50% with a data criterion, random far less
    assert rows_b[0]["acc_recal"] > max(r["acc_recal"] for r in rows_a if r["criterion"] == "random")
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["args"]["select_samples"] == 100 and len(saved["rows"]) == 3
    capsys.readouterr()
    merged = criteria.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert len(merged) == 5
    assert "(reported samples)" in out and "(selection samples)" in out
    assert "| l1 | random | activation |" in out
    cells = out.split("(reported samples)")[1].splitlines()[3].split(" | ")
    assert "±" in cells[2].split(" / ")[0]  # random: mean ± std of the recalibrated accuracy over its 2 seeds
    recal, finetuned = cells[3].rstrip(" |").split(" / ")  # activation: one recalibration, 2 fine-tunes
    assert "±" not in recal and "±" in finetuned
    with pytest.raises(SystemExit, match="must be below"):
        criteria.main(common[:-2] + ["--select-samples", "300", "--criteria", "l1", "--data-root", str(shared_data)])


def test_every_attention_criterion_names_a_scoring_of_the_gates():
    assert set(criteria.ATTENTION_COMBINE.values()) <= set(COMBINE)
    assert criteria.ATTENTION_COMBINE["attention"] == "consensus"  # the package's own scoring
    assert set(criteria.Args().criteria) - set(criteria.ATTENTION_COMBINE) == {"l1", "bn", "taylor", "activation",
                                                                                "random"}


def test_attention_sparsity_option_defaults_to_the_training_default():
    default = inspect.signature(train_group_attention).parameters["sparsity"].default
    assert criteria.Args().attention_sparsity == default  # the benchmark measures the shipped default
    assert criteria.parse_args(["--attention-sparsity", "1.0"]).attention_sparsity == 1.0


def test_a_stopped_run_resumes_from_its_out_file(shared_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run.json"
    args = ["--models", "resnet20", "--criteria", "l1", "--ratios", "0.5", "--val-samples", "200",
            "--finetune-steps", "2", "--finetune-seeds", "0", "1", "--adapt-steps", "0", "--recal-batches", "2",
            "--data-root", str(shared_data), "--out", str(out)]
    real, calls = criteria.finetune, []

    def stops_on_second(*a, **kw):
        calls.append(a[5])  # the fine-tune seed
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if stopped during the second fine-tune
        return real(*a, **kw)

    monkeypatch.setattr(criteria, "finetune", stops_on_second)
    with pytest.raises(KeyboardInterrupt):
        criteria.main(args)
    saved = json.loads(out.read_text())["rows"]
    assert [r["finetune_seed"] for r in saved] == [0]  # the first row was written when it was measured
    calls.clear()
    monkeypatch.setattr(criteria, "finetune", lambda *a, **kw: calls.append(a[5]) or real(*a, **kw))
    rows = criteria.main(args)
    assert calls == [1]  # only the missing fine-tune ran
    assert [r["finetune_seed"] for r in rows] == [0, 1] and rows[0] == saved[0]
    assert "resuming" in capsys.readouterr().out
    assert [r["finetune_seed"] for r in json.loads(out.read_text())["rows"]] == [0, 1]
    calls.clear()
    assert len(criteria.main(args)) == 2 and calls == []  # all done: nothing is measured again
    with pytest.raises(SystemExit, match="other settings.*--recal-batches"):
        criteria.main([*args, "--recal-batches", "3"])
    saved = json.loads(out.read_text())
    out.write_text(json.dumps({**saved, "scoring": {**saved["scoring"], "attention_version": 2}}))
    with pytest.raises(SystemExit, match="another version of the criteria"):  # e.g. rows of an older default
        criteria.main(args)
    with pytest.raises(SystemExit):
        criteria.parse_args(["--seed", "1"])
    assert "--seed was replaced by --finetune-seeds" in capsys.readouterr().err
