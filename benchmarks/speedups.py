"""Re-measure the best plans of a benchmark on this machine: ``python -m benchmarks.speedups BENCH_DIR``.

A search can run where it is cheap (a GPU machine evaluates accuracy fast) while the latency that
matters is the one of the machine the pruned model will run on. This command rebuilds every run's
base model (same scenario: model, dataset, base weights and adaptation), applies the run's
``best_plan.json``, and times base and pruned models alternately (``--rounds`` times, median of the
medians) with the chosen backend, batch size and threads. It writes ``speedups_<backend>_bs<N>.csv``
in the benchmark folder (one row per run, with the measurer's settings and hardware) and prints mean
and spread per scenario and agent.

It takes the folder of ``benchmarks.pareto`` (or a folder of ``agents.compress`` jobs) as well: each job's
``plan.json``, the plan it fine-tuned, timed again, next to the speedup the job recorded
(``recorded_speedup``). Run it with nothing else on the machine: timed beside another job, plans do not
slow down alike (docs/results.md, "Timed on a quiet machine").

    python -m benchmarks.speedups results/cifar10 --data-root ../shared/data
    python -m benchmarks.speedups results/cifar10 --backend onnxruntime --batch-size 1
    python -m benchmarks.speedups results/pareto
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["remeasure", "summary", "main"]


def _scenario_key(kwargs: dict[str, Any]) -> str:
    keep = ("model", "dataset", "checkpoint", "adapt_steps")
    return json.dumps({k: kwargs.get(k) for k in keep}, sort_keys=True, default=str)


def _runs(bench: Path) -> list[dict[str, Any]]:
    """The plans to time: a benchmark's runs (``runs/*/best_plan.json``) or compress jobs (``plan.json``
    beside ``compress.json``, in ``bench``, ``bench/jobs`` or ``bench`` itself being one job)."""
    found = []
    for run in sorted(p for p in (bench / "runs").glob("*") if (p / "best_plan.json").exists()):
        config = json.loads((run / "config.json").read_text())
        parts = run.name.split("__")
        found.append({"run": run.name, "scenario": parts[0] if len(parts) == 3 else "", "kwargs":
                      dict(config["options"]["env_kwargs"]), "plan": run / "best_plan.json",
                      "agent": config["options"]["algo"], "seed": config["options"]["seed"]})
    jobs = [bench] if (bench / "compress.json").exists() else sorted(
        p.parent for p in [*bench.glob("*/compress.json"), *bench.glob("jobs/*/compress.json")])
    for job in jobs:
        if not (job / "plan.json").exists():
            continue
        o = json.loads((job / "compress.json").read_text())["options"]
        final = json.loads((job / "final.json").read_text()) if (job / "final.json").exists() else {}
        kwargs = {k: o.get(k) for k in ("model", "dataset", "checkpoint", "data_root", "adapt_steps")}
        found.append({"run": job.name, "scenario": f"{o['model']}-{o['dataset']}", "kwargs": kwargs,
                      "plan": job / "plan.json", "agent": re.sub(r"-s\d+$", "", job.name), "seed": o["seed"],
                      "recorded_speedup": final.get("speedup_measured")})
    return found


def remeasure(bench: str | Path, data_root: str | None = None, backend: str = "torch", batch_size: int = 64,
              threads: int = 1, rounds: int = 5, repeats: int = 20) -> pd.DataFrame:
    """Latency of every run's best plan against its base model, measured here; returns one row per run."""
    import torch

    from agents.finetune import measure_speedup
    from pruning_env.engine import apply_plan
    from pruning_env.measure import LatencyMeasurer
    from pruning_env.plan import PruningPlan
    from pruning_env.scenario import load_scenario

    bench = Path(bench)
    runs = _runs(bench)
    if not runs:
        raise FileNotFoundError(f"no plans under {bench}: pass a benchmark folder of python -m benchmarks.run "
                                "(runs/*/best_plan.json) or of python -m benchmarks.pareto / agents.compress "
                                "(jobs with plan.json)")
    scenarios: dict[str, Any] = {}
    rows = []
    for run in runs:
        kwargs = dict(run["kwargs"])
        if data_root is not None:
            kwargs["data_root"] = data_root
        key = _scenario_key(kwargs)
        if key not in scenarios:
            sc = load_scenario(kwargs.get("model") or "small_resnet", kwargs.get("dataset") or "digits",
                               checkpoint=kwargs.get("checkpoint"), data_root=kwargs.get("data_root"),
                               adapt_steps=int(kwargs.get("adapt_steps") or 0))
            meas = LatencyMeasurer(backend=backend, batch_size=batch_size, threads=threads, repeats=repeats,
                                   input_shape=tuple(sc.example_inputs.shape[1:]))
            scenarios[key] = (sc, meas)
        sc, meas = scenarios[key]
        plan = PruningPlan.load(run["plan"])
        pruned = apply_plan(sc.model, plan, sc.example_inputs).eval()
        timed = measure_speedup(meas, sc.model, pruned, rounds=rounds)
        b, p = timed["base_latency_ms"], timed["pruned_latency_ms"]
        row = {k: run[k] for k in ("run", "scenario", "agent", "seed")}
        if "recorded_speedup" in run:
            row["recorded_speedup"] = run["recorded_speedup"]
        rows.append({**row, "base_ms": b, "pruned_ms": p, "speedup": b / p,
                     "other_load_cores": timed["other_load_cores"], "backend": backend, "batch_size": batch_size,
                     "threads": threads,
                     "hardware": meas.describe()["hardware"], "torch": torch.__version__})
        print(f"{run['run']}: {b:.2f} ms -> {p:.2f} ms, speedup {b / p:.2f}x", flush=True)
    df = pd.DataFrame(rows)
    out = bench / f"speedups_{backend}_bs{batch_size}.csv"
    df.to_csv(out, index=False)
    print(f"wrote {out}")
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of the measured speedup per scenario and agent."""
    g = df.groupby(["scenario", "agent"])
    out = pd.DataFrame({"runs": g.size(), "speedup mean": g["speedup"].mean(), "speedup std": g["speedup"].std()})
    if "recorded_speedup" in df:
        out["recorded mean"] = g["recorded_speedup"].mean()
    return out.reset_index()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", help="benchmark folder (with runs/), or a benchmarks.pareto / agents.compress folder")
    p.add_argument("--data-root", default=None, help="where the datasets and pretrained weights are on this machine")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args(argv)
    df = remeasure(a.bench, a.data_root, a.backend, a.batch_size, a.threads, a.rounds, a.repeats)
    print(summary(df).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return df


if __name__ == "__main__":
    main()
