"""Reward objects: what a finished pruning episode is worth.

Every reward is an object with a ``name``, ``bounds`` (``low``, ``high``), a ``deterministic``
flag and a ``platform_dependent`` flag (CompilerGym's convention), called with the
:class:`EpisodeMetrics` of the terminal step. Intermediate steps get ``step_reward`` (0 by
default). Users can pass any callable ``metrics -> float``; it is wrapped in
:class:`CallableReward`.

Registered names (:data:`REWARDS`):

=====================  ==================================================================
``latency_accuracy``   default: ``(acc - base_acc) / base_acc + w * log(base_lat / lat)``
``amc``                AMC's R_FLOPs (He et al., 2018): ``-error * log(MACs)``
``accuracy``           accuracy when the latency budget is met, else ``-1`` (AMC's R_err
                       under a hard constraint)
``soft``               MnasNet-style soft constraint: ``acc * (lat / target) ** w``
=====================  ==================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "EpisodeMetrics",
    "Reward",
    "LatencyAccuracyReward",
    "AMCReward",
    "AccuracyUnderBudgetReward",
    "SoftConstraintReward",
    "CallableReward",
    "REWARDS",
    "make_reward",
]


@dataclass(frozen=True)
class EpisodeMetrics:
    """Measurements of one pruned network (accuracies in [0, 1], latencies in ms)."""

    accuracy: float
    base_accuracy: float
    latency_ms: float
    base_latency_ms: float
    target_latency_ms: float
    macs: int
    base_macs: int
    params: int
    base_params: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reward:
    """Base class. Subclasses set the class attributes and implement ``__call__``."""

    name: str = "reward"
    low: float = -math.inf
    high: float = math.inf
    deterministic: bool = True  # given deterministic metrics, is the reward deterministic?
    platform_dependent: bool = True  # does it depend on the hardware (through latency)?

    def __call__(self, m: EpisodeMetrics) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step_reward(self, step: int, applied_ratio: float) -> float:
        """Reward of a non-terminal step (0 unless a subclass shapes it)."""
        return 0.0

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high)

    def describe(self) -> dict[str, Any]:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"name": self.name, "low": self.low, "high": self.high, "deterministic": self.deterministic,
                "platform_dependent": self.platform_dependent, **params}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class LatencyAccuracyReward(Reward):
    """Relative accuracy change plus a bonus for every halving of latency.

    ``R = (acc - base_acc) / base_acc + latency_weight * log(base_lat / lat)``. The action wall
    already keeps every episode within the latency budget, so this reward mainly ranks plans by
    accuracy; ``latency_weight`` (default 0.1: a 2x speed-up is worth ~7% relative accuracy)
    rewards going beyond the budget when it costs little accuracy.
    """

    name = "latency_accuracy"

    def __init__(self, latency_weight: float = 0.1) -> None:
        self.latency_weight = float(latency_weight)
        self.low = -1.0
        self.high = 1.0 + self.latency_weight * math.log(1e3)

    def __call__(self, m: EpisodeMetrics) -> float:
        rel = (m.accuracy - m.base_accuracy) / max(m.base_accuracy, 1e-6)
        speed = math.log(max(m.base_latency_ms, 1e-9) / max(m.latency_ms, 1e-9))
        return float(max(self.low, min(self.high, rel + self.latency_weight * speed)))


class AMCReward(Reward):
    """AMC's ``R_FLOPs = -error * log(MACs)`` (He et al., ECCV 2018)."""

    name = "amc"
    platform_dependent = False

    def __init__(self) -> None:
        self.low, self.high = -math.log(1e13), 0.0

    def __call__(self, m: EpisodeMetrics) -> float:
        return float(-(1.0 - m.accuracy) * math.log(max(m.macs, 1)))


class AccuracyUnderBudgetReward(Reward):
    """Accuracy when ``latency <= target * (1 + tolerance)``, else ``-1``."""

    name = "accuracy"

    def __init__(self, tolerance: float = 0.02) -> None:
        self.tolerance = float(tolerance)
        self.low, self.high = -1.0, 1.0

    def __call__(self, m: EpisodeMetrics) -> float:
        if m.latency_ms <= m.target_latency_ms * (1.0 + self.tolerance):
            return float(m.accuracy)
        return -1.0


class SoftConstraintReward(Reward):
    """MnasNet-style ``acc * (lat / target) ** w`` (Tan et al., 2019), ``w = -0.07`` by default."""

    name = "soft"

    def __init__(self, weight: float = -0.07) -> None:
        self.weight = float(weight)
        self.low, self.high = 0.0, 2.0

    def __call__(self, m: EpisodeMetrics) -> float:
        ratio = max(m.latency_ms, 1e-9) / max(m.target_latency_ms, 1e-9)
        return float(min(self.high, m.accuracy * ratio**self.weight))


class CallableReward(Reward):
    """Wraps a user's ``fn(metrics: EpisodeMetrics) -> float``."""

    def __init__(self, fn: Callable[[EpisodeMetrics], float], name: str | None = None,
                 deterministic: bool = True) -> None:
        self._fn = fn
        self.name = name or getattr(fn, "__name__", "custom")
        self.deterministic = deterministic

    def __call__(self, m: EpisodeMetrics) -> float:
        value = float(self._fn(m))
        if not math.isfinite(value):
            raise ValueError(f"reward {self.name!r} returned a non-finite value ({value}) for {m}")
        return value


REWARDS: dict[str, Callable[..., Reward]] = {
    "latency_accuracy": LatencyAccuracyReward,
    "amc": AMCReward,
    "accuracy": AccuracyUnderBudgetReward,
    "soft": SoftConstraintReward,
}


def make_reward(spec: str | Reward | Callable[[EpisodeMetrics], float], **kwargs: Any) -> Reward:
    """A reward from a registered name, a :class:`Reward`, or a callable."""
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, str):
        if spec not in REWARDS:
            raise ValueError(f"unknown reward {spec!r}; valid names: {', '.join(REWARDS)}, or pass a Reward "
                             "object or a callable metrics -> float")
        return REWARDS[spec](**kwargs)
    if callable(spec):
        return CallableReward(spec)
    raise TypeError(f"reward must be a name, a Reward or a callable, got {type(spec).__name__}")
