"""Training, fine-tuning, evaluation and BN recalibration loops.

Plain PyTorch loops, kept small and fast: the environment calls :func:`evaluate` and
:func:`recalibrate_bn` at the end of every episode and, optionally, :func:`finetune` for a few
recovery steps. Data can be a :class:`~pruning_env.image_dataset.TensorImageDataset` (its fast
``iter_batches`` path, with its own seeded augmentation), any ``torch.utils.data.Dataset``, a pair
of tensors ``(x, y)``, or any iterable of ``(x, y)`` batches.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

__all__ = [
    "default_device", "evaluate", "recalibrate_bn", "recalibrate_after_finetune", "SHORT_FINETUNE_STEPS", "train",
    "finetune", "pinned_threads", "iter_data", "count_batches", "step_budget", "build_optimizer",
]

SHORT_FINETUNE_STEPS = 100
"""Below this many SGD steps a fine-tune's BatchNorm running statistics are replaced by clean ones
(:func:`recalibrate_after_finetune`); from it on they are kept (docs/results.md, "BatchNorm after a
fine-tune")."""

@contextlib.contextmanager
def pinned_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (restored afterwards); ``None`` leaves it alone.

    Two processes that each use torch's default intra-op threads on the same cores slow each other
    down 20-30x (OpenMP workers spin-wait for a core the other process holds); a fixed count per
    process avoids that.
    """
    if n is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _input_format(model: nn.Module) -> torch.memory_format | None:
    """``torch.channels_last`` when the model's first spatial convolution weight is stored channels-last
    (its batches are then converted to match: oneDNN runs NHWC convolutions ~25% faster), else None."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[-1] > 1:
            cl = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return torch.channels_last if cl else None
    return None


def _as_source(data: Any) -> Any:
    """A pair of equally long tensors ``(x, y)`` is a dataset, not two batches."""
    if (isinstance(data, tuple) and len(data) == 2 and all(torch.is_tensor(t) for t in data)
            and data[0].dim() > 1 and len(data[0]) == len(data[1])):
        return TensorDataset(*data)
    return data


def iter_data(
    data: Any, batch_size: int, shuffle: bool = False, augment: bool = False,
    generator: torch.Generator | None = None, drop_last: bool = False, device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of any data source the loops accept (see the module docstring).

    A ``TensorImageDataset`` (anything with ``iter_batches``) serves its own batches, shuffled and
    augmented from ``generator``, and on ``device`` when given (augmentation then runs there). A
    ``Dataset`` or a pair of tensors goes through a ``DataLoader`` (``augment`` does not apply); any
    other iterable is taken as batches, as they come. Only a source that takes ``device`` moves its
    batches there: callers move the others.
    """
    data = _as_source(data)
    if hasattr(data, "iter_batches"):
        params = inspect.signature(data.iter_batches).parameters
        kwargs: dict[str, Any] = {"shuffle": shuffle}
        if "augment" in params:
            kwargs["augment"] = augment
        if "generator" in params:
            kwargs["generator"] = generator
        if "drop_last" in params:
            kwargs["drop_last"] = drop_last
        if "device" in params and device is not None:  # augment on the device, not on the CPU
            kwargs["device"] = device
        yield from data.iter_batches(batch_size, **kwargs)
    elif isinstance(data, Dataset):
        yield from DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)
    else:
        yield from data


def count_batches(data: Any, batch_size: int, drop_last: bool) -> int | None:
    """Batches :func:`iter_data` yields per pass over ``data``; ``None`` when the source has no length."""
    data = _as_source(data)
    try:
        n = len(data)
    except TypeError:  # an iterable dataset or a generator
        return None
    if hasattr(data, "iter_batches") or isinstance(data, Dataset):
        return n // batch_size if drop_last else math.ceil(n / batch_size)
    return n


def evaluate(
    model: nn.Module,
    data: Any,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``data`` (eval mode, ``torch.inference_mode()``).

    ``device`` defaults to the device of the model's parameters; when another device is given the
    model is evaluated there and moved back afterwards, so a CPU base model stays on the CPU (where
    latency is measured). The train/eval mode is restored too. ``max_samples`` evaluates only the first ones.
    Inputs follow the model's memory format: a channels-last model gets channels-last batches.
    """
    home = _model_device(model)
    device = home if device is None else torch.device(device)
    model.to(device)
    fmt = _input_format(model)
    was_training = model.training
    model.eval()
    correct = seen = 0
    try:
        with torch.inference_mode():
            for x, y in iter_data(data, batch_size, device=device):
                if max_samples is not None:
                    x, y = x[: max_samples - seen], y[: max_samples - seen]
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if fmt is not None and x.dim() == 4:
                    x = x.contiguous(memory_format=fmt)
                correct += int((model(x).argmax(dim=1) == y).sum())
                seen += len(y)
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        model.train(was_training)
        model.to(home)
    if seen == 0:
        raise ValueError("evaluate got no samples: the data is empty (or max_samples is 0)")
    return correct / seen


def recalibrate_bn(
    model: nn.Module,
    batches: Any,
    num_batches: int = 50,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (the standard fix after pruning).

    Running statistics are reset and re-accumulated as a cumulative average (``momentum=None``) over up
    to ``num_batches`` batches, with BN layers in train mode and everything else in eval mode (dropout off),
    without gradients. Weights are not touched; the model is left in eval mode and returned.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    if not bns:
        return model
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    fmt = _input_format(model)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(iter_data(batches, 256, device=device)):
                if i >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(device, non_blocking=True)
                model(x.contiguous(memory_format=fmt) if fmt is not None and x.dim() == 4 else x)
                used += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    if used == 0:
        raise ValueError("recalibrate_bn got no batches; the running statistics were reset and are now empty")
    return model


def recalibrate_after_finetune(
    model: nn.Module, batches: Any, steps: int, num_batches: int = 4, device: torch.device | str | None = None
) -> bool:
    """After a fine-tune of ``steps`` SGD steps: recalibrate BatchNorm (:func:`recalibrate_bn`) when it was
    shorter than :data:`SHORT_FINETUNE_STEPS`; returns whether it did.

    A few steps leave running statistics that mix the stale ones in (8 steps on digits: 69% test accuracy
    instead of 93% after recalibrating); a longer fine-tune's statistics belong to its weights, and
    recalibrating them on a few clean batches costs accuracy (ResNet-20 on CIFAR-10, 4 plans: +0.7 to +5
    points at 20 steps, -2.3 to +0.6 at 100, -0.7 to -4.6 at 351; ResNet-56 after 3,510 steps: -1.7 to -2.8).
    """
    if steps >= SHORT_FINETUNE_STEPS:
        return False
    recalibrate_bn(model, batches, num_batches=num_batches, device=device)
    return True


def build_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """``"sgd"`` (Nesterov momentum when ``momentum > 0``), ``"adam"`` or ``"adamw"`` over ``params``."""
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


def step_budget(
    train_data: Any, batch_size: int, epochs: int, max_steps: int | None = None,
) -> tuple[Any, bool, int | None, int]:
    """How a training loop walks ``train_data``: ``(data, drop_last, batches per epoch, total steps)``.

    ``data`` is ``train_data``, or a list of its batches when it is a one-shot iterator (every epoch
    must see it). The last, partial batch is dropped (a tiny batch gives noisy BN statistics) unless it
    is the only one. ``total`` is ``epochs`` passes, capped at ``max_steps``; a source without a length
    needs ``max_steps``. Raises ``ValueError`` when there is nothing to train on.
    """
    if not isinstance(train_data, (Dataset, tuple)) and not hasattr(train_data, "iter_batches") \
            and not hasattr(train_data, "__len__"):
        train_data = list(train_data)  # a one-shot iterator must serve every epoch
    drop_last = True
    per_epoch = count_batches(train_data, batch_size, drop_last=True)
    if per_epoch == 0:
        drop_last, per_epoch = False, count_batches(train_data, batch_size, drop_last=False)
    if per_epoch is None and max_steps is None:
        raise ValueError("train_data has no length: pass max_steps")
    total = epochs * per_epoch if per_epoch is not None else max_steps
    total = min(total, max_steps) if max_steps is not None else total
    if not total or total <= 0:
        raise ValueError("nothing to train on: no batches (check the data, batch_size, epochs and max_steps)")
    return train_data, drop_last, per_epoch, int(total)


def run_steps(
    model: nn.Module,
    train_data: Any,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    total: int,
    loss_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    history: dict[str, list[float]],
    *,
    batch_size: int,
    generator: torch.Generator,
    drop_last: bool,
    augment: bool,
    device: torch.device,
    step: int = 0,
    input_format: torch.memory_format | None = None,
    progress: bool = False,
    desc: str = "train",
    on_epoch: Callable[[int], None] | None = None,
) -> int:
    """The SGD loop of :func:`train` and :func:`pruning_env.distill.finetune`: steps ``step`` to ``total``.

    Passes over ``train_data`` (shuffled by ``generator``) until ``total`` steps; each step computes
    ``loss_of(x, y) -> (logits, loss)``, steps ``opt`` and then ``sched``, and appends the step's ``lr`` and
    ``loss`` to ``history``; each finished pass appends its ``epoch_loss`` and ``epoch_accuracy`` (on the
    batches as trained) and calls ``on_epoch(step)``. ``input_format`` converts 4-d batches (channels-last).
    The caller owns seeding and the model's mode afterwards; returns the step reached.
    """
    with tqdm(total=total, initial=step, disable=not progress, desc=desc) as bar:
        model.train()
        while step < total:
            loss_sum = correct = seen = 0.0
            for x, y in iter_data(train_data, batch_size, shuffle=True, augment=augment, generator=generator,
                                  drop_last=drop_last, device=device):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if input_format is not None and x.dim() == 4:
                    x = x.contiguous(memory_format=input_format)
                out, loss = loss_of(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history["lr"].append(opt.param_groups[0]["lr"])
                sched.step()
                value = float(loss.detach())
                history["loss"].append(value)
                loss_sum += value * len(y)
                correct += float((out.detach().argmax(1) == y).sum())
                seen += len(y)
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{value:.3f}")
                if step >= total:
                    break
            if not seen:
                raise ValueError("train_data yielded no batch")
            history["epoch_loss"].append(loss_sum / seen)
            history["epoch_accuracy"].append(correct / seen)
            if on_epoch is not None:
                on_epoch(step)
    return step


def train(
    model: nn.Module,
    train_data: Any,
    epochs: int = 30,
    lr: float = 0.1,
    batch_size: int = 128,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    augment: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    label_smoothing: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``model`` in place with cross-entropy; returns ``{"history": ...}``.

    Deterministic given ``seed`` on the CPU (shuffling, augmentation and dropout draw from seeded
    generators; the global RNG state is restored afterwards; some GPU kernels are nondeterministic).
    The learning rate follows ``schedule`` (``"cosine"`` to zero over all steps, or ``"constant"``) per
    step. ``max_steps`` stops early (short recovery fine-tunes). ``augment`` applies the dataset's own
    augmentation (``TensorImageDataset``: random crop and flip);
    other data sources are used as they come. The model is moved to ``device`` (default
    :func:`default_device`) and left there, in eval mode.

    Returns:
        ``{"history": {"loss": [per step], "lr": [per step], "epoch_loss": [...], "epoch_accuracy": [...]},
        "steps": int, "seconds": float}``
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    device = default_device() if device is None else torch.device(device)
    model.to(device)
    train_data, drop_last, _per_epoch, total = step_budget(train_data, batch_size, epochs, max_steps)
    opt = build_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    cosine = lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine if schedule == "cosine" else (lambda s: 1.0))
    history: dict[str, list[float]] = {"loss": [], "lr": [], "epoch_loss": [], "epoch_accuracy": []}
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    cuda_devices = [torch.cuda.current_device() if device.index is None else device.index] \
        if device.type == "cuda" else []

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x)
        return out, F.cross_entropy(out, y, label_smoothing=label_smoothing)

    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        step = run_steps(model, train_data, opt, sched, total, loss_of, history, batch_size=batch_size,
                         generator=generator, drop_last=drop_last, augment=augment, device=device,
                         progress=progress, desc="train")
    model.eval()
    return {"history": history, "steps": step, "seconds": time.perf_counter() - start}


def finetune(
    model: nn.Module,
    train_data: Any,
    epochs: int = 1,
    lr: float = 0.01,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`train` with fine-tuning defaults (one epoch, ``lr=0.01``); e.g. ``finetune(m, data, max_steps=50)``."""
    return train(model, train_data, epochs=epochs, lr=lr, **kwargs)
