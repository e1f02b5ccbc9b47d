"""The report of one compression job (:mod:`agents.compress`): Markdown and plots from ``final.json``'s data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pruning_env.measure import BUSY_CORES  # noqa: E402

__all__ = ["write_report"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def plot_widths(final: dict[str, Any], path: Path) -> Path:
    """Kept channels per group: this plan against the uniform plan of the same predicted cost."""
    n = len(final["kept"])
    idx = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n), 3.2))
    ax.bar(idx, final["channels"], color="#dddddd", label="base")
    ax.bar(idx - 0.2, final["kept"], width=0.4, color="#2a6fdb", label=final["options"]["method"])
    ax.bar(idx + 0.2, final["uniform_kept"], width=0.4, color="#e07b39", label="uniform, same predicted cost")
    ax.set_xlabel("group (forward order)")
    ax.set_ylabel("channels kept")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_search(episodes_csv: Path, path: Path) -> Path | None:
    """Reward and validation accuracy per search episode, with the running best."""
    if not episodes_csv.exists():
        return None
    df = pd.read_csv(episodes_csv)
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(df["episode"], df["reward"], ".", alpha=0.4, label="reward")
    ax.plot(df["episode"], df["reward"].cummax(), "-", label="best so far")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    if "accuracy" in df:
        ax2 = ax.twinx()
        ax2.plot(df["episode"], df["accuracy"], "g.", alpha=0.3, markersize=3)
        ax2.set_ylabel("val accuracy (green)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(job: Path, final: dict[str, Any]) -> Path:
    """``report.md`` and ``plots/*.png`` in the job folder; returns the report's path."""
    plots = job / "plots"
    plots.mkdir(exist_ok=True)
    widths = plot_widths(final, plots / "widths.png")
    curve = plot_search(job / "search" / "episodes.csv", plots / "search.png")
    o = final["options"]
    lines = [
        f"# {final['job']}", "",
        f"{o['model']} on {o['dataset']}, {o['method']}"
        + (f" ({final['plan_source'].get('episodes')} episodes)" if o["method"] not in
           ("uniform", "global-magnitude", "global-lamp") else " (matched on measured latency)")
        + f", target {o['speedup']:g}x measured"
        + (f" (the searched plan's prune ratios scaled by {final['plan_source']['scale']:.3f} to meet it when "
           "timed)" if final["plan_source"].get("scale") is not None else "")
        + f"; fine-tune {o['epochs']:g} epochs, lr {o['lr']}, distillation weight {o['kd_weight']}.", "",
        "| | base | pruned |", "|---|---|---|",
        f"| test accuracy | {_pct(final['base_test_accuracy'])} | {_pct(final['test_accuracy'])} "
        f"({100 * final['accuracy_change']:+.2f} points; {_pct(final['test_accuracy_before_finetune'])} before "
        "fine-tuning) |",
        f"| latency, torch (ms) | {final['base_latency_ms']:.2f} | {final['latency_ms']:.2f} |",
        f"| speedup measured, torch | | {_x(final['speedup_measured'])}"
        + (f" (**short of the {o['speedup']:g}x target**: time it again on a quiet machine)"
           if final.get("misses_target") else "") + " |",
        f"| speedup measured, onnxruntime | | {_x(final['speedup_onnxruntime'])} |",
        f"| speedup predicted (latency table) | | {_x(final['speedup_predicted'])} |",
        f"| MACs | | {final['macs'] / 1e6:.1f} M ({_x(final['macs_ratio'])} fewer) |",
        f"| parameters | | {final['params'] / 1e3:.1f} K ({_x(final['params_ratio'])} fewer) |", "",
        "Latency: this machine, batch and threads as recorded in `measure.json`; base and pruned timed "
        "alternately, median of the rounds' medians."
        + (f" **Timed while other processes kept {final['timed_other_load_cores']:.1f} cores busy**: under load "
           "plans do not slow down alike; time it again with nothing else running "
           "(`python -m benchmarks.speedups <job folder>`)." if (final.get("timed_other_load_cores") or 0) > BUSY_CORES
           else ""), "",
        f"![widths](plots/{widths.name})", "",
    ]
    if curve is not None:
        lines += [f"![search](plots/{curve.name})", ""]
    lines += ["Files: `pruned_model.pt` (load with `pruning_env.load_pruned`), `pruned_model.onnx`, `plan.json`, "
              "`final.json`.", ""]
    path = job / "report.md"
    path.write_text("\n".join(lines))
    return path
