"""Environment cost: construction time, episode time and its breakdown, peak memory.

    python -m benchmarks.env_speed                          # the embedded default
    python -m benchmarks.env_speed --model resnet56 --dataset cifar10 --data-root ../shared/data \
        --val-samples 1000 --episodes 10

Construction is timed twice: the first build may fill the caches (base weights, latency
table, attention, profile); the second is what every later process pays. Episodes use random
actions; the breakdown comes from the environment's terminal ``info["timing"]`` (seconds).
Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import gymnasium as gym
import numpy as np
import pandas as pd
import torch

import pruning_env  # noqa: F401  (registers the environments)

__all__ = ["main"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="DataAwarePrune-v0")
    p.add_argument("--model", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--val-samples", type=int, default=None)
    p.add_argument("--importance", default=None)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    kwargs = {k: v for k, v in dict(model=a.model, dataset=a.dataset, data_root=a.data_root, checkpoint=a.checkpoint,
                                    val_samples=a.val_samples, importance=a.importance).items() if v is not None}
    print(f"env {a.env} kwargs {kwargs}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    t = time.perf_counter()
    env = gym.make(a.env, **kwargs)
    first = time.perf_counter() - t
    env.close()
    t = time.perf_counter()
    env = gym.make(a.env, **kwargs)
    cached = time.perf_counter() - t
    u = env.unwrapped
    print(f"construction: first {first:.2f} s, cached {cached:.2f} s; {u.n_groups} groups, "
          f"base accuracy {u.base_accuracy:.4f} on {len(u.val_data)} validation images, "
          f"base latency {u.base_latency_ms:.3f} ms ({u.latency_mode})")
    rng = np.random.default_rng(a.seed)
    rows = []
    for ep in range(a.episodes):
        env.reset(seed=a.seed + ep)
        t = time.perf_counter()
        done = False
        while not done:
            _, reward, term, trunc, info = env.step(rng.uniform(-1, 1, size=(1,)).astype(np.float32))
            done = term or trunc
        rows.append({"episode": ep, "seconds": time.perf_counter() - t, "reward": reward,
                     "accuracy": info["accuracy"], "speedup": info["speedup"], **info["timing"]})
    df = pd.DataFrame(rows)
    print(df.describe().loc[["mean", "50%", "max"]].to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"median episode {statistics.median(df['seconds']):.3f} s; peak RSS {_peak_rss_mb():.0f} MiB")
    return df


if __name__ == "__main__":
    main()
