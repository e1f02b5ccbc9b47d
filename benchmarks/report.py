"""Benchmark reports: results table, Markdown leaderboard and plots from a benchmark folder.

    python -m benchmarks.report results/quick     # rebuild the report from saved runs

Everything is derived from the files the runs saved (``done/*.json``, each run's
``episodes.csv``, ``best_plan.json``, ``config.json`` and ``final.json``), so a report can be rebuilt
at any time. Agents are ranked within a scenario by their mean measured reward
(:mod:`benchmarks.measured`); rows written before that column existed are completed from their run
folders where possible.
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

from .measured import MISS_TOLERANCE, run_facts, with_measured  # noqa: E402
from .profiles import REFERENCE_ROWS, Profile  # noqa: E402
from .transfer import transfer_table  # noqa: E402

__all__ = ["leaderboard", "write_report", "backfill_run_facts"]

# (column, label, show the standard error). The standard error goes with what agents are compared on:
# the ranking reward and the measured speedup.
_METRICS = [("reward_measured", "reward (measured)", True), ("best_reward", "reward (search)", False),
            ("val_accuracy", "val acc", False), ("test_accuracy", "test acc", False),
            ("speedup_table", "speedup predicted", False), ("speedup_measured", "speedup measured", True),
            ("speedup_error", "error %", False), ("misses_target", "misses target (measured)", False),
            ("macs_ratio", "MACs ratio", False), ("search_seconds", "search s", False)]


def _fmt(mean: float, std: float, n: int = 1, se: bool = False) -> str:
    if pd.isna(mean):
        return "-"
    std = 0.0 if pd.isna(std) else std
    text = f"{mean:.4f} ± {std:.4f}" if abs(mean) < 10 else f"{mean:.1f} ± {std:.1f}"
    if se and n > 1:  # one seed has no spread to estimate
        text += f" (se {std / np.sqrt(n):.4f})" if abs(mean) < 10 else f" (se {std / np.sqrt(n):.1f})"
    return text


def _misses(a: pd.DataFrame) -> tuple[str, str]:
    """``"k/n"`` (seeds that missed the target when measured, of those with a known target), and which."""
    known = a[a["misses_target"].notna()]
    if known.empty:
        return "-", ""
    hit = known[known["misses_target"].astype(bool)]
    seeds = ", ".join(f"{r['seed']} ({float(r['speedup_measured']):.2f}x)" for _, r in hit.iterrows())
    return (f"⚠ {len(hit)}/{len(known)}" if len(hit) else f"0/{len(known)}"), seeds


def _cell(a: pd.DataFrame, col: str, se: bool) -> str:
    if col == "misses_target":
        return _misses(a)[0]
    v = pd.to_numeric(a[col], errors="coerce").dropna()
    if col == "speedup_error":  # percent, signed: + when the cost model promised more than was measured
        return "-" if v.empty else f"{100 * v.mean():+.1f} ± {100 * (v.std() if len(v) > 1 else 0.0):.1f}"
    return _fmt(v.mean(), v.std(), len(v), se)


def _order(sdf: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Agents ranked by mean measured reward, then those without one by mean search reward."""
    g = sdf.groupby("agent")
    measured = g["reward_measured"].mean().dropna().sort_values(ascending=False)
    rest = g["best_reward"].mean().drop(measured.index).sort_values(ascending=False)
    return list(measured.index), list(rest.index)


def _targets(sdf: pd.DataFrame) -> str:
    targets = sorted(pd.to_numeric(sdf["target_speedup"], errors="coerce").dropna().unique())
    if not targets:
        return "Target speedup unknown (rows from before targets were recorded): misses are not flagged.\n"
    shown = ", ".join(f"{t:.2f}x" for t in targets)
    limit = ", ".join(f"{(1 - MISS_TOLERANCE) * t:.2f}x" for t in targets)
    return (f"Target speedup {shown}; a plan misses it when its measured speedup is below {limit} "
            f"({MISS_TOLERANCE:.0%} short).\n")


def leaderboard(df: pd.DataFrame) -> str:
    """Markdown: per scenario, agents ranked by mean measured reward; mean ± std over seeds; quoted references.

    Rows without the measured columns (older ``done/*.json``) get what their other columns allow
    (:func:`benchmarks.measured.with_measured`); agents without a measured reward follow the ranked
    ones, ordered by search reward, and the text says so.
    """
    if df.empty:
        return "_no finished runs_\n"
    df = with_measured(df)
    lines = []
    cols = [(c, label, se) for c, label, se in _METRICS if c in df.columns]
    for scenario, sdf in df.groupby("scenario", sort=False):
        lines.append(f"### {scenario}\n")
        lines.append(_targets(sdf))
        ranked, unranked = _order(sdf)
        names = sorted({str(n) for n in sdf.get("reward", pd.Series(dtype=object)).dropna()})
        if ranked:
            lines.append("Ranked by mean `reward_measured`: the search reward of each seed's best plan recomputed with "
                         f"its measured latency instead of the predicted one (reward {', '.join(names) or '?'}). "
                         "± is the standard deviation over seeds, (se) the standard error std/√n: agents whose "
                         "means differ by less than about two standard errors are not told apart here.\n")
        if unranked:
            notes = sorted({str(n) for n in sdf[sdf["agent"].isin(unranked)]["reward_note"].dropna() if n})
            lead = "Then, without a measured reward" if ranked else "Not ranked on measured latency"
            lines.append(f"{lead}, ordered by mean search reward (predicted latency): {', '.join(unranked)}. "
                         f"Why: {'; '.join(notes) or 'no measured reward'}.\n")
        header = "| rank | agent | seeds | " + " | ".join(label for _, label, _ in cols) + " |"
        lines += [header, "|" + "---|" * (len(cols) + 3)]
        g = sdf.groupby("agent")
        flagged = []
        for i, agent in enumerate(ranked + unranked):
            a = g.get_group(agent)
            seeds = _misses(a)[1]
            if seeds:
                flagged.append(f"{agent} seed{'s' if ',' in seeds else ''} {seeds}")
            rank = str(i + 1) if agent in ranked else "-"
            cells = [_cell(a, c, se) for c, _, se in cols]
            lines.append(f"| {rank} | {agent} | {len(a)} | " + " | ".join(cells) + " |")
        if flagged:
            lines.append(f"\n⚠ Missed the target when measured (speedup): {'; '.join(flagged)}.")
        elif sdf["misses_target"].notna().any():
            lines.append("\nEvery plan met the target when measured.")
        if "base_test_accuracy" in sdf:
            lines.append(f"\nbase model: val acc {sdf['base_val_accuracy'].astype(float).mean():.4f}, "
                         f"test acc {sdf['base_test_accuracy'].astype(float).mean():.4f}, "
                         f"fine-tuning epochs {int(sdf['finetune_epochs'].max())}{_recovery_note(sdf)}\n")
        else:
            lines.append("")
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
        if not ax.lines:  # no run folder with episodes (e.g. a report from done/ files alone): no plot
            plt.close(fig)
            continue
        ax.set(xlabel="episode", ylabel="best search reward so far (predicted latency)",
               title=f"{scenario}: learning curves (band: min-max over seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "plots" / f"learning_{scenario.replace('>', '')}.png", dpi=110)
        plt.close(fig)


def _accuracy_vs_speedup(out: Path, df: pd.DataFrame) -> None:
    """Per scenario: val and test accuracy against measured speedup, one point per seed, target marked.

    Filled markers sit at the measured speedup, hollow ones at the predicted speedup of the same plan,
    joined by a thin line: its length is the cost model's error for that plan.
    """
    if "speedup_measured" not in df:
        return
    from matplotlib.lines import Line2D

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for scenario, sdf in df.groupby("scenario", sort=False):
        sdf = sdf[pd.to_numeric(sdf["speedup_measured"], errors="coerce").notna()]
        panels = [(c, b, label) for c, b, label in (("val_accuracy", "base_val_accuracy", "val accuracy (search)"),
                                                    ("test_accuracy", "base_test_accuracy", "test accuracy"))
                  if c in sdf and sdf[c].notna().any()]
        if sdf.empty or not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharex=True, squeeze=False)
        targets = sorted(pd.to_numeric(sdf["target_speedup"], errors="coerce").dropna().unique())
        for ax, (col, base_col, label) in zip(axes[0], panels):
            handles = []
            for i, (agent, a) in enumerate(sdf.groupby("agent")):
                c = colors[i % len(colors)]
                x, y = a["speedup_measured"].astype(float), a[col].astype(float)
                handles.append(ax.scatter(x, y, color=c, s=30, zorder=3, label=agent))
                if "speedup_table" in a and a["speedup_table"].notna().any():
                    xp = a["speedup_table"].astype(float)
                    ax.scatter(xp, y, facecolors="none", edgecolors=c, s=30, zorder=3)
                    for x0, x1, yy in zip(xp, x, y):
                        ax.plot([x0, x1], [yy, yy], color=c, lw=0.6, alpha=0.5)
            for t in targets:
                ax.axvline(t, color="k", ls="--", lw=1)
                ax.axvline((1 - MISS_TOLERANCE) * t, color="grey", ls=":", lw=1)
            if base_col in sdf and sdf[base_col].notna().any():
                ax.axhline(float(sdf[base_col].astype(float).mean()), color="grey", lw=0.8)
            ax.set(xlabel="measured speedup (x)", ylabel=label)
            handles += [Line2D([], [], marker="o", mfc="none", mec="k", ls="", label="predicted (hollow)"),
                        Line2D([], [], color="k", ls="--", lw=1, label="target speedup"),
                        Line2D([], [], color="grey", ls=":", lw=1, label=f"miss: {MISS_TOLERANCE:.0%} short"),
                        Line2D([], [], color="grey", lw=0.8, label="base model")]
        axes[0][0].legend(handles=handles, fontsize=7)
        fig.suptitle(f"{scenario}: accuracy against measured speedup (one point per seed)")
        fig.tight_layout()
        fig.savefig(out / "plots" / f"accuracy_vs_speedup_{scenario.replace('>', '')}.png", dpi=110)
        plt.close(fig)


def _layer_ratios(out: Path, df: pd.DataFrame) -> None:
    if "ratios" not in df:
        return
    for scenario, sdf in df.groupby("scenario", sort=False):
        fig, ax = plt.subplots(figsize=(8, 4))
        for agent, a in sdf.groupby("agent"):
            # The seed the leaderboard would pick: highest measured reward, else highest search reward.
            key = "reward_measured" if a["reward_measured"].notna().any() else "best_reward"
            best = a.loc[a[key].astype(float).idxmax()]
            ratios = list(json.loads(best["ratios"]).values())
            ax.plot(range(len(ratios)), ratios, marker="o", ms=3, label=f"{agent} (seed {best['seed']})")
        ax.set(xlabel="group (forward order)", ylabel="prune ratio", ylim=(0, 1),
               title=f"{scenario}: per-group prune ratios of each agent's best plan")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "plots" / f"ratios_{scenario.replace('>', '')}.png", dpi=110)
        plt.close(fig)


def backfill_run_facts(df: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Rows written before the run facts were recorded get them from their run folder, when it is there.

    Reads ``runs/<name>/config.json`` and ``final.json`` (:func:`benchmarks.measured.run_facts`) for rows
    without a ``reward`` or ``target_latency``; values a row has are kept, rows without a run folder are
    left as they are (the leaderboard shows what their columns allow).
    """
    facts = {}
    for i, row in df.iterrows():
        if pd.notna(row.get("target_latency")) and pd.notna(row.get("reward")):
            continue
        run = Path(out) / "runs" / f"{row['scenario']}__{row['agent']}__{row['seed']}".replace(">", "")
        if (run / "config.json").exists() and (run / "final.json").exists():
            facts[i] = run_facts(json.loads((run / "config.json").read_text()),
                                 json.loads((run / "final.json").read_text()))
    if not facts:
        return df
    df, found = df.copy(), pd.DataFrame.from_dict(facts, orient="index").reindex(df.index)
    for key in found:
        col = df[key].astype(object) if key in df else pd.Series(None, index=df.index, dtype=object)
        df[key] = col.where(col.notna() & (col != ""), found[key].astype(object))
    return df


def write_report(df: pd.DataFrame, out: Path, profile: Profile | None = None) -> None:
    """``results.csv`` (with the measured columns), ``leaderboard.md`` and ``plots/*.png`` in ``out``."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "plots" / "accuracy_vs_speedup.png").unlink(missing_ok=True)  # older reports' plot, now per scenario
    df = with_measured(backfill_run_facts(df, out))
    df.to_csv(out / "results.csv", index=False)
    head = f"# Benchmark `{profile.name}`\n\n{profile.description}\n\n" if profile else "# Benchmark\n\n"
    head += ("Agents are ranked on measured latency: after the search, each best plan and the base model are "
             "timed alternately on this machine (the environment's measurer settings), and the search reward is "
             "recomputed with that latency. Accuracy on the validation split during search; test accuracy "
             "afterwards. Speedup predicted: the environment's cost model during the search; error %: predicted / "
             "measured - 1. Mean ± std over seeds.\n\n")
    (out / "leaderboard.md").write_text(head + leaderboard(df) + transfer_table(df))
    if not df.empty and "best_reward" in df:
        _learning_curves(out, df)
        _accuracy_vs_speedup(out, df)
        _layer_ratios(out, df)


def _recovery_note(sdf: pd.DataFrame) -> str:
    """Says when test accuracies come after the search's own recovery steps instead of a fine-tune."""
    steps = pd.to_numeric(sdf.get("finetune_steps", pd.Series(dtype=float)), errors="coerce").dropna()
    if steps.empty or int(sdf["finetune_epochs"].max()) > 0:
        return ""
    return f" (test accuracy after the search's own {int(steps.max())} recovery steps)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    a = p.parse_args(argv)
    rows = [json.loads(f.read_text()) for f in sorted((a.folder / "done").glob("*.json"))]
    write_report(pd.DataFrame(rows), a.folder)
    print((a.folder / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()

