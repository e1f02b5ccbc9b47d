"""Does the environment's predicted speedup match the speedup measured on this machine?

For every model, backend and batch size: build (or load) the :class:`~pruning_env.latency.LatencyTable`
with the environment's settings (``round_to``, calibration), take random plans (per-group prune ratio
uniform in ``[0, max_prune_ratio]``, rounded as the environment rounds, seeded) and the best plans of the
agents in benchmark folders (``--runs``), physically prune the model for each, time the full model and
every pruned one in interleaved rounds (one run of each model per round: base and pruned alternately, so
that load from other processes hits every model alike), and compare the predicted speedup
(``info["speedup"]`` of an episode: table base latency / predicted latency) with the measured one.

The summary gives, per model and configuration, the median and worst ``|predicted / measured - 1|``
over random plans and over agents' plans, the drift of the full model since the table was built, and the
gap between two identical models measured side by side (the noise floor).

    python -m benchmarks.latency_table_error                                    # env defaults, 3 models
    python -m benchmarks.latency_table_error --runs results/quick               # plus the agents' best plans
    python -m benchmarks.latency_table_error --round-to 1 --no-calibrate        # the defaults before v2
    python -m benchmarks.latency_table_error --backends torch onnxruntime --batch-sizes 1 64
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pruning_env.engine import ModelGraph, apply_plan
from pruning_env.latency import LatencyTable
from pruning_env.measure import LatencyMeasurer, available_backends
from pruning_env.plan import PlanMismatchError, PruningPlan

__all__ = ["Args", "parse_args", "random_plans", "agent_plans", "measure_errors", "summarise", "main"]


@dataclass(frozen=True)
class Args:
    models: tuple[str, ...] = ("small_resnet", "resnet20", "resnet56")
    """registered model names (``pruning_env.models``); latency does not depend on the weights"""
    backends: tuple[str, ...] = ("torch",)
    """latency backends; onnxruntime is skipped with a message when it is not installed"""
    batch_sizes: tuple[int, ...] = (64,)
    """batch sizes (the environment's default is 64)"""
    plans: int = 20
    """random plans per model"""
    runs: tuple[str, ...] = ()
    """benchmark folders (``python -m benchmarks.run``) whose runs' ``best_plan.json`` are measured too"""
    round_to: int = 8
    """kept channels are multiples of this, as in the environment (its default: 8)"""
    calibrate: bool = True
    """fit the table to measured pruned models, as the environment does by default"""
    max_prune_ratio: float = 0.8
    """largest prune ratio of a random plan (the environment's default)"""
    repeats: int = 30
    """timed runs per model (median), for the table and for the end-to-end measurements"""
    threads: int = 1
    """intra-op threads (the environment's default: 1)"""
    seed: int = 0
    """seed of the random plans"""
    cache: bool = True
    """reuse the environment's cached tables (what an episode predicts with); --no-cache builds them now"""
    out: str | None = None
    """write every plan's row and the summary to this JSON file"""


def parse_args(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Args()
    p.add_argument("--models", nargs="+", default=list(d.models))
    p.add_argument("--backends", nargs="+", default=list(d.backends), choices=["torch", "onnxruntime"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=list(d.batch_sizes))
    p.add_argument("--plans", type=int, default=d.plans)
    p.add_argument("--runs", nargs="*", default=list(d.runs), help="benchmark folders with runs/*/best_plan.json")
    p.add_argument("--round-to", type=int, default=d.round_to)
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    p.add_argument("--max-prune-ratio", type=float, default=d.max_prune_ratio)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-cache", dest="cache", action="store_false", help="build the tables now")
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    return Args(models=tuple(a.models), backends=tuple(a.backends), batch_sizes=tuple(a.batch_sizes), plans=a.plans,
                runs=tuple(a.runs), round_to=a.round_to, calibrate=a.calibrate, max_prune_ratio=a.max_prune_ratio,
                repeats=a.repeats, threads=a.threads, seed=a.seed, cache=a.cache, out=a.out)


def random_plans(graph: ModelGraph, n: int, seed: int, round_to: int, max_prune_ratio: float) -> list[PruningPlan]:
    """``n`` plans with per-group prune ratios uniform in ``[0, max_prune_ratio]``, rounded like the env."""
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(n):
        ratios = rng.uniform(0.0, max_prune_ratio, len(graph.groups))
        kept = [ModelGraph.n_keep(g.channels, r, round_to, 1, g.step) for g, r in zip(graph.groups, ratios)]
        plans.append(graph.plan_from_kept(kept))
    return plans


def agent_plans(graph: ModelGraph, model: str, folders: tuple[str, ...]) -> list[tuple[str, PruningPlan]]:
    """(run name, best plan) of every run in ``folders`` searched on ``model`` whose plan fits ``graph``."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).glob("runs/*/best_plan.json")):
            config = json.loads((path.parent / "config.json").read_text())
            if config.get("options", {}).get("env_kwargs", {}).get("model", "small_resnet") != model:
                continue
            plan = PruningPlan.load(path)
            try:
                graph.check_plan(plan)
            except PlanMismatchError as exc:
                print(f"skipped {path}: {exc}")
                continue
            found.append((path.parent.name, plan))
    return found


def measure_errors(args: Args, model: torch.nn.Module, graph: ModelGraph, plans: list[tuple[str, str, PruningPlan]],
                   backend: str, batch: int) -> list[dict[str, Any]]:
    """One row per plan: predicted and measured speedup on this configuration."""
    measurer = LatencyMeasurer(batch_size=batch, threads=args.threads, repeats=args.repeats, backend=backend,
                               input_shape=tuple(graph.example_inputs.shape[1:]))
    t = time.perf_counter()
    table = LatencyTable.build(graph, measurer, cache=args.cache, calibrate=args.calibrate, round_to=args.round_to)
    src = "loaded from cache" if table.from_cache else f"built in {table.build_seconds:.1f} s"
    print(f"table: {src} ({time.perf_counter() - t:.1f} s wall); {table}; calibration error "
          f"{table.calibration_error}; reference layer spread during the build {table.load_spread:.2f}x")
    pruned = [apply_plan(model, plan, graph.example_inputs) for _, _, plan in plans]
    t = time.perf_counter()
    # a second copy of the full model shows the noise floor of the measurement itself
    stats = measurer.measure_many([model, copy.deepcopy(model), *pruned])
    print(f"end-to-end measurement of {len(stats)} models: {time.perf_counter() - t:.1f} s")
    base, twin = stats[0]["median_ms"], stats[1]["median_ms"]
    rows = []
    for (kind, name, plan), s in zip(plans, stats[2:]):
        kept = graph.kept_counts(plan)
        predicted = table.base_ms / max(0.02 * table.base_ms, table.predict(kept))  # as the env computes it
        measured = base / s["median_ms"]
        rows.append({"backend": backend, "batch": batch, "kind": kind, "plan": name,
                     "speedup_predicted": predicted, "speedup_measured": measured,
                     "error": predicted / measured - 1.0, "pruned_ms": s["median_ms"], "base_ms": base,
                     "table_base_ms": table.base_ms, "noise_floor": abs(twin / base - 1.0),
                     "calibration_error": (table.calibration_error or {}).get("worst"),
                     "load_spread": table.load_spread})
    return rows


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Median and worst ``|predicted / measured - 1|`` (%) per model, configuration and kind of plan."""
    g = df.assign(abs_error=100 * df["error"].abs()).groupby(["model", "backend", "batch", "kind"])
    out = g.agg(plans=("abs_error", "size"), median_error_pct=("abs_error", "median"),
                worst_error_pct=("abs_error", "max"), mean_bias_pct=("error", lambda e: 100 * e.mean()),
                speedup_measured_min=("speedup_measured", "min"), speedup_measured_max=("speedup_measured", "max"),
                noise_floor_pct=("noise_floor", lambda e: 100 * e.iloc[0]))
    return out.reset_index()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    print(f"args: {args}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}")
    from pruning_env.models import build_model

    configs = [(b, n) for b in args.backends for n in args.batch_sizes]
    if "onnxruntime" in args.backends and "onnxruntime" not in available_backends():
        print("onnxruntime is not installed: skipping that backend (pip install dataawareprune[onnx])")
        configs = [c for c in configs if c[0] != "onnxruntime"]
    rows = []
    for name in args.models:
        model = build_model(name).eval()  # random weights: latency does not depend on them
        graph = ModelGraph(model, torch.randn(1, 3, 32, 32))
        plans = [("random", f"random-{i}", p) for i, p in
                 enumerate(random_plans(graph, args.plans, args.seed, args.round_to, args.max_prune_ratio))]
        plans += [("agent", run, p) for run, p in agent_plans(graph, name, args.runs)]
        for backend, batch in configs:
            print(f"\n== {name}: backend={backend} batch={batch}, {len(plans)} plans ==")
            part = pd.DataFrame(measure_errors(args, model, graph, plans, backend, batch)).assign(model=name)
            print(part[["kind", "plan", "speedup_predicted", "speedup_measured", "error"]].round(3).to_string())
            rows.append(part)
    df = pd.concat(rows, ignore_index=True)
    summary = summarise(df)
    print("\n== summary: |predicted / measured speedup - 1| in % (target: median <= 10, worst <= 20) ==")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": asdict(args), "torch": torch.__version__,
                                              "rows": df.to_dict("records"),
                                              "summary": summary.to_dict("records")}, indent=1, default=str))
        print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
