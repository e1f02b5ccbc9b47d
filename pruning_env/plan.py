"""Pruning plans: which channels of each group to keep, as plain JSON.

A :class:`PruningPlan` carries the signature of the graph it was made for
(:attr:`~pruning_env.engine.ModelGraph.signature`); :func:`~pruning_env.engine.apply_plan` re-applies
it to a fresh copy of the base model, so the same plan always yields the same pruned model.
:meth:`~pruning_env.engine.ModelGraph.check_plan` raises :class:`PlanMismatchError` when a plan
does not fit a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import atomic_write_json

__all__ = ["PruningPlan", "PlanMismatchError", "PLAN_FORMAT_VERSION"]

PLAN_FORMAT_VERSION = 1


class PlanMismatchError(ValueError):
    """A plan does not fit the model it is applied to."""


@dataclass
class PruningPlan:
    """Channels to keep per group; JSON-serialisable and replayable on a fresh base model.

    Attributes:
        keep: group name -> sorted indices of the channels kept.
        channels: group name -> channels at full width (for validation).
        graph_signature: :attr:`~pruning_env.engine.ModelGraph.signature` of the model the plan is for.
        seed: seed of the episode that produced the plan, if any.
        meta: free-form provenance (scenario id, importance, agent, reward...).
    """

    keep: dict[str, list[int]]
    channels: dict[str, int]
    graph_signature: str = ""
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        """Fraction of channels pruned per group."""
        return {n: 1.0 - len(k) / self.channels[n] for n, k in self.keep.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "dataawareprune.plan", "version": PLAN_FORMAT_VERSION,
            "graph_signature": self.graph_signature, "seed": self.seed, "meta": self.meta,
            "channels": self.channels, "keep": {k: [int(i) for i in v] for k, v in self.keep.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(d, Mapping) or d.get("format") != "dataawareprune.plan":
            raise ValueError("not a DataAwarePrune plan: expected a JSON object with format 'dataawareprune.plan'")
        def is_int(i: Any) -> bool:
            return isinstance(i, int) and not isinstance(i, bool)

        def ints(v: Any) -> list[int]:
            if isinstance(v, (str, bytes)) or not all(is_int(i) for i in v):
                raise TypeError(f"channel indices must be a list of integers, got {v!r:.60}")
            return sorted(v)

        def count(v: Any) -> int:
            if not is_int(v):
                raise TypeError(f"channel counts must be integers, got {v!r:.60}")
            return v

        try:
            keep = {str(k): ints(v) for k, v in d["keep"].items()}
            channels = {str(k): count(v) for k, v in d["channels"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"malformed plan: {exc!r}; 'keep' and 'channels' must map group names to lists/ints"
            ) from exc
        if set(keep) != set(channels):
            raise ValueError("malformed plan: 'keep' and 'channels' name different groups")
        return cls(keep=keep, channels=channels, graph_signature=str(d.get("graph_signature", "")),
                   seed=d.get("seed"), meta=dict(d.get("meta") or {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan is not valid JSON ({exc}); the file may be truncated or corrupt") from exc
        return cls.from_dict(d)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"plan file {path} does not exist")
        return cls.from_json(path.read_text())
