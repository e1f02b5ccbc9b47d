"""Class subsets of a dataset: the ``<dataset>:classes=...`` spec, the filtered splits and the sliced head.

A class subset is a registered dataset restricted to some of its classes, for example the six animal
classes of CIFAR-10::

    load_dataset("cifar10:classes=2,3,4,5,6,7")        # by index (the parent's labels)
    load_dataset("cifar10:classes=cat,dog")            # by name (the parent's class names)
    load_dataset("digits:classes=0,1,2,3,4")

Tokens that are integers are indices into the parent's classes; any other token is a class name.
:func:`select_classes` keeps the train, validation and test samples of those classes and relabels
them ``0..k-1`` in the order given; the parent's split (which samples are train, val or test) and its
normalisation are kept, so a base model trained on the full dataset sees the inputs it was trained on.
The result records its origin in :attr:`DatasetSplits.subset` (a :class:`ClassSubset`).

A base model with the parent's head becomes a ``k``-class model by :func:`slice_classifier`: the
classifier's rows of the chosen classes, in the subset's order, which is at once a valid classifier
of the subset (its logits are the full model's logits of those classes).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn as nn

from pruning_env.cache import stable_hash
from pruning_env.image_dataset import TensorImageDataset
from pruning_env.splits import ClassSubset, DatasetSplits

__all__ = ["ClassSubset", "CLASSES_KEY", "split_subset_spec", "parse_classes", "select_classes",
           "find_classifier", "slice_classifier"]

CLASSES_KEY = ":classes="
_SUBSET_VERSION = 1  # bump when filtering or relabelling changes: it changes every subset's fingerprint


def split_subset_spec(name: str) -> tuple[str, str | None]:
    """``"cifar10:classes=2,3"`` -> ``("cifar10", "2,3")``; a name without ``:classes=`` -> ``(name, None)``.

    The last ``:classes=`` splits, so paths (``npz:<path>:classes=0,1``) keep their own colons.
    """
    head, sep, tail = name.rpartition(CLASSES_KEY)
    return (head, tail) if sep else (name, None)


def parse_classes(spec: str, parent: str, parent_classes: list[str] | tuple[str, ...]) -> tuple[int, ...]:
    """The parent labels named by ``spec`` (``"2,3,4"`` or ``"cat,dog"``), in order; errors say what to write.

    Raises:
        ValueError: no classes, an unknown name, an index out of range, a class listed twice, or fewer
            than two classes.
    """
    names = [str(c) for c in parent_classes]
    n = len(names)
    listing = ", ".join(names) if n <= 20 else ", ".join(names[:20]) + ", ..."
    example = f"{parent}:classes=0,1"
    if n >= 2 and names[:2] != ["0", "1"]:
        example += f" or {parent}:classes={names[0]},{names[1]}"
    where = f"dataset '{parent}{CLASSES_KEY}{spec}'"
    tokens = [t.strip() for t in spec.split(",")]
    if not spec.strip() or any(not t for t in tokens):
        raise ValueError(f"{where}: empty class in the list; write comma-separated class indices (0-{n - 1}) "
                         f"or names, e.g. {example}")
    ids: list[int] = []
    for token in tokens:
        if token.lstrip("-").isdigit():  # integers are indices, even where class names are numbers too
            index = int(token)
            if not 0 <= index < n:
                raise ValueError(f"{where}: class index {index} is out of range: {parent} has {n} classes, "
                                 f"indices 0-{n - 1} ({listing})")
        elif token in names:
            index = names.index(token)
        else:
            folded = [c.lower() for c in names]
            if token.lower() not in folded:
                raise ValueError(f"{where}: unknown class {token!r}; the classes of {parent} are {listing} "
                                 f"(or their indices 0-{n - 1}), e.g. {example}")
            index = folded.index(token.lower())
        if index in ids:
            raise ValueError(f"{where}: class {index} ({names[index]}) is listed twice; list each class once")
        ids.append(index)
    if len(ids) < 2:
        raise ValueError(f"{where}: a class subset needs at least 2 classes, got {len(ids)}; "
                         f"list two or more, e.g. {example}")
    return tuple(ids)


def _filter(ds: TensorImageDataset, class_ids: tuple[int, ...], classes: list[str],
            limit: int | None = None) -> TensorImageDataset:
    lookup = torch.full((int(ds.y.max()) + 1 if len(ds.y) else 1,), -1, dtype=torch.int64)
    for new, old in enumerate(class_ids):
        if old < len(lookup):
            lookup[old] = new
    new_y = lookup[ds.y]
    keep = torch.nonzero(new_y >= 0).flatten()[:limit]  # the split's order (class-interleaved) is kept
    return TensorImageDataset(ds.x[keep], new_y[keep], ds.mean, ds.std, classes, ds.hflip, ds.index[keep])


def select_classes(data: DatasetSplits, classes: str | list[int | str] | tuple[int | str, ...],
                   max_train: int | None = None) -> DatasetSplits:
    """The splits of ``data`` restricted to ``classes``, relabelled ``0..k-1`` in the order given.

    Args:
        data: a full dataset (not itself a subset).
        classes: ``"2,3,4"``, ``"cat,dog"`` or a list of indices or names of ``data``'s classes.
        max_train: keep at most this many training samples of the subset (a class-balanced prefix).

    The subset's name is canonical (``<parent>:classes=<indices>``), so names and indices of the same
    classes share every cache; its fingerprint hashes the parent's, the class ids and ``max_train``.
    """
    if data.subset is not None:
        raise ValueError(f"dataset {data.name!r} is already a class subset; write one classes= list "
                         f"of {data.subset.parent}'s classes instead")
    spec = classes if isinstance(classes, str) else ",".join(str(c) for c in classes)
    ids = parse_classes(spec, data.name, data.classes)
    names = [data.classes[i] for i in ids]
    if max_train is not None and max_train < 1:
        raise ValueError(f"max_train must be >= 1, got {max_train}")
    subset = ClassSubset(data.name, tuple(data.classes), ids, data.fingerprint)
    listed = ", ".join(f"{i} ({c})" for i, c in zip(ids, names))
    return replace(
        data,
        name=f"{data.name}{CLASSES_KEY}{','.join(str(i) for i in ids)}",
        train=_filter(data.train, ids, names, max_train),
        val=_filter(data.val, ids, names),
        test=_filter(data.test, ids, names),
        num_classes=len(ids),
        classes=names,
        fingerprint=stable_hash({"parent": data.fingerprint, "classes": list(ids), "max_train": max_train,
                                 "version": _SUBSET_VERSION}),
        source=f"{data.source}; classes {listed} relabelled 0-{len(ids) - 1}",
        subset=subset,
    )


def find_classifier(model: nn.Module, num_classes: int) -> str:
    """Name of the last ``nn.Linear`` of ``model`` with ``num_classes`` outputs (the classifier head).

    Raises:
        ValueError: no such layer.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear with {num_classes} outputs to slice into a "
                         "class subset's head; give weights whose head already has the subset's classes "
                         "(checkpoint=) or a model whose classifier is an nn.Linear")
    return names[-1]


def slice_classifier(model: nn.Module, class_ids: tuple[int, ...] | list[int], num_classes: int) -> nn.Module:
    """A copy of ``model`` whose ``num_classes``-way classifier keeps only the rows ``class_ids``, in order.

    The copy's logit ``j`` equals the original's logit ``class_ids[j]`` for every input: a valid
    classifier of the subset before any training. ``model`` itself is left as it was.
    """
    name = find_classifier(model, num_classes)
    out = copy.deepcopy(model)
    old = out.get_submodule(name)
    rows = torch.as_tensor(list(class_ids), dtype=torch.long)
    head = nn.Linear(old.in_features, len(rows), bias=old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(old.weight[rows])
        if old.bias is not None:
            head.bias.copy_(old.bias[rows])
    owner, _, attr = name.rpartition(".")
    setattr(out.get_submodule(owner) if owner else out, attr, head)
    return out
