"""Datasets: loading, deterministic train/val/test splits and fast in-memory batching.

Every dataset is held in memory as uint8 ``N x C x H x W`` tensors (CIFAR-10: 150 MB) and
normalised per batch, so iterating needs no per-sample Python work and nothing big is cached on
disk. :func:`load_dataset` knows these names:

================  ==========================================================================
name              source
================  ==========================================================================
``digits``        scikit-learn's bundled ``load_digits()`` (1797 8x8 images) as 3x32x32, no download
``cifar10``       ``<data_root>/cifar10/{train,test}*.npz`` shards, else torchvision's format
``cifar100``      ``<data_root>/cifar100/{train,test}*.npz`` shards, else torchvision's format
``npz:<path>``    a folder of ``train*.npz``/``test*.npz`` shards, or one ``.npz`` file with
                  ``x_train``, ``y_train``, ``x_test``, ``y_test``
``folder:<path>`` ``<path>/train/<class>/*.png|jpg`` (and ``<path>/test/<class>/...``), resized
================  ==========================================================================

Arrays already in memory go through :func:`from_arrays`.

Splits. The training set is split into train and val by a class-stratified, seeded permutation
(``split_seed``); the test set is the official one (for ``digits``, and for a folder without a
``test/`` sub-folder, a fixed stratified 20% that does not depend on ``split_seed``). Every split
is stored in a class-interleaved order, so any prefix -- ``subset(n)``, ``max_train`` -- is
class-balanced. (The offline CIFAR-10 shards, test set included, are sorted by class.)

``data_root`` resolves as :func:`pruning_env.cache.data_root`: the argument, else
``$PRUNING_ENV_DATA``, else ``<cache>/data``. Downloads (torchvision CIFAR only) happen when
``download=True``, or when ``download=None`` and ``$PRUNING_ENV_OFFLINE`` is unset (or 0/false/no).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pruning_env.cache import data_root as resolve_data_root
from pruning_env.cache import stable_hash

__all__ = [
    "DatasetSplits",
    "TensorImageDataset",
    "load_dataset",
    "from_arrays",
    "available_datasets",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "OFFLINE_ENV",
]

OFFLINE_ENV = "PRUNING_ENV_OFFLINE"
# Normalisation the public CIFAR ResNet weights were trained with.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.507, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2761)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_SPLIT_VERSION = 1  # bump when the split or ordering algorithm changes: it changes every fingerprint
_FIXED_TEST_SEED = 0  # digits / test-less folders: the carved-out test set ignores split_seed
_CARVED_TEST_FRACTION = 0.2
_CROP_PAD = 4  # px of zero padding for the random-crop augmentation (the CIFAR recipe)
_TORCHVISION_CIFAR = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class TensorImageDataset(Dataset):
    """Images as a uint8 ``N x C x H x W`` tensor plus int64 labels, normalised on access.

    Indexing (``ds[i]`` -> ``(float32 C x H x W, int label)``) makes it a regular map-style
    dataset for a ``DataLoader``; :meth:`iter_batches` is the fast path, slicing whole batches.

    Args:
        x: uint8 images, ``N x C x H x W``.
        y: integer labels, ``N``.
        mean, std: per-channel normalisation of pixel values scaled to ``[0, 1]``.
        classes: class names (index = label).
        hflip: whether horizontal flips are a valid augmentation (not for digits or text).
        index: position of each sample in its source arrays (the loader's training or test set;
            for ``digits``, the 1797 images), kept through :meth:`subset`; ``arange(N)`` if omitted.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] | None = None,
        hflip: bool = True,
        index: torch.Tensor | None = None,
    ) -> None:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 N x C x H x W, got {x.dtype} {tuple(x.shape)}")
        if y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
        if len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise ValueError(f"mean/std need {x.shape[1]} channels, got {len(mean)} and {len(std)}")
        self.x = x.contiguous()
        self.y = y.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.classes = list(classes) if classes is not None else None
        self.hflip = bool(hflip)
        self.index = torch.arange(len(x)) if index is None else torch.as_tensor(index, dtype=torch.int64)
        if self.index.shape != self.y.shape:
            raise ValueError(f"index must have shape ({len(x)},), got {tuple(self.index.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.normalize(self.x[index].unsqueeze(0))[0], int(self.y[index])

    def __repr__(self) -> str:
        return f"TensorImageDataset(n={len(self)}, shape={tuple(self.x.shape[1:])}, hflip={self.hflip})"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch ``B x C x H x W`` -> float32 ``(x / 255 - mean) / std`` on ``x``'s device."""
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    def class_counts(self, num_classes: int | None = None) -> torch.Tensor:
        """Number of samples per label, ``bincount`` of ``y``."""
        n = num_classes if num_classes is not None else len(self.classes or [])
        return torch.bincount(self.y, minlength=n)

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random crop with 4-px zero padding and (if ``hflip``) random horizontal flip, per sample.

        Works on a uint8 (or float) batch ``B x C x H x W`` on any device, in one gather; the
        random draws come from ``generator`` (CPU) in a fixed order, so a seeded generator
        reproduces the batch exactly.
        """
        n, _, h, w = x.shape
        pad = _CROP_PAD
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = oy[:, None] + torch.arange(h)
        cols = ox[:, None] + torch.arange(w)
        if self.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            cols = torch.where(flip[:, None], cols.flip(1), cols)  # reading a crop backwards = flipping it
        padded = F.pad(x, (pad, pad, pad, pad))
        rows, cols, batch = rows.to(x.device), cols.to(x.device), torch.arange(n, device=x.device)
        out = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # B x H x W x C
        return out.permute(0, 3, 1, 2).contiguous()

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(float32 images, int64 labels)`` batches; optionally on ``device``.

        ``shuffle`` draws a permutation and ``augment`` crops/flips, both from ``generator``
        (the global torch RNG if ``None``). Without shuffling, batches follow the stored order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                xb, yb = self.x[idx], self.y[idx]
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if augment:
                xb = self.augment(xb, generator)
            yield self.normalize(xb), yb

    def subset(
        self, n_or_indices: int | Sequence[int] | torch.Tensor, seed: int | None = None
    ) -> TensorImageDataset:
        """A new dataset with the first ``n`` samples (or ``n`` seeded random ones), or given indices.

        Stored splits are class-interleaved, so the first ``n`` are class-balanced; ``n`` larger
        than the dataset means all of it.
        """
        if isinstance(n_or_indices, (int, np.integer)) and not isinstance(n_or_indices, bool):
            n = int(n_or_indices)
            if n < 0:
                raise ValueError(f"subset size must be >= 0, got {n}")
            n = min(n, len(self))
            if seed is None:
                idx: torch.Tensor | slice = slice(0, n)
            else:
                idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        else:
            idx = torch.as_tensor(np.asarray(n_or_indices))
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            idx = idx.to(torch.int64)
        return TensorImageDataset(
            self.x[idx], self.y[idx], self.mean, self.std, self.classes, self.hflip, self.index[idx]
        )


@dataclass
class DatasetSplits:
    """A dataset split three ways, with what a model and a cache key need to know about it.

    ``fingerprint`` hashes the name, the pixel and label content, the normalisation and the split
    settings: equal fingerprints mean identical train/val/test tensors, so it keys cached
    artefacts (trained base weights, statistics). ``source`` says in words where the data came from.
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


def available_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts (``<path>`` stands for a path of your own)."""
    return ["digits", "cifar10", "cifar100", "npz:<path>", "folder:<path>"]


def load_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    val_size: int | float = 0.1,
    split_seed: int = 0,
    download: bool | None = None,
    max_train: int | None = None,
    image_size: int = 32,
) -> DatasetSplits:
    """Load dataset ``name`` (see the module docstring) and split it into train/val/test.

    Args:
        name: ``digits``, ``cifar10``, ``cifar100``, ``npz:<path>`` or ``folder:<path>``.
        data_root: where CIFAR lives (see module docstring); unused by the other names.
        val_size: validation samples taken from the training set: a count (int) or a fraction.
        split_seed: seed of the stratified train/val split.
        download: allow torchvision to download CIFAR; ``None`` = unless ``$PRUNING_ENV_OFFLINE``.
        max_train: keep at most this many (class-balanced) training samples after the split.
        image_size: side length images of ``folder:`` datasets are resized to.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the data is not on disk and could not be downloaded; the message
            lists every place looked at and how to provide the data.
    """
    split = dict(val_size=val_size, split_seed=split_seed, max_train=max_train)
    key = name.strip()
    if key.lower() == "digits":
        return _load_digits(**split)
    if key.lower() in _TORCHVISION_CIFAR:
        return _load_cifar(key.lower(), resolve_data_root(data_root), download, **split)
    if key.startswith("npz:"):
        return _load_npz(key, Path(key[4:]).expanduser(), **split)
    if key.startswith("folder:"):
        return _load_folder(key, Path(key[7:]).expanduser(), image_size, **split)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}")


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
    xtr, xte = _to_nchw(x_train, "x_train"), _to_nchw(x_test, "x_test")
    ytr, yte = _labels(y_train, len(xtr), "y_train"), _labels(y_test, len(xte), "y_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in shape")
    return _make_splits(
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


def _make_splits(
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


def _carve_test(x: np.ndarray, y: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray]]:
    """Fixed stratified 20% test split for data without an official test set.

    Returns ``(x_trainval, y_trainval, x_test, y_test)`` and the source ids of both parts.
    """
    n_test = int(round(_CARVED_TEST_FRACTION * len(y)))
    keep, test = _stratified_split(y, n_test, np.random.default_rng(_FIXED_TEST_SEED))
    keep.sort()  # the train/val split reshuffles; a sorted keep makes it depend on split_seed only
    return (x[keep], y[keep], x[test], y[test]), (keep, test)


# --------------------------------------------------------------------------- array helpers


def _to_nchw(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
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


def _labels(y: np.ndarray | torch.Tensor | Sequence[int], n: int, what: str) -> np.ndarray:
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} must be {n} integer labels, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _read_npz_shards(files: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    xs, ys, classes = [], [], None
    for f in files:
        with np.load(f, allow_pickle=False) as d:
            xs.append(_to_nchw(d["x"], str(f)))
            ys.append(_labels(d["y"], len(xs[-1]), str(f)))  # each d[key] decompresses again: once
            if "classes" in d.files and classes is None:
                classes = [str(c) for c in d["classes"]]
    return np.concatenate(xs), np.concatenate(ys), classes


def _shards(folder: Path) -> tuple[list[Path], list[Path]]:
    return sorted(folder.glob("train*.npz")), sorted(folder.glob("test*.npz"))


# --------------------------------------------------------------------------- loaders


def _load_digits(**split) -> DatasetSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    img = torch.from_numpy(digits.images).to(torch.float32)[:, None] * (255.0 / 16.0)  # 0..16 -> 0..255
    img = F.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
    x = img.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous().numpy()
    y = digits.target.astype(np.int64)
    arrays, origin = _carve_test(x, y)
    return _make_splits(
        "digits", *arrays, [str(i) for i in range(10)], None, None, False,
        "scikit-learn load_digits(): 1797 8x8 images, bilinear-upsampled to 3x32x32 "
        "(fixed stratified 20% test split)",
        origin=origin, **split,
    )


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _load_cifar(name: str, root: Path, download: bool | None, **split) -> DatasetSplits:
    looked: list[str] = []
    shard_dir = root / name
    train_files, test_files = _shards(shard_dir)
    looked.append(f"{shard_dir}/train*.npz + test*.npz (found {len(train_files)} + {len(test_files)})")
    classes_default = CIFAR10_CLASSES if name == "cifar10" else None
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    if train_files and test_files:
        xtr, ytr, classes = _read_npz_shards(train_files)
        xte, yte, test_classes = _read_npz_shards(test_files)
        source = f"npz shards in {shard_dir} ({len(train_files)} train, {len(test_files)} test files)"
        classes = classes or test_classes or classes_default
        return _make_splits(name, xtr, ytr, xte, yte, classes, mean, std, True, source, **split)

    allow = (not _offline()) if download is None else bool(download)
    tv_dir = root / _TORCHVISION_CIFAR[name]
    looked.append(f"{tv_dir} (torchvision format)")
    reason = "download not allowed" + (f" (${OFFLINE_ENV} is set)" if download is None and _offline() else "")
    if tv_dir.is_dir() or allow:
        try:
            from torchvision import datasets

            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            train = cls(root=str(root), train=True, download=allow)
            test = cls(root=str(root), train=False, download=False)
            source = f"torchvision {cls.__name__} files in {tv_dir}"
            return _make_splits(
                name, _to_nchw(train.data, "train"), np.asarray(train.targets, dtype=np.int64),
                _to_nchw(test.data, "test"), np.asarray(test.targets, dtype=np.int64),
                list(train.classes), mean, std, True, source, **split,
            )
        except Exception as exc:  # missing/corrupt files or a failed download: report below
            reason = f"{'download failed' if allow else 'unreadable'}: {type(exc).__name__}: {exc}"
    places = "\n  ".join(looked)
    raise FileNotFoundError(
        f"dataset {name!r} not found ({reason}). Looked in:\n  {places}\n"
        f"To fix: set PRUNING_ENV_DATA (or pass data_root=) to a folder holding {name}/train*.npz and "
        f"{name}/test*.npz (keys x uint8 NxHxWx3, y int64) or torchvision's {_TORCHVISION_CIFAR[name]}/, "
        f"or allow the torchvision download (download=True, or unset {OFFLINE_ENV})."
    )


def _load_npz(name: str, path: Path, **split) -> DatasetSplits:
    if path.is_dir():
        train_files, test_files = _shards(path)
        if not train_files or not test_files:
            raise FileNotFoundError(f"dataset {name!r}: {path} has {len(train_files)} train*.npz and "
                                    f"{len(test_files)} test*.npz files; both are needed")
        xtr, ytr, classes = _read_npz_shards(train_files)
        xte, yte, test_classes = _read_npz_shards(test_files)
        classes = classes or test_classes
        source = f"npz shards in {path}"
    elif path.is_file():
        with np.load(path, allow_pickle=False) as d:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(d.files)
            if missing:
                raise ValueError(f"dataset {name!r}: {path} lacks keys {sorted(missing)} (has {d.files})")
            xtr, xte = _to_nchw(d["x_train"], "x_train"), _to_nchw(d["x_test"], "x_test")
            ytr, yte = _labels(d["y_train"], len(xtr), "y_train"), _labels(d["y_test"], len(xte), "y_test")
            classes = [str(c) for c in d["classes"]] if "classes" in d.files else None
        source = f"npz file {path}"
    else:
        raise FileNotFoundError(
            f"dataset {name!r}: {path} does not exist (expected a folder of train*.npz/test*.npz "
            "shards or one .npz file with x_train, y_train, x_test, y_test)"
        )
    return from_arrays(xtr, ytr, xte, yte, name=name, classes=classes, source=source, **split)


def _load_folder(name: str, path: Path, image_size: int, **split) -> DatasetSplits:
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    train_dir, test_dir = path / "train", path / "test"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: no folder {train_dir} (expected train/<class>/*.png|jpg "
                                "and optionally test/<class>/...)")
    train = ImageFolder(str(train_dir))

    def read(samples: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
        for i, (file, _) in enumerate(samples):
            with Image.open(file) as im:
                x[i] = np.asarray(im.convert("RGB").resize((image_size, image_size), Image.BILINEAR))
        return x, np.array([label for _, label in samples], dtype=np.int64)

    xtr, ytr = read(train.samples)
    source = f"image folder {path} resized to {image_size}x{image_size}"
    origin = None
    if test_dir.is_dir():
        test = ImageFolder.make_dataset(str(test_dir), train.class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        xte, yte = read(test)
    else:  # ids then refer to train.samples for all three splits
        (xtr, ytr, xte, yte), origin = _carve_test(xtr, ytr)
        source += " (no test/ folder: fixed stratified 20% of train/ is the test set)"
    xtr, xte = _to_nchw(xtr, "train"), _to_nchw(xte, "test")
    return _make_splits(
        name, xtr, ytr, xte, yte, train.classes, None, None, True, source, origin=origin, **split
    )
