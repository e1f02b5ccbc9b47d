"""Fine-tuning a pruned network, optionally distilling the unpruned one into it; resumable.

:func:`finetune` is :func:`pruning_env.train.train` (SGD with Nesterov momentum, cosine learning rate per
step, the same batches for the same seed) plus what recovering a pruned network needs:

* **knowledge distillation** from a teacher (usually the unpruned base model):
  ``loss = (1 - w) * CE(student, y) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
  (:func:`kd_loss`; Hinton et al. 2015). The teacher runs in eval mode without gradients and is left as
  it came (device, train/eval mode, memory format).
* **checkpoints**: with ``checkpoint_dir``, the student, optimizer, scheduler, random generators and
  history are written atomically at the end of every epoch, and a later call with the same arguments
  continues from the last one: an interrupted fine-tune ends with the same weights as an uninterrupted
  one (bit for bit on the CPU).
* **speed on a GPU**: the training data is copied to the device once (no host-to-device copy per batch),
  and on CUDA the forward passes run under bf16 autocast with channels-last tensors. On the CPU the same
  code runs with both off.

Example, after pruning::

    from pruning_env.distill import finetune

    pruned = apply_plan(base, plan, example_inputs)
    out = finetune(pruned, data.train, teacher=base, epochs=10, checkpoint_dir="runs/ft")
    print(out["history"]["epoch_accuracy"], out["seconds"])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .cache import atomic_torch_save, load_weights_only, stable_hash, state_dict_hash
from .image_dataset import TensorImageDataset
from .train import build_optimizer, default_device, run_steps, step_budget

__all__ = ["finetune", "kd_loss", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "finetune_checkpoint.pt"
"""Name of the checkpoint :func:`finetune` keeps in its ``checkpoint_dir``."""

_FORMAT = "dataawareprune.finetune_checkpoint"
_VERSION = 1


def kd_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 4.0,
    weight: float = 0.9,
) -> torch.Tensor:
    """``(1 - weight) * CE + weight * T^2 * KL(teacher_T || student_T)``; plain cross-entropy without a teacher.

    ``KL(teacher_T || student_T)`` compares the softened distributions ``softmax(logits / T)``, averaged
    over the batch; ``T^2`` keeps its gradients on the scale of the cross-entropy's as ``T`` grows. Logits
    are compared in float32 (under autocast they may come in bf16).
    """
    ce = F.cross_entropy(student_logits.float(), targets)
    if teacher_logits is None or weight == 0:
        return ce
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean", log_target=True,
    )
    return (1.0 - weight) * ce + weight * t * t * kl


class _DeviceTensors:
    """``(x, y)`` tensors kept on one device, served in batches (shuffled by a CPU generator)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None, drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=generator).to(self.x.device) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield self.x[idx], self.y[idx]


def _resident(data: Any, device: torch.device) -> Any:
    """``data`` with its tensors on ``device`` when it is a ``TensorImageDataset``, a ``TensorDataset`` of two
    tensors or a pair of tensors; any other source is returned as it is (its batches are moved per step)."""
    if isinstance(data, TensorImageDataset):
        if data.x.device == device:
            return data
        return TensorImageDataset(data.x.to(device), data.y.to(device), data.mean, data.std, data.classes,
                                  data.hflip, data.index)
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        data = tuple(data.tensors)
    if (isinstance(data, tuple) and len(data) == 2 and all(torch.is_tensor(t) for t in data)
            and data[0].dim() > 1 and len(data[0]) == len(data[1])):
        return _DeviceTensors(data[0].to(device), data[1].to(device))
    return data


def _cuda_only(flag: Any, name: str, device: torch.device) -> bool:
    if isinstance(flag, str) and flag == "auto":
        return device.type == "cuda"
    if isinstance(flag, bool):
        if flag and device.type != "cuda":
            raise ValueError(
                f"{name}=True needs a CUDA device, got {device}; use {name}='auto' (on for CUDA only) or False"
            )
        return flag
    raise ValueError(f"{name} must be 'auto', True or False, got {flag!r}")


def _is_channels_last(model: nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def _architecture(model: nn.Module) -> str:
    return stable_hash([(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()])


def _check_args(epochs: int, lr: float, kd_temperature: float, kd_weight: float, batch_size: int,
                max_steps: int | None) -> None:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not number(kd_temperature) or kd_temperature <= 0:
        raise ValueError(f"kd_temperature must be a number > 0 (4 is usual), got {kd_temperature!r}")
    if not number(kd_weight) or not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1] (0: labels only, 1: distillation only), got {kd_weight!r}")
    if not number(lr) or lr <= 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1):
        raise ValueError(f"max_steps must be None or an integer >= 1, got {max_steps!r}")


def finetune(
    student: nn.Module,
    train_data: Any,
    *,
    teacher: nn.Module | None = None,
    epochs: int = 1,
    lr: float = 0.01,
    kd_temperature: float = 4.0,
    kd_weight: float = 0.9,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    amp: bool | str = "auto",
    channels_last: bool | str = "auto",
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``student`` in place on ``train_data``, distilling ``teacher`` into it when one is given.

    The loop is :func:`pruning_env.train.train`'s: SGD with Nesterov ``momentum`` and ``weight_decay``, the
    learning rate from ``lr`` to zero on a cosine, per step, over ``epochs`` passes (or ``max_steps``), the
    last partial batch dropped, the dataset's own augmentation when ``augment``. It is deterministic given
    ``seed`` on the CPU (shuffling, augmentation and dropout draw from seeded generators; the caller's
    global RNG state is restored afterwards), and without a teacher it computes exactly what
    ``pruning_env.train.finetune`` computes.

    Args:
        student: the model to train; moved to ``device`` and left there, in eval mode, in its own memory format.
        train_data: a :class:`~pruning_env.data.TensorImageDataset`, a pair of tensors ``(x, y)`` or a
            ``TensorDataset`` of two (these are copied to ``device`` once and batched there), or any source
            :func:`pruning_env.train.iter_data` accepts (batched as it comes, moved per batch).
        teacher: the model to distill (typically the unpruned base model); ``None`` trains on labels only.
        kd_temperature: ``T`` of :func:`kd_loss`, > 0. kd_weight: ``w`` of :func:`kd_loss`, in [0, 1]; at 0 the
            teacher is not run at all.
        device: where to train (default: CUDA when available).
        progress: show a tqdm bar.
        max_steps: stop after this many steps in all (the cosine then spans them).
        checkpoint_dir: folder of the checkpoint (:data:`CHECKPOINT_FILE`), written atomically at the end of
            every epoch; when one is there, training resumes from it. It must come from the same fine-tune:
            same arguments, data size and teacher, and a student that is the same starting model (or the
            checkpointed one); otherwise ``ValueError`` says what differs. A finished run's checkpoint
            returns at once with the final weights.
        amp: bf16 autocast of forward passes; ``"auto"``: on CUDA only. ``True`` needs CUDA.
        channels_last: channels-last student, teacher and batches; ``"auto"``: on CUDA only. ``True`` needs
            CUDA. The student and teacher get their memory format back at the end.
        callback: ``callback(epoch, history)`` after each epoch (and its checkpoint); an exception raised there
            stops training, and the checkpoint stays.

    Returns:
        ``{"history": {"loss": [per step], "lr": [per step], "epoch_loss": [...], "epoch_accuracy": [...]},
        "steps": int, "epochs": int, "seconds": float (this call), "total_seconds": float (with the
        interrupted calls before it), "resumed_from_epoch": int or None, "device": str, "amp": bool,
        "channels_last": bool}``. Accuracy is on the training batches, as they were trained on.

    Raises:
        ValueError: bad arguments (temperature <= 0, weight outside [0, 1], ...), no data, or a checkpoint
            of another fine-tune.
    """
    _check_args(epochs, lr, kd_temperature, kd_weight, batch_size, max_steps)
    if teacher is student:
        raise ValueError("teacher and student are the same module: pass the unpruned base model as the teacher")
    device = default_device() if device is None else torch.device(device)
    use_amp = _cuda_only(amp, "amp", device)
    use_cl = _cuda_only(channels_last, "channels_last", device)
    start_time = time.perf_counter()

    path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    # the hashes identify a checkpoint's run; without checkpoints (e.g. the environment's recovery steps,
    # every episode) they are not computed
    initial_hash = state_dict_hash(student) if path is not None else None
    use_teacher = teacher is not None and kd_weight > 0
    student.to(device)
    source = _resident(train_data, device)
    source, drop_last, per_epoch, total = step_budget(source, batch_size, epochs, max_steps)
    config = {
        "epochs": epochs, "lr": float(lr), "batch_size": batch_size, "momentum": float(momentum),
        "weight_decay": float(weight_decay), "augment": bool(augment), "seed": int(seed), "max_steps": max_steps,
        "kd_temperature": float(kd_temperature), "kd_weight": float(kd_weight), "total_steps": total,
        "batches_per_epoch": per_epoch, "student": _architecture(student),
        "teacher": state_dict_hash(teacher) if use_teacher and path is not None else None,
    }
    opt = build_optimizer("sgd", student.parameters(), lr, momentum, weight_decay)
    cosine = lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "lr": [], "epoch_loss": [], "epoch_accuracy": []}
    step = epoch = 0
    previous_seconds = 0.0
    resumed_from: int | None = None
    saved = _load_checkpoint(path, config, initial_hash, student) if path is not None and path.exists() else None

    cuda_devices = [torch.cuda.current_device() if device.index is None else device.index] \
        if device.type == "cuda" else []
    student_cl = _is_channels_last(student)
    teacher_home = teacher_mode = teacher_cl = None
    if use_teacher:
        teacher_home = next((p.device for p in teacher.parameters()), device)
        teacher_mode, teacher_cl = teacher.training, _is_channels_last(teacher)
        teacher.to(device).eval()
    fmt = torch.channels_last if use_cl else torch.contiguous_format
    if use_cl:
        student.to(memory_format=fmt)
        if use_teacher:
            teacher.to(memory_format=fmt)
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            if saved is not None:
                student.load_state_dict(saved["model"])
                opt.load_state_dict(saved["optimizer"])
                sched.load_state_dict(saved["scheduler"])
                generator.set_state(saved["generator"])
                torch.set_rng_state(saved["torch_rng"])
                if cuda_devices and saved.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(saved["cuda_rng"], cuda_devices[0])
                history = {k: list(v) for k, v in saved["history"].items()}
                step, epoch, previous_seconds = int(saved["step"]), int(saved["epoch"]), float(saved["seconds"])
                resumed_from = epoch

            def loss_of(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                teacher_out = None
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = student(x)
                    if use_teacher:
                        with torch.no_grad():
                            teacher_out = teacher(x)
                return out, kd_loss(out, y, teacher_out, kd_temperature, kd_weight)

            def end_of_epoch(step: int) -> None:
                nonlocal epoch
                epoch += 1
                if path is not None:
                    _save_checkpoint(path, {
                        "format": _FORMAT, "version": _VERSION, "config": config, "initial_hash": initial_hash,
                        "weights_hash": state_dict_hash(student), "epoch": epoch, "step": step,
                        "model": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(cuda_devices[0]) if cuda_devices else None,
                        "history": history, "seconds": previous_seconds + time.perf_counter() - start_time,
                    })
                if callback is not None:
                    callback(epoch, history)

            step = run_steps(student, source, opt, sched, total, loss_of, history, batch_size=batch_size,
                             generator=generator, drop_last=drop_last, augment=augment, device=device, step=step,
                             input_format=fmt if use_cl else None, progress=progress,
                             desc="distill" if use_teacher else "finetune", on_epoch=end_of_epoch)
    finally:
        student.eval()
        if use_cl and not student_cl:
            student.to(memory_format=torch.contiguous_format)
        if use_teacher:
            if use_cl and not teacher_cl:
                teacher.to(memory_format=torch.contiguous_format)
            teacher.to(teacher_home).train(teacher_mode)
    seconds = time.perf_counter() - start_time
    return {
        "history": history, "steps": step, "epochs": epoch, "seconds": seconds,
        "total_seconds": previous_seconds + seconds, "resumed_from_epoch": resumed_from, "device": str(device),
        "amp": use_amp, "channels_last": use_cl,
    }


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(path, state)


def _load_checkpoint(path: Path, config: dict[str, Any], initial_hash: str, student: nn.Module) -> dict[str, Any]:
    """The checkpoint at ``path`` if it belongs to this fine-tune; ``ValueError`` saying what differs otherwise."""
    fix = f"Delete {path} to start the fine-tune over, or pass another checkpoint_dir."
    saved = load_weights_only(path, "fine-tune checkpoint", fix)
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a fine-tune checkpoint of pruning_env.distill. {fix}")
    if saved.get("version") != _VERSION:
        raise ValueError(f"{path} has checkpoint version {saved.get('version')}, this code reads {_VERSION}. {fix}")
    theirs = saved.get("config", {})
    diff = [f"{k}: {theirs.get(k)!r} there, {v!r} now" for k, v in config.items() if theirs.get(k) != v]
    if diff:
        raise ValueError(f"{path} was written by another fine-tune ({'; '.join(diff)}). {fix}")
    if initial_hash not in (saved.get("initial_hash"), saved.get("weights_hash")):
        raise ValueError(
            f"{path} was written for a student that started from other weights: pass the same starting model "
            f"(e.g. apply_plan on the same base model again). {fix}"
        )
    return saved
