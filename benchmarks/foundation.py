"""Foundation numbers: base accuracy, uniform 50% pruning cost and latency across architectures.

    python -m benchmarks.foundation --data-root ../shared/data

Prints (1) ResNet-56's accuracy on the CIFAR-10 test split with the published weights, and
(2) for ResNet-56, VGG-19-BN, MobileNetV2 and EfficientNet-B0 pruned uniformly at 50% of the
channels of every group (L1 magnitude): MACs, parameters and measured CPU latency at batch 1
and 64, before and after, for PyTorch eager and ONNX Runtime (when installed). Latency: median of
repeated runs after warm-up, base and pruned timed alternately. The per-group lookup-table error is
printed by ``python -m benchmarks.latency_table_error``.

The deployment comparison (eager vs ONNX Runtime, issue "latency as deployed")::

    python -m benchmarks.foundation --skip-accuracy --models resnet56 mobilenet_v2 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import torch
import torch_pruning as tp

from agents.finetune import measure_speedup
from pruning_env.data import load_dataset
from pruning_env.engine import ModelGraph, apply_plan, count_macs_params
from pruning_env.measure import LatencyMeasurer, available_backends
from pruning_env.models import build_model
from pruning_env.scenario import load_checkpoint
from pruning_env.train import evaluate

__all__ = ["main"]


def base_accuracy(data_root: Path) -> None:
    data = load_dataset("cifar10", data_root=data_root)
    ckpt = data_root / "pretrained" / "cifar10_resnet56.pth"
    model = load_checkpoint(build_model("resnet56"), ckpt, strict=True).eval()
    t = time.perf_counter()
    acc = evaluate(model, data.test)
    print(f"ResNet-56 ({ckpt.name}, strict load) on {data.source}: test accuracy {acc:.4f} "
          f"over {len(data.test)} images ({time.perf_counter() - t:.1f} s)")


def _available_backends(backends: list[str]) -> list[str]:
    usable = available_backends()
    for b in set(backends) - set(usable):
        print(f"({b} is not installed: pip install 'dataawareprune[onnx]'; skipping that backend)")
    return [b for b in backends if b in usable]


def uniform_table(models: list[str], batch_sizes: list[int], repeats: int, threads: int | None,
                  backends: list[str] = ("torch",), rounds: int = 3) -> pd.DataFrame:
    """Uniform 50% L1 pruning per model; latency per backend and batch size.

    Base and pruned models are timed alternately ``rounds`` times (median of the rounds' medians),
    so a change of machine load during the measurement hits both alike.
    """
    rows = []
    for name in models:
        model = build_model(name, num_classes=10).eval()
        x = torch.zeros(1, 3, 32, 32)
        graph = ModelGraph(model, x)
        scores = graph.scores(tp.importance.GroupMagnitudeImportance(p=1))
        pruned = apply_plan(model, graph.plan_from_ratios([0.5] * len(graph.groups), scores), x).eval()
        macs0, params0 = count_macs_params(model, x)
        macs1, params1 = count_macs_params(pruned, x)
        row = {"model": name, "groups": len(graph.groups), "MACs (M)": macs0 / 1e6, "MACs pruned (M)": macs1 / 1e6,
               "MACs ratio": macs0 / macs1, "params (M)": params0 / 1e6, "params pruned (M)": params1 / 1e6}
        for backend in backends:
            tag = "eager" if backend == "torch" else "ort"
            for bs in batch_sizes:
                meas = LatencyMeasurer(batch_size=bs, threads=threads, backend=backend,
                                       repeats=repeats if bs == 1 else max(5, repeats // 3))
                timed = measure_speedup(meas, model, pruned, rounds=rounds)
                t0, t1 = timed["base_latency_ms"], timed["pruned_latency_ms"]
                row[f"{tag} bs{bs} ms"] = t0
                row[f"{tag} bs{bs} pruned ms"] = t1
                row[f"{tag} bs{bs} speedup"] = t0 / t1
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.2f}"), flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--models", nargs="+", default=["resnet56", "vgg19", "mobilenet_v2", "efficientnet_b0"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backends", nargs="+", choices=["torch", "onnxruntime"], default=["torch", "onnxruntime"],
                   help="latency backends (onnxruntime is skipped when not installed)")
    p.add_argument("--rounds", type=int, default=3, help="alternating base/pruned measurement rounds")
    p.add_argument("--skip-accuracy", action="store_true", help="only the latency table")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads or torch.get_num_threads()}")
    if args.skip_accuracy:
        pass
    elif (args.data_root / "cifar10").is_dir():
        base_accuracy(args.data_root)
    else:
        print(f"(no CIFAR-10 under {args.data_root}: skipping the accuracy check)")
    df = uniform_table(args.models, args.batch_sizes, args.repeats, args.threads,
                       _available_backends(args.backends), args.rounds)
    print("\nUniform 50% channel pruning (L1 magnitude), CPU latency (median ms; eager = PyTorch eager, "
          "ort = ONNX Runtime CPU):")
    print(df.to_markdown(index=False, floatfmt=".2f") if _has_tabulate() else df.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
