"""Data-feature ablation: does the policy search better when it sees the data features?

Runs the same searches (agent, seed, scenario, episodes) with the environment's full observation and
with an ablation (``observation_features="no_data"`` by default: layer description and budget only),
then compares the best reward and the best plan's validation accuracy, mean ± standard error over
seeds, and says whether the difference is outside two standard errors. Other observations to compare:
``--ablations no_data all relative sensitivity`` (the first is the reference).

With ``--finetune-steps N`` each run's best plan is then fine-tuned N SGD steps (lr 0.01, cosine) and
measured by :func:`agents.finetune.finetune_run`: test accuracy, and speedup timed against the base on
this machine. Run that part on a quiet machine (latency is timed); the searches resume from their run
folders, so the same command with ``--finetune-steps`` added after the searches only fine-tunes.

    python -m benchmarks.ablation --model resnet20 --dataset cifar10 --adapt-steps 400 \\
        --agents ppo amc --seeds 0 1 2 --episodes 100

Writes ``<out>/runs/<run>/`` (resumable run folders of ``agents.train``), ``ablation.csv`` (one row per
run) and ``ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from agents.finetune import FinetuneOptions, finetune_run
from agents.train import TrainOptions, run_search
from pruning_env.plan import PruningPlan

__all__ = ["parse_args", "run_all", "summarise", "main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small_resnet")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--adapt-steps", type=int, default=0)
    p.add_argument("--target", type=float, default=0.5, help="target_latency (fraction of the base)")
    p.add_argument("--agents", nargs="+", default=["ppo", "amc"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--ablations", nargs="+", default=["all", "no_data"],
                   help="observation_features values to compare (the first is the reference)")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON dict of further environment arguments")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the searches")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="fine-tune each run's best plan this many SGD steps and measure its test accuracy and "
                        "speedup (0: skip)")
    p.add_argument("--out", default="results/ablation")
    return p.parse_args(argv)


def run_all(a: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for features in a.ablations:
        for agent in a.agents:
            for seed in a.seeds:
                kw = {"model": a.model, "dataset": a.dataset, "target_latency": a.target,
                      "observation_features": features, **a.env_kwargs}
                if a.adapt_steps:
                    kw["adapt_steps"] = a.adapt_steps
                name = f"{a.model}-{features}-{agent}-s{seed}"
                summary = run_search(TrainOptions(algo=agent, episodes=a.episodes, seed=seed, env_kwargs=kw,
                                                  run_dir=str(Path(a.out) / "runs"), name=name, progress=False,
                                                  tensorboard=False, torch_threads=a.threads))
                ep = pd.read_csv(Path(a.out) / "runs" / name / "episodes.csv")
                best = ep.loc[ep["reward"].idxmax()]
                row = {"features": features, "agent": agent, "seed": seed, "episodes": len(ep),
                       "best_reward": float(summary["best_reward"]), "best_val_accuracy": float(best["accuracy"]),
                       "best_speedup_table": float(best["speedup"]),
                       "mean_reward_last_20": float(ep["reward"].tail(20).mean())}
                rows.append(row)
    if a.finetune_steps > 0:  # after every search, so that no search runs while latency is timed
        for row in rows:
            row.update(_finetuned(Path(a.out) / "runs" / f"{a.model}-{row['features']}-{row['agent']}-s{row['seed']}",
                                  a.finetune_steps))
    return pd.DataFrame(rows)


def _finetuned(run: Path, steps: int) -> dict[str, float]:
    """Test accuracy of the run's best plan after ``steps`` fine-tune steps, and its measured speedup (the
    run's ``final.json``, reused when it was made with the same steps for the same best plan's widths)."""
    path = run / "final.json"
    final = json.loads(path.read_text()) if path.exists() else None
    widths = PruningPlan.load(run / "best_plan.json").ratios()
    if final is None or final["options"].get("max_steps") != steps or final.get("plan_ratios") != widths:
        final = finetune_run(FinetuneOptions(run=str(run), epochs=steps, max_steps=steps, onnx=False, progress=False))
    return {"finetune_steps": steps, "base_test_accuracy": final["base"]["test_accuracy"],
            "test_accuracy": final["pruned"]["test_accuracy"], "speedup_measured": final["speedup_measured"]}


def _se(x: pd.Series) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def summarise(df: pd.DataFrame, reference: str) -> list[str]:
    tuned = "test_accuracy" in df
    lines = ["| agent | observation | n | best reward | best plan's val accuracy | last-20 mean reward |"
             + (" test accuracy after fine-tune | measured speedup |" if tuned else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if tuned else "")]
    verdict = []
    for agent, d in df.groupby("agent", sort=False):
        stats = {}
        for features, e in d.groupby("features", sort=False):
            stats[features] = e
            lines.append(f"| {agent} | {features} | {len(e)} | {e['best_reward'].mean():.4f} ± "
                         f"{_se(e['best_reward']):.4f} "
                         f"| {100 * e['best_val_accuracy'].mean():.2f}% ± {100 * _se(e['best_val_accuracy']):.2f} "
                         f"| {e['mean_reward_last_20'].mean():.4f} ± {_se(e['mean_reward_last_20']):.4f} |"
                         + (f" {100 * e['test_accuracy'].mean():.2f}% ± {100 * _se(e['test_accuracy']):.2f} "
                            f"| {e['speedup_measured'].mean():.2f}x ± {_se(e['speedup_measured']):.2f} |"
                            if tuned else ""))
        ref = stats.get(reference)
        for features, e in stats.items():
            if features == reference or ref is None:
                continue
            gap = ref["best_reward"].mean() - e["best_reward"].mean()
            se = math.hypot(_se(ref["best_reward"]), _se(e["best_reward"]))
            where = "outside" if abs(gap) > 2 * se else "inside"
            verdict.append(f"- {agent}: `{reference}` minus `{features}` best reward {gap:+.4f} "
                           f"(2 standard errors {2 * se:.4f}: {where} the noise).")
            if tuned:
                gap = ref["test_accuracy"].mean() - e["test_accuracy"].mean()
                se = math.hypot(_se(ref["test_accuracy"]), _se(e["test_accuracy"]))
                where = "outside" if abs(gap) > 2 * se else "inside"
                verdict.append(f"- {agent}: `{reference}` minus `{features}` test accuracy after fine-tune "
                               f"{100 * gap:+.2f} points (2 standard errors {200 * se:.2f}: {where} the noise).")
    return lines + [""] + verdict


def main(argv: list[str] | None = None) -> pd.DataFrame:
    a = parse_args(argv)
    df = run_all(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "ablation.csv", index=False)
    text = "\n".join([f"# Data-feature ablation: {a.model} / {a.dataset}, target {a.target}, {a.episodes} episodes",
                      ""] + summarise(df, a.ablations[0])) + "\n"
    (out / "ablation.md").write_text(text)
    print(text)
    return df


if __name__ == "__main__":
    main()
