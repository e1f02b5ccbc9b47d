"""Compress a network to a measured speedup: search -> fine-tune -> measure -> export -> report.

One command for the whole job, for registered models and your own (``package.module:function``
returning an ``nn.Module``, with ``--checkpoint`` for its weights)::

    python -m agents.compress --model resnet56 --dataset cifar10 --adapt-steps 400 --speedup 2 \\
        --method ppo --episodes 200 --epochs 10

``--method`` is an agent (``ppo``, ``sac``, ``ddpg``, ``amc``, ``random``, ``cem``, ...: a search of
``--episodes`` episodes on ``DataAwarePrune-v0`` at ``target_latency = 1 / speedup`` on the latency table,
then fitted to the target on measured latency) or one of the
alternatives a user would try instead (``uniform``, ``global-magnitude``, ``global-lamp``:
:mod:`agents.global_pruning`), whose prune ratio is matched to the target on *measured* latency.
``--method cem --start-from global-magnitude`` searches around what a user would do instead: the
cross-entropy search starts at Torch-Pruning's global plan at the target (on the latency table), plays
it first, and keeps it unless it scores a better plan. ``--rerank 5`` re-scores the search's five best
plans (and the start plan) with ``--rerank-steps`` recovery steps each, a proxy too dear for every
episode, and keeps the best of them.

Stages, each saved in the output folder ``<out>/<name>/`` as it finishes (a rerun of the same command
skips finished stages and resumes the search and the fine-tune from their checkpoints; ``--stop-after plan``
or ``finetune`` stops a run there, e.g. to time on a quiet machine what was fine-tuned beside another job):

1. ``plan.json``: the plan (``search/``: the agent's run folder; ``rerank.json``: with ``--rerank K``, the
   search's K best plans re-scored with a longer proxy; ``plan_source.json``: how the plan was made, with
   the searched plan's widths and its fit to measured latency);
2. ``finetune/``: per-epoch checkpoints of the fine-tune (:func:`pruning_env.distill.finetune`: SGD, cosine
   schedule, optional distillation from the unpruned model), then ``finetuned.json``;
3. ``measure.json``: base and pruned latency timed alternately on this machine, in torch and in
   onnxruntime (when installed), MACs and parameters;
4. ``pruned_model.pt`` (weights-only, :func:`pruning_env.export.load_pruned`), ``pruned_model.onnx``
   (outputs checked against PyTorch), ``plan.json``;
5. ``report.md`` and ``plots/`` (per-group widths against uniform's, the search curve), ``final.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pruning_env.measure import BUSY_CORES, MISS_TOLERANCE, other_load

from .finetune import measure_speedup, model_outputs, onnx_check
from .global_pruning import TargetNotReached, match_target, plan_family, table_price
from .train import TrainOptions, build_parser, options_from_args, run_metadata, run_search, seed_everything

__all__ = ["CompressOptions", "BASELINES", "compress", "main"]

BASELINES = ("uniform", "global-magnitude", "global-lamp")
log = logging.getLogger(__name__)
GLOBAL_STEPS = 5  # Torch-Pruning's iterative_steps for the global baselines


@dataclass(frozen=True)
class CompressOptions:
    """Compress a network to a measured speedup (search, fine-tune, measure, export, report)."""

    model: str = "small_resnet"
    """registered model name or 'package.module:function' returning an nn.Module"""
    dataset: str = "digits"
    """dataset name or spec (digits, cifar10, cifar100, npz:<file>, folder:<dir>)"""
    checkpoint: str | None = None
    """base weights (a state_dict .pth); default: the shipped/cached ones of a registered model"""
    adapt_steps: int = 0
    """SGD steps adapting the base weights to the train split first (cached)"""
    data_root: str | None = None
    """folder with datasets and pretrained weights"""
    speedup: float = 2.0
    """measured speedup to reach (the search's target_latency is 1 / speedup; then fit_measured)"""
    method: str = "ppo"
    """agent (ppo, sac, ddpg, amc, random, cem, ...) or baseline (uniform, global-magnitude, global-lamp)"""
    episodes: int = 100
    """search episodes (agents only)"""
    fit_measured: bool = True
    """fit the searched plan to the target on measured latency, as the baselines are matched: scale its
    per-group prune ratios by one factor, the smallest that meets the target when timed (the latency table's
    error is plan-specific: searched ResNet-56 plans at its 2x timed 2.07-2.63x); off: the plan as searched"""
    recovery_steps: int = 20
    """SGD steps each search episode fine-tunes its plan before scoring it (the environment's
    finetune_steps; 0: BatchNorm recalibration only, which at one target ranks ResNet-20 plans no better
    than chance, docs/results.md)"""
    start_from: str | None = None
    """start the search from this plan: a baseline (uniform, global-magnitude, global-lamp; matched to the
    target on the latency table) or a plan JSON; the search explores around it and keeps it if it finds
    nothing better (method cem only: its mean starts at the plan and its first episode plays it)"""
    start_std: float = 0.25
    """with start_from: the search's initial spread around the plan, in action units (1 = half of
    max_prune_ratio)"""
    rerank: int = 0
    """after the search, re-score its ``rerank`` best distinct plans (and the plan it started from) with
    ``rerank_steps`` recovery steps each and keep the best by the same reward (0: keep the search's best).
    The search's short proxy explores; a longer one, too dear for every episode, picks"""
    rerank_steps: int = 150
    """recovery steps of the re-scoring (on ResNet-56's 2x plans, 150 steps ranked 12 fine-tuned plans
    Spearman 0.84 against one epoch of fine-tuning, the search's 20 steps 0.27: docs/results.md)"""
    plan: str | None = None
    """a plan JSON to use instead of searching or matching (e.g. one baseline match shared by fine-tune seeds)"""
    seed: int = 0
    """seed of the search and the fine-tune"""
    epochs: int = 1
    """fine-tune epochs (0: measure the plan after BatchNorm recalibration only)"""
    max_steps: int | None = None
    """stop the fine-tune after this many SGD steps"""
    lr: float = 0.01
    """fine-tune learning rate (SGD with momentum, cosine schedule)"""
    kd_weight: float = 0.0
    """weight of the distillation loss from the unpruned model (0: cross-entropy only)"""
    kd_temperature: float = 4.0
    """distillation temperature"""
    batch_size: int = 128
    """fine-tune batch size"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """further DataAwarePrune-v0 arguments as JSON, e.g. '{"importance": "l1"}'"""
    out: str = "results/compress"
    """output folder (one subfolder per job)"""
    name: str | None = None
    """job name (default: <model>-<dataset>-<speedup>x-<method>-s<seed>)"""
    latency_rounds: int = 5
    """alternating base/pruned latency rounds of the final measurement"""
    onnx: bool = True
    """export ONNX (and check it, and time it, with onnxruntime when installed)"""
    device: str | None = None
    """fine-tune device (default: CUDA when available)"""
    progress: bool = True
    """show progress bars"""
    stop_after: str | None = None
    """stop after this stage ('plan' or 'finetune'), e.g. fit the plan on the quiet deployment machine, fine-tune
    elsewhere or beside another job, and time it quietly: rerun the command without it to go on"""

    def job_name(self) -> str:
        model = self.model.replace(":", ".").split(".")[-1]
        return self.name or f"{model}-{Path(self.dataset).name}-{self.speedup:g}x-{self.method}-s{self.seed}"

    def search_env_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.model, "dataset": self.dataset, "target_latency": 1.0 / self.speedup}
        for key in ("checkpoint", "data_root"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        if self.adapt_steps:
            kw["adapt_steps"] = self.adapt_steps
        if self.recovery_steps:
            kw["finetune_steps"] = self.recovery_steps
        return {**kw, **self.env_kwargs}


def _log(opts: CompressOptions, msg: str) -> None:
    if opts.progress:
        print(f"[compress] {msg}", flush=True)


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _check_options(job: Path, opts: CompressOptions) -> None:
    """A job folder belongs to one set of options (progress and the number of episodes may change, and the
    folder may move: ``out`` and ``name`` say where it is, not what it holds)."""
    path = job / "compress.json"
    now = {k: v for k, v in asdict(opts).items() if k not in ("progress", "episodes", "latency_rounds", "stop_after")}
    where = ("out", "name")
    if path.exists():
        saved = json.loads(path.read_text())["options"]
        defaults = asdict(CompressOptions())
        # an option added after the job was made counts as its default (older job folders still resume)
        diff = {k: (saved.get(k), v) for k, v in now.items() if k not in where and
                json.loads(json.dumps(saved.get(k, defaults[k]))) != json.loads(json.dumps(v))}
        if diff:
            raise ValueError(f"{job} was made with other options {diff} (saved, now); use another --name")
    else:
        _write(path, {"options": now, **run_metadata()})


# -- stage 1: the plan ---------------------------------------------------------------------------------
def _search_plan(opts: CompressOptions, job: Path, backend: Any) -> tuple[Any, dict[str, Any]]:
    from pruning_env.plan import PruningPlan

    hyperparams: dict[str, Any] = {}
    how: dict[str, Any] = {"method": opts.method}
    if opts.start_from is not None:
        start, start_how = _start_plan(opts, backend)
        hyperparams = {"start_kept": [int(k) for k in backend.graph.kept_counts(start)], "init_std": opts.start_std}
        how.update(start_from=start_how, start_kept=hyperparams["start_kept"])
        _log(opts, f"plan: the search starts from {opts.start_from} (table-predicted "
                   f"{backend.base_cost / backend.cost(hyperparams['start_kept']):.2f}x)")
    summary = run_search(TrainOptions(
        algo=opts.method, env="DataAwarePrune-v0", episodes=opts.episodes, seed=opts.seed,
        env_kwargs=opts.search_env_kwargs(), hyperparams=hyperparams, run_dir=str(job), name="search",
        progress=opts.progress, tensorboard=False, checkpoint_every=max(1, min(25, opts.episodes // 4 or 1))))
    plan = PruningPlan.load(job / "search" / "best_plan.json")
    how.update(episodes=summary["episodes"], best_reward=summary["best_reward"])
    if opts.rerank > 0:
        plan, how["rerank"] = _rerank(opts, job, backend, hyperparams.get("start_kept"))
    if not opts.fit_measured:
        return plan, how
    kept = np.asarray(backend.graph.kept_counts(plan), dtype=np.float64)
    channels = np.asarray(backend.channels, dtype=np.float64)
    pruned_share = 1.0 - kept / channels

    def scaled(t: float) -> Any:  # t = 0.5: the searched plan; every group's prune ratio scales with t / 0.5
        # nearest allowed width, not the next one up: a 16-channel group at 8 would jump back to 16 at any
        # scale below 1 (with round_to=8), and the family from ResNet-56's 2.2x to below 2x with it
        want = channels * (1.0 - np.minimum(1.0, pruned_share * t / 0.5))
        widths = [min(backend.allowed_counts(g), key=lambda k, w=w: abs(k - w)) for g, w in enumerate(want)]
        return backend.plan(widths, meta={"method": opts.method, "scale": t / 0.5})

    _log(opts, "plan: fitting the searched plan to the target on measured latency")
    try:
        fitted, t = _match_measured(opts, backend, scaled, 0.5)
    except TargetNotReached as e:
        log.warning("the searched plan cannot be fitted to %gx measured (%s); keeping it as searched", opts.speedup, e)
        return plan, {**how, "fit": f"not reached: {e}"}
    how.update(searched_kept=[int(k) for k in kept], matched_on="measured latency", scale=t / 0.5,
               measured_fraction=fitted.meta["match"]["price"])
    return fitted, how


def _rerank(opts: CompressOptions, job: Path, backend: Any, start_kept: list[int] | None) -> tuple[Any, dict]:
    """Re-score the search's ``rerank`` best distinct plans (and its start plan) with ``rerank_steps``
    recovery steps; the plan with the best reward wins. Scores are saved one by one in ``rerank.json``
    (an interrupted re-ranking resumes)."""
    import pandas as pd

    from pruning_env.env import make_backend
    from pruning_env.rewards import make_reward

    episodes = pd.read_csv(job / "search" / "episodes.csv").sort_values("reward", ascending=False, kind="stable")
    channels = np.asarray(backend.channels, dtype=np.float64)
    candidates: dict[tuple[int, ...], dict[str, Any]] = {}
    for row in episodes.itertuples():  # the applied ratios of an episode give its plan exactly
        kept = tuple(int(k) for k in np.rint(channels * (1.0 - np.asarray(json.loads(row.ratios)))))
        if len(candidates) >= opts.rerank:
            break
        candidates.setdefault(kept, {"episode": int(row.episode), "search_reward": float(row.reward)})
    if start_kept is not None and tuple(start_kept) not in candidates:
        first = episodes.sort_values("episode").iloc[0]
        candidates[tuple(start_kept)] = {"episode": int(first["episode"]), "search_reward": float(first["reward"])}

    path = job / "rerank.json"
    done = {tuple(c["kept"]): c for c in json.loads(path.read_text())["candidates"]} if path.exists() else {}
    kwargs = {**opts.search_env_kwargs(), "finetune_steps": opts.rerank_steps}
    scorer = make_backend("DataAwarePrune-v0", **kwargs)
    reward_fn = make_reward(kwargs.get("reward", "latency_accuracy"))
    scored = []
    for i, (kept, info) in enumerate(candidates.items()):
        if kept not in done:
            m = scorer.evaluate(np.array(kept), target_fraction=1.0 / opts.speedup).metrics
            done[kept] = {**info, "kept": list(kept), "accuracy": m.accuracy, "reward": float(reward_fn(m))}
            _write(path, {"rerank_steps": opts.rerank_steps, "candidates": list(done.values())})
        scored.append(done[kept])
        _log(opts, f"rerank: plan {i + 1}/{len(candidates)} (episode {info['episode']}, search reward "
                   f"{info['search_reward']:.3f}): {done[kept]['reward']:.3f} after {opts.rerank_steps} steps")
    best = max(scored, key=lambda c: c["reward"])
    plan = backend.plan(best["kept"], meta={"method": opts.method, "episode": best["episode"],
                                            "rerank_reward": best["reward"]})
    return plan, {"steps": opts.rerank_steps, "chosen_episode": best["episode"], "candidates": scored}


def _baseline_family(method: str, backend: Any) -> tuple[Any, dict[str, Any]]:
    """A baseline's plans as a function of its ratio, and the keyword arguments that made them."""
    # Global pruning progressively (5 steps, at most 90% of a group), as Torch-Pruning's own benchmarks
    # reach a speedup: one-shot global magnitude pruning leaves whole the groups it would empty, and on
    # ResNet-56 no one-shot ratio reaches 2x.
    kw = {"iterative_steps": GLOBAL_STEPS, "max_prune_ratio": 0.9} if method.startswith("global") else {}
    return plan_family(backend.graph, method, round_to=backend.config.round_to, **kw), kw


def _table_match(make: Any, backend: Any, speedup: float) -> tuple[Any, float]:
    """The plan of the family ``make`` at ``speedup`` on the latency table, and its ratio."""
    return match_target(table_price(backend.graph, backend.table), make, float(backend.table.base_ms) / speedup,
                        grid=12, iters=6)


def _baseline_plan(opts: CompressOptions, backend: Any) -> tuple[Any, dict[str, Any]]:
    # Bracket on the latency table, then match the measured latency near its answer.
    make, kw = _baseline_family(opts.method, backend)
    _, r0 = _table_match(make, backend, opts.speedup)
    plan, ratio = _match_measured(opts, backend, make, r0)
    return plan, {"method": opts.method, "ratio": ratio, "table_ratio": r0, "matched_on": "measured latency",
                  "measured_fraction": plan.meta["match"]["price"], **kw}  # as matched, not timed again


def _start_plan(opts: CompressOptions, backend: Any) -> tuple[Any, dict[str, Any]]:
    """The plan a search starts from (``start_from``): a baseline at the search's target on the table (where
    the search prices plans too), or a plan file."""
    from pruning_env.plan import PruningPlan

    if opts.start_from in BASELINES:
        make, kw = _baseline_family(opts.start_from, backend)
        plan, ratio = _table_match(make, backend, opts.speedup)
        return plan, {"baseline": opts.start_from, "table_ratio": ratio, **kw}
    path = Path(str(opts.start_from))
    if not path.is_file():
        raise ValueError(f"--start-from {opts.start_from!r} is neither a baseline ({', '.join(BASELINES)}) nor a "
                         f"plan JSON file")
    plan = PruningPlan.load(path)
    backend.graph.check_plan(plan)  # made for this network, or a clear error
    return plan, {"plan_file": str(path)}


def _warn_if_busy(what: str, load: float | None) -> float | None:
    """A warning when other processes kept more than ``BUSY_CORES`` cores busy around a timing; returns ``load``."""
    if load is not None and load > BUSY_CORES:
        log.warning("%s while other processes keep %.1f cores busy: under load plans do not slow down alike, so "
                    "speedups (and fits) differ from a quiet machine's by up to 10%% (docs/results.md); time with "
                    "nothing else running (--stop-after plan / finetune split a job)", what, load)
    return load


def _match_measured(opts: CompressOptions, backend: Any, make: Any, guess: float) -> tuple[Any, float]:
    """The smallest ratio of the family ``make`` whose plan meets ``1 / speedup`` of the base latency when
    timed (base and pruned alternately, so load that comes and goes hits both; steady load from other
    processes does not slow plans alike, hence the warning when the machine is busy), searched near ``guess``."""
    load = _warn_if_busy("fitting on measured latency", other_load())

    def measured_fraction(plan: Any) -> float:
        base_stats, pruned_stats = backend.measurer.measure_many([backend.graph.model, backend.prune(plan).eval()])
        return pruned_stats["median_ms"] / base_stats["median_ms"]

    # Where the guess is far off on this machine (a tiny network whose time is mostly overhead, a plan the
    # table misprices), the answer lies beyond the window: widen it until it is bracketed.
    lo, hi = max(0.0, guess - 0.08), min(0.95, guess + 0.08)
    while True:
        try:
            plan, ratio = match_target(measured_fraction, make, 1.0 / opts.speedup, lo=lo, hi=hi, grid=2, iters=5)
        except TargetNotReached:
            if hi >= 0.95:
                raise
            log.info("no ratio in [%.2f, %.2f] meets %.2fx measured; widening to [%.2f, %.2f]", lo, hi, opts.speedup,
                     hi, min(0.95, hi + 2 * (hi - lo)))
            lo, hi = hi, min(0.95, hi + 2 * (hi - lo))
            continue
        if ratio > lo or lo == 0.0:
            plan.meta["match"]["other_load_cores"] = load
            return plan, ratio
        log.info("the least pruning in [%.2f, %.2f] already beats %.2fx measured; widening to [%.2f, %.2f]", lo, hi,
                 opts.speedup, max(0.0, lo - 2 * (hi - lo)), lo)
        lo, hi = max(0.0, lo - 2 * (hi - lo)), lo


# -- the job -------------------------------------------------------------------------------------------
def compress(opts: CompressOptions) -> dict[str, Any]:
    """Run (or resume) one compression job; returns ``final.json``'s content."""
    import pruning_env  # noqa: F401  (registers the environments)
    from pruning_env.distill import finetune
    from pruning_env.engine import count_macs_params
    from pruning_env.env import make_backend
    from pruning_env.export import export_onnx, load_pruned, save_pruned
    from pruning_env.measure import LatencyMeasurer, available_backends
    from pruning_env.plan import PruningPlan
    from pruning_env.train import default_device, evaluate, recalibrate_after_finetune, recalibrate_bn

    from .protocol import available_agents

    if opts.speedup <= 1.0:
        raise ValueError(f"--speedup must be > 1 (a measured speedup to reach), got {opts.speedup}")
    if opts.method not in BASELINES and opts.method not in available_agents():
        raise ValueError(f"unknown method {opts.method!r}; agents: {', '.join(available_agents())}; "
                         f"baselines: {', '.join(BASELINES)}")
    if opts.rerank and (opts.method in BASELINES or opts.plan is not None):
        raise ValueError("--rerank re-scores a search's best plans: it needs an agent's search, not a baseline "
                         "or a given --plan")
    if opts.stop_after not in (None, "plan", "finetune"):
        raise ValueError(f"--stop-after must be 'plan' or 'finetune' (the stages a rerun resumes after), got "
                         f"{opts.stop_after!r}")
    if opts.start_from is not None and opts.method != "cem":
        raise ValueError(f"--start-from needs --method cem (the search that starts from a plan), not {opts.method!r}")
    t0 = time.perf_counter()
    job = Path(opts.out) / opts.job_name()
    job.mkdir(parents=True, exist_ok=True)
    _check_options(job, opts)
    seed_everything(opts.seed)

    _log(opts, f"scenario {opts.model} / {opts.dataset} (cached phases load from disk)")
    backend = make_backend("DataAwarePrune-v0", **opts.search_env_kwargs())
    sc = backend.scenario
    if opts.method not in BASELINES and opts.plan is None:
        _check_reach(opts, backend)

    # 1. the plan
    plan_path = job / "plan.json"
    if plan_path.exists():
        plan, how = PruningPlan.load(plan_path), json.loads((job / "plan_source.json").read_text())
        _log(opts, f"plan: from {plan_path} (finished earlier)")
    elif opts.plan is not None:
        plan, how = PruningPlan.load(opts.plan), {"method": opts.method, "plan_file": str(opts.plan)}
        backend.graph.check_plan(plan)  # made for this network, or a clear error
        _log(opts, f"plan: given ({opts.plan})")
        _write(job / "plan_source.json", how)
        plan.save(plan_path)
    else:
        _log(opts, f"plan: {'search with ' + opts.method if opts.method not in BASELINES else opts.method}")
        plan, how = (_baseline_plan(opts, backend) if opts.method in BASELINES else _search_plan(opts, job, backend))
        _write(job / "plan_source.json", how)
        plan.save(plan_path)
    kept = backend.graph.kept_counts(plan)
    if opts.stop_after == "plan":
        _log(opts, f"stopped after the plan ({plan_path}); rerun without --stop-after to go on")
        return {"job": job.name, "stopped_after": "plan", "plan_source": how, "kept": [int(k) for k in kept]}

    # 2. fine-tune (resumable per epoch)
    device = torch.device(opts.device) if opts.device else default_device()
    pruned = backend.prune(plan).to(device)
    done_path = job / "finetuned.pt"
    if done_path.exists():
        pruned.load_state_dict(torch.load(done_path, map_location=device, weights_only=True))
        ft = json.loads((job / "finetuned.json").read_text())
        _log(opts, "fine-tune: finished earlier")
    else:
        recalibrate_bn(pruned, sc.data.train, num_batches=4, device=device)
        acc_before = evaluate(pruned, sc.data.test, device=device)
        history: dict[str, Any] = {}
        if opts.epochs > 0 and opts.max_steps != 0:
            _log(opts, f"fine-tune: {opts.epochs:g} epochs, lr {opts.lr}, distillation weight {opts.kd_weight}")
            teacher = backend.base_model().to(device).eval() if opts.kd_weight > 0 else None
            history = finetune(pruned, sc.data.train, teacher=teacher, epochs=opts.epochs, lr=opts.lr,
                               kd_weight=opts.kd_weight, kd_temperature=opts.kd_temperature,
                               batch_size=opts.batch_size, seed=opts.seed, device=device, progress=opts.progress,
                               max_steps=opts.max_steps, checkpoint_dir=job / "finetune")
            history["bn_recalibrated_after"] = recalibrate_after_finetune(pruned, sc.data.train, history["steps"],
                                                                         device=device)
        acc_after = evaluate(pruned, sc.data.test, device=device)
        ft = {"test_accuracy_before_finetune": acc_before, "test_accuracy": acc_after,
              "seconds": history.get("seconds"), "steps": history.get("steps"),
              "bn_recalibrated_after_finetune": history.get("bn_recalibrated_after", False)}
        torch.save({k: v.detach().cpu() for k, v in pruned.state_dict().items()}, done_path)
        _write(job / "finetuned.json", ft)
    pruned = pruned.cpu().eval()
    if opts.stop_after == "finetune":
        _log(opts, "stopped after the fine-tune; rerun without --stop-after to measure, export and report")
        return {"job": job.name, "stopped_after": "finetune", "plan_source": how, "kept": [int(k) for k in kept], **ft}

    # 3. measure on this machine
    meas_path = job / "measure.json"
    if meas_path.exists():
        meas = json.loads(meas_path.read_text())
    else:
        _log(opts, f"measure: base and pruned timed alternately, {opts.latency_rounds} rounds")
        base_acc = evaluate(sc.model, sc.data.test, device=device)
        meas = {"base_test_accuracy": base_acc,
                "torch": measure_speedup(backend.measurer, sc.model, pruned, rounds=opts.latency_rounds)}
        _warn_if_busy("timing", meas["torch"]["other_load_cores"])
        if opts.onnx and "onnxruntime" in available_backends():
            m = backend.measurer
            ort = LatencyMeasurer(device="cpu", batch_size=m.batch_size, threads=m.threads, backend="onnxruntime",
                                  input_shape=tuple(sc.example_inputs.shape[1:]))
            meas["onnxruntime"] = measure_speedup(ort, sc.model, pruned, rounds=opts.latency_rounds)
        base_macs, base_params = count_macs_params(sc.model, sc.example_inputs)
        macs, params = count_macs_params(pruned, sc.example_inputs)
        meas.update(base_macs=base_macs, macs=macs, base_params=base_params, params=params,
                    predicted_speedup=backend.base_cost / backend.cost(kept) if backend.table is not None else None)
        _write(meas_path, meas)

    # 4. export
    input_shape = tuple(int(s) for s in sc.example_inputs.shape[1:])
    x = torch.stack([sc.data.test[i][0] for i in range(min(16, len(sc.data.test)))]).float()
    model_file = save_pruned(job / "pruned_model.pt", pruned, plan, model_name=sc.model_name,
                             num_classes=sc.data.num_classes, input_shape=input_shape,
                             extra={"job": job.name, "test_accuracy": ft["test_accuracy"]})
    reloaded, _ = load_pruned(model_file)
    diff = float((model_outputs(reloaded, x) - model_outputs(pruned, x)).abs().max())
    export: dict[str, Any] = {"model_file": model_file.name, "reload_max_abs_diff": diff}
    if opts.onnx:
        onnx_file = export_onnx(pruned, job / "pruned_model.onnx", input_shape)
        export.update(onnx_file=onnx_file.name, onnx_check=onnx_check(onnx_file, pruned, x, 1e-4))

    # 5. report
    final = {
        "job": job.name, "options": asdict(opts), "plan_source": how, "kept": kept,
        "channels": [g.channels for g in backend.groups], "groups": [g.name for g in backend.groups],
        "base_test_accuracy": meas["base_test_accuracy"], **ft,
        "accuracy_change": ft["test_accuracy"] - meas["base_test_accuracy"],
        "speedup_measured": meas["torch"]["speedup"], "timed_other_load_cores": meas["torch"].get("other_load_cores"),
        # judged on the final timing, not the one the baselines were matched on: the two can differ
        "misses_target": bool(meas["torch"]["speedup"] < (1.0 - MISS_TOLERANCE) * opts.speedup),
        "speedup_onnxruntime": meas.get("onnxruntime", {}).get("speedup"),
        "speedup_predicted": meas["predicted_speedup"], "base_latency_ms": meas["torch"]["base_latency_ms"],
        "latency_ms": meas["torch"]["pruned_latency_ms"], "macs_ratio": meas["base_macs"] / max(meas["macs"], 1),
        "params_ratio": meas["base_params"] / max(meas["params"], 1), "macs": meas["macs"],
        "params": meas["params"], "export": export, "total_seconds": time.perf_counter() - t0,
        "uniform_kept": _uniform_kept(backend, kept).tolist(), **run_metadata(),
    }
    from .compress_report import write_report

    write_report(job, final)
    _write(job / "final.json", final)
    if final["misses_target"]:
        log.warning("%s measures %.2fx here, more than %d%% short of the %gx target: time it again on a quiet "
                    "machine (latency drifts between processes), or ask for a higher --speedup", job.name,
                    final["speedup_measured"], round(100 * MISS_TOLERANCE), opts.speedup)
    check = export.get("onnx_check", {})
    if check.get("checked") and not check["matches"]:
        raise RuntimeError(f"ONNX export differs from PyTorch by {check['max_abs_diff']:.2e}")
    _log(opts, f"done: {job / 'report.md'}")
    return final


def _check_reach(opts: CompressOptions, backend: Any) -> None:
    """A search needs a target its action space can reach: say so before any episode, and how to widen it."""
    reach = 1.0 / backend.cost_fraction(backend.min_keep)
    if reach < opts.speedup * (1 - 1e-9):
        cfg = backend.config
        raise ValueError(
            f"--speedup {opts.speedup:g} is out of the search's reach on {opts.model}: pruning every group "
            f"as far as allowed (max_prune_ratio={cfg.max_prune_ratio}, widths in multiples of "
            f"round_to={cfg.round_to}) predicts {reach:.2f}x. Ask for at most {reach:.2f}x, or allow more pruning, "
            f"e.g. --env-kwargs '{{\"max_prune_ratio\": 0.9, \"round_to\": 4}}' (ResNet-56 reaches 3x that way).")


def _uniform_kept(backend: Any, kept: list[int]) -> np.ndarray:
    """The uniform plan of the same predicted cost (the smallest uniform ratio that costs no more)."""
    target = backend.cost(kept)
    lo, hi = 0.0, backend.config.max_prune_ratio
    if backend.cost(backend.kept_for_ratios([hi] * backend.n_groups)) > target:
        return backend.kept_for_ratios([hi] * backend.n_groups)
    for _ in range(30):
        mid = (lo + hi) / 2
        if backend.cost(backend.kept_for_ratios([mid] * backend.n_groups)) <= target:
            hi = mid
        else:
            lo = mid
    return backend.kept_for_ratios([hi] * backend.n_groups)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser(CompressOptions, __doc__.split("\n\n")[0], prog="python -m agents.compress")
    opts = options_from_args(CompressOptions, parser.parse_args(argv))
    if opts.progress:  # every phase says what it does and whether it came from the cache
        logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    final = compress(opts)
    keys = ("job", "stopped_after", "test_accuracy_before_finetune", "base_test_accuracy", "test_accuracy",
            "accuracy_change", "speedup_measured", "speedup_onnxruntime", "speedup_predicted", "macs_ratio")
    print(json.dumps({k: final[k] for k in keys if k in final}, indent=2))
    return final


if __name__ == "__main__":
    main()
