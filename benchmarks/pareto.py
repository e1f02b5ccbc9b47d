"""Pareto benchmark: accuracy against *measured* speedup, a searched plan against what users do instead.

For every target speedup, method and seed, one :func:`agents.compress.compress` job (search or baseline
plan -> the same fine-tune -> measured latency on this machine, base and pruned timed alternately).
Methods: agents (``ppo``, ``amc``, ...; searched at ``target_latency = 1 / speedup``) and the
alternatives (``uniform``, ``global-magnitude``, ``global-lamp``: Torch-Pruning's global pruning, their
ratio matched to the target on measured latency). Every job gets the same fine-tune budget and the
same base; the base's test accuracy is reported next to every row.

    python -m benchmarks.pareto --model resnet56 --dataset cifar10 --adapt-steps 400 --speedups 2 3 \\
        --methods ppo uniform global-magnitude global-lamp --seeds 0 1 2 --episodes 200 --epochs 1

Writes ``<out>/jobs/<job>/`` (compress folders; a rerun resumes), ``results.csv`` (one row per job),
``pareto.md`` (mean ± standard error per method and target; the gap to the best baseline with its
standard error) and ``pareto.png`` (test accuracy against measured speedup).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from agents.compress import BASELINES, CompressOptions, compress  # noqa: E402

__all__ = ["parse_args", "run_jobs", "summarise", "write_outputs", "main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pareto", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small_resnet")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--adapt-steps", type=int, default=0)
    p.add_argument("--speedups", type=float, nargs="+", default=[2.0])
    p.add_argument("--methods", nargs="+", default=["ppo", "uniform", "global-magnitude", "global-lamp"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=100, help="search episodes of the agents")
    p.add_argument("--recovery-steps", type=int, default=CompressOptions.recovery_steps,
                   help="SGD steps each search episode fine-tunes a plan before scoring it (0: BN recalibration)")
    p.add_argument("--no-fit-measured", dest="fit_measured", action="store_false",
                   help="keep the searched plans as searched (default: fitted to the target on measured latency)")
    p.add_argument("--start-from", default=None,
                   help="cem only: start the search from this baseline's plan (e.g. global-magnitude) or a plan JSON")
    p.add_argument("--start-std", type=float, default=CompressOptions.start_std,
                   help="with --start-from: the search's initial spread around the plan, in action units")
    p.add_argument("--rerank", type=int, default=0,
                   help="re-score each search's N best plans (and its start plan) with --rerank-steps recovery "
                        "steps and keep the best (agents.compress --rerank)")
    p.add_argument("--rerank-steps", type=int, default=CompressOptions.rerank_steps)
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs of every job")
    p.add_argument("--max-steps", type=int, default=None, help="cap on fine-tune steps of every job")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--kd-weight", type=float, default=0.0)
    p.add_argument("--latency-rounds", type=int, default=5)
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON dict of DataAwarePrune-v0 arguments")
    p.add_argument("--out", default="results/pareto")
    p.add_argument("--stop-after", choices=["plan", "finetune"], default=None,
                   help="stop every job after this stage (agents.compress --stop-after): fit the plans with nothing "
                        "else running, fine-tune two jobs side by side, then rerun without it to time them quietly")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def run_jobs(a: argparse.Namespace) -> pd.DataFrame:
    """One compress job per (speedup, method, seed); finished jobs are read back, not rerun.

    A baseline is matched to the target once (its first seed's job) and that plan is fine-tuned with
    every seed: matching on measured latency is noisy, and rows of one method must share one latency.
    An agent searches once per seed (the search's variance is the method's).
    """
    rows: list[dict[str, Any]] = []
    for speedup in a.speedups:
        for method in a.methods:
            first = None
            start = a.start_from if method == "cem" else None
            label = method if start is None else f"{method}-from-{Path(start).stem}"
            rerank = a.rerank if method not in BASELINES else 0
            if rerank:
                label += f"-rerank{rerank}"
            for seed in a.seeds:
                opts = CompressOptions(
                    model=a.model, dataset=a.dataset, checkpoint=a.checkpoint, adapt_steps=a.adapt_steps,
                    speedup=speedup, method=method, episodes=a.episodes, recovery_steps=a.recovery_steps, seed=seed,
                    fit_measured=a.fit_measured, start_from=start, start_std=a.start_std, rerank=rerank,
                    rerank_steps=a.rerank_steps,
                    epochs=a.epochs, max_steps=a.max_steps, lr=a.lr, kd_weight=a.kd_weight, env_kwargs=a.env_kwargs,
                    out=str(Path(a.out) / "jobs"), name=f"{speedup:g}x-{label}-s{seed}",
                    latency_rounds=a.latency_rounds, onnx=False, progress=a.progress,
                    plan=first if method in BASELINES else None, stop_after=a.stop_after)
                f = compress(opts)
                first = first or str(Path(a.out) / "jobs" / f["job"] / "plan.json")
                if "stopped_after" in f:
                    continue
                rows.append({
                    "target_speedup": speedup, "method": label, "seed": seed,
                    "kind": "baseline" if method in BASELINES else "agent",
                    "base_test_accuracy": f["base_test_accuracy"], "test_accuracy": f["test_accuracy"],
                    "test_accuracy_before_finetune": f["test_accuracy_before_finetune"],
                    "accuracy_change": f["accuracy_change"], "speedup_measured": f["speedup_measured"],
                    "speedup_predicted": f["speedup_predicted"], "macs_ratio": f["macs_ratio"],
                    "fit_scale": f["plan_source"].get("scale"),
                    "finetune_steps": f.get("steps"), "job": f["job"],
                })
    return pd.DataFrame(rows)


def _se(x: pd.Series) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error per (target, method) of accuracy change and measured speedup."""
    g = df.groupby(["target_speedup", "method"], sort=False)
    out = g.agg(n=("seed", "size"), base_test_accuracy=("base_test_accuracy", "mean"),
                test_accuracy=("test_accuracy", "mean"), accuracy_change=("accuracy_change", "mean"),
                speedup_measured=("speedup_measured", "mean")).reset_index()
    out["accuracy_change_se"] = g["accuracy_change"].apply(_se).values
    out["speedup_measured_se"] = g["speedup_measured"].apply(_se).values
    return out


def _verdict(summary: pd.DataFrame, df: pd.DataFrame) -> list[str]:
    lines = []
    for target, s in summary.groupby("target_speedup"):
        agents, baselines = s[~s["method"].isin(BASELINES)], s[s["method"].isin(BASELINES)]
        if agents.empty or baselines.empty:
            continue
        best_a = agents.loc[agents["accuracy_change"].idxmax()]
        best_b = baselines.loc[baselines["accuracy_change"].idxmax()]
        gap = best_a["accuracy_change"] - best_b["accuracy_change"]
        se = math.hypot(best_a["accuracy_change_se"], best_b["accuracy_change_se"])
        where = "outside" if abs(gap) > 2 * se else "inside"
        lines.append(f"- {target:g}x: best agent {best_a['method']} {100 * gap:+.2f} points against the best "
                     f"baseline {best_b['method']} (2 standard errors: {200 * se:.2f} points, {where} the noise); "
                     f"measured speedups {best_a['speedup_measured']:.2f}x vs {best_b['speedup_measured']:.2f}x.")
    return lines


def write_outputs(df: pd.DataFrame, out: Path) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    s = summarise(df)
    lines = ["# Pareto: test accuracy against measured speedup", "",
             "| target | method | n | base test acc | test acc | change (points) | measured speedup |",
             "|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        lines.append(f"| {r['target_speedup']:g}x | {r['method']} | {r['n']} | {100 * r['base_test_accuracy']:.2f}% "
                     f"| {100 * r['test_accuracy']:.2f}% | {100 * r['accuracy_change']:+.2f} ± "
                     f"{100 * r['accuracy_change_se']:.2f} | {r['speedup_measured']:.2f}x ± "
                     f"{r['speedup_measured_se']:.2f} |")
    lines += ["", "Mean ± standard error over seeds. Fine-tune budget per job: see results.csv "
              "(`finetune_steps`)."] + [""] + _verdict(s, df)
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, d in df.groupby("method", sort=False):
        ax.scatter(d["speedup_measured"], 100 * d["test_accuracy"], label=method,
                   marker="o" if method not in BASELINES else "s", alpha=0.8)
    ax.axhline(100 * df["base_test_accuracy"].iloc[0], color="grey", ls="--", lw=1, label="base")
    ax.set_xlabel("measured speedup (this machine)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    return s


def main(argv: list[str] | None = None) -> pd.DataFrame:
    a = parse_args(argv)
    if a.progress:  # every phase says what it does and whether it came from the cache
        logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    df = run_jobs(a)
    if a.stop_after:
        print(f"every job stopped after its {a.stop_after}; rerun without --stop-after to go on")
        return df
    s = write_outputs(df, Path(a.out))
    print((Path(a.out) / "pareto.md").read_text())
    return s


if __name__ == "__main__":
    main()
