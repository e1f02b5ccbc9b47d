"""The pruning back end: price and evaluate plans of one scenario.

A :class:`PruningBackend` holds a scenario (base model, data, weights), its cost model (the calibrated
latency lookup table, wall-clock measurement, or MACs) and its evaluator (surgery, BatchNorm
recalibration, optional recovery steps, validation accuracy, latency, MACs). Everything that prices
or evaluates a plan goes through it:

* the environment (:class:`~pruning_env.env.DataAwarePruneEnv`) is the MDP over a back end: it adds
  observations, the action wall and the reward;
* baselines, fine-tuning and compress, and the benchmarks use the same object, so a plan is priced the
  same way wherever it comes from.

Building one is the expensive part (the latency table, channel scores and data features are cached on
disk; the first build of a new scenario trains the group attention and times the layers).
:meth:`PruningBackend.shared` keeps the last few back ends of the process, so environments of the same
scenario and settings (vectorised environments, one per agent and seed in a benchmark) share one.

Example::

    from pruning_env import load_scenario
    from pruning_env.backend import BackendConfig, PruningBackend

    backend = PruningBackend.shared(load_scenario("resnet20", "cifar10"), BackendConfig(round_to=8))
    kept = backend.kept_for_ratios([0.5] * backend.n_groups)
    print(backend.cost(kept) / backend.base_cost)          # predicted latency fraction
    result = backend.evaluate(kept, target_fraction=0.5)    # surgery + recalibration + accuracy
    print(result.metrics.accuracy, result.speedup)

Behaviour record: :data:`BEHAVIOUR` numbers the behaviour of the defaults (the environment manual's
version history). Run folders and benchmark results store :meth:`PruningBackend.behaviour` and refuse
to mix results made under another one.
"""

from __future__ import annotations

import copy
import ctypes
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .distill import finetune as distill_finetune
from .engine import ModelGraph, apply_plan, count_macs_params
from .features import DataFeatures, build_data_features
from .importance import scoring_version
from .latency import TABLE_FORMAT_VERSION, LatencyTable
from .macs import macs_for_kept
from .measure import LatencyMeasurer
from .plan import PruningPlan
from .rewards import EpisodeMetrics
from .scenario import Scenario
from .train import default_device, evaluate, pinned_threads, recalibrate_bn, train

__all__ = [
    "BEHAVIOUR", "LATENCY_MODES", "BackendConfig", "behaviour_record", "Evaluation", "PruningBackend",
    "release_freed_memory",
]

BEHAVIOUR = 3  # bump with every behaviour change listed in the environment manual's version history
LATENCY_MODES = ("table", "measured", "macs")
_SHARED_MAX = 4  # back ends kept by PruningBackend.shared (each holds a model, data and a table)


def behaviour_record(importance: str = "attention", latency: str = "table") -> dict[str, Any]:
    """What results depend on besides their settings: the behaviour number of the defaults, the channel
    scoring's version and the latency table's format. Run folders and benchmark rows store it and refuse
    to mix results made under another one (:meth:`PruningBackend.behaviour` of a built back end)."""
    out: dict[str, Any] = {"behaviour": BEHAVIOUR, "scoring": scoring_version(importance)}
    if latency != "macs":
        out["latency_table_format"] = TABLE_FORMAT_VERSION
    return out


def _load_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Every evaluation builds, evaluates and drops a model of new layer shapes; glibc keeps the freed
    blocks in fragmented arenas, and the resident memory of the default environment grew by 31% over
    500 episodes without this (1.6% with it, from episode 40 to 160). It takes well under a millisecond.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True)
class BackendConfig:
    """Settings of a back end (the environment passes its arguments of the same names).

    Attributes:
        latency: cost model, ``table`` (calibrated per-layer lookup table), ``measured`` (wall clock of
            every evaluated model; the table still prices the action wall) or ``macs`` (MACs; no latency
            table is built, and the metrics' latency fields hold millions of MACs).
        latency_backend: ``torch`` or ``onnxruntime``, for the table and the measurer.
        latency_batch_size: batch size of latency measurements.
        threads: torch threads while measuring latency (None: torch's setting).
        eval_threads: torch threads for recovery and evaluation (None: torch's setting when built).
        latency_calibrate: fit the table to a dozen measured pruned models.
        importance: channel criterion (``attention``, ``l1``, ``bn``, ``taylor``, ``random``, ``activation``).
        max_prune_ratio: largest fraction of a group that may be pruned.
        min_channels: channels always kept per group.
        round_to: kept channels are a multiple of this (or the whole group).
        val_samples: validation images for the accuracy (None: the whole validation split).
        bn_batches: training batches (of 128) to re-estimate BatchNorm statistics; 0 disables.
        finetune_steps: SGD recovery steps per evaluation before measuring accuracy.
        finetune_lr: learning rate of those steps.
        finetune_kd_weight: distil the base model into the plan during those steps with this weight ``w``
            of :func:`pruning_env.distill.kd_loss` (temperature 4); 0 trains on the labels only.
        device: device for evaluation (None: CUDA when available).
        seed: seed of the channel scoring (attention training) and of the BatchNorm batches.
    """

    latency: str = "table"
    latency_backend: str = "torch"
    latency_batch_size: int = 64
    threads: int | None = 1
    eval_threads: int | None = None
    latency_calibrate: bool = True
    importance: str = "attention"
    max_prune_ratio: float = 0.8
    min_channels: int = 1
    round_to: int = 8
    val_samples: int | None = 1000
    bn_batches: int = 2
    finetune_steps: int = 0
    finetune_lr: float = 0.01
    finetune_kd_weight: float = 0.0
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency not in LATENCY_MODES:
            raise ValueError(f"unknown latency mode {self.latency!r}; valid: {', '.join(LATENCY_MODES)}")
        if not 0.0 <= self.max_prune_ratio < 1.0:
            raise ValueError(f"max_prune_ratio must be in [0, 1), got {self.max_prune_ratio}")
        if self.eval_threads is not None and int(self.eval_threads) < 1:
            raise ValueError(f"eval_threads must be >= 1 or None, got {self.eval_threads}")
        if int(self.round_to) < 1 or int(self.min_channels) < 1:
            raise ValueError(f"round_to and min_channels must be >= 1, got {self.round_to}, {self.min_channels}")
        if self.bn_batches < 0 or self.finetune_steps < 0:
            raise ValueError(f"bn_batches and finetune_steps must be >= 0, got {self.bn_batches}, "
                             f"{self.finetune_steps}")
        if not 0.0 <= self.finetune_kd_weight <= 1.0:
            raise ValueError(f"finetune_kd_weight must be in [0, 1] (0: labels only), got {self.finetune_kd_weight}")


@dataclass
class Evaluation:
    """What :meth:`PruningBackend.evaluate` measured for one plan."""

    metrics: EpisodeMetrics
    plan: PruningPlan
    model: nn.Module  # the pruned network, on the CPU, contiguous memory format, eval mode
    timing: dict[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def speedup(self) -> float:
        """Base latency / latency (in ``macs`` mode: the MACs ratio)."""
        return self.metrics.base_latency_ms / max(self.metrics.latency_ms, 1e-9)

    @property
    def macs_ratio(self) -> float:
        return self.metrics.base_macs / max(self.metrics.macs, 1)

    def info(self) -> dict[str, Any]:
        """The terminal ``info`` entries of an episode that ended with this evaluation."""
        return {**self.metrics.as_dict(), "speedup": self.speedup, "macs_ratio": self.macs_ratio,
                "plan": self.plan, "timing": dict(self.timing)}


class PruningBackend:
    """Price and evaluate pruning plans of one scenario (see the module docstring).

    Args:
        scenario: the loaded :class:`~pruning_env.scenario.Scenario`.
        config: settings (:class:`BackendConfig`).
        table: a prebuilt :class:`~pruning_env.latency.LatencyTable` of this scenario's graph (e.g. one
            measured on the deployment device and saved with ``to_dict``); default: build or load the
            cached one with the measurer of ``config``.
    """

    _shared: OrderedDict[tuple, PruningBackend] = OrderedDict()

    def __init__(self, scenario: Scenario, config: BackendConfig | None = None,
                 table: LatencyTable | None = None) -> None:
        t0 = time.perf_counter()
        cfg = config or BackendConfig()
        self.config = cfg
        self.scenario = sc = scenario
        self.graph: ModelGraph = sc.graph
        self.groups = sc.graph.groups
        self.n_groups = len(self.groups)
        self.channels = np.array([g.channels for g in self.groups], dtype=np.int64)
        self.device = torch.device(cfg.device) if cfg.device is not None else default_device()
        self.eval_threads = torch.get_num_threads() if cfg.eval_threads is None else int(cfg.eval_threads)
        # Widths a group may keep: multiples of round_to (kernels work on blocks of channels) and of the
        # group's step, or the whole group; no fewer than max_prune_ratio allows (rounded up).
        self._allowed = [self._allowed_counts(g.channels, g.step) for g in self.groups]
        self.min_keep = np.array([a[0] for a in self._allowed], dtype=np.int64)

        # Cost model. The MACs mode prices MACs and builds no table (deterministic, hardware-independent).
        self.measurer = LatencyMeasurer(
            device="cpu", batch_size=cfg.latency_batch_size, threads=cfg.threads, backend=cfg.latency_backend,
            input_shape=tuple(sc.example_inputs.shape[1:]),
        )
        self.table: LatencyTable | None = None
        if cfg.latency != "macs":
            self.table = table if table is not None else LatencyTable.build(
                self.graph, self.measurer, calibrate=cfg.latency_calibrate, round_to=cfg.round_to)
        elif table is not None:
            raise ValueError("latency='macs' prices MACs: do not pass a latency table")
        # The table's prediction is clamped at 2% of the base latency: far below anything max_prune_ratio
        # allows, but it keeps speedups finite if a noisy table extrapolates below zero.
        self._floor_ms = 0.02 * float(self.table.base_ms) if self.table is not None else 0.0
        self.base_cost = self.cost(self.channels)

        # Channel scores and data features (cached per scenario on disk).
        self.data_features: DataFeatures = build_data_features(sc, importance=cfg.importance, seed=cfg.seed)
        self.scores = self.data_features.scores

        # Validation subset for the accuracy, calibration batches for BatchNorm.
        val = sc.data.val
        self.val_data = val if cfg.val_samples is None else val.subset(min(cfg.val_samples, len(val)))
        gen = torch.Generator().manual_seed(cfg.seed)
        n_cal = min(len(sc.data.train), max(1, cfg.bn_batches) * 128)
        cal_idx = torch.randperm(len(sc.data.train), generator=gen)[:n_cal]
        self._cal_batches = list(sc.data.train.subset(cal_idx).iter_batches(128))[: cfg.bn_batches]
        self._nhwc = self.device.type == "cpu"  # oneDNN convolutions are ~25% faster channels-last
        base = copy.deepcopy(sc.model).to(memory_format=torch.channels_last) if self._nhwc else sc.model
        self.base_accuracy = evaluate(base, self.val_data, device=self.device, batch_size=64)  # as evaluate() does
        self.base_macs, self.base_params = count_macs_params(sc.model, sc.example_inputs)
        if cfg.latency == "measured":
            self.base_latency_ms = self.measurer.measure(sc.model)
        elif cfg.latency == "macs":
            self.base_latency_ms = self.base_macs / 1e6
        else:
            self.base_latency_ms = float(self.table.base_ms)
        self.build_seconds = time.perf_counter() - t0

    @classmethod
    def shared(cls, scenario: Scenario, config: BackendConfig | None = None) -> PruningBackend:
        """The back end of ``scenario`` and ``config``, built once per process (the last few are kept)."""
        config = config or BackendConfig()
        key = (scenario.id, config)
        hit = cls._shared.get(key)
        if hit is not None:
            cls._shared.move_to_end(key)
            return hit
        backend = cls(scenario, config)
        cls._shared[key] = backend
        while len(cls._shared) > _SHARED_MAX:
            cls._shared.popitem(last=False)
        return backend

    # -- widths -----------------------------------------------------------------------------------
    def _allowed_counts(self, channels: int, step: int = 1) -> list[int]:
        cfg = self.config
        unit = math.lcm(int(cfg.round_to), max(1, int(step)))
        least = max(cfg.min_channels, channels * (1.0 - cfg.max_prune_ratio) - 1e-9)
        return [k for k in range(unit, channels, unit) if k >= least] + [channels]

    def allowed_counts(self, group: int) -> list[int]:
        """Kept counts group ``group`` may have, ascending: multiples of ``round_to`` and of the group's
        ``step`` (grouped convs keep the same number per conv group), and the whole group; no fewer than
        ``max_prune_ratio`` and ``min_channels`` allow."""
        return list(self._allowed[group])

    def keep_for_ratio(self, group: int, ratio: float) -> int:
        """Kept channels of ``group`` when prune ``ratio`` is requested: the smallest allowed count at
        or above what the ratio keeps."""
        cfg = self.config
        keep = ModelGraph.n_keep(int(self.channels[group]), ratio, cfg.round_to, cfg.min_channels,
                                 self.groups[group].step)
        allowed = self._allowed[group]
        return next((k for k in allowed if k >= keep), allowed[-1])

    def kept_for_ratios(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        """Kept channels per group for prune ``ratios`` (one per group), before any budget wall."""
        r = np.asarray(ratios, dtype=np.float64)
        if r.shape != (self.n_groups,):
            raise ValueError(f"expected {self.n_groups} ratios (one per group), got shape {r.shape}")
        return np.array([self.keep_for_ratio(t, float(x)) for t, x in enumerate(r)], dtype=np.int64)

    def max_keep(self, kept: Sequence[int] | np.ndarray, group: int, target_cost: float) -> int:
        """Largest allowed count for ``group`` that keeps ``target_cost`` reachable (AMC's action wall):
        the groups before it keep ``kept``, the groups after it are assumed pruned to their minimum."""
        trial = np.array(kept, dtype=np.int64)
        trial[group + 1 :] = self.min_keep[group + 1 :]
        allowed = self._allowed[group]
        lo, hi = 0, len(allowed) - 1
        trial[group] = allowed[hi]
        if self.cost(trial) <= target_cost:
            return allowed[hi]
        while lo < hi:  # cost is monotone in the group's count: binary search the largest feasible one
            mid = (lo + hi + 1) // 2
            trial[group] = allowed[mid]
            if self.cost(trial) <= target_cost:
                lo = mid
            else:
                hi = mid - 1
        return allowed[lo]

    # -- cost -------------------------------------------------------------------------------------
    @property
    def cost_unit(self) -> str:
        return "MACs" if self.config.latency == "macs" else "ms"

    def cost(self, kept: Sequence[int] | np.ndarray) -> float:
        """Predicted cost of keeping ``kept[i]`` channels in group ``i``: ms (latency modes) or MACs.

        The one cost model: the action wall, the budget features, baselines and the terminal latency
        in ``table`` mode all use it.
        """
        if self.table is None:
            return float(macs_for_kept(self.graph, kept))
        return self.predicted_latency_ms(kept)

    def predicted_latency_ms(self, kept: Sequence[int] | np.ndarray) -> float:
        """Latency (ms) the table predicts for ``kept``, clamped at 2% of the base latency."""
        if self.table is None:
            raise ValueError("latency='macs' builds no latency table; use cost(kept) (MACs)")
        return max(self._floor_ms, float(self.table.predict(kept)))

    def cost_fraction(self, kept: Sequence[int] | np.ndarray) -> float:
        """``cost(kept) / base_cost``."""
        return self.cost(kept) / self.base_cost

    def group_cost_share(self) -> list[float]:
        """Per group, the cost of the layers it touches / the base cost (table latency, or MACs)."""
        if self.table is not None:
            return [float(s) for s in self.table.group_share()]
        macs = np.array([g.macs for g in self.groups], dtype=np.float64)
        return list(macs / max(1.0, float(self.base_cost)))

    # -- evaluation -------------------------------------------------------------------------------
    def plan(self, kept: Sequence[int] | np.ndarray, seed: int | None = None,
             meta: dict[str, Any] | None = None) -> PruningPlan:
        """The plan keeping the ``kept[i]`` highest-scored channels of group ``i``."""
        base_meta = {"scenario_id": self.scenario.id, "model": self.scenario.model_name,
                     "dataset": self.scenario.data.name, "importance": self.config.importance}
        return self.graph.plan_from_kept(kept, self.scores, seed=seed, meta={**base_meta, **(meta or {})})

    def prune(self, plan: PruningPlan) -> nn.Module:
        """A pruned copy of the base model (the base is never modified)."""
        return apply_plan(self.scenario.model, plan, self.scenario.example_inputs)

    def evaluate(self, kept: Sequence[int] | np.ndarray, target_fraction: float = 1.0, seed: int | None = None,
                 meta: dict[str, Any] | None = None) -> Evaluation:
        """Prune, recover (BatchNorm statistics, ``finetune_steps``), and measure one plan.

        ``target_fraction`` only fills the metrics' ``target_latency_ms`` (rewards with a budget use it).
        Latency is the table's prediction (``table``), the measured wall clock (``measured``) or, in
        ``macs`` mode, millions of MACs.
        """
        cfg, sc = self.config, self.scenario
        kept = np.asarray(kept, dtype=np.int64)
        timing: dict[str, float] = {}
        t = time.perf_counter()
        plan = self.plan(kept, seed=seed, meta=meta)
        pruned = self.prune(plan)
        timing["surgery"] = time.perf_counter() - t
        t = time.perf_counter()
        with pinned_threads(self.eval_threads):
            self._recover(pruned, finetune=True)
            timing["recovery"] = time.perf_counter() - t
            t = time.perf_counter()
            acc = evaluate(pruned, self.val_data, device=self.device, batch_size=64)
        timing["evaluation"] = time.perf_counter() - t
        t = time.perf_counter()
        pruned.cpu().to(memory_format=torch.contiguous_format)  # latency and users see the usual layout
        macs, params = count_macs_params(pruned, sc.example_inputs)
        if cfg.latency == "measured":
            latency = self.measurer.measure(pruned)
        elif cfg.latency == "macs":
            latency = macs / 1e6
        else:
            latency = self.predicted_latency_ms(kept)
        timing["latency"] = time.perf_counter() - t
        metrics = EpisodeMetrics(
            accuracy=acc, base_accuracy=self.base_accuracy, latency_ms=latency,
            base_latency_ms=self.base_latency_ms, target_latency_ms=float(target_fraction) * self.base_latency_ms,
            macs=macs, base_macs=self.base_macs, params=params, base_params=self.base_params,
        )
        return Evaluation(metrics=metrics, plan=plan, model=pruned, timing=timing)

    def accuracy(self, kept: Sequence[int] | np.ndarray, finetune: bool = False) -> float:
        """Validation accuracy of the plan keeping ``kept`` after BatchNorm recalibration, and after the
        ``finetune_steps`` recovery steps too when ``finetune``; no latency, no metrics (e.g. for
        :mod:`pruning_env.sensitivity`, which prices one group at a time)."""
        return self.plan_accuracy(self.plan(np.asarray(kept, dtype=np.int64)), finetune=finetune)

    def plan_accuracy(self, plan: PruningPlan, finetune: bool = False) -> float:
        """:meth:`accuracy` of a given plan (its own channels, e.g. one chosen by another criterion)."""
        pruned = self.prune(plan)
        with pinned_threads(self.eval_threads):
            self._recover(pruned, finetune=finetune)
            return evaluate(pruned, self.val_data, device=self.device, batch_size=64)

    def _recover(self, pruned: nn.Module, finetune: bool) -> None:
        """Move ``pruned`` to the evaluation device and layout, recalibrate BatchNorm, run the recovery
        steps when ``finetune``, recalibrate again; leaves it in eval mode."""
        cfg = self.config
        pruned.to(self.device)
        if self._nhwc:
            pruned.to(memory_format=torch.channels_last)  # evaluate/recalibrate_bn feed it NHWC batches
        if cfg.bn_batches > 0:
            recalibrate_bn(pruned, self._cal_batches, device=self.device)
        if finetune and cfg.finetune_steps > 0:
            # as many passes as the steps need (digits' train split is 10 batches)
            if cfg.finetune_kd_weight > 0:
                distill_finetune(pruned, self.scenario.data.train, teacher=self.scenario.model,
                                 epochs=cfg.finetune_steps, max_steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                                 kd_weight=cfg.finetune_kd_weight, device=self.device, progress=False, seed=0,
                                 amp=False, channels_last=False)
            else:
                train(pruned, self.scenario.data.train, epochs=cfg.finetune_steps, max_steps=cfg.finetune_steps,
                      lr=cfg.finetune_lr, device=self.device, progress=False, seed=0)
            if cfg.bn_batches > 0:
                recalibrate_bn(pruned, self._cal_batches, device=self.device)
        pruned.eval()

    def base_model(self) -> nn.Module:
        """A fresh copy of the base model."""
        return copy.deepcopy(self.scenario.model)

    # -- records ----------------------------------------------------------------------------------
    def behaviour(self) -> dict[str, Any]:
        """This back end's :func:`behaviour_record`."""
        return behaviour_record(self.config.importance, self.config.latency)

    def describe(self) -> dict[str, Any]:
        """Settings, base measurements and the behaviour record (for run folders)."""
        return {
            **self.behaviour(), "config": asdict(self.config), "scenario": self.scenario.describe(),
            "n_groups": self.n_groups, "base_accuracy": self.base_accuracy,
            "base_latency_ms": self.base_latency_ms, "base_macs": self.base_macs, "base_params": self.base_params,
            "cost_unit": self.cost_unit, "build_seconds": self.build_seconds,
        }
