"""Measured-latency columns of a benchmark row: target speedup, table error, target misses, measured reward.

A search prices its plans with the environment's cost model (the latency lookup table by default), and
the action wall keeps every plan within the latency budget *as predicted*. After the search,
:func:`benchmarks.run.run_one` times the best plan against the base model on this machine
(:func:`agents.finetune.finetune_run`: alternating runs with the environment's measurer settings).
This module turns the two into the columns the leaderboard ranks on:

===================  =============================================================================
``target_speedup``   ``1 / target_latency`` (the default target 0.5 asks for 2x)
``speedup_error``    ``speedup_table / speedup_measured - 1``: positive when the cost model promised
                     more speedup than the machine delivered
``misses_target``    ``speedup_measured < (1 - MISS_TOLERANCE) * target_speedup`` (None: unknown)
``reward_measured``  the run's search reward of its best plan, recomputed with the measured latency
                     (same reward object: ``make_reward(<name>)``); NaN with ``reward_note`` when the
                     reward is not a registered name or an input is missing
===================  =============================================================================

Every column is a function of other columns of the same row (:func:`run_facts` collects those from a
run folder's ``config.json`` and ``final.json``), so a report computes them for rows written before
they existed: whatever a row lacks gives NaN (None for ``misses_target``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pruning_env.measure import MISS_TOLERANCE
from pruning_env.rewards import REWARDS, EpisodeMetrics, make_reward

__all__ = ["MISS_TOLERANCE", "MEASURED_COLUMNS", "reward_name", "run_facts", "measured_columns", "with_measured"]

# MISS_TOLERANCE (10%): when a measured speedup counts as short of its target; why 10%: pruning_env.measure.

MEASURED_COLUMNS = ("target_speedup", "speedup_error", "misses_target", "reward_measured", "reward_note")

# Keys of Reward.describe() that are not constructor arguments.
_NOT_PARAMS = ("name", "low", "high", "deterministic", "platform_dependent")


def _num(value: Any) -> float:
    """``value`` as a float; NaN for None, NaN, strings and anything else that is not a number."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _json_normal(data: Any) -> Any:
    """``data`` as it reads back from a JSON file (tuples become lists, infinities stay floats)."""
    return json.loads(json.dumps(data, default=str))


def reward_name(env_kwargs: Mapping[str, Any], described: Mapping[str, Any] | None) -> tuple[str | None, str]:
    """The registered name whose ``make_reward(name)`` is the run's reward, or None and the reason.

    Args:
        env_kwargs: the run's ``options.env_kwargs`` (``config.json``). A ``reward`` there that is not a
            string was a Reward object or a callable; JSON keeps only its ``repr``.
        described: the environment's ``reward_fn.describe()`` (``config.json``: ``env.reward``), or None
            for run folders that predate it. When present it must equal ``make_reward(name).describe()``,
            so that a reward built with other parameters, or a callable that happens to carry a
            registered name, is not recomputed with the defaults.
    """
    spec = env_kwargs.get("reward")
    if spec is None and described is None:
        return None, "the run folder records no reward"
    name = spec if spec is not None else described.get("name")
    if not isinstance(name, str) or name not in REWARDS:
        return None, f"reward {name!r} is not a registered name ({', '.join(REWARDS)}): not recomputed"
    if described is not None:
        mine = _json_normal(make_reward(name).describe())
        if _json_normal(dict(described)) != mine:
            params = {k: v for k, v in described.items() if k not in _NOT_PARAMS}
            return None, f"reward {name!r} was built with {params}, not make_reward({name!r})'s defaults"
    return name, ""


def run_facts(config: Mapping[str, Any], final: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs of :func:`measured_columns` from a run folder's ``config.json`` and ``final.json``."""
    env = config.get("env", {})
    name, note = reward_name(config.get("options", {}).get("env_kwargs", {}), env.get("reward"))
    pruned, base = final.get("pruned", {}), final.get("base", {})
    return {"target_latency": _num(env.get("target_fraction")), "latency_mode": env.get("latency_mode"),
            "reward": name, "reward_note": note, "macs": pruned.get("macs"), "params": pruned.get("params"),
            "base_macs": base.get("macs"), "base_params": base.get("params")}


def _reward_measured(row: Mapping[str, Any]) -> tuple[float, str]:
    name = row.get("reward")
    if not isinstance(name, str) or name not in REWARDS:
        note = row.get("reward_note")
        if not (isinstance(note, str) and note):
            note = "the row records no reward name (written before measured rewards)"
        return math.nan, note
    need = ("val_accuracy", "base_val_accuracy", "base_latency_ms", "speedup_measured", "target_latency",
            "macs", "base_macs", "params", "base_params")
    values = {k: _num(row.get(k)) for k in need}
    missing = [k for k, v in values.items() if math.isnan(v)]
    if missing or values["speedup_measured"] <= 0:
        return math.nan, f"missing {', '.join(missing) or 'a positive speedup_measured'}"
    base_ms = values["base_latency_ms"]  # ms, measured; every registered reward uses only latency ratios
    metrics = EpisodeMetrics(
        accuracy=values["val_accuracy"], base_accuracy=values["base_val_accuracy"],
        latency_ms=base_ms / values["speedup_measured"], base_latency_ms=base_ms,
        target_latency_ms=values["target_latency"] * base_ms, macs=int(values["macs"]),
        base_macs=int(values["base_macs"]), params=int(values["params"]), base_params=int(values["base_params"]),
    )
    return float(make_reward(name)(metrics)), ""


def measured_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`MEASURED_COLUMNS` of one row (a ``done/*.json`` dict or a DataFrame row)."""
    target = _num(row.get("target_latency"))
    target_speedup = 1.0 / target if target > 0 else math.nan
    table, measured = _num(row.get("speedup_table")), _num(row.get("speedup_measured"))
    # In ``macs`` mode the search's "speedup" is a cost ratio of another unit, not a latency prediction.
    error = table / measured - 1.0 if measured > 0 and row.get("latency_mode") != "macs" else math.nan
    misses = None if math.isnan(measured) or math.isnan(target_speedup) else bool(
        measured < (1.0 - MISS_TOLERANCE) * target_speedup)
    reward, note = _reward_measured(row)
    return {"target_speedup": target_speedup, "speedup_error": error, "misses_target": misses,
            "reward_measured": reward, "reward_note": note}


def with_measured(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with :data:`MEASURED_COLUMNS`: values a row already has are kept, missing ones computed."""
    out = df.copy()
    if out.empty:
        for col in MEASURED_COLUMNS:
            out[col] = pd.Series(dtype=object)
        return out
    computed = pd.DataFrame([measured_columns(r) for r in out.to_dict("records")], index=out.index)
    for col in MEASURED_COLUMNS:
        if col not in out:
            out[col] = computed[col]
        else:
            keep = out[col].notna() & (out[col] != "") if col == "reward_note" else out[col].notna()
            out[col] = out[col].astype(object).where(keep, computed[col])
    for col in ("target_speedup", "speedup_error", "reward_measured"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out
