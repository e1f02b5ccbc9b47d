"""Transfer columns of a benchmark row, and the leaderboard's transfer table.

A transfer row runs the policy a search learned on scenario A, deterministically and without learning,
on scenario B (:mod:`agents.transfer`). It is a row like any other (best reward, accuracy, measured
speedup of its best plan) plus these columns, which compare it with what B's own search found:

========================  ==========================================================================
``source_scenario``       the scenario A the policy was learned on
``source_episodes``       episodes of A's search (B's own search is read at as many)
``transfer_episodes``     deterministic episodes played on B (no learning)
``own_reward``            B's own search (same agent, same seed): best reward in its first
                          ``source_episodes`` episodes (equal episodes)
``own_reward_10pct``      the same search's best in its first 10% of those episodes (rounded up): what
                          B's own search has after the episodes a transfer may cost
``uniform_reward``        B's uniform baseline (best of ``transfer_episodes``, as the transfer)
``plan_transfer_reward``  A's best plan's ratios on B (NaN across models: ``plan_transfer_note``)
``transfer_gain_share``   ``(transfer - uniform) / (own - uniform)``: the share of the gain over
                          uniform of B's own search that the transfer reaches (1: all of it)
``own_10pct_gain_share``  the same for B's own search at 10% of the episodes
``plan_gain_share``       the same for the plan transfer
========================  ==========================================================================

A share is NaN when B's own search did not beat uniform (nothing to share). Issue 18's goal for a
policy transfer: a ``transfer_gain_share`` of at least 0.9 at no more than 10% of the episodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["TRANSFER_COLUMNS", "TENTH", "transfer_columns", "transfer_table"]

TENTH = 0.1  # "at 10% of the episodes": B's own search after this fraction of its episodes (rounded up)

TRANSFER_COLUMNS = ("source_scenario", "source_episodes", "transfer_episodes", "own_reward", "own_reward_10pct",
                    "uniform_reward", "plan_transfer_reward", "plan_transfer_note", "transfer_gain_share",
                    "own_10pct_gain_share", "plan_gain_share")


def _share(value: float, uniform: float, own: float) -> float:
    gain = own - uniform
    if any(math.isnan(v) for v in (value, uniform, own)) or gain <= 1e-12:
        return math.nan
    return (value - uniform) / gain


def transfer_columns(transfer: Mapping[str, Any], source_scenario: str, own_episodes: Path | None) -> dict[str, Any]:
    """The transfer columns from :func:`agents.transfer.run_transfer`'s result and B's own ``episodes.csv``.

    ``own_episodes``: the ``episodes.csv`` of B's own search with the same agent and seed (None or a
    missing file: the columns that need it are NaN).
    """
    n = int(transfer["source"]["episodes"])
    own = own10 = math.nan
    if own_episodes is not None and Path(own_episodes).exists():
        rewards = pd.read_csv(own_episodes).sort_values("episode")["reward"].astype(float).to_numpy()
        if len(rewards):
            own = float(rewards[:n].max())
            own10 = float(rewards[: max(1, math.ceil(TENTH * n))].max())
    policy, uniform, plan = transfer["policy"], transfer["uniform"], transfer["plan"]
    value, base = float(policy["reward"]), float(uniform["reward"])
    plan_value = float(plan["reward"]) if "reward" in plan else math.nan
    return {"source_scenario": source_scenario, "source_episodes": n, "transfer_episodes": int(policy["episodes"]),
            "own_reward": own, "own_reward_10pct": own10, "uniform_reward": base, "plan_transfer_reward": plan_value,
            "plan_transfer_note": plan.get("skipped", ""), "transfer_gain_share": _share(value, base, own),
            "own_10pct_gain_share": _share(own10, base, own), "plan_gain_share": _share(plan_value, base, own)}


_TABLE = [("best_reward", "policy transfer"), ("own_reward", "B's own search"),
          ("own_reward_10pct", "B's own, 10% of episodes"), ("uniform_reward", "uniform"),
          ("plan_transfer_reward", "plan transfer"), ("transfer_gain_share", "transfer share of gain"),
          ("own_10pct_gain_share", "own@10% share of gain"), ("plan_gain_share", "plan share of gain")]


def transfer_table(df: pd.DataFrame) -> str:
    """Markdown: per transfer scenario and agent, search rewards of the transfer, B's own search and uniform."""
    if df.empty or "source_scenario" not in df:
        return ""
    rows = df[df["source_scenario"].notna()]
    if rows.empty:
        return ""
    lines = ["### Transfer: a policy learned on A, run on B without learning\n",
             "Search rewards on B (predicted latency), mean ± std over seeds. B's own search: the same agent and "
             "seed searching B from scratch, at as many episodes as A's search and at 10% of them. Share of gain: "
             "(x - uniform) / (B's own - uniform); the goal is a transfer share >= 0.9 (issue 18).\n",
             "| transfer | agent | seeds | episodes (A / on B) | " + " | ".join(label for _, label in _TABLE) + " |",
             "|" + "---|" * (len(_TABLE) + 4)]
    for (scenario, agent), g in rows.groupby(["scenario", "agent"], sort=False):
        cells = []
        for col, _ in _TABLE:
            v = pd.to_numeric(g.get(col, pd.Series(dtype=float)), errors="coerce").dropna()
            cells.append("-" if v.empty else f"{v.mean():.4f} ± {v.std() if len(v) > 1 else 0.0:.4f}")
        eps = f"{int(g['source_episodes'].max())} / {int(g['transfer_episodes'].max())}"
        lines.append(f"| {scenario} | {agent} | {len(g)} | {eps} | " + " | ".join(cells) + " |")
    own, uniform = (pd.to_numeric(rows[c], errors="coerce") for c in ("own_reward", "uniform_reward"))
    if (own <= uniform).any():
        lines.append("\nA share is `-` where B's own search did not beat uniform: there is no gain to share.")
    notes = sorted({str(n) for n in rows.get("plan_transfer_note", pd.Series(dtype=object)).dropna() if n})
    if notes:
        lines.append(f"\nPlan transfer skipped where: {'; '.join(notes)}.")
    return "\n".join(lines) + "\n"
