"""Scenarios: a base model, a dataset and base weights, loaded once and identified by a hash.

A scenario is what a pruning episode starts from. :func:`load_scenario` resolves

* the model: a registered name (``"resnet56"``) or any ``torch.nn.Module``;
* the dataset: a registered name (``"digits"``, ``"cifar10"``, ...) with a deterministic
  train/validation split;
* the base weights: an explicit checkpoint (always ``torch.load(..., weights_only=True)``), a
  ``<data_root>/pretrained/<dataset>_<model>.pth`` file, a cached result of :func:`pretrain`, or,
  for the embedded default (digits + ``small_resnet``), training on first use (seconds).

For a class subset (``cifar10:classes=2,3,4,5,6,7``, :mod:`pruning_env.subsets`) the base weights are
the full dataset's (``pretrained/cifar10_<model>.pth``, the cached trained base, or a checkpoint with
the full head) with the classifier sliced to the subset's rows (:func:`~pruning_env.subsets.slice_classifier`);
``adapt_steps`` then adapts them to the subset, cached under the subset's fingerprint. A checkpoint whose
head already has the subset's classes is used as it is.

The scenario id hashes the weights, the dataset fingerprint and the input shape, so every
artefact cached for a scenario (latency table, attention, statistics) is rebuilt when any of
them changes.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .cache import cache_dir, cached_tensors, load_weights_only, stable_hash, state_dict_hash
from .cache import data_root as resolve_data_root
from .data import load_dataset
from .engine import ModelGraph
from .models import available_models, build_model
from .splits import DatasetSplits
from .subsets import find_classifier, slice_classifier, split_subset_spec
from .train import evaluate, train

__all__ = [
    "Scenario", "load_scenario", "build_user_model", "load_checkpoint", "pretrain", "adapt", "DEFAULT_MODEL",
    "DEFAULT_DATASET",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "small_resnet"
DEFAULT_DATASET = "digits"

# Epochs used when a base model must be trained from scratch by `load_scenario`.
# digits + small_resnet (32/64 channels): 15 epochs of SGD reach 98.3% test accuracy in 124 s on 2 quiet cores
# (8 epochs: 94-96% depending on the initialisation).
_AUTO_TRAIN = {("small_resnet", "digits"): dict(epochs=15, lr=0.1, batch_size=64)}


@dataclass
class Scenario:
    """A base model with its data, ready to be pruned.

    Attributes:
        model: the base model (eval mode, on CPU); never modified by the environment.
        data: train / val / test splits.
        model_name: registry name, or the class name of a user's module.
        example_inputs: a ``1 x C x H x W`` tensor used to trace the model.
        graph: the prunable groups of ``model``.
        id: hash of the weights, data fingerprint and input shape.
        weights_source: where the base weights came from.
    """

    model: nn.Module
    data: DatasetSplits
    model_name: str
    example_inputs: torch.Tensor
    graph: ModelGraph
    id: str
    weights_source: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return len(self.graph.groups)

    def describe(self) -> dict[str, Any]:
        return {
            "scenario_id": self.id, "model": self.model_name, "dataset": self.data.name,
            "data_source": self.data.source, "weights": self.weights_source,
            "input_shape": list(self.example_inputs.shape[1:]), "groups": self.num_groups, **self.info,
        }


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a state dict into ``model`` safely (``weights_only=True``), with helpful errors."""
    path = Path(path).expanduser()
    state = load_weights_only(path, "checkpoint", "DataAwarePrune only loads plain state_dicts: re-save it with "
                              "torch.save(model.state_dict(), path).")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if strict and (missing or unexpected or shape):
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if shape:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shape[:4]))
        raise ValueError(
            f"checkpoint {path} does not match {type(model).__name__}: " + "; ".join(parts)
            + ". Check the model name and num_classes match the checkpoint."
        )
    model.load_state_dict(state, strict=strict)
    return model


def _file_stem(name: str) -> str:
    """``name`` safe in a file name: ``cifar10:classes=2,3`` -> ``cifar10-classes-2-3``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"


def _weights_cache_path(model_name: str, data: DatasetSplits, init_hash: str, settings: dict) -> Path:
    key = stable_hash({"model": model_name, "data": data.fingerprint, "init": init_hash, **settings})
    return cache_dir("weights") / f"{_file_stem(data.name)}_{model_name}_{key}.pth"


def pretrain(
    model_name: str,
    dataset: str | DatasetSplits = DEFAULT_DATASET,
    checkpoint: str | Path | None = None,
    data_root: str | Path | None = None,
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    out: str | Path | None = None,
) -> tuple[nn.Module, Path, dict[str, float]]:
    """Train (or, from ``checkpoint``, adapt) a base model on a dataset and cache the weights.

    Returns the model, the path of the cached state_dict and its validation/test accuracy. A
    second call with the same arguments loads the cached weights instead of training.
    """
    data = dataset if isinstance(dataset, DatasetSplits) else load_dataset(dataset, data_root=data_root)
    torch.manual_seed(seed)  # the initialisation is part of what `seed` fixes
    size = data.input_shape[-1]
    model = build_model(model_name, num_classes=data.num_classes, input_size=size)
    init_hash = "scratch"
    if checkpoint is not None:  # for a class subset: a checkpoint of the full dataset's head is sliced
        sub = data.subset
        heads = (sub.parent_num_classes, data.num_classes) if sub is not None else (data.num_classes,)
        model = _load_either_head(lambda n: build_model(model_name, num_classes=n, input_size=size), checkpoint,
                                  heads)
        model, _ = _fit_head(model, data, str(checkpoint))
        init_hash = state_dict_hash(model)
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    path = Path(out) if out else _weights_cache_path(model_name, data, init_hash, settings)
    if path.exists():
        try:
            load_checkpoint(model, path)
            return model.eval(), path, {}
        except ValueError as exc:
            log.warning("cached weights %s unusable (%s); retraining", path, exc)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train(model, data.train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    model.eval()
    metrics = {
        "val_accuracy": evaluate(model, data.val), "test_accuracy": evaluate(model, data.test),
        "train_seconds": time.perf_counter() - t0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    log.info("trained %s on %s: %s -> %s", model_name, data.name, metrics, path)
    return model, path, metrics


def adapt(
    model: nn.Module,
    data: DatasetSplits,
    steps: int,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Path]:
    """Fine-tune ``model`` in place for ``steps`` SGD steps on ``data``'s train split; cached on disk.

    This adapts published weights to a shifted copy of their dataset (for example the JPEG-degraded
    CIFAR-10 in ``../shared/data``) before pruning: a pruning benchmark on a base model that does not
    fit its data measures the shift, not the pruning. Cosine learning rate from ``lr`` to 0, crops and
    flips, momentum 0.9, weight decay 5e-4. The cache key is the starting weights, the data
    fingerprint and the settings (not the device: a GPU run fills the cache a CPU run reads).
    Returns the model (CPU, eval mode) and the cached state_dict's path.
    """
    if steps <= 0:
        raise ValueError(f"adapt needs steps > 0, got {steps}")
    key = stable_hash({"weights": state_dict_hash(model), "data": data.fingerprint, "steps": int(steps),
                       "lr": float(lr), "batch_size": int(batch_size), "seed": int(seed)})
    name = type(model).__name__.lower()
    path = cache_dir("adapted") / f"{_file_stem(data.name)}_{name}_{key}.pth"

    def build() -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        epochs = -(-int(steps) * batch_size // max(1, len(data.train))) + 1
        train(model, data.train, epochs=epochs, lr=lr, batch_size=batch_size, max_steps=int(steps), seed=seed,
              progress=log.isEnabledFor(logging.INFO), device=device)
        log.info("adapted %s to %s in %d steps (%.0f s)", name, data.name, steps, time.perf_counter() - t0)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    model.load_state_dict(cached_tensors(path, build, what=f"adapting {name} to {data.name} ({steps} steps)"))
    return model.cpu().eval(), path


def build_user_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """Import ``"package.module:function"`` and call the function (with ``num_classes=`` when it takes it).

    This is how a user's own network enters a scenario by name, so that run folders (which record the
    environment's arguments as JSON) can rebuild it.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a user model is 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {spec!r} ({e}); is the module on PYTHONPATH (run from its folder)?") from e
    takes_classes = "num_classes" in inspect.signature(fn).parameters
    net = fn(num_classes=num_classes) if takes_classes and num_classes is not None else fn()
    if not isinstance(net, nn.Module):
        raise TypeError(f"{spec}() returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _fit_head(net: nn.Module, data: DatasetSplits, source: str) -> tuple[nn.Module, str]:
    """For a class subset: slice a head with the parent's classes to the subset's rows; else as it is."""
    sub = data.subset
    if sub is None:
        return net, source
    try:
        find_classifier(net, sub.parent_num_classes)
    except ValueError:
        find_classifier(net, data.num_classes)  # already the subset's head (or a clear error)
        return net, source
    ids = ",".join(str(i) for i in sub.class_ids)
    return slice_classifier(net, sub.class_ids, sub.parent_num_classes), f"{source}, head sliced to classes {ids}"


def _load_either_head(build: Any, path: str | Path, heads: tuple[int, ...]) -> nn.Module:
    """``build(n)`` loaded from ``path`` for the first head size ``n`` in ``heads`` the checkpoint fits."""
    for n in heads[:-1]:
        try:
            return load_checkpoint(build(n), path)
        except ValueError:
            continue
    return load_checkpoint(build(heads[-1]), path)  # the last size's error says what does not match


def shipped_weights_path(model: str, dataset: str, data_root: str | Path | None = None) -> Path:
    """Where :func:`load_scenario` looks for a registered model's base weights on a dataset (for a class
    subset, the full dataset's): ``<data_root>/pretrained/<dataset>_<model>.pth``."""
    return resolve_data_root(data_root) / "pretrained" / f"{split_subset_spec(dataset)[0]}_{model}.pth"


def _no_weights_message(model: str, dataset: str, shipped: Path) -> str:
    return (f"no base weights for model {model!r} on dataset {dataset!r}: pass checkpoint=<state_dict .pth>, "
            f"put one at {shipped}, or train one with `python -m pruning_env.pretrain --model {model} --dataset "
            f"{dataset} --out {shipped}` (or load_scenario(..., train_if_missing=True)).")


def missing_base_weights(model: Any, dataset: Any, checkpoint: str | Path | None = None,
                         data_root: str | Path | None = None, train_if_missing: bool | None = None) -> str | None:
    """Why :func:`load_scenario` would stop for lack of base weights with these arguments (the message it
    raises), or None when it would find or train them. Loads nothing: a preflight for long jobs."""
    if checkpoint is not None or not isinstance(model, str) or ":" in model or not isinstance(dataset, str):
        return None
    base = split_subset_spec(dataset)[0]
    shipped = shipped_weights_path(model, base, data_root)
    if shipped.exists() or (train_if_missing if train_if_missing is not None else (model, base) in _AUTO_TRAIN):
        return None
    return _no_weights_message(model, base, shipped)


def load_scenario(
    model: str | nn.Module = DEFAULT_MODEL,
    dataset: str | DatasetSplits = DEFAULT_DATASET,
    checkpoint: str | Path | None = None,
    data_root: str | Path | None = None,
    train_if_missing: bool | None = None,
    num_classes: int | None = None,
    adapt_steps: int = 0,
    adapt_lr: float = 0.01,
    device: str | torch.device | None = None,
) -> Scenario:
    """Resolve model + dataset + weights into a :class:`Scenario`.

    Args:
        model: registered model name (see :func:`pruning_env.models.available_models`), a user's
            ``"package.module:function"`` returning a module (:func:`build_user_model`; its weights, or
            ``checkpoint``, are the base), or a module whose current weights are the base weights.
        dataset: registered dataset name, a class subset of one (``"cifar10:classes=2,3,4,5,6,7"``), or
            already loaded splits.
        checkpoint: state_dict file for the base weights (``weights_only=True``); for a class subset,
            with the full dataset's head (sliced) or the subset's.
        data_root: where datasets (and ``pretrained/<dataset>_<model>.pth``) are looked for.
        train_if_missing: train base weights when none are found. Default: only for the
            embedded default scenario, which trains in seconds (for a subset of digits: on all digits).
        num_classes: override the dataset's class count for the model head (of a class subset: the head
            the base weights have before slicing).
        adapt_steps, adapt_lr: fine-tune the loaded weights this many steps on the train split first
            (:func:`adapt`, cached); 0 uses them as they are.
        device: where the adaptation trains (default: CUDA when available).
    """
    data = dataset if isinstance(dataset, DatasetSplits) else load_dataset(dataset, data_root=data_root)
    sub = data.subset
    # the head the base weights have: a subset starts from the full dataset's weights
    base_name = sub.parent if sub is not None else data.name
    ncls = num_classes or (sub.parent_num_classes if sub is not None else data.num_classes)
    heads = (ncls,) if sub is None or num_classes else (ncls, data.num_classes)
    size = data.input_shape[-1]
    info: dict[str, Any] = {}
    if isinstance(model, nn.Module):
        net, name = model, type(model).__name__
        source = "user module"
        if checkpoint is not None:
            load_checkpoint(net, checkpoint)
            source = str(checkpoint)
    elif isinstance(model, str) and ":" in model:  # a user's "package.module:function"
        name = model
        net = (_load_either_head(lambda n: build_user_model(model, num_classes=n), checkpoint, heads)
               if checkpoint is not None else build_user_model(model, num_classes=ncls))
        source = str(checkpoint) if checkpoint is not None else f"{model}() as returned"
    elif isinstance(model, str):
        if model not in available_models():
            raise ValueError(f"unknown model {model!r}; valid names: {', '.join(available_models())}, "
                             "'package.module:function' returning a torch.nn.Module, or any torch.nn.Module")
        name = model
        shipped = shipped_weights_path(name, base_name, data_root)
        if checkpoint is not None:
            net = _load_either_head(lambda n: build_model(name, num_classes=n, input_size=size), checkpoint, heads)
            source = str(checkpoint)
        elif shipped.exists():
            net = load_checkpoint(build_model(name, num_classes=ncls, input_size=size), shipped)
            source = str(shipped)
        else:
            auto = (name, base_name) in _AUTO_TRAIN
            if train_if_missing is None:
                train_if_missing = auto
            if not train_if_missing:
                raise FileNotFoundError(_no_weights_message(name, base_name, shipped))
            kw = _AUTO_TRAIN.get((name, base_name), {})
            # a subset's base is trained on the full dataset (the cached one the full scenario uses)
            parent = load_dataset(base_name, data_root=data_root) if sub is not None else data
            net, path, metrics = pretrain(name, parent, progress=False, **kw)
            source = f"trained by pretrain ({path.name})"
            info.update(metrics)
    else:
        raise TypeError(f"model must be a registered name or a torch.nn.Module, got {type(model).__name__}")
    net, source = _fit_head(net.cpu().eval(), data, source)
    if adapt_steps:
        net, path = adapt(net, data, adapt_steps, lr=adapt_lr, seed=0, device=device)
        source = f"{source}, adapted {adapt_steps} steps ({path.name})"
        info["adapt_steps"] = int(adapt_steps)
    example = torch.zeros(1, *data.input_shape)
    graph = ModelGraph(net, example)
    sid = stable_hash({"weights": state_dict_hash(net), "data": data.fingerprint, "input": list(example.shape),
                       "model": name})
    return Scenario(model=net, data=data, model_name=name, example_inputs=example, graph=graph, id=sid,
                    weights_source=source, info=info)
