"""Does the search's reward rank plans the way fine-tuning does? The proxy, measured.

The search scores a plan by its validation accuracy right after surgery and BatchNorm recalibration
(plus ``finetune_steps`` recovery steps, 0 by default). What a user keeps is the plan's accuracy after
fine-tuning. Over ``--plans`` plans of one scenario at the same target (distinct random episodes: every
plan meets the target through the action wall; plus uniform), this script measures both and reports the
rank correlation (Spearman and Kendall) between the proxy and the fine-tuned accuracy.

    python -m benchmarks.proxy --model resnet20 --dataset cifar10 --adapt-steps 400 --plans 20 --steps 100

Writes ``<out>/proxy.csv`` (one row per plan) and ``<out>/proxy.md``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd

__all__ = ["add_scenario_args", "make_env", "parse_args", "collect_plans", "measure", "main"]


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """The scenario and target arguments of the plan-measuring benchmarks (this one, bn_after_finetune)."""
    p.add_argument("--model", default="small_resnet")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--adapt-steps", type=int, default=0)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON dict of further environment arguments")


def make_env(a: argparse.Namespace) -> gym.Env:
    """``DataAwarePrune-v0`` for the arguments of :func:`add_scenario_args`."""
    import pruning_env  # noqa: F401  (registers the environments)

    kw = {"model": a.model, "dataset": a.dataset, "target_latency": a.target, **a.env_kwargs}
    if a.adapt_steps:
        kw["adapt_steps"] = a.adapt_steps
    return gym.make("DataAwarePrune-v0", **kw)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.split("\n\n")[0])
    add_scenario_args(p)
    p.add_argument("--plans", type=int, default=20, help="random plans (uniform is added)")
    p.add_argument("--steps", type=int, default=100, help="fine-tune steps per plan")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/proxy")
    return p.parse_args(argv)


def collect_plans(env: gym.Env, n: int, seed: int, max_tries: int | None = None) -> list[dict]:
    """``n`` distinct random plans and the uniform plan: kept widths and the search's proxy accuracy of each.

    Random episodes that repeat an earlier plan are dropped and replaced (with coarse widths and the
    action wall many episodes land on the same plan, and a repeat would count twice in the correlation);
    after ``max_tries`` episodes (default ``20 * n``) the plans found so far are returned, with a warning.
    """
    from agents.baselines import UniformAgent

    rng = np.random.default_rng(seed)
    rows, seen, tries = [], set(), 0
    while len(rows) < n and tries < (max_tries or 20 * n):
        env.reset(seed=seed + tries)
        tries += 1
        done = False
        while not done:
            _, reward, done, _, info = env.step(rng.uniform(-1, 1, size=(1,)).astype(np.float32))
        kept = tuple(map(int, env.unwrapped.kept))
        if kept in seen:
            continue
        seen.add(kept)
        rows.append({"plan": f"random-{len(rows)}", "kept": list(kept), "proxy_accuracy": info["accuracy"],
                     "reward": reward, "speedup_table": info["speedup"]})
    if len(rows) < n:
        warnings.warn(f"only {len(rows)} distinct plans in {tries} random episodes (asked for {n}): this scenario "
                      "allows few plans at its target", stacklevel=2)
    env.reset(seed=seed)
    for action in UniformAgent(env, seed=seed).actions:  # the smallest uniform ratio that meets the target
        _, reward, done, _, info = env.step(np.array([action], dtype=np.float32))
    kept = tuple(map(int, env.unwrapped.kept))
    if kept not in seen:
        rows.append({"plan": "uniform", "kept": list(kept), "proxy_accuracy": info["accuracy"], "reward": reward,
                     "speedup_table": info["speedup"]})
    return rows


def measure(backend, rows: list[dict], steps: int, lr: float, seed: int) -> pd.DataFrame:
    """Fine-tune every plan ``steps`` SGD steps (same seed and data order) and evaluate it on the same
    validation images as the proxy."""
    from pruning_env.distill import finetune
    from pruning_env.train import evaluate, recalibrate_after_finetune, recalibrate_bn

    sc = backend.scenario
    for row in rows:
        model = backend.prune(backend.plan(row["kept"])).to(backend.device)
        recalibrate_bn(model, sc.data.train, num_batches=2, device=backend.device)
        done = finetune(model, sc.data.train, epochs=max(1, -(-steps * 128 // len(sc.data.train))), max_steps=steps,
                        lr=lr, seed=seed, device=backend.device, progress=False)["steps"]
        recalibrate_after_finetune(model, sc.data.train, done, device=backend.device)  # as agents.finetune does
        row["finetuned_accuracy"] = evaluate(model, backend.val_data, device=backend.device)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    a = parse_args(argv)
    env = make_env(a)
    df = measure(env.unwrapped.backend, collect_plans(env, a.plans, a.seed), a.steps, a.lr, a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.drop(columns=["kept"]).assign(kept=df["kept"].map(json.dumps)).to_csv(out / "proxy.csv", index=False)
    spearman = df["proxy_accuracy"].corr(df["finetuned_accuracy"], method="spearman")
    kendall = df["proxy_accuracy"].corr(df["finetuned_accuracy"], method="kendall")
    text = (f"# Proxy against fine-tuned accuracy: {a.model} / {a.dataset}, target {a.target}\n\n"
            f"{len(df)} plans; fine-tune {a.steps} steps, lr {a.lr}, seed {a.seed}; accuracies on the same "
            f"{len(env.unwrapped.backend.val_data)} validation images.\n\n"
            f"| | proxy (the search's accuracy: BN recalibration + finetune_steps) | after fine-tune |\n|---|---|---|\n"
            f"| mean accuracy | {100 * df['proxy_accuracy'].mean():.2f}% | "
            f"{100 * df['finetuned_accuracy'].mean():.2f}% |\n"
            f"| spread (max - min) | {100 * np.ptp(df['proxy_accuracy']):.2f} | "
            f"{100 * np.ptp(df['finetuned_accuracy']):.2f} |\n\n"
            f"Rank correlation: Spearman {spearman:.3f}, Kendall {kendall:.3f}.\n")
    (out / "proxy.md").write_text(text)
    print(text)
    return df


if __name__ == "__main__":
    main()
