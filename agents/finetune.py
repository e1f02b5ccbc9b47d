"""After the search: the best plan becomes a pruned, fine-tuned, measured and exported model.

::

    python -m agents.finetune --run runs/<name> [--epochs 10] [--lr 0.01]

For the run folder written by ``python -m agents.train``, this

1. rebuilds the environment from ``config.json`` (same scenario: model, data, base weights);
2. applies ``best_plan.json`` to the base model (``apply_plan``, a fresh copy);
3. fine-tunes the pruned model on the training split (tqdm progress);
4. measures test accuracy of the base and the pruned model on the test split, which the search never
   saw (it was rewarded on the validation split), and their latency with the environment's
   :class:`~pruning_env.measure.LatencyMeasurer`, in the same process, alternating base and pruned
   runs so that both see the same machine load;
5. exports the pruned model with :func:`pruning_env.export.save_pruned`, checks that
   :func:`pruning_env.export.load_pruned` gives identical outputs, and writes ONNX, checking that
   onnxruntime (when installed) matches PyTorch within ``onnx_atol``;
6. writes ``final.json`` in the run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .train import build_parser, options_from_args, run_metadata, seed_everything

__all__ = ["FinetuneOptions", "finetune_run", "measure_speedup", "model_outputs", "onnx_check", "main"]


@dataclass(frozen=True)
class FinetuneOptions:
    """Options of fine-tuning and exporting the best plan of a search run."""

    run: str
    """run folder written by python -m agents.train"""
    plan: str | None = None
    """plan file to use instead of <run>/best_plan.json"""
    epochs: int = 10
    """fine-tuning epochs over the training split"""
    lr: float = 0.01
    """fine-tuning learning rate (SGD with momentum, cosine schedule, as pruning_env.train.train)"""
    batch_size: int = 128
    """fine-tuning batch size"""
    max_steps: int | None = None
    """stop fine-tuning after this many SGD steps (None: all epochs)"""
    seed: int = 0
    """seed of python, numpy and torch for fine-tuning"""
    device: str | None = None
    """device for fine-tuning and accuracy (default: CUDA when available); latency uses the env's measurer"""
    latency_rounds: int = 3
    """alternating base/pruned latency measurements; the median of the rounds' medians is reported"""
    data_root: str | None = None
    """data folder on this machine, when it differs from the search's (a search run on another machine)"""
    onnx: bool = True
    """export ONNX too (and check it with onnxruntime when installed)"""
    onnx_atol: float = 1e-4
    """largest allowed absolute difference between onnxruntime and PyTorch outputs"""
    progress: bool = True
    """show progress bars"""


def measure_speedup(measurer: Any, base: torch.nn.Module, pruned: torch.nn.Module, rounds: int = 3) -> dict[str, Any]:
    """Latency of both models with one measurer, timed alternately run by run (ms, median of ``rounds`` medians).

    Each round is one :meth:`~pruning_env.measure.LatencyMeasurer.measure_many` session: base and pruned
    model take turns one forward pass at a time, so load that comes and goes hits both alike (timing
    30 runs of one and then 30 of the other let a burst of load fall on one model only: the same plan
    measured 3.1-4.5x on a busy machine). Load that stays does not hit them alike, though (other
    processes' steady load slows some plans more than others): ``other_load_cores`` records how busy the
    machine was (:func:`pruning_env.measure.other_load`).
    """
    from pruning_env.measure import other_load

    load = other_load()
    base_ms, pruned_ms = [], []
    for _ in range(max(1, rounds)):
        b_stats, p_stats = measurer.measure_many([base, pruned])
        base_ms.append(b_stats["median_ms"])
        pruned_ms.append(p_stats["median_ms"])
    b, p = float(np.median(base_ms)), float(np.median(pruned_ms))
    return {"base_latency_ms": b, "pruned_latency_ms": p, "speedup": b / max(p, 1e-12),
            "base_runs_ms": base_ms, "pruned_runs_ms": pruned_ms, "measurer": measurer.describe(),
            "other_load_cores": load}


def model_outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` on the CPU in eval mode, without gradients."""
    model = model.eval().cpu()
    with torch.no_grad():
        return model(x)


def onnx_check(path: Path, model: torch.nn.Module, x: torch.Tensor, atol: float) -> dict[str, Any]:
    """Run the ONNX file in onnxruntime on ``x`` and compare with ``model``'s outputs (largest abs difference)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"checked": False, "reason": "onnxruntime is not installed"}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - model_outputs(model, x).numpy()).max())
    return {"checked": True, "max_abs_diff": diff, "atol": atol, "matches": diff <= atol,
            "onnxruntime": ort.__version__}


def finetune_run(opts: FinetuneOptions, env: gym.Env | None = None) -> dict[str, Any]:
    """Fine-tune, evaluate, measure and export the best plan of ``opts.run``; returns ``final.json``'s content.

    The run's scenario and measurer come from its back end (:func:`pruning_env.env.make_backend` of the
    search's environment arguments; built once per process). ``env``: an environment of the run's
    configuration whose back end to reuse instead.
    """
    import pruning_env  # noqa: F401  (registers the environments)
    from pruning_env.engine import apply_plan, count_macs_params
    from pruning_env.env import make_backend
    from pruning_env.export import export_onnx, load_pruned, save_pruned
    from pruning_env.models import available_models
    from pruning_env.plan import PruningPlan
    from pruning_env.train import default_device, evaluate, recalibrate_after_finetune, recalibrate_bn, train

    run = Path(opts.run)
    config_path = run / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: is {run} a run folder of python -m agents.train?")
    config = json.loads(config_path.read_text())
    plan_path = Path(opts.plan) if opts.plan else run / "best_plan.json"
    if not plan_path.exists():
        raise FileNotFoundError(f"plan {plan_path} does not exist (has the search finished an episode?)")
    plan = PruningPlan.load(plan_path)

    t0 = time.perf_counter()
    seed_everything(opts.seed)
    if env is None:
        env_kwargs = dict(config["options"]["env_kwargs"])
        if opts.data_root is not None:
            env_kwargs["data_root"] = opts.data_root
        backend = make_backend(config["options"]["env"], **env_kwargs)
    elif env.spec is not None and env.spec.id != config["options"]["env"]:
        raise ValueError(f"the given env is {env.spec.id!r} but the run searched {config['options']['env']!r}")
    else:
        backend = env.unwrapped.backend
    sc = backend.scenario
    device = torch.device(opts.device) if opts.device else default_device()
    pruned = apply_plan(sc.model, plan, sc.example_inputs)

    base_acc = evaluate(sc.model, sc.data.test, device=device)
    pruned.to(device)
    recalibrate_bn(pruned, sc.data.train, num_batches=4, device=device)  # BN statistics after surgery
    acc_before = evaluate(pruned, sc.data.test, device=device)
    t_ft = time.perf_counter()
    recalibrated_after = False
    if opts.epochs > 0 and opts.max_steps != 0:  # 0: measure the searched plan as it is (after BN recalibration)
        steps = train(pruned, sc.data.train, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size,
                      device=device, progress=opts.progress, max_steps=opts.max_steps, seed=opts.seed)["steps"]
        # a short fine-tune's running statistics mix stale ones in; a long one's belong to its weights
        recalibrated_after = recalibrate_after_finetune(pruned, sc.data.train, steps, device=device)
    finetune_seconds = time.perf_counter() - t_ft
    acc_after = evaluate(pruned, sc.data.test, device=device)
    pruned = pruned.cpu().eval()

    latency = measure_speedup(backend.measurer, sc.model, pruned, rounds=opts.latency_rounds)
    base_macs, base_params = count_macs_params(sc.model, sc.example_inputs)
    macs, params = count_macs_params(pruned, sc.example_inputs)

    input_shape = tuple(int(s) for s in sc.example_inputs.shape[1:])
    x = torch.stack([sc.data.test[i][0] for i in range(min(16, len(sc.data.test)))]).float()
    model_file = save_pruned(run / "pruned_model.pt", pruned, plan, model_name=sc.model_name,
                             num_classes=sc.data.num_classes, input_shape=input_shape,
                             extra={"run": run.name, "test_accuracy": acc_after})
    export: dict[str, Any] = {"model_file": model_file.name}
    if sc.model_name in available_models():  # load_pruned rebuilds registered architectures by name
        reloaded, _ = load_pruned(model_file)
        export["reload_max_abs_diff"] = float((model_outputs(reloaded, x) - model_outputs(pruned, x)).abs().max())
    if opts.onnx:
        onnx_file = export_onnx(pruned, run / "pruned_model.onnx", input_shape)
        export.update(onnx_file=onnx_file.name, onnx_check=onnx_check(onnx_file, pruned, x, opts.onnx_atol))

    kept = backend.graph.kept_counts(plan)
    predicted = backend.base_cost / backend.cost(kept) if backend.table is not None else None
    final = {
        "run": run.name, "plan_file": str(plan_path), "plan_ratios": plan.ratios(), "plan_meta": plan.meta,
        "options": asdict(opts), "device": str(device),
        "base": {"test_accuracy": base_acc, "latency_ms": latency["base_latency_ms"], "macs": base_macs,
                 "params": base_params},
        "pruned": {"test_accuracy_before_finetune": acc_before, "test_accuracy": acc_after,
                   "bn_recalibrated_after_finetune": recalibrated_after,
                   "latency_ms": latency["pruned_latency_ms"], "macs": macs, "params": params},
        "accuracy_change": acc_after - base_acc, "speedup_measured": latency["speedup"],
        "speedup_predicted": predicted, "macs_ratio": base_macs / max(macs, 1),
        "params_ratio": base_params / max(params, 1),
        "latency": latency, "export": export, "finetune_seconds": finetune_seconds,
        "total_seconds": time.perf_counter() - t0, **run_metadata(),
    }
    (run / "final.json").write_text(json.dumps(final, indent=2, default=str))
    check = export.get("onnx_check", {})
    if check.get("checked") and not check["matches"]:
        raise RuntimeError(f"ONNX export differs from PyTorch by {check['max_abs_diff']:.2e} > {opts.onnx_atol}")
    return final


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser(FinetuneOptions, __doc__.split("\n\n")[0], prog="python -m agents.finetune")
    final = finetune_run(options_from_args(FinetuneOptions, parser.parse_args(argv)))
    keys = ("run", "accuracy_change", "speedup_measured", "speedup_predicted", "macs_ratio")
    print(json.dumps({k: final[k] for k in keys} | {"base": final["base"], "pruned": final["pruned"]}, indent=2))
    return final


if __name__ == "__main__":
    main()
