"""Benchmark reports: results table, Markdown leaderboard and plots from a benchmark folder.

    python -m benchmarks.report results/quick     # rebuild the report from saved runs

Everything is derived from the files the runs saved (``done/*.json``, each run's
``episodes.csv`` and ``best_plan.json``), so a report can be rebuilt at any time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .profiles import REFERENCE_ROWS, Profile  # noqa: E402

__all__ = ["leaderboard", "write_report"]

_METRICS = [("best_reward", "best reward"), ("val_accuracy", "val acc"), ("test_accuracy", "test acc"),
            ("speedup_measured", "speedup (measured)"), ("speedup_table", "speedup (table)"),
            ("macs_ratio", "MACs ratio"), ("search_seconds", "search s")]


def _fmt(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.4f} ± {0.0 if pd.isna(std) else std:.4f}" if abs(mean) < 10 else f"{mean:.1f} ± {std:.1f}"


def leaderboard(df: pd.DataFrame) -> str:
    """Markdown: mean ± std over seeds per scenario and agent, plus quoted reference rows."""
    if df.empty:
        return "_no finished runs_\n"
    lines = []
    cols = [(c, label) for c, label in _METRICS if c in df.columns]
    for scenario, sdf in df.groupby("scenario", sort=False):
        lines.append(f"### {scenario}\n")
        header = "| agent | seeds | " + " | ".join(label for _, label in cols) + " |"
        lines += [header, "|" + "---|" * (len(cols) + 2)]
        g = sdf.groupby("agent")
        order = g["best_reward"].mean().sort_values(ascending=False).index
        for agent in order:
            a = g.get_group(agent)
            cells = [_fmt(a[c].astype(float).mean(), a[c].astype(float).std()) for c, _ in cols]
            lines.append(f"| {agent} | {len(a)} | " + " | ".join(cells) + " |")
        if "base_test_accuracy" in sdf:
            lines.append(f"\nbase model: val acc {sdf['base_val_accuracy'].astype(float).mean():.4f}, "
                         f"test acc {sdf['base_test_accuracy'].astype(float).mean():.4f}, "
                         f"fine-tuning epochs {int(sdf['finetune_epochs'].max())}\n")
        refs = [r for r in REFERENCE_ROWS if r["scenario"] == scenario]
        if refs:
            lines.append("Published results (quoted, not measured here; other data, hardware and protocol):\n")
            lines += [f"- {r['agent']}: {r['speedup']}, {r['accuracy_change']} accuracy" for r in refs]
            lines.append("")
    shown = set(df["scenario"])
    others = [r for r in REFERENCE_ROWS if r["scenario"] not in shown]
    if others:  # the published landmarks, for context, whatever this benchmark ran
        lines.append("### Published reference results (quoted, not measured here)\n")
        lines.append("Other data, hardware and protocol; the `paper` and `cifar10` profiles run these settings.\n")
        lines += [f"- {r['scenario']}: {r['agent']}: {r['speedup']}, {r['accuracy_change']} accuracy" for r in others]
        lines.append("")
    return "\n".join(lines) + "\n"


def _learning_curves(out: Path, df: pd.DataFrame) -> None:
    for scenario, sdf in df.groupby("scenario", sort=False):
        fig, ax = plt.subplots(figsize=(7, 4))
        for agent, adf in sdf.groupby("agent"):
            curves = []
            for _, row in adf.iterrows():
                csv = out / "runs" / f"{scenario}__{agent}__{row['seed']}".replace(">", "") / "episodes.csv"
                if csv.exists():
                    r = pd.read_csv(csv)["reward"].to_numpy()
                    curves.append(np.maximum.accumulate(r))
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = np.stack([c[:n] for c in curves])
            x = np.arange(1, n + 1)
            ax.plot(x, arr.mean(0), label=agent)
            ax.fill_between(x, arr.min(0), arr.max(0), alpha=0.2)
        ax.set(xlabel="episode", ylabel="best reward so far",
               title=f"{scenario}: learning curves (band: min-max over seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "plots" / f"learning_{scenario.replace('>', '')}.png", dpi=110)
        plt.close(fig)


def _accuracy_vs_speedup(out: Path, df: pd.DataFrame) -> None:
    if "speedup_measured" not in df or "test_accuracy" not in df:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for (scenario, agent), a in df.groupby(["scenario", "agent"]):
        ax.scatter(a["speedup_measured"], a["test_accuracy"], label=f"{scenario} / {agent}", s=25)
    ax.set(xlabel="measured speedup (x)", ylabel="test accuracy", title="accuracy against speedup (one point per seed)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "plots" / "accuracy_vs_speedup.png", dpi=110)
    plt.close(fig)


def _layer_ratios(out: Path, df: pd.DataFrame) -> None:
    if "ratios" not in df:
        return
    for scenario, sdf in df.groupby("scenario", sort=False):
        fig, ax = plt.subplots(figsize=(8, 4))
        for agent, a in sdf.groupby("agent"):
            best = a.loc[a["best_reward"].astype(float).idxmax()]
            ratios = list(json.loads(best["ratios"]).values())
            ax.plot(range(len(ratios)), ratios, marker="o", ms=3, label=f"{agent} (seed {best['seed']})")
        ax.set(xlabel="group (forward order)", ylabel="prune ratio", ylim=(0, 1),
               title=f"{scenario}: per-group prune ratios of each agent's best plan")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "plots" / f"ratios_{scenario.replace('>', '')}.png", dpi=110)
        plt.close(fig)


def write_report(df: pd.DataFrame, out: Path, profile: Profile | None = None) -> None:
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    head = f"# Benchmark `{profile.name}`\n\n{profile.description}\n\n" if profile else "# Benchmark\n\n"
    head += ("Mean ± std over seeds. Accuracy on the validation split during search; test accuracy and measured "
             "speedup of the best plan afterwards (same process, base and pruned timed alternately).\n\n")
    (out / "leaderboard.md").write_text(head + leaderboard(df))
    if not df.empty and "best_reward" in df:
        _learning_curves(out, df)
        _accuracy_vs_speedup(out, df)
        _layer_ratios(out, df)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    a = p.parse_args(argv)
    rows = [json.loads(f.read_text()) for f in sorted((a.folder / "done").glob("*.json"))]
    write_report(pd.DataFrame(rows), a.folder)
    print((a.folder / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
