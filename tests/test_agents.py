"""Agents: the SB3 factory, the AMC preset, baselines, the CEM agent, the protocol and registry, the
search CLI (files, resume) and the after-search fine-tuning, on the real default environment."""

from __future__ import annotations

import json
import math
import os

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from stable_baselines3.common.buffers import NStepReplayBuffer

import pruning_env  # noqa: F401  (registers the environments)
import pruning_env.backend
from agents import Agent, EpisodicAgent, SB3Agent, available_agents, get_agent_class, make_agent, register_agent
from agents.amc import AMCDDPG, truncated_normal
from agents.baselines import attention_feature, cost_fraction
from agents.cem import CEMAgent, actions_for_kept
from agents.factory import SB3_ALGOS, load_agent, load_hyperparams, resolve_hyperparams
from agents.finetune import FinetuneOptions, finetune_run
from agents.train import CSV_COLUMNS, TrainOptions, main, run_search

ENV_ID = os.environ.get("AGENTS_TEST_ENV", "DataAwarePrune-v0")
TINY = {  # hyperparameters that make every algorithm update within 2 episodes
    "ppo": {"n_steps_in_episodes": 1, "batch_size_in_episodes": 1, "n_epochs": 2},
    "a2c": {},
    "ddpg": {"learning_starts_in_episodes": 1},
    "sac": {"learning_starts_in_episodes": 1},
    "td3": {"learning_starts_in_episodes": 1},
    "amc": {"warmup_episodes": 1},
}


@pytest.fixture(scope="module")
def env():
    e = gym.make(ENV_ID)
    yield e
    e.close()


def _collect(agent, episodes: int) -> list[dict]:
    infos: list[dict] = []
    agent.learn(episodes, callback=infos.append)
    return infos


# -- factory ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", [*SB3_ALGOS, "amc"])
def test_factory_builds_and_learns_each_sb3_algo(env, algo, tmp_path):
    agent = make_agent(algo, env, seed=0, hyperparams=TINY[algo])
    assert isinstance(agent, Agent)
    infos = _collect(agent, 2)
    assert len(infos) == 2
    n = env.unwrapped.n_groups
    for info in infos:
        assert len(info["ratios"]) == n and math.isfinite(info["reward"]) and 0.0 <= info["accuracy"] <= 1.0
    assert agent.model.num_timesteps >= 2 * n
    obs, _ = env.reset(seed=0)
    action = agent.predict(obs, deterministic=True)
    assert action.shape == (1,) and env.action_space.contains(action.astype(np.float32))
    path = agent.save(tmp_path / "model")
    assert path.name == "model.zip"
    loaded = load_agent(algo, path, env=env)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True), action, atol=1e-6)


def test_hyperparams_are_keyed_by_env_id_and_converted_from_episodes(env):
    prune = load_hyperparams("ppo", ENV_ID)
    assert prune["n_steps_in_episodes"] == 8 and prune["policy_kwargs"]["net_arch"] == [64, 64]
    assert "n_steps_in_episodes" not in load_hyperparams("ppo", "Pendulum-v1")  # the `default` key
    hp = resolve_hyperparams("ppo", ENV_ID, {"n_steps": 24})
    assert hp["n_steps"] == 24 and "n_steps_in_episodes" not in hp
    n = env.unwrapped.n_groups
    ppo = make_agent("ppo", env, seed=0)
    assert ppo.model.n_steps == 8 * n and ppo.model.batch_size == 2 * n and ppo.model.gamma == 1.0
    td3 = make_agent("td3", env, seed=0)
    assert td3.model.learning_starts == 10 * n and td3.model.action_noise is not None and td3.model.n_steps == n


def test_ddpg_default_learns_from_whole_episode_returns(env):
    # n-step returns spanning the episode: every stored transition's target reward is its episode's
    # terminal reward (gamma 1, no step rewards), with no bootstrap from the critic
    n = env.unwrapped.n_groups
    ddpg = make_agent("ddpg", env, seed=0, hyperparams={"learning_starts_in_episodes": 5})
    assert ddpg.model.n_steps == n and isinstance(ddpg.model.replay_buffer, NStepReplayBuffer)
    infos = _collect(ddpg, 2)
    batch = ddpg.model.replay_buffer.sample(64)
    episode_rewards = np.array([i["reward"] for i in infos])
    got = batch.rewards.numpy().ravel()
    assert np.all(np.min(np.abs(got[:, None] - episode_rewards[None, :]), axis=1) < 1e-5)
    assert np.all(batch.dones.numpy() == 1)  # the episode's end is always within the n steps


def test_ddpg_falls_back_to_one_step_targets_for_dict_observations():
    dict_env = gym.make(ENV_ID, observation_mode="dict")
    try:
        with pytest.warns(UserWarning, match="no n-step returns for Dict observations"):
            ddpg = make_agent("ddpg", dict_env, seed=0, policy="MultiInputPolicy")
        assert ddpg.model.n_steps == 1 and not isinstance(ddpg.model.replay_buffer, NStepReplayBuffer)
    finally:
        dict_env.close()


# -- AMC preset ------------------------------------------------------------------------------------------
def test_truncated_normal_stays_in_bounds_and_narrows():
    rng = np.random.default_rng(0)
    for mu in (-1.0, -0.3, 0.9, 1.0):
        wide = truncated_normal(np.full(4000, mu), 1.0, -1.0, 1.0, rng)
        narrow = truncated_normal(np.full(4000, mu), 0.05, -1.0, 1.0, rng)
        assert wide.min() >= -1.0 and wide.max() <= 1.0 and narrow.min() >= -1.0 and narrow.max() <= 1.0
        assert narrow.std() < wide.std()
    assert np.all(truncated_normal(np.array([0.3]), 0.0, -1.0, 1.0, rng) == 0.3)


def test_amc_noise_decays_per_episode_after_warmup(env):
    agent = make_agent("amc", env, seed=0, warmup_episodes=3)
    model = agent.model
    assert isinstance(model, AMCDDPG)
    assert model.learning_starts == 3 * env.unwrapped.n_groups  # no update during the warm-up
    assert model.current_sigma(0) == model.current_sigma(3) == 0.5
    assert model.current_sigma(5) == pytest.approx(0.5 * 0.95**2)
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_amc_warmup_is_uniform_then_actor_centred(env):
    agent = make_agent("amc", env, seed=0, warmup_episodes=1, noise_sigma=0.0)
    model = agent.model
    model._last_obs = model.env.reset()
    model.action_space.seed(123)
    expected = model.action_space.sample()
    model.action_space.seed(123)
    action, _ = model._sample_action(model.learning_starts)
    np.testing.assert_allclose(action[0], expected, atol=1e-6)  # warm-up: a uniform sample of the action space
    model._episode_num = 1  # warm-up over: sigma 0 leaves the actor's action unchanged
    action, _ = model._sample_action(model.learning_starts)
    np.testing.assert_allclose(action, model.predict(model._last_obs, deterministic=True)[0], atol=1e-6)


def test_amc_stores_the_baselined_return_on_every_step(env):
    agent = make_agent("amc", env, seed=0, warmup_episodes=5, baseline_alpha=0.5)
    returns = [info["reward"] for info in _collect(agent, 3)]
    buf, n = agent.model.replay_buffer, env.unwrapped.n_groups
    assert buf.pos == 3 * n
    stored = buf.rewards[: buf.pos, 0].reshape(3, n)
    b, expected = None, []
    for r in returns:  # AMC: b starts at the first return, then b <- b + 0.5 (R - b)
        r = float(np.float32(r))  # rewards pass through SB3 as float32 before the baseline sees them
        b = r if b is None else b
        expected.append(r - b)
        b += 0.5 * (r - b)
    np.testing.assert_allclose(stored, np.repeat(np.array(expected)[:, None], n, axis=1), atol=1e-5)
    assert agent.model.reward_baseline == pytest.approx(b, abs=1e-5)  # float32 inside SB3
    plain = make_agent("amc", env, seed=0, warmup_episodes=5, baseline_alpha=0.0, reward_all_steps=False)
    returns = [info["reward"] for info in _collect(plain, 1)]
    rewards = plain.model.replay_buffer.rewards[:n, 0]
    np.testing.assert_allclose(rewards, [0.0] * (n - 1) + returns, atol=1e-5)  # SB3's plain transitions


# -- baselines -----------------------------------------------------------------------------------------
def _within_budget(env, info) -> bool:
    base = env.unwrapped
    if base.latency_mode == "macs":
        return info["macs"] <= base.target_fraction * base.base_macs * 1.01  # the counter includes BN/ReLU
    return info["latency_ms"] <= info["target_latency_ms"] * (1 + 1e-6)


def test_uniform_meets_the_budget_with_one_ratio(env):
    agent = make_agent("uniform", env, seed=0)
    infos = _collect(agent, 3)
    assert len(infos) == 1  # deterministic: one episode however many are asked for
    info, base = infos[0], env.unwrapped
    assert np.ptp(info["requested_ratios"]) < 1e-6  # one ratio for every group
    np.testing.assert_allclose(info["ratios"], info["requested_ratios"], atol=1.0 / 8)  # the wall did not move it
    assert _within_budget(env, info)
    r = float(agent.ratios[0])
    assert cost_fraction(env, agent.ratios) <= base.target_fraction
    assert cost_fraction(env, np.full(base.n_groups, r - 0.02)) > base.target_fraction  # the smallest such ratio


def test_heuristic_prunes_more_where_attention_is_low(env):
    name, att = attention_feature(env)
    assert name == "att_mean"
    agent = make_agent("heuristic", env, seed=0)
    ratios, top = agent.ratios, env.unwrapped.max_prune_ratio
    for i in range(len(att)):
        for j in range(len(att)):
            if att[i] < att[j] and ratios[j] < top:
                assert ratios[i] >= ratios[j]
    assert cost_fraction(env, ratios) <= env.unwrapped.target_fraction
    assert _within_budget(env, _collect(agent, 1)[0])


def test_random_agent_explores(env):
    infos = _collect(make_agent("random", env, seed=0), 2)
    assert len(infos) == 2 and infos[0]["requested_ratios"] != infos[1]["requested_ratios"]


# -- CEM --------------------------------------------------------------------------------------------------
def test_cem_runs_generations_and_returns_a_valid_plan(env, tmp_path):
    agent = make_agent("cem", env, seed=0, population=2)
    infos = _collect(agent, 3)  # one generation and a half
    returns = [i["reward"] for i in infos]
    assert len(infos) == 3 and agent.generation == 1 and agent.best_return == pytest.approx(max(returns))
    loaded = CEMAgent.load(agent.save(tmp_path / "cem"), env=env)  # the half generation is kept
    assert loaded._returns == agent._returns == returns[2:] and loaded.generation == 1
    np.testing.assert_allclose(loaded.mean, agent.mean)
    assert not np.allclose(loaded.mean, 0.0)  # the first generation moved the mean
    infos += _collect(loaded, 1)
    assert loaded.generation == 2 and loaded.num_episodes == 4
    ret, info = loaded.run_episode(deterministic=True)  # replays the best vector
    env.unwrapped.graph.check_plan(info["plan"])
    best = max(infos, key=lambda i: i["reward"])
    assert loaded.best_return == best["reward"] and info["plan"].keep == best["plan"].keep  # the best episode's plan
    # and its return: the episode is deterministic (table latency, fixed BN calibration and validation batches)
    assert ret == pytest.approx(best["reward"], rel=1e-9, abs=1e-12)


def test_cem_starts_from_a_plan_plays_it_first_and_keeps_it_if_nothing_is_better(env, tmp_path):
    base = env.unwrapped
    # a plan within the budget (so the wall leaves it alone): one ratio for all, the first that meets the target
    target = base.target_cost / base.base_cost
    ratio = next(r for r in (0.5, 0.6, 0.7, base.max_prune_ratio)
                 if cost_fraction(env, np.full(base.n_groups, r)) <= target)
    start = [int(k) for k in base.kept_for_ratios(np.full(base.n_groups, ratio))]
    mid = actions_for_kept(env, start)
    for g, a in enumerate(mid):  # the middle of the group's interval: a nudge either way keeps the width
        for nudge in (-0.02, 0.0, 0.02):
            ratios = np.zeros(base.n_groups)
            ratios[g] = base.ratio_for_action(a + nudge)
            assert base.kept_for_ratios(ratios)[g] == start[g]
    with pytest.raises(ValueError, match="widths"):
        actions_for_kept(env, start[:-1])
    agent = make_agent("cem", env, seed=0, population=3, start_kept=start, init_std=0.3)
    infos = _collect(agent, 3)
    first = [len(v) for v in infos[0]["plan"].keep.values()]
    assert first == start  # the first episode plays the start plan
    assert [len(v) for v in infos[1]["plan"].keep.values()] != first  # then explores around it
    assert agent.best_return >= infos[0]["reward"]
    loaded = CEMAgent.load(agent.save(tmp_path / "cem_start"), env=env)
    assert loaded.start_kept == start and loaded.generation == 1


# -- protocol and registry ---------------------------------------------------------------------------------
def test_registry_lists_builtins_and_rejects_unknown_names(env):
    names = available_agents()
    builtins = {"ppo", "a2c", "ddpg", "sac", "td3", "amc", "random", "uniform", "heuristic", "cem"}
    assert builtins <= set(names)
    for name in builtins:  # each built-in name loads the class registered under that name
        assert get_agent_class(name).agent_name == name
    assert issubclass(get_agent_class("amc"), SB3Agent) and issubclass(get_agent_class("cem"), EpisodicAgent)
    with pytest.raises(ValueError, match="unknown agent 'nope'; valid agents: .*ppo"):
        make_agent("nope", env)
    with pytest.raises(ValueError, match="already registered"):
        register_agent("ppo")(type("Other", (EpisodicAgent,), {}))
    with pytest.raises(ValueError, match="lower-case"):
        register_agent("Bad Name")


def test_custom_agent_through_the_registry(env):
    @register_agent("test_constant")
    class Constant(EpisodicAgent):
        def __init__(self, env, seed=0, action=0.5):
            super().__init__(env, seed)
            self.action = action

        def act(self, obs, deterministic=False):
            return np.array([self.action], dtype=np.float32)

    agent = make_agent("test_constant", env, seed=1, hyperparams={"action": -1.0})
    assert isinstance(agent, Agent) and "test_constant" in available_agents()
    info = _collect(agent, 1)[0]
    assert info["requested_ratios"] == [0.0] * env.unwrapped.n_groups


# -- search CLI --------------------------------------------------------------------------------------------
def test_train_cli_writes_files_and_resumes_without_duplicates(tmp_path):
    args = ["--algo", "ppo", "--env", ENV_ID, "--episodes", "2", "--seed", "0", "--run-dir", str(tmp_path),
            "--name", "r", "--no-progress", "--hyperparams", "n_steps_in_episodes=1", "batch_size_in_episodes=1",
            "--env-kwargs", "target_latency=0.6"]
    main(args)
    run = tmp_path / "r"
    for name in ("config.json", "episodes.csv", "best_plan.json", "model.zip", "state.json", "tb"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["env_kwargs"] == {"target_latency": 0.6}
    assert config["hyperparams"]["n_steps_in_episodes"] == 1 and config["torch_threads"] >= 1
    assert {"torch", "stable_baselines3", "gymnasium"} <= set(config["versions"])
    rows = pd.read_csv(run / "episodes.csv")
    assert list(rows.columns) == CSV_COLUMNS and len(rows) == 2
    assert len(json.loads(rows["ratios"][0])) == config["env"]["n_groups"]
    plan = pruning_env.PruningPlan.load(run / "best_plan.json")
    assert plan.meta["reward"] == pytest.approx(rows["reward"].max())

    with (run / "episodes.csv").open("a") as f:  # an episode played after the last checkpoint, then a crash
        f.write("3,0.0,,,,,,[],,\n")
    main([a if a != "2" else "4" for a in args])
    rows = pd.read_csv(run / "episodes.csv")
    assert rows["episode"].tolist() == [1, 2, 3, 4]
    state = json.loads((run / "state.json").read_text())
    assert state["episodes"] == 4 and state["finished"] and len(state["resumes"]) == 1

    with pytest.raises(ValueError, match="other settings"):
        main([a if a != "ppo" else "a2c" for a in args])

    # a run folder searched under another behaviour record (e.g. before a default changed) is not resumed
    assert config["env"]["behaviour"] == pruning_env.backend.BEHAVIOUR
    assert config["env"]["scoring"] == pruning_env.importance.scoring_version("attention")
    (run / "config.json").write_text(json.dumps({**config, "env": {**config["env"], "scoring": "old"}}))
    with pytest.raises(ValueError, match="'scoring': 'old'.*use another --name"):
        main([a if a != "4" else "5" for a in [a if a != "2" else "4" for a in args]])


def test_run_search_with_an_episodic_agent(env, tmp_path):
    opts = TrainOptions(algo="cem", env=ENV_ID, episodes=3, run_dir=str(tmp_path), name="c", progress=False,
                        tensorboard=False, hyperparams={"population": 2}, checkpoint_every=2)
    summary = run_search(opts, env=env)
    assert summary["episodes"] == 3 and (tmp_path / "c" / "model.json").exists()
    saved = json.loads((tmp_path / "c" / "model.json").read_text())
    assert saved["agent"] == "cem" and saved["state"]["num_episodes"] == 3


# -- after the search ------------------------------------------------------------------------------------
@pytest.mark.slow  # ~10 s idle, 25 s on a loaded 2-core machine: fine-tuning steps, latency, ONNX export
@pytest.mark.e2e
def test_finetune_exports_a_model_that_loads_with_identical_outputs(env, tmp_path):
    run_search(TrainOptions(algo="uniform", env=ENV_ID, episodes=1, run_dir=str(tmp_path), name="u", progress=False,
                            tensorboard=False), env=env)
    opts = FinetuneOptions(run=str(tmp_path / "u"), epochs=1, max_steps=3, progress=False, latency_rounds=1)
    final = finetune_run(opts, env=env)
    run = tmp_path / "u"
    assert json.loads((run / "final.json").read_text())["speedup_measured"] == pytest.approx(final["speedup_measured"])
    assert final["export"]["reload_max_abs_diff"] == 0.0
    assert final["export"]["onnx_check"].get("matches", True)
    assert final["pruned"]["macs"] < final["base"]["macs"] and final["speedup_predicted"] > 1.0
    assert 0.0 <= final["pruned"]["test_accuracy"] <= 1.0

    model, plan = pruning_env.load_pruned(run / "pruned_model.pt")
    assert plan.keep == pruning_env.PruningPlan.load(run / "best_plan.json").keep
    from pruning_env.train import evaluate

    test_split = env.unwrapped.scenario.data.test
    assert evaluate(model, test_split, device="cpu") == pytest.approx(final["pruned"]["test_accuracy"])
