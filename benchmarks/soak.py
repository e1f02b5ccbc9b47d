"""Long-run memory check: ``python -m benchmarks.soak --episodes 500``.

Plays ``--episodes`` episodes of an environment (default: the embedded default) with random
actions and samples the process's resident memory (RSS) every ``--every`` episodes. Growth is
measured from the end of the warm-up (``--warmup`` episodes: allocator pools, caches and the first
pruned models settle) to the end; the target is under 5%.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import gymnasium as gym
import numpy as np

import pruning_env  # noqa: F401

__all__ = ["rss_mb", "soak", "main"]


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import resource

        return pages * resource.getpagesize() / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def soak(env_id: str = "DataAwarePrune-v0", episodes: int = 500, warmup: int = 50, every: int = 25,
         seed: int = 0, **env_kwargs) -> dict:
    env = gym.make(env_id, **env_kwargs)
    rng = np.random.default_rng(seed)
    samples = []
    t0 = time.perf_counter()
    for ep in range(1, episodes + 1):
        env.reset(seed=seed + ep)
        done = False
        while not done:
            _, _, done, _, _ = env.step(rng.uniform(-1, 1, size=(1,)).astype(np.float32))
        if ep % every == 0 or ep == warmup:
            gc.collect()
            samples.append((ep, rss_mb()))
            print(f"episode {ep:4d}: RSS {samples[-1][1]:8.1f} MiB ({time.perf_counter() - t0:.0f} s)", flush=True)
    env.close()
    after_warmup = next(m for e, m in samples if e >= warmup)
    final = samples[-1][1]
    result = {"env": env_id, "episodes": episodes, "warmup": warmup, "rss_after_warmup_mb": round(after_warmup, 1),
              "rss_final_mb": round(final, 1), "peak_sampled_mb": round(max(m for _, m in samples), 1),
              "growth_after_warmup_pct": round(100 * (final - after_warmup) / after_warmup, 2),
              "seconds": round(time.perf_counter() - t0, 1), "samples": samples}
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="DataAwarePrune-v0")
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    r = soak(a.env, a.episodes, a.warmup, a.every, a.seed)
    print(json.dumps({k: v for k, v in r.items() if k != "samples"}, indent=1))
    print(f"memory growth after warm-up: {r['growth_after_warmup_pct']:+.2f}% (target < 5%)")
    return r


if __name__ == "__main__":
    main()
