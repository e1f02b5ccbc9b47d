"""After a fine-tune, keep its BatchNorm statistics or recalibrate them on clean batches? Measured.

Pruned networks get their BatchNorm statistics re-estimated on a few clean training batches after
surgery (:func:`pruning_env.train.recalibrate_bn`). After a fine-tune the question comes back: the
running statistics of the fine-tune's augmented batches, or clean ones again? For ``--plans`` distinct
random plans and uniform at one target (:func:`benchmarks.proxy.collect_plans`), each
fine-tuned ``--steps`` SGD steps as :mod:`agents.finetune` does (lr 0.01 cosine, batch 128, seed 0),
this script evaluates validation and test accuracy with the running statistics, then after
recalibrating on 4 batches. :data:`pruning_env.train.SHORT_FINETUNE_STEPS` is set from it.

    python -m benchmarks.bn_after_finetune --model resnet20 --dataset cifar10 --adapt-steps 400

Writes ``<out>/bn_after_finetune.csv`` (one row per plan and budget) and prints the mean change per budget.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from .proxy import add_scenario_args, collect_plans, make_env

__all__ = ["parse_args", "main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bn_after_finetune", description=__doc__.split("\n\n")[0])
    add_scenario_args(p)
    p.add_argument("--plans", type=int, default=5,
                   help="distinct random plans (uniform is added unless it repeats one)")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 100, 351], help="fine-tune budgets (SGD steps)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--out", default="results/bn_after_finetune")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from pruning_env.train import evaluate, recalibrate_bn, train

    a = parse_args(argv)
    env = make_env(a)
    backend = env.unwrapped.backend
    data = backend.scenario.data
    plans = collect_plans(env, a.plans, seed=0)  # distinct plans
    rows = []
    for plan in plans:
        for steps in a.steps:
            model = backend.prune(backend.plan(plan["kept"]))
            recalibrate_bn(model, data.train, num_batches=4, device="cpu")  # after surgery, as agents.finetune
            train(model, data.train, epochs=steps, lr=a.lr, batch_size=128, device="cpu", progress=False,
                  max_steps=steps, seed=0)
            row = {"plan": plan["plan"], "kept": json.dumps(plan["kept"]), "steps": steps,
                   "val_running": evaluate(model, backend.val_data, device="cpu"),
                   "test_running": evaluate(model, data.test, device="cpu")}
            recalibrate_bn(model, data.train, num_batches=4, device="cpu")
            row.update(val_recalibrated=evaluate(model, backend.val_data, device="cpu"),
                       test_recalibrated=evaluate(model, data.test, device="cpu"))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "kept"}), flush=True)
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bn_after_finetune.csv", index=False)
    df["test_change"] = 100 * (df["test_recalibrated"] - df["test_running"])
    print(f"\n{a.model} / {a.dataset}, {len(plans)} distinct plans: recalibrated minus running statistics, "
          "test accuracy (points)")
    for steps, d in df.groupby("steps"):
        se = d["test_change"].std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        print(f"  {steps:4d} steps: {d['test_change'].mean():+.2f} ± {se:.2f}  "
              f"(min {d['test_change'].min():+.2f}, max {d['test_change'].max():+.2f})")
    return df


if __name__ == "__main__":
    main()
