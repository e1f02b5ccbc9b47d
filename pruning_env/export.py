"""Saving, loading and exporting pruned models without pickled modules.

:func:`save_pruned` writes one file holding the pruned ``state_dict``, the :class:`PruningPlan`
as JSON text and the architecture (model name, classes, input shape). :func:`load_pruned`
rebuilds the architecture from the registry, replays the plan on it (surgery, no weights
needed) and loads the pruned weights, all through ``torch.load(..., weights_only=True)``, so a
file cannot run code. :func:`export_onnx` writes an ONNX graph for deployment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .cache import load_weights_only
from .engine import apply_plan
from .plan import PruningPlan

__all__ = ["save_pruned", "load_pruned", "export_onnx"]

FORMAT = "dataawareprune.pruned"


def save_pruned(
    path: str | Path, model: nn.Module, plan: PruningPlan, model_name: str, num_classes: int,
    input_shape: tuple[int, ...], extra: dict[str, Any] | None = None,
) -> Path:
    """Save a pruned model as ``{state_dict, plan JSON, architecture}`` (loadable with weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = {"model": model_name, "num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape]}
    blob = {
        "format": FORMAT,
        "arch": json.dumps(arch),
        "plan": plan.to_json(),
        "extra": json.dumps(extra or {}, default=str),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_pruned(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, PruningPlan]:
    """Load a file written by :func:`save_pruned`; returns ``(pruned model in eval mode, plan)``.

    ``model``: an unpruned instance of the architecture, needed only for models that are neither in
    the registry nor a ``"package.module:function"`` name (a user's own ``nn.Module`` object); its weights
    are irrelevant.
    """
    path = Path(path)
    blob = load_weights_only(path, "pruned model file", "Write pruned models with pruning_env.save_pruned.")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a DataAwarePrune pruned-model file (written by save_pruned)")
    arch = json.loads(blob["arch"])
    plan = PruningPlan.from_json(blob["plan"])
    if model is None and ":" in arch["model"]:  # a user's "package.module:function"
        from .scenario import build_user_model

        model = build_user_model(arch["model"], num_classes=arch["num_classes"])
    elif model is None:
        from .models import build_model

        model = build_model(arch["model"], num_classes=arch["num_classes"], input_size=arch["input_shape"][-1])
    example = torch.zeros(1, *arch["input_shape"])
    pruned = apply_plan(model, plan, example)
    pruned.load_state_dict(blob["state_dict"], strict=True)
    return pruned.eval(), plan


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], opset: int = 17,
                dynamic_batch: bool = True) -> Path:
    """Export ``model`` to ONNX with a dynamic batch dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.zeros(1, *input_shape)
    kwargs: dict[str, Any] = dict(input_names=["input"], output_names=["logits"], opset_version=opset)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    try:
        torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
    except TypeError:  # older torch without the dynamo flag
        torch.onnx.export(model, (example,), str(path), **kwargs)
    return path
