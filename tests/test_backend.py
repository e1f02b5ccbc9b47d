"""The pruning back end: one cost model and evaluator shared by the environment and the tools."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import pruning_env  # noqa: F401  (registers the environments)
from pruning_env.backend import BackendConfig, PruningBackend
from pruning_env.cache import state_dict_hash
from pruning_env.latency import LatencyTable

PINNED = Path(__file__).parent / "data" / "pinned_episode.json"


def test_pinned_episode_of_the_default_scenario_is_unchanged():
    """One episode recorded before the back end existed (tests/data/pinned_episode.json: its latency table,
    actions, plan and reward). The same table and actions must give the same kept widths and latency; with
    the recording's base weights also the same channels, accuracy and reward.

    Base training is deterministic for a seed and a thread count, not across thread counts, so a machine
    that trained the default base model differently checks the weight-independent half only (and warns).
    """
    rec = json.loads(PINNED.read_text())
    env = gym.make("DataAwarePrune-v0", latency_table=LatencyTable.from_dict(rec["table"]))
    u = env.unwrapped
    env.reset(seed=rec["seed"])
    for a in rec["actions"]:
        _, reward, terminated, _, info = env.step(np.array([a], dtype=np.float32))
    assert terminated
    assert [int(k) for k in u.kept] == rec["kept"]
    assert info["ratios"] == pytest.approx(rec["ratios"], abs=1e-12)
    assert info["latency_ms"] == pytest.approx(rec["latency_ms"], rel=1e-9)
    if state_dict_hash(u.scenario.model) != rec["base_hash"]:
        warnings.warn("the default base model's weights differ from the recording's (trained with another "
                      "thread count?): channels, accuracy and reward not compared", stacklevel=1)
        return
    assert info["plan"].to_dict()["keep"] == rec["plan_json"]["keep"]
    assert info["accuracy"] == pytest.approx(rec["accuracy"], abs=1e-9)  # one image is 1/720
    assert reward == pytest.approx(rec["reward"], abs=1e-9)


@pytest.fixture(scope="module")
def backend():
    rec = json.loads(PINNED.read_text())
    env = gym.make("DataAwarePrune-v0", latency_table=LatencyTable.from_dict(rec["table"]))
    return env.unwrapped.backend


def test_environment_prices_with_its_back_end(backend):
    env = gym.make("DataAwarePrune-v0", backend=backend)
    u = env.unwrapped
    kept = backend.kept_for_ratios([0.5] * backend.n_groups)
    assert u.cost(kept) == backend.cost(kept)
    assert u.base_cost == backend.base_cost and u.target_cost == pytest.approx(0.5 * backend.base_cost)
    assert u.table is backend.table and u.scenario is backend.scenario


def test_allowed_counts_are_multiples_of_round_to_within_the_ratio(backend):
    cfg = backend.config
    for i, g in enumerate(backend.groups):
        allowed = backend.allowed_counts(i)
        assert allowed[-1] == g.channels and allowed == sorted(allowed)
        assert all(k % cfg.round_to == 0 for k in allowed[:-1])
        assert allowed[0] >= g.channels * (1 - cfg.max_prune_ratio) - 1e-9
        assert backend.keep_for_ratio(i, 0.0) == g.channels
        assert backend.keep_for_ratio(i, 0.99) == allowed[0]


def test_wall_is_the_largest_count_that_keeps_the_target_reachable(backend):
    target = 0.5 * backend.base_cost
    kept = backend.channels.copy()
    for t in range(backend.n_groups):
        k = backend.max_keep(kept, t, target)
        trial = kept.copy()
        trial[t + 1:] = backend.min_keep[t + 1:]
        trial[t] = k
        assert backend.cost(trial) <= target
        bigger = [a for a in backend.allowed_counts(t) if a > k]
        if bigger:
            trial[t] = bigger[0]
            assert backend.cost(trial) > target
        kept[t] = k


def test_evaluate_measures_the_pruned_network(backend):
    kept = backend.kept_for_ratios([0.5] * backend.n_groups)
    result = backend.evaluate(kept, target_fraction=0.5)
    m = result.metrics
    assert backend.graph.kept_counts(result.plan) == [int(k) for k in kept]
    assert m.latency_ms == pytest.approx(backend.predicted_latency_ms(kept))
    assert m.macs < m.base_macs and m.params < m.base_params
    assert m.target_latency_ms == pytest.approx(0.5 * backend.base_latency_ms)
    assert 0.0 <= m.accuracy <= 1.0 and result.speedup > 1.0
    assert set(result.timing) == {"surgery", "recovery", "evaluation", "latency"}
    assert not any(p.is_cuda for p in result.model.parameters())


def test_macs_mode_builds_no_table_and_prices_macs(backend):
    macs = PruningBackend(backend.scenario, BackendConfig(latency="macs"))
    assert macs.table is None and macs.cost_unit == "MACs"
    kept = macs.kept_for_ratios([0.5] * macs.n_groups)
    result = macs.evaluate(kept)
    assert result.metrics.macs == pytest.approx(macs.cost(kept), rel=0.02)  # analytic vs counted MACs
    assert result.speedup == pytest.approx(result.macs_ratio)
    with pytest.raises(ValueError, match="no latency table"):
        macs.predicted_latency_ms(kept)


def test_recovery_runs_every_step_asked_for_even_past_one_pass_over_the_data(backend):
    import torch

    per_pass = len(backend.scenario.data.train) // 128  # the digits train split: a handful of batches
    kept = backend.kept_for_ratios([0.5] * backend.n_groups)

    def recovered(steps: int) -> list:
        cfg = BackendConfig(latency="macs", val_samples=100, finetune_steps=steps)
        return list(PruningBackend(backend.scenario, cfg).evaluate(kept).model.parameters())

    one_pass, more = recovered(per_pass), recovered(per_pass + 1)  # steps were capped at one pass before
    assert not all(torch.equal(a, b) for a, b in zip(one_pass, more))


def test_recovery_with_distillation_follows_the_base_model(backend):
    """``finetune_kd_weight`` trains the recovery steps towards the base model's outputs: the student ends
    closer to the teacher (KL on validation images) than the same steps on the labels alone, and the
    base model is left as it was."""
    import torch
    import torch.nn.functional as F

    kept = backend.kept_for_ratios([0.5] * backend.n_groups)
    base_state = {k: v.clone() for k, v in backend.scenario.model.state_dict().items()}
    x = torch.stack([backend.val_data[i][0] for i in range(64)])
    with torch.inference_mode():
        teacher = F.softmax(backend.scenario.model.eval()(x) / 4, dim=1)

    def divergence(kd_weight: float) -> float:
        cfg = BackendConfig(latency="macs", val_samples=100, finetune_steps=30, finetune_lr=0.05,
                            finetune_kd_weight=kd_weight)
        model = PruningBackend(backend.scenario, cfg).evaluate(kept).model.eval()
        with torch.inference_mode():
            return float(F.kl_div(F.log_softmax(model(x) / 4, dim=1), teacher, reduction="batchmean"))

    kd, labels = divergence(1.0), divergence(0.0)
    assert kd < labels
    assert all(torch.equal(v, backend.scenario.model.state_dict()[k]) for k, v in base_state.items())
    with pytest.raises(ValueError, match="finetune_kd_weight"):
        BackendConfig(finetune_kd_weight=1.5)


def test_shared_back_ends_are_built_once_per_scenario_and_settings(backend):
    a = PruningBackend.shared(backend.scenario, BackendConfig(latency="macs", val_samples=100))
    b = PruningBackend.shared(backend.scenario, BackendConfig(latency="macs", val_samples=100))
    c = PruningBackend.shared(backend.scenario, BackendConfig(latency="macs", val_samples=200))
    assert a is b and a is not c


def test_bad_settings_say_what_to_do():
    with pytest.raises(ValueError, match="latency mode"):
        BackendConfig(latency="flops")
    with pytest.raises(ValueError, match="max_prune_ratio"):
        BackendConfig(max_prune_ratio=1.0)
    with pytest.raises(ValueError, match="eval_threads"):
        BackendConfig(eval_threads=0)


def test_behaviour_record_names_what_results_depend_on(backend):
    rec = backend.behaviour()
    assert rec["behaviour"] == pruning_env.backend.BEHAVIOUR
    assert rec["scoring"].startswith("attention") and rec["latency_table_format"] >= 2
    assert json.loads(json.dumps(backend.describe()))["behaviour"] == rec["behaviour"]


def test_accuracy_of_a_plan_matches_the_evaluation_without_recovery_steps(backend):
    kept = backend.kept_for_ratios([0.5] * backend.n_groups)
    assert backend.config.finetune_steps == 0
    assert backend.accuracy(kept) == backend.evaluate(kept).metrics.accuracy


def test_sensitivity_scan_prices_each_group_alone(backend, monkeypatch, tmp_path):
    from pruning_env.sensitivity import SENSITIVITY_LEVELS, group_sensitivity

    monkeypatch.setenv("PRUNING_ENV_CACHE", str(tmp_path))
    drops = group_sensitivity(backend)
    assert drops.shape == (backend.n_groups, len(SENSITIVITY_LEVELS)) and drops.dtype == np.float32
    i = int(np.argmax(drops[:, -1]))  # the most sensitive group, pruned as far as allowed
    kept = backend.channels.copy()
    kept[i] = backend.keep_for_ratio(i, backend.config.max_prune_ratio)
    acc = backend.accuracy(kept)
    assert drops[i, -1] == pytest.approx((backend.base_accuracy - acc) / backend.base_accuracy, abs=1e-6)
    assert drops[i, -1] > 0
    assert len(list((tmp_path / "sensitivity").glob("*.json"))) == 1
    calls = []
    monkeypatch.setattr(type(backend), "accuracy", lambda self, *a, **k: calls.append(a) or 0.0)
    np.testing.assert_array_equal(group_sensitivity(backend), drops)  # from the cache: no evaluation
    assert calls == []
