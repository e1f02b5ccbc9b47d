"""Re-measure the best plans of a benchmark on this machine: ``python -m benchmarks.speedups BENCH_DIR``.

A search can run where it is cheap (a GPU machine evaluates accuracy fast) while the latency that
matters is the one of the machine the pruned model will run on. This command rebuilds every run's
base model (same scenario: model, dataset, base weights and adaptation), applies the run's
``best_plan.json``, and times base and pruned models alternately (``--rounds`` times, median of the
medians) with the chosen backend, batch size and threads. It writes ``speedups_<backend>_bs<N>.csv``
in the benchmark folder (one row per run, with the measurer's settings and hardware) and prints mean
and spread per scenario and agent.

    python -m benchmarks.speedups results/cifar10 --data-root ../shared/data
    python -m benchmarks.speedups results/cifar10 --backend onnxruntime --batch-size 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["remeasure", "summary", "main"]


def _scenario_key(kwargs: dict[str, Any]) -> str:
    keep = ("model", "dataset", "checkpoint", "adapt_steps")
    return json.dumps({k: kwargs.get(k) for k in keep}, sort_keys=True, default=str)


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
    runs = sorted(p for p in (bench / "runs").glob("*") if (p / "best_plan.json").exists())
    if not runs:
        raise FileNotFoundError(f"no runs with a best_plan.json under {bench / 'runs'}: is {bench} a benchmark "
                                "folder of python -m benchmarks.run?")
    scenarios: dict[str, Any] = {}
    rows = []
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        kwargs = dict(config["options"]["env_kwargs"])
        if data_root is not None:
            kwargs["data_root"] = data_root
        key = _scenario_key(kwargs)
        if key not in scenarios:
            sc = load_scenario(kwargs.get("model", "small_resnet"), kwargs.get("dataset", "digits"),
                               checkpoint=kwargs.get("checkpoint"), data_root=kwargs.get("data_root"),
                               adapt_steps=int(kwargs.get("adapt_steps", 0)))
            meas = LatencyMeasurer(backend=backend, batch_size=batch_size, threads=threads, repeats=repeats,
                                   input_shape=tuple(sc.example_inputs.shape[1:]))
            scenarios[key] = (sc, meas)
        sc, meas = scenarios[key]
        plan = PruningPlan.load(run / "best_plan.json")
        pruned = apply_plan(sc.model, plan, sc.example_inputs).eval()
        timed = measure_speedup(meas, sc.model, pruned, rounds=rounds)
        b, p = timed["base_latency_ms"], timed["pruned_latency_ms"]
        parts = run.name.split("__")
        rows.append({"run": run.name, "scenario": parts[0] if len(parts) == 3 else "",
                     "agent": config["options"]["algo"], "seed": config["options"]["seed"],
                     "base_ms": b, "pruned_ms": p, "speedup": b / p,
                     "backend": backend, "batch_size": batch_size, "threads": threads,
                     "hardware": meas.describe()["hardware"], "torch": torch.__version__})
        print(f"{run.name}: {b:.2f} ms -> {p:.2f} ms, speedup {b / p:.2f}x", flush=True)
    df = pd.DataFrame(rows)
    out = bench / f"speedups_{backend}_bs{batch_size}.csv"
    df.to_csv(out, index=False)
    print(f"wrote {out}")
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of the measured speedup per scenario and agent."""
    g = df.groupby(["scenario", "agent"])["speedup"]
    return pd.DataFrame({"runs": g.size(), "speedup mean": g.mean(), "speedup std": g.std()}).reset_index()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", help="benchmark folder (with runs/)")
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
