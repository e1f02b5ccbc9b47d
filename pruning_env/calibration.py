"""Calibration passes: the data they read, the state the model is in, and where they hook a group.

The data-driven channel criteria (:mod:`pruning_env.importance`) and the data profile
(:mod:`pruning_env.profiling`) all run a frozen model over a few unaugmented training batches and
watch the channels of a pruning group where they are consumed. This module owns what they share:

* :func:`training_split`, :func:`calibration_batches`, :func:`dataset_key`: which samples, and the
  cache key of the data they came from;
* :func:`frozen`: no parameter gradients, BN buffers untouched, everything restored on exit;
* the layers that read a group's channels are :meth:`pruning_env.engine.ModelGraph.consumers`
  (forward pre-hooks go there: removing a channel removes exactly those inputs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

__all__ = ["training_split", "dataset_key", "calibration_batches", "frozen"]


def training_split(data: Any) -> Any:
    """The training split of a ``DatasetSplits``, or the dataset itself."""
    return data.train if hasattr(data, "train") and hasattr(data, "fingerprint") else data


def dataset_key(data: Any) -> str:
    """Cache key of the data used for calibration: the split fingerprint, else a content hash."""
    if hasattr(data, "fingerprint"):
        return f"{data.fingerprint}:train"
    h = hashlib.sha256()
    for t in (data.x, data.y):
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr((getattr(data, "mean", None), getattr(data, "std", None))).encode())
    return h.hexdigest()[:16]


def calibration_batches(data: Any, num_samples: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``num_samples`` training samples (class-balanced prefix), not augmented."""
    ds = training_split(data)
    ds = ds.subset(num_samples) if hasattr(ds, "subset") else ds
    return ds.iter_batches(batch_size, shuffle=False, augment=False)


@contextmanager
def frozen(model: nn.Module, batch_norm: str = "frozen"):
    """No parameter gradients, BN buffers untouched; all restored on exit.

    ``batch_norm="frozen"``: eval mode (running statistics). ``"batch"``: BN layers normalise with
    the statistics of the current batch (momentum 0, so running statistics do not move), as the
    pruned network will after BN recalibration.
    """
    if batch_norm not in ("frozen", "batch"):
        raise ValueError(f"batch_norm must be 'frozen' or 'batch', got {batch_norm!r}")
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    buffers = [[t.clone() for t in m.buffers()] for m in bns]  # num_batches_tracked counts even at momentum 0
    model.eval()
    if batch_norm == "batch":
        for m in bns:
            m.train()
            m.momentum = 0.0
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        with torch.no_grad():
            for m, mom, saved in zip(bns, momenta, buffers):
                m.momentum = mom
                for t, v in zip(m.buffers(), saved):
                    t.copy_(v)
        model.train(was_training)
