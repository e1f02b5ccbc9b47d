"""Channel criteria compared under uniform pruning: ``python -m benchmarks.criteria``.

For each model (CIFAR ResNets with the published CIFAR-10 weights, optionally adapted by a short
cached fine-tune to the JPEG-degraded offline copy), each criterion and each ratio, every group
loses the same fraction of its channels (the lowest-scoring ones); the pruned model is measured
on the validation split (never the test split) after BN recalibration, and again after a short
fine-tune. ``random`` is averaged over ``--random-seeds`` seeds (mean and std).

The published weights were trained on the full original CIFAR-10 training set, which contains
this project's validation split (carved from the training set), so validation accuracies of these
models are optimistic in absolute terms; the comparison between criteria is what this measures.

Example (ResNet-20, reduced settings; about 75 minutes on 2 shared cores, of which the cached
adaptation takes 13 and every pruned fine-tune about 3)::

    python -m benchmarks.criteria --models resnet20 --finetune-steps 100 --val-samples 2000

``--criteria``, ``--ratios``, ``--random-seeds 1`` and ``--finetune-steps 0`` make it shorter.
With ``--out``, every row is written as soon as it is measured; run the same command again after a
stop and it measures only the missing rows (it refuses an ``--out`` measured with other settings).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import inspect
import json
import logging
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from benchmarks.attention_scorings import AttentionScoring
from pruning_env.data import load_dataset
from pruning_env.engine import ModelGraph, apply_plan
from pruning_env.importance import ATTENTION_VERSION, available_importances, make_importance
from pruning_env.models import build_model
from pruning_env.scenario import adapt
from pruning_env.train import evaluate, recalibrate_bn, train

__all__ = ["Args", "ATTENTION_COMBINE", "parse_args", "finetune", "adapted_base", "val_splits", "run_model", "table",
           "main"]

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.criteria")


@dataclass(frozen=True)
class Args:
    """Options of the criteria benchmark."""

    models: tuple[str, ...] = ("resnet20", "resnet56")
    """CIFAR ResNets with weights ``<data-root>/pretrained/cifar10_<model>.pth``."""
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    """fractions of the channels of every group that are removed."""
    criteria: tuple[str, ...] = ("attention", "attention_rank", "attention_gate", "attention_act", "attention_odds",
                                 "l1", "bn", "taylor", "activation", "random")
    """criteria to compare: names of ``make_importance`` (``attention`` is its default, the consensus order;
    ``attention_consensus`` is another name for it), and other ways of scoring with the same trained gates:
    ``attention_rank`` (gate rank + activation rank, version 3's default), ``attention_gate`` (the mean gate
    alone), ``attention_act`` (gate x relative activation), ``attention_odds`` (gate odds x activation)."""
    random_seeds: int = 3
    """seeds of the ``random`` criterion."""
    attention_seeds: tuple[int, ...] = (0,)
    """training seeds of the group attention (an attention criterion with several is reported as mean±std)."""
    data_root: str = str(ROOT.parent / "shared" / "data")
    """folder holding ``cifar10/`` and ``pretrained/``."""
    adapt_steps: int = 400
    """steps of the cached adaptation fine-tune of the base model to this data (0 = no adaptation)."""
    adapt_lr: float = 0.01
    """initial learning rate of the adaptation (cosine to 0)."""
    finetune_steps: int = 200
    """steps of the fine-tune after pruning (0 = none)."""
    finetune_lr: float = 0.01
    """initial learning rate of that fine-tune (cosine to 0)."""
    batch_size: int = 128
    """batch size of adaptation and fine-tuning."""
    recal_batches: int = 20
    """training batches (of ``batch_size``) for BN recalibration after pruning."""
    val_samples: int = 2000
    """validation samples for every accuracy (class-balanced prefix of the val split)."""
    select_samples: int = 0
    """if > 0, the first ``select_samples`` of those validation samples are held apart: accuracies on them
    are recorded as ``*_select`` (for choosing a design) and the table reports the other ones."""
    attention_steps: int = 300
    """training steps of the group attention."""
    attention_batch: int = 64
    """batch size of the group attention training."""
    attention_sparsity: float = 2.0
    """weight of the mean gate in the attention's training loss (``sparsity`` of ``train_group_attention``)."""
    threads: int = 1
    """torch threads (1 is fastest on a shared 2-core machine)."""
    device: str = "cpu"
    """device of adaptation, fine-tunes, BN recalibration and evaluation (``cuda`` on a GPU machine);
    scoring and surgery run on the CPU."""
    finetune_seeds: tuple[int, ...] = (0,)
    """seeds of the fine-tune: every pruned model is fine-tuned once per seed from the same recalibrated
    weights (one row each; the table reports mean±std over criterion and fine-tune seeds)."""
    out: str | None = None
    """optional JSON file for the results."""
    merge: tuple[str, ...] = ()
    """JSON files written by earlier runs (``--out``): print their tables together and run nothing."""


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (CleanRL style), for ``--help``."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: b.value.value for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


def parse_args(argv: list[str] | None = None) -> Args:
    """The :class:`Args` of a command line (``sys.argv[1:]`` when ``argv`` is None); exits on a bad one."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = _field_docs(Args)
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{docs.get(f.name, '')} (default: {f.default})"
        if f.type.startswith("tuple"):
            elem = float if "float" in f.type else int if "int" in f.type else str
            p.add_argument(flag, nargs="+", type=elem, default=f.default, help=help_)
        else:
            typ = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
            p.add_argument(flag, type=typ, default=f.default, help=help_)
    if any(t == "--seed" or t.startswith("--seed=") for t in (sys.argv[1:] if argv is None else argv)):
        p.error("--seed was replaced by --finetune-seeds (seeds of the fine-tune) and --attention-seeds "
                "(training seeds of the attention); random has --random-seeds")
    ns = p.parse_args(argv)
    return Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items()})


def finetune(model: nn.Module, data, steps: int, lr: float, batch_size: int, seed: int, device: str) -> nn.Module:
    """Fine-tune ``model`` in place for ``steps`` steps on ``data`` and return it in eval mode.

    SGD (momentum 0.9, nesterov, wd 5e-4), learning rate cosine to 0 over ``steps``, crops and flips.
    """
    if steps > 0:
        train(model, data, epochs=math.ceil(steps * batch_size / len(data)) + 1, lr=lr, batch_size=batch_size,
              max_steps=steps, seed=seed, progress=False, device=device)
    return model.eval()


# -- the benchmark -----------------------------------------------------------------------------
def adapted_base(name: str, data, a: Args) -> nn.Module:
    """Published weights, adapted ``adapt_steps`` on the train split by :func:`pruning_env.scenario.adapt`
    (the cache the environment's ``adapt_steps`` reads too)."""
    model = build_model(name, num_classes=data.num_classes)
    ckpt = Path(a.data_root) / "pretrained" / f"cifar10_{name}.pth"
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True), strict=True)
    if a.adapt_steps <= 0:
        return model.eval()
    t0 = time.perf_counter()
    model, path = adapt(model, data, a.adapt_steps, lr=a.adapt_lr, batch_size=a.batch_size, seed=0, device=a.device)
    log.info("%s: adapted base ready in %.0f s (%s)", name, time.perf_counter() - t0, path)
    return model.eval()


# benchmark criterion -> scoring of the trained gates (benchmarks.attention_scorings); results files record it
ATTENTION_COMBINE = {"attention": "consensus", "attention_rank": "activation_rank", "attention_gate": "none",
                     "attention_act": "activation", "attention_odds": "activation_odds",
                     "attention_consensus": "consensus"}


def val_splits(data, a: Args) -> tuple:
    """(report split, selection split or None) of the first ``val_samples`` validation samples."""
    n = min(a.val_samples, len(data.val))
    if a.select_samples <= 0:
        return data.val.subset(n), None
    if a.select_samples >= n:
        raise SystemExit(f"--select-samples ({a.select_samples}) must be below --val-samples ({n})")
    return data.val.subset(list(range(a.select_samples, n))), data.val.subset(a.select_samples)


def _row_key(r: dict) -> tuple:
    return r["model"], r["criterion"], r["seed"], r["ratio"], r.get("finetune_seed", 0)


# settings that choose which rows a run makes, not what a row measures: a run may resume with others
_SELECTION_ARGS = {"models", "criteria", "ratios", "random_seeds", "attention_seeds", "finetune_seeds", "threads",
                   "out", "merge"}


def _scoring() -> dict:
    """What the criterion names mean in this version (a resumed file must have been measured with the same)."""
    return {"attention_version": ATTENTION_VERSION, "attention_combine": ATTENTION_COMBINE}


def _previous_rows(a: Args) -> list[dict]:
    """Rows of an unfinished or earlier run in ``--out`` with the same measuring settings (else exit)."""
    if not a.out or not Path(a.out).exists():
        return []
    try:
        run = json.loads(Path(a.out).read_text())
        old, rows = run["args"], run["rows"]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--out {a.out} exists but is not a results file of this benchmark ({e}): "
                         "pass another --out or move it away") from None
    new = dataclasses.asdict(a)
    differ = [k for k in new if k not in _SELECTION_ARGS and json.dumps(old.get(k)) != json.dumps(new[k])]
    if differ:
        flags = ", ".join(f"--{k.replace('_', '-')} {old.get(k)!r} -> {new[k]!r}" for k in differ)
        raise SystemExit(f"--out {a.out} holds rows measured with other settings ({flags}): "
                         "pass another --out, or delete it to start over")
    if run.get("scoring") != _scoring():
        raise SystemExit(f"--out {a.out} was measured with another version of the criteria (attention scoring "
                         f"{run.get('scoring')}, now {_scoring()}): pass another --out, or delete it to start over")
    return rows


def run_model(name: str, data, a: Args, done: dict | None = None, emit=None) -> list[dict]:
    """Rows of one model; rows whose key is in ``done`` are skipped, every new row goes to ``emit``."""
    done = done or {}
    ex = torch.randn(1, *data.input_shape)
    base = adapted_base(name, data, a)
    graph = ModelGraph(base, ex)
    report, select = val_splits(data, a)
    base_acc = evaluate(base, report, device=a.device)
    print(f"\n{name}: {len(graph)} groups, base val accuracy {base_acc:.4f} on {len(report)} val samples", flush=True)
    rows = []
    ft_seeds = a.finetune_seeds if a.finetune_steps > 0 else a.finetune_seeds[:1]
    for crit in a.criteria:
        seeds = range(a.random_seeds) if crit == "random" else a.attention_seeds if crit in ATTENTION_COMBINE \
            else [0]
        for seed in seeds:
            todo = {r: [f for f in ft_seeds if (name, crit, seed, r, f) not in done] for r in a.ratios}
            if not any(todo.values()):
                print(f"  {crit:<14} seed {seed}: every row is in {a.out} already", flush=True)
                continue
            t0 = time.perf_counter()
            if crit in ATTENTION_COMBINE:
                imp = make_importance("attention", model=base, graph=graph, data=data, seed=seed,
                                      steps=a.attention_steps, batch_size=a.attention_batch,
                                      sparsity=a.attention_sparsity)
                imp = AttentionScoring(imp.stats, base, combine=ATTENTION_COMBINE[crit])  # the same gates
            else:
                imp = make_importance(crit, model=base, graph=graph, data=data, seed=seed)
            scores = graph.scores(imp)
            score_s = time.perf_counter() - t0
            for r in a.ratios:
                if not todo[r]:
                    continue
                plan = graph.plan_from_ratios([r] * len(graph), scores)
                pruned = apply_plan(base, plan, ex).to(a.device)
                recalibrate_bn(pruned, data.train.iter_batches(a.batch_size), num_batches=a.recal_batches)
                row = {"model": name, "criterion": crit, "seed": seed, "ratio": r, "base_acc": base_acc,
                       "score_seconds": round(score_s, 1), "val_samples": len(report)}
                row["acc_recal"] = evaluate(pruned, report)
                if select is not None:
                    row["acc_recal_select"] = evaluate(pruned, select)
                row["acc_finetuned"] = row["acc_finetuned_select"] = float("nan")
                for ft_seed in todo[r]:
                    row = {**row, "finetune_seed": ft_seed}
                    if a.finetune_steps > 0:
                        tuned = finetune(copy.deepcopy(pruned), data.train, a.finetune_steps, a.finetune_lr,
                                         a.batch_size, ft_seed, a.device)
                        row["acc_finetuned"] = evaluate(tuned, report)
                        if select is not None:
                            row["acc_finetuned_select"] = evaluate(tuned, select)
                    rows.append(row)
                    if emit is not None:
                        emit(row)
                    print(f"  {crit:<14} seed {seed} ratio {r:.1f}: recal {row['acc_recal']:.4f}  finetuned "
                          f"{row['acc_finetuned']:.4f} (fine-tune seed {ft_seed}; scoring {score_s:.0f} s)", flush=True)
            del imp
    return rows


def table(rows: list[dict], a: Args, split: str = "") -> str:
    """One block per model: ratio x criterion, ``recal / finetuned`` accuracy in %, mean±std over seeds
    where a criterion has several: recalibration over the criterion's seeds, fine-tuned over criterion and
    fine-tune seeds (``split="_select"``: on the held-apart selection samples)."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == name]
        crits = list(dict.fromkeys(r["criterion"] for r in mrows))
        which = "selection" if split else "reported"
        lines.append(f"\n{name} on CIFAR-10 (JPEG copy), base {100 * mrows[0]['base_acc']:.2f}%, val accuracy % "
                     f"({which} samples) after BN recalibration / after {a.finetune_steps}-step fine-tune")
        lines.append("| ratio | " + " | ".join(crits) + " |")
        lines.append("|---|" + "---|" * len(crits))
        for ratio in a.ratios:
            cells = []
            for c in crits:
                rs = [r for r in mrows if r["criterion"] == c and r["ratio"] == ratio]
                once = list({r["seed"]: r for r in reversed(rs)}.values())  # recalibration: once per criterion seed
                parts = []
                for key, kept in (("acc_recal" + split, once), ("acc_finetuned" + split, rs)):
                    v = [100 * r.get(key, float("nan")) for r in kept]
                    if any(math.isnan(x) for x in v):
                        parts.append("-")
                    elif len(v) > 1:
                        parts.append(f"{statistics.mean(v):.2f}±{statistics.stdev(v):.2f}")
                    else:
                        parts.append(f"{v[0]:.2f}")
                cells.append(" / ".join(parts))
            lines.append(f"| {ratio:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse_args(argv)
    if a.merge:
        runs = [json.loads(Path(f).read_text()) for f in a.merge]
        # rows written before --finetune-seeds: one fine-tune, seeded by the then ``--seed``
        rows = [{"finetune_seed": run["args"].get("seed", 0), **r} for run in runs for r in run["rows"]]
        first = Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in runs[0]["args"].items()
                        if k in {f.name for f in dataclasses.fields(Args)}})
        print(table(rows, first))
        if any("acc_recal_select" in r for r in rows):
            print(table(rows, first, "_select"))
        return rows
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    valid = list(dict.fromkeys([*available_importances(), *ATTENTION_COMBINE]))
    unknown = set(a.criteria) - set(valid)
    if unknown:
        raise SystemExit(f"unknown criteria {sorted(unknown)}; valid: {valid}")
    if a.select_samples >= a.val_samples:  # before minutes of loading, adapting and scoring
        raise SystemExit(f"--select-samples ({a.select_samples}) must be below --val-samples ({a.val_samples})")
    rows = _previous_rows(a)  # before minutes of loading, too
    torch.set_num_threads(a.threads)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    data = load_dataset("cifar10", data_root=a.data_root, download=False)
    print(f"data: {data.source}; train {len(data.train)}, val {len(data.val)}; torch {torch.__version__}, "
          f"{a.threads} thread(s), {platform.processor() or platform.machine()}", flush=True)
    meta = {"data": data.source, "data_fingerprint": data.fingerprint, "torch": torch.__version__,
            "torch_pruning": tp.__version__, "threads": a.threads, "machine": platform.platform(),
            "processor": platform.processor() or platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "device": a.device, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if rows:
        print(f"resuming {a.out}: its {len(rows)} rows are kept and not measured again", flush=True)

    def emit(row: dict) -> None:  # every row reaches --out as soon as it is measured: a stopped run resumes
        rows.append(row)
        if a.out:
            tmp = Path(f"{a.out}.tmp")
            tmp.write_text(json.dumps({"args": dataclasses.asdict(a), "meta": meta, "scoring": _scoring(),
                                       "rows": rows}, indent=1))
            tmp.replace(a.out)

    done = {_row_key(r): r for r in rows}
    for name in a.models:
        run_model(name, data, a, done, emit)
    print(table(rows, a))
    if a.select_samples > 0:
        print(table(rows, a, "_select"))
    return rows


if __name__ == "__main__":
    main()
