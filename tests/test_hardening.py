"""Hardening: every bad input gets a clear error; fuzzed actions and plan files never break the project."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pruning_env  # noqa: F401
from benchmarks.bad_inputs import cases, run_case
from pruning_env.engine import ModelGraph
from pruning_env.importance import make_importance
from pruning_env.models import build_model
from pruning_env.plan import PlanMismatchError, PruningPlan


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return {c.what: c for c in cases(tmp_path_factory.mktemp("bad"))}


BAD = [
    "unknown model name", "unknown dataset name", "unknown reward name", "unknown importance name",
    "unknown agent name", "checkpoint of another model", "truncated checkpoint",
    "checkpoint that pickles a whole module", "pickled file given as a pruned model", "truncated plan JSON",
    "plan for another model", "dataset missing offline", "target latency 0", "target latency 1.5",
    "target latency that cannot be met", "model that cannot run the example input", "NaN action",
    "action of the wrong shape", "reward callable returning NaN", "corrupt benchmark profile name",
    "class subset with an unknown class", "class subset of one class", "class subset index out of range",
    "benchmark scenario without base weights",
]


def test_the_catalogue_covers_every_listed_case(catalogue) -> None:
    assert sorted(catalogue) == sorted(BAD)


@pytest.mark.parametrize("what", BAD)
def test_bad_input_gets_a_clear_error(catalogue, what: str) -> None:
    case = catalogue[what]
    kind, message = run_case(case)
    assert kind != "none", f"{what}: no error was raised"
    with pytest.raises(case.error):
        case.call()
    assert case.fragment in message, f"{what}: {message!r} lacks {case.fragment!r}"


# -- fuzzing --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env():
    e = gym.make("DataAwarePrune-v0")
    yield e
    e.close()


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(finite, min_size=1, max_size=40))
def test_any_finite_actions_end_within_budget_with_valid_observations(env, actions) -> None:
    base = env.unwrapped
    obs, _ = env.reset(seed=0)
    done, i, info = False, 0, {}
    while not done:
        a = np.array([actions[i % len(actions)]], np.float32)
        obs, reward, done, truncated, info = env.step(a)
        assert env.observation_space.contains(obs) and np.isfinite(reward) and not truncated
        assert 0.0 <= info["applied_ratio"] <= base.max_prune_ratio + 1e-9
        i += 1
    assert i == base.n_groups
    assert info["latency_ms"] <= base.target_fraction * base.base_latency_ms * (1 + 1e-6)


@pytest.fixture(scope="module")
def r20_plan():
    x = torch.zeros(1, 3, 32, 32)
    graph = ModelGraph(build_model("resnet20"), x)
    plan = graph.plan_from_ratios([0.5] * len(graph), graph.scores(make_importance("l1")))
    return graph, plan.to_json()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_plan_files_are_refused_or_valid_never_a_crash(r20_plan, data) -> None:
    graph, text = r20_plan
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "json_edit"]))
    if how == "truncate":
        text = text[: data.draw(st.integers(0, len(text) - 1))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(text) - 1))
        text = text[:i] + data.draw(st.characters(codec="utf-8")) + text[i + 1:]
    elif how == "garbage":
        text = data.draw(st.text(max_size=200))
    else:
        obj = json.loads(text)
        group = data.draw(st.sampled_from(sorted(obj["keep"])))
        obj["keep"][group] = data.draw(st.lists(st.integers(-5, 200), max_size=20))
        text = json.dumps(obj)
    try:
        plan = PruningPlan.from_json(text)
        graph.check_plan(plan)
    except (ValueError, PlanMismatchError):
        return  # refused with a message
    # Accepted: then it is a usable plan for this graph.
    for g in graph.groups:
        kept = plan.keep[g.name]
        assert kept and all(0 <= k < g.channels for k in kept) and len(set(kept)) == len(kept)
