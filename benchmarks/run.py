"""Benchmark RL agents across scenarios and seeds: ``make bench`` / ``python -m benchmarks.run``.

    python -m benchmarks.run --profile quick                  # default: offline, minutes
    python -m benchmarks.run --profile cifar10 --seeds 3 --episodes 100 --workers 2
    python -m benchmarks.run --profile quick --backend ray    # runs as Ray tasks (pip install ray)

One folder per benchmark (``results/<profile>`` unless ``--out``): ``runs/`` holds each search's
run folder (as written by ``python -m agents.train``), ``done/`` one JSON file per finished run,
``results.csv`` one row per run, ``leaderboard.md`` (agents ranked on measured latency:
:mod:`benchmarks.measured`) and ``plots/*.png``. A rerun skips finished
runs and resumes an interrupted search from its last checkpoint, so a killed benchmark loses at
most the run in flight. Runs recorded under another behaviour record than this version's (behaviour of
the defaults, channel scoring, table format: ``pruning_env.backend.behaviour_record``) are moved to
``stale/`` and run again.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from .measured import measured_columns, run_facts
from .profiles import BenchScenario, Profile, get_profile

__all__ = ["RunSpec", "plan_runs", "run_one", "run_benchmark", "main"]


@dataclass(frozen=True)
class RunSpec:
    """One search: a scenario, an agent and a seed."""

    scenario: BenchScenario
    agent: str
    seed: int
    episodes: int
    finetune_epochs: int
    out: str
    threads: int
    transfer_episodes: int = 3

    @property
    def name(self) -> str:
        return f"{self.scenario.name}__{self.agent}__{self.seed}".replace(">", "")

    @property
    def done_file(self) -> Path:
        return Path(self.out) / "done" / f"{self.name}.json"


def _transferable(scenario: BenchScenario, agent: str) -> bool:
    """A transfer scenario runs only agents with a learned observation policy (not random, uniform, ...)."""
    from agents.protocol import has_observation_policy

    return scenario.transfer_from is None or has_observation_policy(agent)


def plan_runs(profile: Profile, out: Path, seeds: int, episodes: int, threads: int,
              transfer_episodes: int | None = None) -> list[RunSpec]:
    """Every (scenario, agent, seed) of ``profile``; transfer scenarios only with agents that have a policy."""
    n = profile.transfer_episodes if transfer_episodes is None else transfer_episodes
    return [RunSpec(sc, agent, seed, episodes, profile.finetune_epochs, str(out), threads, n)
            for sc in profile.scenarios for agent in profile.agents for seed in range(seeds)
            if _transferable(sc, agent)]


def _run_name(scenario: str, agent: str, seed: int) -> str:
    return f"{scenario}__{agent}__{seed}".replace(">", "")


def _transfer(spec: RunSpec) -> dict[str, Any]:
    """Run the source scenario's policy (same agent, same seed) on this scenario; the transfer columns."""
    from agents.transfer import TransferOptions, run_transfer

    from .transfer import transfer_columns

    sc = spec.scenario
    result = run_transfer(TransferOptions(
        source=str(Path(spec.out) / "runs" / _run_name(sc.transfer_from, spec.agent, spec.seed)),
        env=sc.env_id, env_kwargs=sc.env_kwargs, episodes=spec.transfer_episodes, seed=spec.seed,
        run_dir=str(Path(spec.out) / "runs"), name=spec.name, torch_threads=spec.threads))
    own = (Path(spec.out) / "runs" / _run_name(sc.compare_with, spec.agent, spec.seed) / "episodes.csv"
           if sc.compare_with else None)
    return {"best_reward": float(result["best_reward"]), **transfer_columns(result, sc.transfer_from, own)}


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Run (or resume) one search, then measure its best plan; writes ``done/<name>.json``."""
    import torch

    torch.set_num_threads(spec.threads)
    from agents.finetune import finetune_run
    from agents.train import TrainOptions, run_search

    t0 = time.perf_counter()
    row: dict[str, Any] = {"scenario": spec.scenario.name, "agent": spec.agent, "seed": spec.seed,
                           "episodes": spec.episodes}
    run_dir = Path(spec.out) / "runs" / spec.name
    if spec.scenario.transfer_from:  # the source's policy plays here, learning nothing (agents.transfer)
        row.update(_transfer(spec), episodes=spec.transfer_episodes)
    else:
        opts = TrainOptions(algo=spec.agent, env=spec.scenario.env_id, episodes=spec.episodes, seed=spec.seed,
                            env_kwargs=spec.scenario.env_kwargs, run_dir=str(Path(spec.out) / "runs"),
                            name=spec.name, progress=False, tensorboard=False, torch_threads=spec.threads,
                            checkpoint_every=10)
        row.update(best_reward=float(run_search(opts)["best_reward"]))
    # a transfer's run folder is written like a search's: the same columns come from the same files
    episodes = pd.read_csv(run_dir / "episodes.csv")
    best = episodes.loc[episodes["reward"].idxmax()]
    config = json.loads((run_dir / "config.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    row.update(best_episode=int(best["episode"]), val_accuracy=float(best["accuracy"]),
               speedup_table=float(best["speedup"]), search_seconds=float(state.get("wall_time", 0.0)),
               base_val_accuracy=config.get("env", {}).get("base_accuracy"),
               versions=json.dumps(config.get("versions", {})), hardware=json.dumps(config.get("hardware", {})),
               behaviour=json.dumps(_recorded_behaviour(config.get("env", {})), sort_keys=True))
    final = finetune_run(_final_options(spec, run_dir))
    row.update(test_accuracy=final["pruned"]["test_accuracy"], base_test_accuracy=final["base"]["test_accuracy"],
               test_accuracy_before_finetune=final["pruned"]["test_accuracy_before_finetune"],
               finetune_epochs=spec.finetune_epochs, finetune_steps=final["options"].get("max_steps"),
               macs_ratio=final["macs_ratio"],
               speedup_measured=final["speedup_measured"], latency_ms=final["pruned"]["latency_ms"],
               base_latency_ms=final["base"]["latency_ms"], torch_threads=torch.get_num_threads(),
               run_seconds=time.perf_counter() - t0, ratios=json.dumps(final["plan_ratios"]))
    # The leaderboard ranks on measured latency: the target, the cost model's error, a miss flag and the
    # search reward recomputed with the measured latency (benchmarks.measured).
    config_path = run_dir / "config.json"
    row.update(run_facts(json.loads(config_path.read_text()) if config_path.exists() else {}, final))
    row.update(measured_columns(row))
    spec.done_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.done_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=str))
    tmp.replace(spec.done_file)  # atomic: a run is either done or not
    return row


def _final_options(spec: RunSpec, run_dir: Path) -> Any:
    """How a run's best plan is fine-tuned before its test accuracy is measured: the profile's epochs, or,
    when the profile fine-tunes nothing, the search's own recovery (``finetune_steps`` steps, seed 0), so
    that the test accuracy is that of the network the search scored."""
    from agents.finetune import FinetuneOptions

    kw = spec.scenario.env_kwargs
    steps = int(kw.get("finetune_steps", 0))
    if spec.finetune_epochs == 0 and steps > 0:
        return FinetuneOptions(run=str(run_dir), epochs=steps, max_steps=steps, lr=float(kw.get("finetune_lr", 0.01)),
                               progress=False, onnx=False, seed=0)
    return FinetuneOptions(run=str(run_dir), epochs=spec.finetune_epochs, progress=False, onnx=False, seed=spec.seed)


def _safe_run(spec: RunSpec) -> dict[str, Any]:
    try:
        return run_one(spec)
    except Exception as exc:  # one failed run must not sink the benchmark
        return {"scenario": spec.scenario.name, "agent": spec.agent, "seed": spec.seed,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def prepare_scenarios(specs: list[RunSpec]) -> None:
    """Build every scenario's cached artefacts once, in this process, before the runs fan out.

    Base-model adaptation, group attention, the latency table and the data profile are cached on
    disk per scenario; without this step every worker would build them at the same time.
    """
    import gymnasium as gym

    import pruning_env  # noqa: F401  (registers the environments)

    seen: set[str] = set()
    for s in specs:
        if s.scenario.name in seen:
            continue
        seen.add(s.scenario.name)
        t0 = time.perf_counter()
        gym.make(s.scenario.env_id, **s.scenario.env_kwargs).close()
        print(f"scenario {s.scenario.name}: ready in {time.perf_counter() - t0:.0f} s", flush=True)


def _execute(specs: list[RunSpec], workers: int, backend: str) -> list[dict[str, Any]]:
    results = []
    bar = tqdm(total=len(specs), desc="runs", unit="run")
    # Sources of transfer runs go first, then the transfer runs themselves.
    first = [s for s in specs if not s.scenario.transfer_from]
    second = [s for s in specs if s.scenario.transfer_from]
    for batch in (first, second):
        if not batch:
            continue
        if backend == "ray":
            try:
                import ray
            except ImportError as exc:
                raise ImportError("--backend ray needs Ray: pip install 'dataawareprune[ray]'") from exc
            if not ray.is_initialized():
                ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get("RAY_ADDRESS")
                         else workers, include_dashboard=False, log_to_driver=False)
            remote = ray.remote(num_cpus=1)(_safe_run)
            pending = {remote.remote(s): s for s in batch}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    spec = pending.pop(ref)
                    results.append(ray.get(ref))
                    bar.set_postfix_str(spec.name)
                    bar.update(1)
        elif workers <= 1:
            for s in batch:
                bar.set_postfix_str(s.name)
                results.append(_safe_run(s))
                bar.update(1)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_safe_run, s): s for s in batch}
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.set_postfix_str(futures[fut].name)
                    bar.update(1)
    bar.close()
    return results


def _recorded_behaviour(env_record: dict[str, Any]) -> dict[str, Any]:
    from pruning_env.backend import behaviour_record

    return {k: env_record.get(k) for k in behaviour_record()}


def _is_stale(s: RunSpec) -> bool:
    """Whether run ``s`` (finished or begun) was made under another behaviour record than this version's
    (:func:`pruning_env.backend.behaviour_record`) or with other scenario settings than the profile's now."""
    from pruning_env.backend import behaviour_record

    run_dir = Path(s.out) / "runs" / s.name
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else None
    if s.done_file.exists():
        recorded = json.loads(json.loads(s.done_file.read_text()).get("behaviour") or "null")
    elif config is not None:
        recorded = _recorded_behaviour(config.get("env", {}))
    else:
        return False
    kw = s.scenario.env_kwargs
    now = behaviour_record(kw.get("importance", "attention"), kw.get("latency", _default_latency(s)))
    searched_with = config.get("options", {}).get("env_kwargs") if config is not None else None
    changed = searched_with is not None and json.dumps(searched_with, sort_keys=True, default=str) != \
        json.dumps(kw, sort_keys=True, default=str)  # the profile's scenario settings changed since
    return recorded is None or {k: recorded.get(k) for k in now} != now or changed


def _set_aside_stale(specs: list[RunSpec], out: Path) -> list[str]:
    """Move stale runs (:func:`_is_stale`: their ``done/`` file and run folder) to ``stale/<time>/``, so that
    they are measured again instead of mixed into the results."""
    dest, moved = out / "stale" / time.strftime("%Y%m%d-%H%M%S"), []
    for s in specs:
        if _is_stale(s):
            dest.mkdir(parents=True, exist_ok=True)
            for p in (s.done_file, Path(s.out) / "runs" / s.name):
                if p.exists():
                    p.rename(dest / p.name)
            moved.append(s.name)
    return moved


def _default_latency(spec: RunSpec) -> str:
    return "macs" if "MACs" in spec.scenario.env_id else "measured" if "Measured" in spec.scenario.env_id else "table"


def _check_base_weights(specs: list[RunSpec]) -> None:
    """Stop before any run starts when a scenario has no base weights, saying how to get each."""
    from pruning_env.scenario import DEFAULT_DATASET, DEFAULT_MODEL, missing_base_weights

    missing = {}
    for s in specs:
        kw = s.scenario.env_kwargs
        why = missing_base_weights(kw.get("model", DEFAULT_MODEL), kw.get("dataset", DEFAULT_DATASET),
                                   kw.get("checkpoint"), kw.get("data_root"), kw.get("train_if_missing"))
        if why:
            missing.setdefault(s.scenario.name, why)
    if missing:
        raise FileNotFoundError("these scenarios lack base weights; nothing was run:\n" +
                                "\n".join(f"  {name}: {why}" for name, why in missing.items()))


def run_benchmark(profile: str | Profile, out: str | Path | None = None, seeds: int | None = None,
                  episodes: int | None = None, workers: int = 1, backend: str = "process",
                  agents: list[str] | None = None, scenarios: list[str] | None = None,
                  transfer_episodes: int | None = None, env_kwargs: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run every missing run of ``profile`` and write results, leaderboard and plots; returns the results.

    ``transfer_episodes``: deterministic episodes a transferred policy plays (default: the profile's).
    ``env_kwargs``: environment arguments set in every scenario of the profile (over its own), e.g. another
    target; runs made with other settings are set aside as stale, so give such a run its own ``out``.
    """
    from .report import write_report

    prof = get_profile(profile) if isinstance(profile, str) else profile
    if env_kwargs:
        prof = replace(prof, scenarios=[replace(sc, env_kwargs={**sc.env_kwargs, **env_kwargs})
                                        for sc in prof.scenarios])
    whole = prof  # the report covers the whole profile's finished runs, not only this restriction's
    if agents:
        prof = replace(prof, agents=list(agents))
    if scenarios:
        known = [s.name for s in prof.scenarios]
        unknown = sorted(set(scenarios) - set(known))
        if unknown:
            raise ValueError(f"unknown scenarios {unknown} in profile {prof.name!r}; valid: {', '.join(known)}")
        wanted = set(scenarios)  # a transfer needs its source's search and its target's own search
        wanted |= {n for s in prof.scenarios if s.name in scenarios for n in (s.transfer_from, s.compare_with) if n}
        if wanted - set(scenarios):
            print(f"also running {', '.join(sorted(wanted - set(scenarios)))}: the transfers' sources and targets")
        prof = replace(prof, scenarios=[s for s in prof.scenarios if s.name in wanted])
    out = Path(out or Path("results") / prof.name)
    out.mkdir(parents=True, exist_ok=True)
    # the cores this process may run on (taskset, cgroups), not all the machine's
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, workers))
    specs = plan_runs(prof, out, seeds or prof.seeds, episodes or prof.episodes, threads, transfer_episodes)
    no_policy = sorted({a for sc in prof.scenarios for a in prof.agents if not _transferable(sc, a)})
    if no_policy:
        print(f"no transfer runs for {', '.join(no_policy)}: these agents learn no policy from observations, so "
              "there is nothing to transfer (their runs on each target scenario are the comparison)")
    stale = _set_aside_stale(specs, out)
    if stale:
        print(f"{len(stale)} run(s) were measured under another behaviour or scenario settings than now; moved to "
              f"{out / 'stale'} and measured again: {', '.join(stale)}")
    todo = [s for s in specs if not s.done_file.exists()]
    _check_base_weights(todo)
    print(f"benchmark {prof.name!r}: {len(specs)} runs ({len(specs) - len(todo)} already done), "
          f"{workers} worker(s) x {threads} torch thread(s), backend {backend}; output in {out}")
    (out / "profile.json").write_text(json.dumps(asdict(whole), indent=1, default=str))
    t0 = time.perf_counter()
    if todo and workers > 1:
        prepare_scenarios([s for s in todo if not s.scenario.transfer_from])
    failed = [r for r in _execute(todo, workers, backend) if "error" in r]
    for r in failed:
        print(f"FAILED {r['scenario']} {r['agent']} seed {r['seed']}: {r['error']}")
    rows = [json.loads(s.done_file.read_text()) for s in specs if s.done_file.exists()]
    # Runs of the profile outside this restriction (--agents, --scenarios) finished earlier in this folder
    # under the same settings stay in results.csv and the leaderboard.
    mine = {s.name for s in specs}
    kept = [s for s in plan_runs(whole, out, seeds or whole.seeds, episodes or whole.episodes, threads,
                                 transfer_episodes)
            if s.name not in mine and s.done_file.exists() and not _is_stale(s)]
    if kept:
        print(f"the report also holds {len(kept)} earlier run(s) of the profile outside this restriction")
    rows += [json.loads(s.done_file.read_text()) for s in kept]
    df = pd.DataFrame(rows)
    write_report(df, out, whole)
    print(f"wall time {time.perf_counter() - t0:.0f} s; {len(rows)}/{len(specs)} runs done; "
          f"leaderboard: {out / 'leaderboard.md'}")
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed; rerun the same command to retry them")
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="quick", help="quick, cifar10, paper or transfer")
    p.add_argument("--seeds", type=int, default=None, help="seeds per scenario and agent (default: the profile's)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per search (default: the profile's)")
    p.add_argument("--agents", nargs="+", default=None, help="restrict to these agents")
    p.add_argument("--scenarios", nargs="+", default=None, help="restrict to these scenarios of the profile")
    p.add_argument("--transfer-episodes", type=int, default=None,
                   help="deterministic episodes a transferred policy plays on its target (default: the profile's)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (processes, or Ray tasks)")
    p.add_argument("--backend", choices=["process", "ray"], default="process")
    p.add_argument("--out", default=None, help="benchmark folder (default results/<profile>)")
    p.add_argument("--env-kwargs", type=json.loads, default=None,
                   help='JSON dict of environment arguments set in every scenario, e.g. \'{"target_latency": 0.33}\'')
    a = p.parse_args(argv)
    df = run_benchmark(a.profile, a.out, a.seeds, a.episodes, a.workers, a.backend, a.agents, a.scenarios,
                       a.transfer_episodes, a.env_kwargs)
    board = Path(a.out or Path("results") / a.profile) / "leaderboard.md"
    if board.exists():
        print(board.read_text())
    return df


if __name__ == "__main__":
    main()
