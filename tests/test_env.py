"""DataAwarePrune-v0: Gymnasium contract, determinism, budget wall, vectorisation, user models."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
from gymnasium.utils.env_checker import check_env as gym_check_env

import pruning_env
from pruning_env.cache import state_dict_hash
from pruning_env.plan import PruningPlan


@pytest.fixture(scope="module")
def env():
    e = gym.make("DataAwarePrune-v0")
    yield e
    e.close()


def _rollout(env, seed: int, actions=None):
    obs, _ = env.reset(seed=seed)
    traj, rewards, infos = [obs], [], []
    rng = np.random.default_rng(seed)
    done, t = False, 0
    while not done:
        a = actions[t] if actions is not None else rng.uniform(-1, 1, size=(1,)).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        traj.append(obs)
        rewards.append(r)
        infos.append(info)
        done = term or trunc
        t += 1
    return traj, rewards, infos


@pytest.mark.parametrize("env_id", pruning_env.ENV_IDS)
def test_check_env_passes_with_warnings_as_errors(env_id: str) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = gym.make(env_id)
        gym_check_env(e.unwrapped, skip_render_check=False)
        sb3_check_env(e.unwrapped, warn=True)
        e.close()


@pytest.mark.parametrize("env_id", pruning_env.DETERMINISTIC_ENV_IDS)
def test_same_seed_gives_identical_trajectories(env_id: str) -> None:
    a, b = gym.make(env_id), gym.make(env_id)
    ta, ra, ia = _rollout(a, seed=7)
    tb, rb, ib = _rollout(b, seed=7)
    assert len(ta) == len(tb) == a.unwrapped.n_groups + 1
    for x, y in zip(ta, tb):
        np.testing.assert_array_equal(x, y)
    assert ra == rb
    assert ia[-1]["plan"] == ib[-1]["plan"]


def test_spec_flags() -> None:
    assert gym.spec("DataAwarePrune-v0").nondeterministic is False
    assert gym.spec("DataAwarePruneMeasured-v0").nondeterministic is True


def test_every_episode_ends_within_budget_even_without_pruning(env) -> None:
    u = env.unwrapped
    n = u.n_groups
    # The laziest agent (prune nothing) is pushed by the wall onto the budget.
    _, rewards, infos = _rollout(env, 0, actions=[np.array([-1.0], np.float32)] * n)
    final = infos[-1]
    assert final["latency_ms"] <= final["target_latency_ms"] * (1 + 1e-6)
    assert any(i["applied_ratio"] > i["requested_ratio"] for i in infos), "the wall never acted"
    assert all(r == 0.0 for r in rewards[:-1])
    assert np.isfinite(rewards[-1])
    for key in ("accuracy", "base_accuracy", "latency_ms", "base_latency_ms", "speedup", "macs", "base_macs",
                "params", "plan", "episode_seconds"):
        assert key in final
    assert isinstance(final["plan"], PruningPlan)
    assert final["speedup"] >= 1.0 / u.target_fraction - 1e-6
    assert final["macs"] < final["base_macs"]
    assert u.last_plan is final["plan"] and u.last_model is not None


def test_aggressive_actions_keep_at_least_min_channels(env) -> None:
    n = env.unwrapped.n_groups
    _, _, infos = _rollout(env, 0, actions=[np.array([1.0], np.float32)] * n)
    for i in infos:
        assert i["applied_ratio"] <= env.unwrapped.max_prune_ratio + 1e-9
        assert i["kept_channels"] >= 1


def test_bad_actions_are_errors_and_out_of_range_is_clipped(env) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="exactly one number"):
        env.step(np.array([0.1, 0.2], np.float32))
    _, _, _, _, info = env.step(np.array([5.0], np.float32))
    assert info["requested_ratio"] == pytest.approx(env.unwrapped.max_prune_ratio)


def test_reset_restores_the_base_model_exactly(env) -> None:
    u = env.unwrapped
    before = state_dict_hash(u.scenario.model)
    _, r1, i1 = _rollout(env, 1)
    _, r2, i2 = _rollout(env, 2)
    assert state_dict_hash(u.scenario.model) == before
    # Replaying the first episode's actions gives the first episode's result: nothing leaked.
    actions = [np.array([2 * x["requested_ratio"] / u.max_prune_ratio - 1], np.float32) for x in i1]
    _, r3, _ = _rollout(env, 1, actions=actions)
    assert r3[-1] == pytest.approx(r1[-1], abs=1e-9)


def test_render_ansi_lists_every_group() -> None:
    e = gym.make("DataAwarePrune-v0", render_mode="ansi")
    _rollout(e, 0)
    text = e.render()
    assert isinstance(text, str)
    assert len(text.splitlines()) >= e.unwrapped.n_groups + 2
    assert "speedup" in text


def test_render_rgb_array_draws_one_bar_per_group() -> None:
    e = gym.make("DataAwarePrune-v0", render_mode="rgb_array")
    _rollout(e, 0)
    img = e.render()
    assert img.dtype == np.uint8 and img.shape == (64, 8 * e.unwrapped.n_groups, 3)
    assert (img != 255).any()


def test_dict_observation_mode() -> None:
    e = gym.make("DataAwarePrune-v0", observation_mode="dict")
    obs, _ = e.reset(seed=0)
    assert set(obs) == {"layer", "budget", "data"}
    assert e.observation_space.contains(obs)


@pytest.mark.parametrize(("features", "kept"), [("no_data", (0, 16)), ("data_only", (11, 32))])
def test_observation_ablations_drop_one_part_and_keep_the_episode(features, kept) -> None:
    """The ablation sees a slice of the full observation; plans and rewards are those of the full env."""
    full = gym.make("DataAwarePrune-v0")
    ablated = gym.make("DataAwarePrune-v0", observation_features=features)
    gym_check_env(ablated.unwrapped, skip_render_check=True)
    keep = list(range(*kept))
    assert ablated.unwrapped.feature_names == [full.unwrapped.feature_names[i] for i in keep]
    a_obs, _ = ablated.reset(seed=1)
    f_obs, _ = full.reset(seed=1)
    for step in range(full.unwrapped.n_groups):
        np.testing.assert_array_equal(a_obs, f_obs[keep])
        action = np.array([0.3 - 0.2 * step], dtype=np.float32)
        a_obs, a_r, *_ = ablated.step(action)
        f_obs, f_r, *_ = full.step(action)
    assert a_r == f_r
    d = gym.make("DataAwarePrune-v0", observation_features=features, observation_mode="dict")
    obs, _ = d.reset(seed=0)
    assert set(obs) == ({"layer", "budget"} if features == "no_data" else {"budget", "data"})
    with pytest.raises(ValueError, match="observation_features must be one of all, no_data, data_only, relative"):
        gym.make("DataAwarePrune-v0", observation_features="none")


def test_relative_and_sensitivity_observations_change_the_features_not_the_episode() -> None:
    """``relative`` replaces the data features by their ranks among the groups; ``sensitivity`` appends the
    measured accuracy drops of each group pruned alone. Plans and rewards are those of the full env."""
    full = gym.make("DataAwarePrune-v0")
    rel = gym.make("DataAwarePrune-v0", observation_features="relative")
    sens = gym.make("DataAwarePrune-v0", observation_features="sensitivity")
    for e in (rel, sens):
        gym_check_env(e.unwrapped, skip_render_check=True)
    names = full.unwrapped.feature_names
    assert rel.unwrapped.feature_names == names[:16] + [f"rel_{n}" for n in names[16:]]
    assert sens.unwrapped.feature_names == names + ["sens_33", "sens_67", "sens_100"]
    n = full.unwrapped.n_groups
    obs = [e.reset(seed=2)[0] for e in (full, rel, sens)]
    rows = []
    for step in range(n):
        f_obs, r_obs, s_obs = obs
        np.testing.assert_array_equal(r_obs[:16], f_obs[:16])
        np.testing.assert_array_equal(s_obs[:32], f_obs)
        rows.append((f_obs[16:], r_obs[16:], s_obs[32:]))
        action = np.array([0.5 - 0.3 * step], dtype=np.float32)
        out = [e.step(action) for e in (full, rel, sens)]
        obs = [o[0] for o in out]
    assert out[0][1] == out[1][1] == out[2][1]
    absolute, ranks, drops = (np.stack(x) for x in zip(*rows))
    # ranks keep the order of every feature across the groups, spread over [0, 1]
    for j in range(absolute.shape[1]):
        a, r = absolute[:, j], ranks[:, j]
        assert np.all(np.sign(a[:, None] - a[None, :]) == np.sign(r[:, None] - r[None, :]))
        assert (r.min(), r.max()) == ((0.0, 1.0) if np.ptp(a) > 0 else (0.5, 0.5))
    assert drops.shape == (n, 3) and ((drops >= 0) & (drops <= 1)).all() and drops[:, 2].max() > 0


@pytest.mark.parametrize("target", [0.0, 1.5, -0.2])
def test_target_out_of_range_is_refused(target: float) -> None:
    with pytest.raises(ValueError, match=r"target_latency must be .* in \(0, 1\]"):
        gym.make("DataAwarePrune-v0", target_latency=target)


def test_unreachable_target_is_refused_with_the_reachable_floor() -> None:
    with pytest.raises(ValueError, match="cannot be met.*Raise target_latency or max_prune_ratio, or lower round_to=8"):
        gym.make("DataAwarePrune-v0", target_latency=0.05, max_prune_ratio=0.3)


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid names"):
        gym.make("DataAwarePrune-v0", reward="nope")
    with pytest.raises(ValueError, match="resnet56"):
        gym.make("DataAwarePrune-v0", model="resnet57")


def test_callable_reward_and_reward_objects() -> None:
    e = gym.make("DataAwarePrune-v0", reward=lambda m: m.accuracy - 0.5)
    _, rewards, infos = _rollout(e, 0)
    assert rewards[-1] == pytest.approx(infos[-1]["accuracy"] - 0.5)


def test_subproc_vec_env() -> None:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    # "module:id" makes every worker process import pruning_env (and so register the ids) first,
    # whatever the multiprocessing start method.
    venv = make_vec_env("pruning_env:DataAwarePrune-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
    try:
        obs = venv.reset()
        assert obs.shape == (2, *venv.observation_space.shape)
        n = venv.get_attr("n_groups")[0]
        dones = np.zeros(2, bool)
        for _ in range(n):
            obs, rewards, dones, infos = venv.step(np.zeros((2, 1), np.float32))
        assert dones.all()
        assert all("accuracy" in i for i in infos)
    finally:
        venv.close()


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(4, c // 4), 1)
        self.fc2 = nn.Conv2d(max(4, c // 4), c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class UserNet(nn.Module):
    """A user's model: residual add, depthwise conv and squeeze-excitation."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False),
                                nn.BatchNorm2d(32), nn.ReLU())
        self.se = _SE(32)
        self.project = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        x = self.project(self.se(self.dw(self.expand(x))))
        return self.fc(x.mean((2, 3)))


def test_user_model_with_residual_depthwise_and_se_runs_an_episode() -> None:
    torch.manual_seed(0)
    e = gym.make("DataAwarePrune-v0", model=UserNet(), importance="l1", target_latency=0.7)
    kinds = {g.layer_type for g in e.unwrapped.groups}
    assert "conv" in kinds
    _, rewards, infos = _rollout(e, 0)
    final = infos[-1]
    assert np.isfinite(rewards[-1])
    assert final["macs"] < final["base_macs"]
    out = e.unwrapped.last_model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)
