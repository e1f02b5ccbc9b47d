"""The Gymnasium environment ``DataAwarePrune-v0``: layer-by-layer channel pruning as an MDP."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium import spaces

from .backend import LATENCY_MODES, BackendConfig, PruningBackend, release_freed_memory
from .latency import LatencyTable
from .plan import PruningPlan
from .rewards import EpisodeMetrics, Reward, make_reward
from .scenario import DEFAULT_DATASET, DEFAULT_MODEL, Scenario, load_scenario
from .sensitivity import SENSITIVITY_FEATURES, group_sensitivity

__all__ = [
    "DataAwarePruneEnv", "LAYER_FEATURES", "BUDGET_FEATURES", "LATENCY_MODES", "OBSERVATION_FEATURES", "make_backend",
]

LAYER_FEATURES = [
    "position", "is_conv", "is_depthwise", "is_linear", "channels", "in_channels", "kernel_size",
    "stride", "feature_size", "macs_share", "latency_share",
]
BUDGET_FEATURES = ["cost_removed", "cost_reducible_rest", "budget_left", "prev_action", "min_ratio"]
_SCENARIO_ARGS = ("model", "dataset", "checkpoint", "data_root", "adapt_steps", "scenario")
_MDP_ARGS = ("target_latency", "reward", "observation_mode", "observation_features", "render_mode")
OBSERVATION_FEATURES = {  # which parts of the observation each setting shows, in this order
    "all": ("layer", "budget", "data"),
    "no_data": ("layer", "budget"),
    "data_only": ("budget", "data"),
    "relative": ("layer", "budget", "data_relative"),
    "sensitivity": ("layer", "budget", "data", "sensitivity"),
}


def make_backend(env_id: str = "DataAwarePrune-v0", **kwargs: Any) -> PruningBackend:
    """The back end ``gym.make(env_id, **kwargs)`` would price and evaluate with, without the MDP.

    For tools that price or evaluate plans of a search's scenario (fine-tuning, compress, benchmarks):
    the registered id's own arguments (e.g. ``latency="macs"``) apply, the MDP's arguments
    (``target_latency``, ``reward``, ``observation_mode``, ``observation_features``, ``render_mode``) are
    ignored.
    """
    spec = gym.spec(env_id)
    if not str(spec.entry_point).endswith(":DataAwarePruneEnv"):
        raise ValueError(f"{env_id!r} is not a DataAwarePrune environment")
    kw = {**spec.kwargs, **kwargs}
    known = set(BackendConfig.__dataclass_fields__) | set(_SCENARIO_ARGS) | set(_MDP_ARGS)
    unknown = sorted(set(kw) - known)
    if unknown:
        raise TypeError(f"unknown arguments {unknown}; see the DataAwarePruneEnv manual's Arguments table")
    sc_kw = {k: kw[k] for k in _SCENARIO_ARGS if k in kw}
    config = BackendConfig(**{k: v for k, v in kw.items() if k in BackendConfig.__dataclass_fields__})
    scenario = sc_kw.pop("scenario", None) or load_scenario(
        sc_kw.pop("model", DEFAULT_MODEL), sc_kw.pop("dataset", DEFAULT_DATASET), device=config.device, **sc_kw)
    return PruningBackend.shared(scenario, config)


class DataAwarePruneEnv(gym.Env):
    """Prune a CNN layer group by layer group; the reward trades latency against accuracy.

    ## Description
    An episode walks through the prunable groups of a base network in forward order (a group is a
    set of coupled channels that Torch-Pruning removes together: e.g. all convs feeding one residual
    add). At each step the agent chooses how much of the current group to prune. The channels kept
    are the most important ones according to a channel-importance criterion, by default the group
    attention learned on the training data. No surgery happens during the episode: the plan grows
    and its cost is predicted by the back end's cost model (a calibrated per-layer latency table). At
    the last step the back end (:class:`~pruning_env.backend.PruningBackend`) applies the plan to a
    fresh copy of the base model, re-estimates BatchNorm statistics, measures the pruned network's
    validation accuracy, latency and MACs, and the reward is returned. The environment itself is the
    MDP over the back end: observations, the action wall and the reward.

    Following AMC (He et al., ECCV 2018), actions are clipped so that the latency target stays
    reachable (the "action wall", computed in ``reset`` and after every ``step``): whatever the agent
    does, every episode ends within budget according to the cost model.

    ## Action Space
    ``Box(-1, 1, (1,), float32)``: mapped linearly to a prune ratio in ``[0, max_prune_ratio]``,
    then raised if needed to the smallest ratio that keeps the target reachable. Finite actions
    outside ``[-1, 1]`` are clipped; non-finite or wrongly shaped actions raise ``ValueError``.
    ``info`` reports ``requested_ratio`` and ``applied_ratio``.

    ## Observation Space
    ``Box(0, 1, (11 + 5 + 16,), float32)`` (or a ``Dict`` with keys ``layer``, ``budget``, ``data``
    when ``observation_mode="dict"``). Every feature is normalised to ``[0, 1]``:

    | index | feature | meaning |
    |-------|---------|---------|
    | 0 | position | step / (number of groups - 1) |
    | 1-3 | is_conv, is_depthwise, is_linear | type of the group's root layer |
    | 4 | channels | channels of the group / the widest group |
    | 5 | in_channels | input channels of the root / the widest group |
    | 6 | kernel_size | kernel size / 7 (clipped) |
    | 7 | stride | stride / 2 (clipped) |
    | 8 | feature_size | output height of the root / input height |
    | 9 | macs_share | MACs of the layers the group touches / total over groups |
    | 10 | latency_share | table latency of those layers / base latency (MACs share in the MACs variant) |
    | 11 | cost_removed | cost removed by the decisions so far / base cost |
    | 12 | cost_reducible_rest | cost the remaining groups can still remove / base cost |
    | 13 | budget_left | cost still to remove to reach the target / base cost |
    | 14 | prev_action | previous applied ratio / max_prune_ratio |
    | 15 | min_ratio | smallest ratio the wall allows now / max_prune_ratio |
    | 16-23 | att_mean, att_std, att_q10, att_q50, att_q90, | attention gates (or the criterion's |
    |       | att_entropy, att_low_share, att_data_std | scores) over the group's channels |
    | 24-28 | act_mean, act_spread, act_channel_dispersion, | how the training data activates |
    |       | act_zero_share, act_dead_share | the group |
    | 29-31 | fisher_mean, fisher_q90, class_selectivity | how class-selective the group's channels are |

    The data features (16-31) are defined in :mod:`pruning_env.profiling` and scaled to ``[0, 1]`` with
    the profile's bounds; ``env.unwrapped.feature_names`` lists all names in order.

    Ablations (``observation_features``): ``"no_data"`` drops the data features (indices 0-15 remain),
    ``"data_only"`` keeps the budget and data features (11-31) and drops the layer description; the
    budget features stay in both, since they describe the task's state, not the network. Two variants
    change what the data part says: ``"relative"`` replaces the 16 data features by each group's rank
    among the network's groups (``rel_<name>``, 0 = lowest group, 1 = highest:
    :meth:`~pruning_env.features.DataFeatures.relative`), and ``"sensitivity"`` appends to the full
    observation 3 measured features, the relative validation-accuracy drop of the group pruned alone by
    1/3, 2/3 and all of ``max_prune_ratio`` after BN recalibration (``sens_33``, ``sens_67``,
    ``sens_100``; :mod:`pruning_env.sensitivity`; three evaluations per group, once per scenario,
    cached). Agents work unchanged: the observation space changes size accordingly (in ``dict`` mode,
    the keys are the parts: ``layer``, ``budget``, ``data``, ``data_relative``, ``sensitivity``).

    ## Rewards
    0 at intermediate steps, the reward object's value at the last step. Default
    ``latency_accuracy``: ``(acc - base_acc) / base_acc + 0.1 * log(base_latency / latency)``, clipped to
    ``[-1, 1 + 0.1 * log(1000)]``. Others: ``amc`` (``-error * log(MACs)``, in ``[-log(1e13), 0]``),
    ``accuracy`` (accuracy under the budget, else -1; in ``[-1, 1]``), ``soft``
    (``acc * (lat / target) ** -0.07``, clipped to ``[0, 2]``) or any callable ``EpisodeMetrics -> float``
    (unclipped; a non-finite value raises ``ValueError``). Each reward object's ``bounds`` give its range.

    ## Starting State
    Step 0 at the first group with nothing pruned. The base model is never modified: every episode
    starts from the same network.

    ## Episode End
    - Termination: after the decision for the last group (one step per group).
    - Truncation: none.

    ## Info
    Every step: ``step``, ``group`` (name of the group decided), ``requested_ratio``, ``applied_ratio``,
    ``kept_channels``, ``channels``. The terminal step adds the :class:`EpisodeMetrics` fields
    (``accuracy``, ``base_accuracy``, ``latency_ms``, ``base_latency_ms``, ``target_latency_ms``, ``macs``,
    ``base_macs``, ``params``, ``base_params``), ``speedup`` (base latency / latency), ``macs_ratio``,
    ``plan`` (the :class:`PruningPlan`), ``ratios`` and ``requested_ratios`` (per group),
    ``episode_seconds`` and ``timing`` (seconds in ``steps``, ``surgery``, ``recovery``, ``evaluation``,
    ``latency``). In the MACs variant the latency fields hold millions of MACs.

    ## Arguments
    | argument | default | meaning |
    |----------|---------|---------|
    | model | ``"small_resnet"`` | registered model name or any ``nn.Module`` (its weights are the base) |
    | dataset | ``"digits"`` | ``digits`` (bundled), ``cifar10``, ``cifar100``, ``npz:``/``folder:`` paths; |
    |         |              | ``<dataset>:classes=<list>`` a class subset, e.g. ``cifar10:classes=2,3,4,5,6,7``  |
    |         |              | or ``cifar10:classes=cat,dog`` (indices or names, >= 2, each once; relabelled   |
    |         |              | 0..k-1 in that order). The head is sized to the subset: full-dataset base weights |
    |         |              | get the chosen classifier rows, then ``adapt_steps`` adapts them (cached per subset) |
    | checkpoint | None | base weights (state_dict, loaded with ``weights_only=True``) |
    | data_root | None | folder with datasets; default ``$PRUNING_ENV_DATA`` or the cache |
    | adapt_steps | 0 | SGD steps adapting the base weights to the train split first (cached; see ``adapt``) |
    | target_latency | 0.5 | fraction of the base cost (latency, or MACs in ``macs`` mode) to reach, in (0, 1] |
    | latency | ``"table"`` | ``table`` (calibrated lookup table), ``measured`` (wall clock of the pruned |
    |         |             | model; the table prices the wall), ``macs`` (MACs; no table is built) |
    | latency_backend | ``"torch"`` | ``torch`` or ``onnxruntime`` for the table and the measurer |
    | latency_batch_size | 64 | batch size of latency measurements (eager batch 1 on CPU is mostly overhead) |
    | threads | 1 | torch threads while measuring latency (None: torch's setting); 1 is the most stable |
    | eval_threads | None | torch threads for recovery and evaluation (None: torch's setting at construction) |
    | latency_calibrate | True | fit the table to a dozen measured pruned models (see ``LatencyTable``) |
    | reward | ``"latency_accuracy"`` | reward name, :class:`Reward` object or callable |
    | importance | ``"attention"`` | ``attention``, ``l1``, ``bn``, ``taylor``, ``random``, ``activation`` |
    | max_prune_ratio | 0.8 | largest fraction of a group that may be pruned |
    | min_channels | 1 | channels always kept per group |
    | round_to | 8 | kept channels are a multiple of this (or the whole group): hardware-friendly widths |
    | val_samples | 1000 | validation images used for the reward (None: the whole validation split) |
    | bn_batches | 2 | training batches (of 128) to re-estimate BatchNorm statistics; 0 disables |
    | finetune_steps | 0 | SGD steps of recovery fine-tuning per episode before evaluation (batch 128); |
    |                |   | 0 is the cheapest, but at one target the accuracy after BN recalibration alone |
    |                |   | ranks plans poorly (ResNet-20: Spearman -0.01 against fine-tuned accuracy; with |
    |                |   | 20 steps 0.90). ``make bench`` uses 8 on digits, ``agents.compress`` 20 |
    | finetune_lr | 0.01 | learning rate of those steps (cosine schedule) |
    | finetune_kd_weight | 0.0 | distil the base model during those steps (``kd_loss`` weight, T=4); on |
    |                    |     | ResNet-56 at 2x it ranked 12 plans closer to one epoch's fine-tune |
    |                    |     | (Spearman 0.71 against 0.27 for 20 plain steps); 0: labels only |
    | observation_mode | ``"flat"`` | ``flat`` Box or ``dict`` |
    | observation_features | ``"all"`` | ``all``, the ablations ``no_data`` and ``data_only``, or the |
    |                      |           | variants ``relative`` and ``sensitivity`` (see above) |
    | device | None | device for evaluation (default: CUDA when available) |
    | render_mode | None | ``"ansi"``: a table of per-layer decisions; ``"rgb_array"``: bars of prune ratios |
    | scenario | None | an already loaded :class:`Scenario` (overrides model/dataset/checkpoint) |
    | seed | 0 | seed of the channel scoring (attention) and the BatchNorm batches (episodes: ``reset``) |
    | backend | None | a built :class:`PruningBackend` (overrides the scenario and every back-end argument) |
    | latency_table | None | a :class:`LatencyTable` of this model, e.g. measured on the deployment device |

    Environments of the same scenario and back-end arguments in one process share one back end
    (:meth:`PruningBackend.shared`); :func:`make_backend` gives it to tools without the MDP.

    ## Version History
    The id stays ``DataAwarePrune-v0``; behaviour changes of its defaults are listed here and numbered by
    :data:`pruning_env.backend.BEHAVIOUR`, which run folders and benchmark rows record (results of
    different behaviours are never mixed: a resume is refused, benchmark rows are set aside).

    - v0, behaviour 3 (2026-11-30): the back end (:class:`~pruning_env.backend.PruningBackend`) prices
      and evaluates plans; ``DataAwarePrune-v0`` episodes are unchanged (a test pins one episode's plan
      and reward). ``DataAwarePruneMACs-v0`` builds no latency table any more: its terminal latency fields
      hold millions of MACs (before: the table's latency), so its rewards price MACs, and its
      ``latency_share`` feature is the MACs share.
    - v0, behaviour 2 (2026-11-30): latency that holds when measured. ``round_to=8`` (widths that are
      multiples of 8: odd widths run up to 2x slower in oneDNN at batch 64), the latency table (format 2)
      timed at every allowed width of narrow layers and calibrated by default against a dozen measured
      pruned models (the uncalibrated table overestimated speedups by up to 86%), ``eval_threads``
      pinned per episode, and the default network widened to 32/64 channels (at 16/32 with
      ``round_to=8`` every plan at the 0.5 target was nearly the same). Group attention scored by the
      consensus order (behaviour 1 used the gate rank; earlier the gates alone).
    - v0, behaviour 1: first release (uncalibrated table, ``round_to=1``, small network 16/32).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        model: str | nn.Module = DEFAULT_MODEL,
        dataset: str = DEFAULT_DATASET,
        checkpoint: str | None = None,
        data_root: str | None = None,
        adapt_steps: int = 0,
        target_latency: float = 0.5,
        latency: str = "table",
        latency_backend: str = "torch",
        latency_batch_size: int = 64,
        threads: int | None = 1,
        eval_threads: int | None = None,
        latency_calibrate: bool = True,
        reward: str | Reward | Callable[[EpisodeMetrics], float] = "latency_accuracy",
        importance: str = "attention",
        max_prune_ratio: float = 0.8,
        min_channels: int = 1,
        round_to: int = 8,
        val_samples: int | None = 1000,
        bn_batches: int = 2,
        finetune_steps: int = 0,
        finetune_lr: float = 0.01,
        finetune_kd_weight: float = 0.0,
        observation_mode: str = "flat",
        observation_features: str = "all",
        device: str | torch.device | None = None,
        render_mode: str | None = None,
        scenario: Scenario | None = None,
        seed: int = 0,
        backend: PruningBackend | None = None,
        latency_table: LatencyTable | None = None,
    ) -> None:
        super().__init__()
        t0 = time.perf_counter()
        if not (isinstance(target_latency, (int, float)) and 0.0 < float(target_latency) <= 1.0):
            raise ValueError(f"target_latency must be a fraction of the base latency in (0, 1], got {target_latency!r}")
        if observation_mode not in ("flat", "dict"):
            raise ValueError(f"observation_mode must be 'flat' or 'dict', got {observation_mode!r}")
        if observation_features not in OBSERVATION_FEATURES:
            raise ValueError(f"observation_features must be one of {', '.join(OBSERVATION_FEATURES)}, "
                             f"got {observation_features!r}")
        self.observation_features = observation_features
        self._parts = OBSERVATION_FEATURES[observation_features]
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None, 'ansi' or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.reward_fn = make_reward(reward)
        self.target_fraction = float(target_latency)
        self.observation_mode = observation_mode

        if backend is None:
            config = BackendConfig(
                latency=latency, latency_backend=latency_backend, latency_batch_size=latency_batch_size,
                threads=threads, eval_threads=eval_threads, latency_calibrate=latency_calibrate,
                importance=importance, max_prune_ratio=float(max_prune_ratio), min_channels=int(min_channels),
                round_to=int(round_to), val_samples=val_samples, bn_batches=int(bn_batches),
                finetune_steps=int(finetune_steps), finetune_lr=float(finetune_lr),
                finetune_kd_weight=float(finetune_kd_weight),
                device=None if device is None else str(device), seed=int(seed),
            )
            sc = scenario or load_scenario(model, dataset, checkpoint=checkpoint, data_root=data_root,
                                           adapt_steps=adapt_steps, device=device)
            if latency_table is not None:
                backend = PruningBackend(sc, config, table=latency_table)
            else:
                backend = PruningBackend.shared(sc, config)
        self.backend = b = backend
        # Read-only views of the back end, for agents and tools.
        self.scenario, self.graph, self.groups, self.n_groups = b.scenario, b.graph, b.groups, b.n_groups
        self.latency_mode, self.max_prune_ratio = b.config.latency, b.config.max_prune_ratio
        self.table, self.measurer, self.data_features, self.scores = b.table, b.measurer, b.data_features, b.scores
        self.val_data, self.base_accuracy = b.val_data, b.base_accuracy
        self.base_latency_ms, self.base_macs, self.base_params = b.base_latency_ms, b.base_macs, b.base_params
        self.base_cost = b.base_cost
        self.target_cost = self.target_fraction * self.base_cost
        floor = b.cost(b.min_keep)
        if floor > self.target_cost * (1 + 1e-9):
            raise ValueError(
                f"target_latency={self.target_fraction} cannot be met: pruning every group at max_prune_ratio="
                f"{self.max_prune_ratio} reaches only {floor / self.base_cost:.3f} of the base "
                f"{'MACs' if self.latency_mode == 'macs' else 'latency'}. Raise target_latency or max_prune_ratio, "
                f"or lower round_to={b.config.round_to} (a group keeps at least round_to channels)."
            )

        self._static = self._static_features()
        data_names = list(self.data_features.feature_names)
        names = {"layer": LAYER_FEATURES, "budget": BUDGET_FEATURES, "data": data_names,
                 "data_relative": [f"rel_{n}" for n in data_names], "sensitivity": SENSITIVITY_FEATURES}
        self.feature_names = [n for part in self._parts for n in names[part]]
        self.action_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        if observation_mode == "flat":
            self.observation_space = spaces.Box(0.0, 1.0, (len(self.feature_names),), dtype=np.float32)
        else:
            self.observation_space = spaces.Dict({
                part: spaces.Box(0.0, 1.0, (len(names[part]),), dtype=np.float32) for part in self._parts})
        self.last_model: nn.Module | None = None
        self.last_plan: PruningPlan | None = None
        self.last_info: dict[str, Any] = {}
        self._reset_state()
        self.construction_seconds = time.perf_counter() - t0

    # -- public helpers for agents and tools ------------------------------------------------------
    def cost(self, kept) -> float:
        """Predicted cost of keeping ``kept[i]`` channels in group ``i``: ms (latency modes) or MACs (``macs``).

        The one cost model of the episode (:meth:`PruningBackend.cost`): the action wall, the budget
        features, the baselines and the terminal latency in ``table`` mode all use it.
        """
        return self.backend.cost(kept)

    def predicted_latency_ms(self, kept) -> float:
        """Latency (ms) the table predicts for ``kept``, clamped at 2% of the base latency."""
        return self.backend.predicted_latency_ms(kept)

    def kept_for_ratios(self, ratios) -> np.ndarray:
        """Kept channels per group when the agent requests prune ``ratios`` (one per group), wall aside."""
        return self.backend.kept_for_ratios(ratios)

    def action_for_ratio(self, ratio: float) -> float:
        """The action in ``[-1, 1]`` that requests prune ``ratio`` (the inverse of the action mapping)."""
        r = min(self.max_prune_ratio, float(ratio) + 1e-7)  # a hair more: round-off never keeps one too many
        return float(np.clip(2.0 * r / max(self.max_prune_ratio, 1e-12) - 1.0, -1.0, 1.0))

    def ratio_for_action(self, action: float) -> float:
        """The prune ratio an action requests (before the wall): ``(a + 1) / 2 * max_prune_ratio``."""
        a = min(1.0, max(-1.0, float(action)))
        return (a + 1.0) / 2.0 * self.max_prune_ratio

    @property
    def current_step(self) -> int:
        """Index of the group the next action decides (``n_groups`` once the episode is over)."""
        return self._t

    @property
    def kept(self) -> np.ndarray:
        """Kept channels per group so far (groups not decided yet are full)."""
        return self._kept.copy()

    @property
    def wall(self) -> int:
        """Most channels the current group may keep so that the target stays reachable."""
        return self._wall

    def plan_for_ratios(self, ratios) -> PruningPlan:
        """The plan this environment would build for the given per-group prune ratios (wall aside)."""
        return self.backend.plan(self.kept_for_ratios(ratios))

    def base_model(self) -> nn.Module:
        """A fresh copy of the base model."""
        return self.backend.base_model()

    # -- features -------------------------------------------------------------------------------
    def _static_features(self) -> dict[str, np.ndarray]:
        """Per part, the features of every group that do not change during an episode ([groups, k])."""
        g = self.groups
        wmax = float(max(max(x.channels, x.in_channels) for x in g))
        size = float(self.scenario.example_inputs.shape[-1])
        macs = np.array([x.macs for x in g], dtype=np.float64)
        share = self.backend.group_cost_share()
        rows = []
        for i, x in enumerate(g):
            rows.append([
                i / max(1, self.n_groups - 1),
                float(x.layer_type == "conv"), float(x.layer_type == "depthwise"), float(x.layer_type == "linear"),
                x.channels / wmax, x.in_channels / wmax, min(1.0, x.kernel_size / 7.0), min(1.0, x.stride / 2.0),
                min(1.0, x.feature_size / size), macs[i] / max(1.0, macs.sum()), min(1.0, float(share[i])),
            ])
        out = {"layer": np.asarray(rows, dtype=np.float32)}
        if "data" in self._parts:
            out["data"] = self.data_features.normalised()
        if "data_relative" in self._parts:
            out["data_relative"] = self.data_features.relative()
        if "sensitivity" in self._parts:  # measured once per scenario and settings (cached)
            out["sensitivity"] = group_sensitivity(self.backend)
        return out

    def _update_wall(self) -> None:
        """The action wall of the current step (AMC): the most the group may keep within budget."""
        if self._t < self.n_groups:
            self._wall = self.backend.max_keep(self._kept, self._t, self.target_cost)
        else:
            self._wall = int(self.backend.channels[-1])

    def _observation(self) -> np.ndarray | dict[str, np.ndarray]:
        b = self.backend
        t = min(self._t, self.n_groups - 1)
        kept_rest_min = self._kept.copy()
        kept_rest_min[t:] = b.min_keep[t:]
        now = b.cost(self._kept)
        floor = b.cost(kept_rest_min)
        min_ratio = 1.0 - self._wall / b.channels[t]
        budget = np.array([
            (self.base_cost - now) / self.base_cost,
            (now - floor) / self.base_cost,
            max(0.0, now - self.target_cost) / self.base_cost,
            self._prev_ratio / max(self.max_prune_ratio, 1e-9),
            min_ratio / max(self.max_prune_ratio, 1e-9),
        ], dtype=np.float32)
        budget = np.clip(budget, 0.0, 1.0)
        parts = {part: (budget if part == "budget" else self._static[part][t]) for part in self._parts}
        if self.observation_mode == "dict":
            return {part: parts[part].copy() for part in self._parts}
        return np.concatenate([parts[part] for part in self._parts]).astype(np.float32)

    # -- gym API --------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._t = 0
        self._kept = self.backend.channels.copy()
        self._prev_ratio = 0.0
        self._requested: list[float] = []
        self._applied: list[float] = []
        self._step_seconds = 0.0
        self._update_wall()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._reset_state()
        self._episode_start = time.perf_counter()
        return self._observation(), {"step": 0, "group": self.groups[0].name}

    def step(self, action):
        if self._t >= self.n_groups:
            raise RuntimeError("episode is over: call reset() before step()")
        t_step = time.perf_counter()
        a = np.asarray(action, dtype=np.float64)
        if a.size != 1:
            raise ValueError(f"action must hold exactly one number (shape (1,)), got shape {a.shape}")
        a = float(a.reshape(-1)[0])
        if not math.isfinite(a):
            raise ValueError(f"action must be finite, got {a}; check the agent's outputs for NaN/inf")
        requested = self.ratio_for_action(a)
        t = self._t
        c = int(self.backend.channels[t])
        keep = min(self.backend.keep_for_ratio(t, requested), self._wall)
        applied = 1.0 - keep / c
        self._kept[t] = keep
        self._requested.append(requested)
        self._applied.append(applied)
        self._prev_ratio = applied
        self._t += 1
        self._update_wall()
        info: dict[str, Any] = {
            "step": t, "group": self.groups[t].name, "requested_ratio": requested, "applied_ratio": applied,
            "kept_channels": keep, "channels": c,
        }
        self._step_seconds += time.perf_counter() - t_step
        if self._t < self.n_groups:
            obs = self._observation()
            reward = float(self.reward_fn.step_reward(t, applied))
            return obs, reward, False, False, info
        reward, final = self._finish()
        info.update(final)
        return self._observation(), reward, True, False, info

    def _finish(self) -> tuple[float, dict[str, Any]]:
        meta = {"reward": self.reward_fn.name, "target_latency": self.target_fraction, "latency": self.latency_mode}
        result = self.backend.evaluate(self._kept, target_fraction=self.target_fraction, seed=self.np_random_seed,
                                       meta=meta)
        reward = float(self.reward_fn(result.metrics))
        if not math.isfinite(reward):
            raise ValueError(f"reward {self.reward_fn.name!r} is not finite ({reward}) for {result.metrics}")
        self.last_model, self.last_plan = result.model, result.plan  # the previous episode's model is freed here
        release_freed_memory()
        info = result.info()
        info["timing"] = {"steps": self._step_seconds, **info["timing"]}
        info.update(episode_seconds=time.perf_counter() - self._episode_start, ratios=list(self._applied),
                    requested_ratios=list(self._requested))
        self.last_info = {k: v for k, v in info.items() if k != "plan"}
        return reward, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._render_bars()
        if self.render_mode != "ansi":
            return None
        lines = [f"{'#':>3} {'group':<28} {'type':<9} {'ch':>5} {'req':>6} {'applied':>7} {'kept':>5}"]
        for i, g in enumerate(self.groups):
            req = f"{self._requested[i]:.2f}" if i < len(self._requested) else "-"
            app = f"{self._applied[i]:.2f}" if i < len(self._applied) else "-"
            kept = str(int(self._kept[i])) if i < self._t else "-"
            lines.append(f"{i:>3} {g.name[-28:]:<28} {g.layer_type:<9} {g.channels:>5} {req:>6} {app:>7} {kept:>5}")
        now = self.cost(self._kept) / self.base_cost
        lines.append(f"cost {now:.3f} of base (target {self.target_fraction:.3f})")
        if self.last_info and self._t >= self.n_groups:
            li = self.last_info
            lines.append(f"accuracy {li['accuracy']:.4f} (base {li['base_accuracy']:.4f}), "
                         f"speedup {li['speedup']:.2f}x, MACs {li['macs_ratio']:.2f}x fewer")
        return "\n".join(lines)

    def _render_bars(self) -> np.ndarray:
        """An image of the episode so far: one bar per group, height = applied prune ratio."""
        h, w = 64, 8
        img = np.full((h, w * self.n_groups, 3), 255, dtype=np.uint8)
        for i, r in enumerate(self._applied):
            top = h - int(round(r * (h - 1)))
            img[top:, i * w + 1 : (i + 1) * w - 1] = (40, 90, 200)
        if self._t < self.n_groups:
            img[:2, self._t * w : (self._t + 1) * w] = (220, 60, 40)  # marks the current group
        return img
