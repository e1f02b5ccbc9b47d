"""The benchmark runner end to end on the embedded default: results, leaderboard, plots, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.profiles import BenchScenario, Profile, get_profile
from benchmarks.run import run_benchmark
from benchmarks.speedups import remeasure, summary
from pruning_env.backend import BEHAVIOUR, behaviour_record


@pytest.mark.e2e
def test_quick_benchmark_writes_report_and_skips_finished_runs(tmp_path) -> None:
    prof = Profile("tiny", [BenchScenario("digits-small_resnet", {})], agents=["uniform", "random"], seeds=1,
                   episodes=2, description="test")
    df = run_benchmark(prof, out=tmp_path)
    assert len(df) == 2 and set(df["agent"]) == {"uniform", "random"}
    for col in ("best_reward", "val_accuracy", "test_accuracy", "speedup_measured", "macs_ratio", "torch_threads",
                "reward_measured", "speedup_error", "target_speedup", "misses_target"):
        assert df[col].notna().all(), col
    assert (df["macs_ratio"] > 1.0).all() and (df["target_speedup"] == 2.0).all()  # default target_latency 0.5
    assert (df["reward"] == "latency_accuracy").all() and df["misses_target"].isin([True, False]).all()
    # The search's reward with the measured instead of the predicted speedup: only the latency term moves.
    moved = 0.1 * (df["speedup_measured"] / df["speedup_table"]).map(math.log)
    assert (df["reward_measured"] - df["best_reward"]).tolist() == pytest.approx(moved.tolist(), abs=1e-9)
    board = (tmp_path / "leaderboard.md").read_text()
    assert "uniform" in board and "±" in board and "quoted, not measured here" in board
    assert "Ranked by mean `reward_measured`" in board and "misses target (measured)" in board
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "accuracy_vs_speedup_digits-small_resnet.png", "learning_digits-small_resnet.png",
        "ratios_digits-small_resnet.png"]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
    # A rerun skips both finished runs: their result files are untouched.
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "done").glob("*.json")}
    run_benchmark(prof, out=tmp_path)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "done").glob("*.json")}
    row = json.loads((tmp_path / "done" / "digits-small_resnet__uniform__0.json").read_text())
    assert row["episodes"] == 2
    # A run measured under another behaviour record (an older default) is set aside and measured again.
    done = tmp_path / "done" / "digits-small_resnet__uniform__0.json"
    assert json.loads(row["behaviour"]) == behaviour_record("attention")
    older = {**behaviour_record("attention"), "behaviour": BEHAVIOUR - 1}
    done.write_text(json.dumps({**row, "behaviour": json.dumps(older)}))
    run_benchmark(prof, out=tmp_path)
    assert json.loads(json.loads(done.read_text())["behaviour"]) == behaviour_record("attention")
    (old,) = (tmp_path / "stale").iterdir()
    assert json.loads(json.loads((old / done.name).read_text())["behaviour"]) == older
    assert (old / "digits-small_resnet__uniform__0" / "config.json").exists()  # its run folder went with it
    random_done = tmp_path / "done" / "digits-small_resnet__random__0.json"
    assert random_done.stat().st_mtime_ns == stamps[random_done.name]  # the current run was kept
    # A rerun restricted to one agent keeps the other agent's finished run in the results and the leaderboard.
    df = run_benchmark(prof, out=tmp_path, agents=["random"])
    assert sorted(df["agent"]) == ["random", "uniform"] and len(pd.read_csv(tmp_path / "results.csv")) == 2
    assert "uniform" in (tmp_path / "leaderboard.md").read_text()
    # The best plans re-measured "on the deployment machine" (here): one row per run, real speedups.
    # Timings on a shared machine are noisy: the pruned models must be clearly faster, not exactly so.
    sp = remeasure(tmp_path, rounds=3, repeats=5)
    assert sorted(sp["agent"]) == ["random", "uniform"] and (sp["pruned_ms"] > 0).all()
    assert sp["speedup"].median() > 1.2, sp[["agent", "base_ms", "pruned_ms"]]
    assert (tmp_path / "speedups_torch_bs64.csv").exists() and len(summary(sp)) == 2
    # A run searched with other scenario settings than now (here set over the profile's with env_kwargs, as
    # --env-kwargs does) is set aside and searched again.
    run_benchmark(prof, out=tmp_path, agents=["uniform"], env_kwargs={"finetune_steps": 2})
    config = tmp_path / "runs" / "digits-small_resnet__uniform__0" / "config.json"
    assert json.loads(config.read_text())["options"]["env_kwargs"] == {"finetune_steps": 2}
    # Its test accuracy is that of the network the search scored: after the same 2 recovery steps.
    recovered = json.loads((tmp_path / "done" / "digits-small_resnet__uniform__0.json").read_text())
    assert recovered["finetune_steps"] == 2 and recovered["test_accuracy"] != recovered[
        "test_accuracy_before_finetune"]
    assert "after the search's own 2 recovery steps" in (tmp_path / "leaderboard.md").read_text()
    set_aside = [json.loads(c.read_text())["options"]["env_kwargs"]
                 for c in (tmp_path / "stale").glob("*/digits-small_resnet__uniform__0/config.json")]
    assert {} in set_aside
    # The random run, searched with the settings before, stays out of the report made with the new ones.
    assert pd.read_csv(tmp_path / "results.csv")["agent"].tolist() == ["uniform"]


def test_unknown_scenario_is_refused_with_the_valid_names(tmp_path) -> None:
    with pytest.raises(ValueError, match="valid: digits-small_resnet"):
        run_benchmark("quick", out=tmp_path, scenarios=["cifar10-resnet20"])


@pytest.mark.slow
def test_benchmark_killed_with_sigkill_resumes_without_losing_or_duplicating_runs(tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "benchmarks.run", "--profile", "quick", "--agents", "random", "uniform",
           "--seeds", "2", "--episodes", "12", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    # Kill mid-search: one run finished and another one has played some episodes.
    while time.time() < deadline and proc.poll() is None:
        done = list((tmp_path / "done").glob("*.json"))
        started = [p for p in (tmp_path / "runs").glob("*/episodes.csv") if not any(
            d.stem == p.parent.name for d in done)] if done else []
        if started and len(pd.read_csv(started[0])) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the benchmark finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_with = len(list((tmp_path / "done").glob("*.json")))
    assert 1 <= killed_with < 4
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == 4 and not results.duplicated(["agent", "seed"]).any()
    for run in (tmp_path / "runs").iterdir():
        episodes = pd.read_csv(run / "episodes.csv")["episode"]
        assert episodes.is_unique and episodes.tolist() == list(range(1, len(episodes) + 1)), run.name
        assert len(episodes) == (12 if "__random__" in run.name else 1), run.name


@pytest.mark.slow
def test_ray_backend_runs_the_benchmark_on_a_local_ray_instance(tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dataawareprune[ray]'")
    prof = Profile("tiny-ray", [BenchScenario("digits-small_resnet", {})], agents=["uniform", "random"], seeds=1,
                   episodes=2, description="test")
    try:
        df = run_benchmark(prof, out=tmp_path, workers=2, backend="ray")
    finally:
        ray.shutdown()
    assert sorted(df["agent"]) == ["random", "uniform"] and df["val_accuracy"].notna().all()
    assert len(list((tmp_path / "done").glob("*.json"))) == 2


def test_the_paper_profiles_target_the_paper_s_speedups() -> None:
    for name, prefix in (("paper", "cifar100"), ("paper-cifar10", "cifar10")):
        targets = {s.name: s.env_kwargs["target_latency"] for s in get_profile(name).scenarios}
        assert targets == {f"{prefix}-vgg19": pytest.approx(1 / 3.63, abs=1e-4),
                           f"{prefix}-resnet56": pytest.approx(1 / 3.35, abs=1e-4),
                           f"{prefix}-efficientnet_b0": pytest.approx(1 / 1.14, abs=1e-4)}


@pytest.mark.slow
def test_paper_cifar10_resnet56_can_reach_3_35x(shared_data) -> None:
    """The environment refuses a target that pruning every group as far as allowed cannot reach: with
    its defaults ResNet-56 stops near 2.9x, so the profile must widen the action space."""
    import gymnasium as gym

    import pruning_env  # noqa: F401

    (r56,) = [s for s in get_profile("paper-cifar10").scenarios if s.name == "cifar10-resnet56"]
    env = gym.make(r56.env_id, **{**r56.env_kwargs, "data_root": str(shared_data), "eval_threads": 1})
    try:
        backend = env.unwrapped.backend
        assert 1.0 / backend.cost_fraction(backend.min_keep) >= 3.35
    finally:
        env.close()


def test_paper_cifar10_profile_says_how_to_get_the_weights_it_lacks(tmp_path, shared_data) -> None:
    if (shared_data / "pretrained" / "cifar10_vgg19.pth").exists():
        pytest.skip("VGG-19 CIFAR-10 weights are present: the profile would run")
    (vgg,) = [s for s in get_profile("paper-cifar10").scenarios if s.name == "cifar10-vgg19"]
    assert vgg.env_kwargs["target_latency"] == pytest.approx(1 / 3.63, abs=1e-4)
    prof = Profile("p", [replace(vgg, env_kwargs={**vgg.env_kwargs, "data_root": str(shared_data)})],
                   agents=["uniform"], seeds=1, episodes=1)
    with pytest.raises(FileNotFoundError, match="python -m pruning_env.pretrain --model vgg19 --dataset cifar10"):
        run_benchmark(prof, out=tmp_path)
