"""Dataset splits: :class:`DatasetSplits`, :func:`from_arrays` and the deterministic split behind both.

The training set is split into train and val by a class-stratified, seeded permutation
(``split_seed``); the test set is the official one (for ``digits``, and for a folder without a
``test/`` sub-folder, a fixed stratified 20% that does not depend on ``split_seed``:
:func:`carve_test`). Every split is stored in a class-interleaved order, so any prefix --
``subset(n)``, ``max_train`` -- is class-balanced. (The offline CIFAR-10 shards, test set included,
are sorted by class.) :func:`make_splits` does this for every loader of :mod:`pruning_env.data` and
for arrays already in memory (:func:`from_arrays`); :func:`to_nchw` and :func:`to_labels` check and
convert their images and labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pruning_env.cache import stable_hash
from pruning_env.image_dataset import TensorImageDataset

__all__ = ["DatasetSplits", "ClassSubset", "from_arrays", "make_splits", "carve_test", "to_nchw", "to_labels"]

_SPLIT_VERSION = 1  # bump when the split or ordering algorithm changes: it changes every fingerprint
_FIXED_TEST_SEED = 0  # digits / test-less folders: the carved-out test set ignores split_seed
_CARVED_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ClassSubset:
    """Where a class subset comes from.

    Attributes:
        parent: the full dataset's name (``"cifar10"``).
        parent_classes: the full dataset's class names (index = the parent's label).
        class_ids: the parent's label of each subset class, in the subset's order (subset label ``j`` is
            parent label ``class_ids[j]``).
        parent_fingerprint: the full dataset's fingerprint.
    """

    parent: str
    parent_classes: tuple[str, ...]
    class_ids: tuple[int, ...]
    parent_fingerprint: str

    @property
    def parent_num_classes(self) -> int:
        return len(self.parent_classes)


@dataclass
class DatasetSplits:
    """A dataset split three ways, with what a model and a cache key need to know about it.

    ``fingerprint`` hashes the name, the pixel and label content, the normalisation and the split
    settings: equal fingerprints mean identical train/val/test tensors, so it keys cached
    artefacts (trained base weights, statistics). ``source`` says in words where the data came from.
    ``subset``: for a class subset of a registered dataset (:mod:`pruning_env.subsets`), where it comes
    from; None for a full dataset.
    """

    name: str
    train: TensorImageDataset
    val: TensorImageDataset
    test: TensorImageDataset
    num_classes: int
    classes: list[str]
    mean: tuple
    std: tuple
    input_shape: tuple[int, int, int]
    fingerprint: str
    source: str
    subset: ClassSubset | None = None


def from_arrays(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    name: str = "custom",
    classes: Sequence[str] | None = None,
    val_size: int | float = 0.1,
    split_seed: int = 0,
    max_train: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    hflip: bool = True,
    source: str | None = None,
) -> DatasetSplits:
    """Build :class:`DatasetSplits` from uint8 images (``NHWC``, ``NCHW`` or ``NHW``) and labels.

    Labels must be integers in ``[0, num_classes)``; ``num_classes`` is ``len(classes)`` or the
    largest label plus one. ``mean``/``std`` default to the per-channel statistics of the train
    split. ``hflip=False`` disables flips in augmentation (digits, text, asymmetric classes).
    """
    xtr, xte = to_nchw(x_train, "x_train"), to_nchw(x_test, "x_test")
    ytr, yte = to_labels(y_train, len(xtr), "y_train"), to_labels(y_test, len(xte), "y_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in shape")
    return make_splits(
        name, xtr, ytr, xte, yte, classes, mean, std, hflip,
        source or f"arrays given to from_arrays ({name})",
        val_size=val_size, split_seed=split_seed, max_train=max_train,
    )


# --------------------------------------------------------------------------- splitting


def _holdout_count(size: int | float, n: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, (int, np.integer)):
        if not 0 <= size < n:
            raise ValueError(f"{what}={size} must be in [0, {n}) for {n} samples")
        return int(size)
    if not 0.0 <= size < 1.0:
        raise ValueError(f"{what}={size} must be a fraction in [0, 1)")
    return int(round(size * n))


def _interleaved_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(len(y))`` in which every prefix is (nearly) class-balanced.

    Within each class the samples are shuffled and spread evenly over [0, 1) with a random
    jitter; sorting by that key interleaves the classes in proportion to their sizes.
    """
    keys = np.empty(len(y))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keys[rng.permutation(idx)] = (np.arange(len(idx)) + rng.random(len(idx))) / len(idx)
    return np.argsort(keys, kind="stable")


def _stratified_split(
    y: np.ndarray, n_holdout: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, holdout)`` with exactly ``n_holdout`` held out, per class in proportion."""
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n_holdout / len(y)
    take = np.floor(quota).astype(int)
    largest_remainder = np.argsort(-(quota - take), kind="stable")
    take[largest_remainder[: n_holdout - take.sum()]] += 1
    keep, hold = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(y == c))
        hold.append(idx[:k])
        keep.append(idx[k:])
    keep_idx, hold_idx = np.concatenate(keep), np.concatenate(hold)
    keep_idx = keep_idx[_interleaved_order(y[keep_idx], rng)]
    hold_idx = hold_idx[_interleaved_order(y[hold_idx], rng)]
    return keep_idx, hold_idx


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images scaled to [0, 1], in float64 chunks."""
    c = x.shape[1]
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block**2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    if count == 0:
        raise ValueError("cannot compute mean/std of an empty training split")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def _content_digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def make_splits(
    name: str,
    x_trainval: np.ndarray,
    y_trainval: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    hflip: bool,
    source: str,
    *,
    val_size: int | float,
    split_seed: int,
    max_train: int | None,
    origin: tuple[np.ndarray, np.ndarray] | None = None,
) -> DatasetSplits:
    """Split ``trainval`` into train/val, order every split, wrap it; ``origin`` maps rows to source ids."""
    if classes is not None:
        num_classes = len(classes)
    else:
        num_classes = int(max(y_trainval.max(), y_test.max(initial=0))) + 1
    for what, y in (("training", y_trainval), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(
                f"{name}: {what} labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]"
            )
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
    if max_train is not None and max_train < 1:
        raise ValueError(f"max_train must be >= 1, got {max_train}")
    digest = _content_digest(x_trainval, y_trainval, x_test, y_test)

    rng = np.random.default_rng(split_seed)
    n_val = _holdout_count(val_size, len(y_trainval), "val_size")
    train_idx, val_idx = _stratified_split(y_trainval, n_val, rng)
    train_idx = train_idx[:max_train]
    test_idx = _interleaved_order(y_test, np.random.default_rng(_FIXED_TEST_SEED))
    if mean is None or std is None:
        mean, std = _channel_stats(x_trainval[np.sort(train_idx)])
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    if origin is None:
        origin = (np.arange(len(y_trainval)), np.arange(len(y_test)))
    trainval_ids, test_ids = origin

    def part(x: np.ndarray, y: np.ndarray, ids: np.ndarray, idx: np.ndarray) -> TensorImageDataset:
        x_t, y_t, ids_t = torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), torch.from_numpy(ids[idx])
        return TensorImageDataset(x_t, y_t, mean, std, classes, hflip, ids_t)

    fingerprint = stable_hash(
        dict(name=name, data=digest, mean=mean, std=std, val_size=val_size, split_seed=split_seed,
             max_train=max_train, hflip=hflip, version=_SPLIT_VERSION)
    )
    return DatasetSplits(
        name=name,
        train=part(x_trainval, y_trainval, trainval_ids, train_idx),
        val=part(x_trainval, y_trainval, trainval_ids, val_idx),
        test=part(x_test, y_test, test_ids, test_idx),
        num_classes=num_classes,
        classes=classes,
        mean=mean,
        std=std,
        input_shape=tuple(int(s) for s in x_trainval.shape[1:]),
        fingerprint=fingerprint,
        source=source,
    )


def carve_test(x: np.ndarray, y: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray]]:
    """Fixed stratified 20% test split for data without an official test set.

    Returns ``(x_trainval, y_trainval, x_test, y_test)`` and the source ids of both parts.
    """
    n_test = int(round(_CARVED_TEST_FRACTION * len(y)))
    keep, test = _stratified_split(y, n_test, np.random.default_rng(_FIXED_TEST_SEED))
    keep.sort()  # the train/val split reshuffles; a sorted keep makes it depend on split_seed only
    return (x[keep], y[keep], x[test], y[test]), (keep, test)


# --------------------------------------------------------------------------- array helpers


def to_nchw(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """uint8 images ``NHWC``, ``NCHW`` or ``NHW`` as contiguous ``N x C x H x W`` (``what``: their name in errors)."""
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8 pixels 0..255, got {x.dtype}; "
                        "convert with (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    if x.ndim == 3:  # N x H x W grayscale
        return np.ascontiguousarray(x[:, None])
    if x.ndim != 4:
        raise ValueError(f"{what} must be N x H x W x C or N x C x H x W, got shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.shape[1] in (1, 3, 4):
        return np.ascontiguousarray(x)
    raise ValueError(f"{what}: cannot tell the channel axis of shape {x.shape} (expected 1, 3 or 4 channels)")


def to_labels(y: np.ndarray | torch.Tensor | Sequence[int], n: int, what: str) -> np.ndarray:
    """``n`` integer labels as an int64 array (``what`` names them in errors)."""
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} must be {n} integer labels, got {y.dtype} {y.shape}")
    return y.astype(np.int64)
