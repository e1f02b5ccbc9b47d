"""Re-score plans that were fine-tuned with variants of the search's proxy: which proxy ranks them best?

The search scores a plan by its validation accuracy after surgery, BatchNorm recalibration and
``finetune_steps`` recovery steps. Given job folders of ``agents.compress`` or ``benchmarks.pareto`` (each
with the ``plan.json`` it fine-tuned and the ``final.json`` with its test accuracy), this script scores
every distinct plan under each proxy variant (environment arguments: ``finetune_steps``, ``finetune_lr``,
``finetune_kd_weight``, ``val_samples``, ...) and reports each variant's rank correlation with the test
accuracy after the fine-tune (the mean over jobs that fine-tuned the same plan):

    python -m benchmarks.rescore --model resnet56 --dataset cifar10 --adapt-steps 400 \\
        --jobs 'results/pareto/jobs/2x-*' \\
        --variants '[{"finetune_steps": 20}, {"finetune_steps": 20, "finetune_kd_weight": 0.9}]'

Writes ``<out>/rescore.csv`` (one row per plan and variant) and ``<out>/rescore.md``.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import pandas as pd

__all__ = ["parse_args", "load_jobs", "main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rescore", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--adapt-steps", type=int, default=0)
    p.add_argument("--jobs", nargs="+", required=True, help="job folders or glob patterns (plan.json + final.json)")
    p.add_argument("--variants", type=json.loads, default=[{"finetune_steps": 0}, {"finetune_steps": 20}],
                   help="JSON list of dicts of environment arguments, one proxy per dict")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON dict of arguments set in every variant")
    p.add_argument("--out", default="results/rescore")
    return p.parse_args(argv)


def load_jobs(patterns: list[str]) -> list[dict]:
    """One entry per distinct plan: its plan file, the jobs that fine-tuned it and their test accuracies."""
    plans: dict[str, dict] = {}
    folders = sorted({f for pat in patterns for f in (glob.glob(pat) or [pat])})
    for folder in folders:
        plan, final = Path(folder, "plan.json"), Path(folder, "final.json")
        if not (plan.exists() and final.exists()):
            raise FileNotFoundError(f"{folder} has no plan.json and final.json: pass finished job folders of "
                                    "agents.compress or benchmarks.pareto (results/pareto/jobs/*)")
        key = json.dumps(json.loads(plan.read_text())["keep"], sort_keys=True)
        f = json.loads(final.read_text())
        entry = plans.setdefault(key, {"plan": str(plan), "jobs": [], "tests": [], "speedups": []})
        entry["jobs"].append(str(folder))  # the path: job names repeat across runs
        entry["tests"].append(float(f["test_accuracy"]))
        entry["speedups"].append(float(f["speedup_measured"]))
    if len(plans) < 3:
        raise ValueError(f"{len(plans)} distinct plans in {len(folders)} job folders: "
                         "a rank correlation needs 3 or more")
    return list(plans.values())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from pruning_env.env import make_backend
    from pruning_env.plan import PruningPlan

    a = parse_args(argv)
    plans = load_jobs(a.jobs)
    rows = []
    for i, variant in enumerate(a.variants):
        kwargs = {**a.env_kwargs, **variant}
        backend = make_backend(model=a.model, dataset=a.dataset, checkpoint=a.checkpoint, adapt_steps=a.adapt_steps,
                               **kwargs)
        for p in plans:
            rows.append({"variant": i, "variant_kwargs": json.dumps(variant, sort_keys=True),
                         "plan": p["jobs"][0], "jobs": len(p["jobs"]),
                         "test_accuracy": sum(p["tests"]) / len(p["tests"]),
                         "speedup_measured": sum(p["speedups"]) / len(p["speedups"]),
                         "proxy_accuracy": backend.plan_accuracy(PruningPlan.load(p["plan"]), finetune=True)})
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "rescore.csv", index=False)
    lines = [f"# Proxy variants re-scored on {len(plans)} fine-tuned plans: {a.model} / {a.dataset}\n",
             "| variant (environment arguments) | mean proxy accuracy | Spearman | Kendall |", "|---|---|---|---|"]
    for (_, kw), g in df.groupby(["variant", "variant_kwargs"], sort=True):
        lines.append(f"| `{kw}` | {100 * g['proxy_accuracy'].mean():.2f}% | "
                     f"{g['proxy_accuracy'].corr(g['test_accuracy'], method='spearman'):.3f} | "
                     f"{g['proxy_accuracy'].corr(g['test_accuracy'], method='kendall'):.3f} |")
    text = "\n".join(lines) + "\n"
    (out / "rescore.md").write_text(text)
    print(text)
    return df


if __name__ == "__main__":
    main()
