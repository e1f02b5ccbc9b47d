"""How well does the latency lookup table predict measured latency? ResNet-56 on CIFAR-sized inputs.

For every backend and batch size: build (or load) the :class:`~pruning_env.latency.LatencyTable`,
sample random plans (per-group keep ratio uniform in [0.2, 1.0], seeded), physically prune the model
for each, measure all pruned models and the full model end to end in interleaved rounds (one run of
each model per round, so that load from other processes hits every model alike), and print predicted
vs measured milliseconds. Three predictors are compared: the calibrated table (what the environment
uses), the uncalibrated table (constant overhead, ``scale = 1``) and MACs scaled to the full model's
latency.

On a shared machine the load changes between the table's build and the measurements: the summary
shows that drift of the full model, the gap between two identical models measured side by side (the
noise floor), and the error of predicted speedups over the full model, which the drift cancels out of.

    python -m benchmarks.latency_table_error
    python -m benchmarks.latency_table_error --batch-sizes 1 --plans 10 --backends torch
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pruning_env.engine import ModelGraph, apply_plan
from pruning_env.latency import LatencyMeasurer, LatencyTable, MacsModel, available_backends

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrained"


@dataclass(frozen=True)
class Args:
    model: str = "resnet56"
    """registered model name (``pruning_env.models``)"""
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    """latency backends; onnxruntime is skipped with a message when it is not installed"""
    batch_sizes: tuple[int, ...] = (1, 64)
    """batch sizes for the torch backend"""
    onnx_batch_sizes: tuple[int, ...] = (1,)
    """batch sizes for the onnxruntime backend"""
    plans: int = 20
    """random plans per configuration"""
    repeats: int = 30
    """timed runs per model (median), for the table and for the end-to-end measurements"""
    rounds: int | None = None
    """interleaved rounds over all models of one configuration (default: one run per model per round)"""
    threads: int = 1
    """intra-op threads; 1 is the stable choice on a shared machine"""
    seed: int = 0
    """seed of the random plans"""
    cache: bool = False
    """reuse tables from the on-disk cache; off by default so that the table is built under the same
    machine load as the end-to-end measurements it is compared with (a shared machine drifts)"""


def parse_args(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Args()
    p.add_argument("--model", default=d.model)
    p.add_argument("--backends", nargs="+", default=list(d.backends), choices=["torch", "onnxruntime"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=list(d.batch_sizes))
    p.add_argument("--onnx-batch-sizes", nargs="+", type=int, default=list(d.onnx_batch_sizes))
    p.add_argument("--plans", type=int, default=d.plans)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--rounds", type=int, default=d.rounds, help="default: --repeats")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cache", action="store_true", help="reuse cached tables instead of building them now")
    a = p.parse_args(argv)
    return Args(model=a.model, backends=tuple(a.backends), batch_sizes=tuple(a.batch_sizes),
                onnx_batch_sizes=tuple(a.onnx_batch_sizes), plans=a.plans, repeats=a.repeats, rounds=a.rounds,
                threads=a.threads, seed=a.seed, cache=a.cache)


def load_model(name: str) -> torch.nn.Module | None:
    try:
        from pruning_env.models import build_model
    except ImportError as exc:
        print(f"skipped: pruning_env.models is not available ({exc})")
        return None
    model = build_model(name)
    weights = SHARED / f"cifar10_{name}.pth"
    if weights.exists():  # weights do not change latency; loaded for realism only
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        print(f"weights: {weights}")
    else:
        print("weights: random initialisation (latency does not depend on them)")
    return model.eval()


def run_config(args: Args, model, graph: ModelGraph, plans, backend: str, batch: int) -> dict[str, float]:
    measurer = LatencyMeasurer(batch_size=batch, threads=args.threads, repeats=args.repeats, backend=backend,
                               input_shape=(3, 32, 32))
    print(f"\n== backend={backend} batch={batch} ==")
    print("measurer:", measurer.describe())
    t = time.perf_counter()
    table = LatencyTable.build(graph, measurer, cache=args.cache)
    src = "loaded from cache" if table.from_cache else f"built in {table.build_seconds:.1f} s"
    print(f"table: {src} ({time.perf_counter() - t:.1f} s wall); {table}")
    for a in table.to_dict().get("calibration") or []:
        print(f"  calibration model with {sorted(set(a['kept']))} channels per group: measured "
              f"{a['measured_ms']:.3f} ms, uncalibrated table {a['table_ms']:.3f} ms, "
              f"calibrated {a['predicted_ms']:.3f} ms")

    example = torch.randn(1, 3, 32, 32)
    pruned = [apply_plan(model, plan, example) for plan in plans]
    t = time.perf_counter()
    # a second copy of the full model shows the noise floor of the measurement itself
    stats = measurer.measure_many([model, copy.deepcopy(model), *pruned], rounds=args.rounds)
    print(f"end-to-end measurement of {len(stats)} models: {time.perf_counter() - t:.1f} s")
    base_measured, twin = stats[0]["median_ms"], stats.pop(1)["median_ms"]
    print(f"full model: table base {table.base_ms:.3f} ms, measured now {base_measured:.3f} ms "
          f"(p10 {stats[0]['p10']:.3f}, p90 {stats[0]['p90']:.3f}); an identical copy measured {twin:.3f} ms")

    macs = MacsModel(graph)
    raw_offset = table.base_ms - table.table_ms(table.channels)  # the uncalibrated table: constant overhead
    rows = []
    for plan, s in zip(plans, stats[1:]):
        kept = graph.kept_counts(plan)
        frac = macs.predict(kept) / macs.base_macs
        rows.append({
            "keep": float(np.mean(np.asarray(kept) / table.channels)), "MACs %": 100 * frac,
            "pred ms": table.predict(kept), "uncal ms": raw_offset + table.table_ms(kept),
            "MACs ms": table.base_ms * frac, "measured ms": s["median_ms"],
        })
    df = pd.DataFrame(rows)
    m = df["measured ms"]
    for col, name in (("pred ms", "err %"), ("uncal ms", "err uncal %"), ("MACs ms", "err MACs %")):
        df[name] = 100 * (df[col] - m) / m
    # speedups over the full model, each side from one session: immune to drift of the machine's load
    df["speedup pred"] = table.base_ms / df["pred ms"]
    df["speedup meas"] = base_measured / m
    df["err speedup %"] = 100 * (df["speedup pred"] - df["speedup meas"]) / df["speedup meas"]
    digits = {c: (1 if "%" in c else 2 if "keep" in c or "speedup" in c else 3) for c in df.columns}
    print(df.round(digits).to_string())
    errs = df[["err %", "err uncal %", "err MACs %", "err speedup %"]].abs().median()
    out = {
        "backend": backend, "batch": batch, "table %": errs["err %"], "uncal %": errs["err uncal %"],
        "MACs %": errs["err MACs %"], "speedup %": errs["err speedup %"], "build s": table.build_seconds,
        "base drift %": 100 * (base_measured / table.base_ms - 1),
        "noise floor %": 100 * abs(twin - base_measured) / base_measured,
    }
    print(f"median |relative error|: table {out['table %']:.1f}% (target <= 10%), uncalibrated {out['uncal %']:.1f}%, "
          f"MACs proxy {out['MACs %']:.1f}%, speedup {out['speedup %']:.1f}%; full model {out['base drift %']:+.1f}% "
          f"since the table was built; two identical models measured {out['noise floor %']:.1f}% apart")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"args: {args}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}")
    model = load_model(args.model)
    if model is None:
        return
    example = torch.randn(1, 3, 32, 32)
    graph = ModelGraph(model, example)
    rng = np.random.default_rng(args.seed)
    plans = [graph.plan_from_ratios(1.0 - rng.uniform(0.2, 1.0, len(graph.groups))) for _ in range(args.plans)]
    configs = [("torch", b) for b in args.batch_sizes] if "torch" in args.backends else []
    if "onnxruntime" in args.backends:
        if "onnxruntime" in available_backends():
            configs += [("onnxruntime", b) for b in args.onnx_batch_sizes]
        else:
            print("onnxruntime is not installed: skipping that backend (pip install dataawareprune[onnx])")
    summary = pd.DataFrame([run_config(args, model, graph, plans, *cfg) for cfg in configs])
    print("\n== summary: median |relative error| of predicted vs measured ms, build time of the table ==")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
