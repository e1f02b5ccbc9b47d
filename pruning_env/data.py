"""Datasets by name: :func:`load_dataset` reads a dataset from its files and splits it.

:func:`load_dataset` knows these names:

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

Any of them followed by ``:classes=<list>`` is a class subset (:mod:`pruning_env.subsets`):
``cifar10:classes=2,3,4,5,6,7`` (indices) or ``cifar10:classes=cat,dog`` (names) keeps those classes
in every split, relabelled ``0..k-1`` in the order given.

It returns a :class:`~pruning_env.splits.DatasetSplits`: deterministic train/val/test splits
(:mod:`pruning_env.splits`, which also takes arrays already in memory through
:func:`~pruning_env.splits.from_arrays`), each a :class:`~pruning_env.image_dataset.TensorImageDataset`
held in memory as uint8 images and normalised per batch (:mod:`pruning_env.image_dataset`).

``data_root`` resolves as :func:`pruning_env.cache.data_root`: the argument, else
``$PRUNING_ENV_DATA``, else ``<cache>/data``. Downloads (torchvision CIFAR only) happen when
``download=True``, or when ``download=None`` and ``$PRUNING_ENV_OFFLINE`` is unset (or 0/false/no).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pruning_env.cache import data_root as resolve_data_root
from pruning_env.splits import DatasetSplits, carve_test, from_arrays, make_splits, to_labels, to_nchw
from pruning_env.subsets import select_classes, split_subset_spec

__all__ = [
    "load_dataset",
    "read_torchvision_cifar",
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

_TORCHVISION_CIFAR = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def available_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts (``<path>`` stands for a path of your own)."""
    return ["digits", "cifar10", "cifar100", "npz:<path>", "folder:<path>", "<any of these>:classes=<list>"]


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
        name: ``digits``, ``cifar10``, ``cifar100``, ``npz:<path>`` or ``folder:<path>``, optionally
            followed by ``:classes=<indices or names>`` for a class subset (``cifar10:classes=3,5``).
        data_root: where CIFAR lives (see module docstring); unused by the other names.
        val_size: validation samples taken from the training set: a count (int) or a fraction.
        split_seed: seed of the stratified train/val split.
        download: allow torchvision to download CIFAR; ``None`` = unless ``$PRUNING_ENV_OFFLINE``.
        max_train: keep at most this many (class-balanced) training samples after the split (of a class
            subset: of the subset's).
        image_size: side length images of ``folder:`` datasets are resized to.

    Raises:
        ValueError: unknown name, or a ``classes=`` list that names no valid subset (the message says why).
        FileNotFoundError: the data is not on disk and could not be downloaded; the message
            lists every place looked at and how to provide the data.
    """
    key = name.strip()
    parent, classes = split_subset_spec(key)
    if classes is not None:
        if not parent:
            raise ValueError(f"dataset {name!r}: a class subset is <dataset>:classes=<list>, e.g. "
                             "cifar10:classes=3,5; the dataset is missing")
        full = load_dataset(parent, data_root, val_size, split_seed, download, None, image_size)
        return select_classes(full, classes, max_train=max_train)
    split = dict(val_size=val_size, split_seed=split_seed, max_train=max_train)
    if key.lower() == "digits":
        return _load_digits(**split)
    if key.lower() in _TORCHVISION_CIFAR:
        return _load_cifar(key.lower(), resolve_data_root(data_root), download, **split)
    if key.startswith("npz:"):
        return _load_npz(key, Path(key[4:]).expanduser(), **split)
    if key.startswith("folder:"):
        return _load_folder(key, Path(key[7:]).expanduser(), image_size, **split)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}")


# --------------------------------------------------------------------------- loaders, one per source


def _read_npz_shards(files: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    xs, ys, classes = [], [], None
    for f in files:
        with np.load(f, allow_pickle=False) as d:
            xs.append(to_nchw(d["x"], str(f)))
            ys.append(to_labels(d["y"], len(xs[-1]), str(f)))  # each d[key] decompresses again: once
            if "classes" in d.files and classes is None:
                classes = [str(c) for c in d["classes"]]
    return np.concatenate(xs), np.concatenate(ys), classes


def _shards(folder: Path) -> tuple[list[Path], list[Path]]:
    return sorted(folder.glob("train*.npz")), sorted(folder.glob("test*.npz"))


def _load_digits(**split) -> DatasetSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    img = torch.from_numpy(digits.images).to(torch.float32)[:, None] * (255.0 / 16.0)  # 0..16 -> 0..255
    img = F.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
    x = img.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous().numpy()
    y = digits.target.astype(np.int64)
    arrays, origin = carve_test(x, y)
    return make_splits(
        "digits", *arrays, [str(i) for i in range(10)], None, None, False,
        "scikit-learn load_digits(): 1797 8x8 images, bilinear-upsampled to 3x32x32 "
        "(fixed stratified 20% test split)",
        origin=origin, **split,
    )


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


_TORCHVISION_FILES = {  # train batches, test batches, meta file, label key, class-name key
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def read_torchvision_cifar(name: str, tv_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """Read torchvision's CIFAR python files (``cifar-10-batches-py/``, ``cifar-100-python/``) as they lie.

    The same pickles torchvision reads (a dict with ``data``: N x 3072 uint8 rows, channel-major, and the
    labels), without its checksum of the official files, so copies of any size in that format load.
    Returns ``x_train, y_train, x_test, y_test, classes`` (images N x 3 x 32 x 32 uint8).
    """
    import pickle

    train_files, test_files, meta_file, label_key, names_key = _TORCHVISION_FILES[name]

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            path = tv_dir / f
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing (torchvision's {name} layout: {', '.join(files)})")
            with path.open("rb") as fh:
                entry = pickle.load(fh, encoding="latin1")  # the format is pickled; torchvision reads it so too
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = read(train_files)
    x_test, y_test = read(test_files)
    with (tv_dir / meta_file).open("rb") as fh:
        classes = list(pickle.load(fh, encoding="latin1")[names_key])
    return x_train, y_train, x_test, y_test, classes


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
        return make_splits(name, xtr, ytr, xte, yte, classes, mean, std, True, source, **split)

    allow = (not _offline()) if download is None else bool(download)
    tv_dir = root / _TORCHVISION_CIFAR[name]
    looked.append(f"{tv_dir} (torchvision format)")
    reason = "download not allowed" + (f" (${OFFLINE_ENV} is set)" if download is None and _offline() else "")
    if tv_dir.is_dir() or allow:
        try:
            if not tv_dir.is_dir():  # download (torchvision checks the official files' checksums)
                from torchvision import datasets

                cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
                cls(root=str(root), train=True, download=True)
                cls(root=str(root), train=False, download=False)
            xtr, ytr, xte, yte, classes = read_torchvision_cifar(name, tv_dir)
            source = f"torchvision's {name} files in {tv_dir}"
            return make_splits(name, to_nchw(xtr, "train"), ytr, to_nchw(xte, "test"), yte, classes, mean, std,
                               True, source, **split)
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
            xtr, xte = to_nchw(d["x_train"], "x_train"), to_nchw(d["x_test"], "x_test")
            ytr, yte = to_labels(d["y_train"], len(xtr), "y_train"), to_labels(d["y_test"], len(xte), "y_test")
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
        (xtr, ytr, xte, yte), origin = carve_test(xtr, ytr)
        source += " (no test/ folder: fixed stratified 20% of train/ is the test set)"
    xtr, xte = to_nchw(xtr, "train"), to_nchw(xte, "test")
    return make_splits(
        name, xtr, ytr, xte, yte, train.classes, None, None, True, source, origin=origin, **split
    )
