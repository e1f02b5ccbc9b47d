"""In-memory image datasets: :class:`TensorImageDataset`, uint8 images normalised and augmented per batch.

Every dataset (:func:`pruning_env.data.load_dataset`, :func:`pruning_env.splits.from_arrays`) is held
in memory as uint8 ``N x C x H x W`` tensors (CIFAR-10: 150 MB) and normalised per batch, so iterating
needs no per-sample Python work and nothing big is cached on disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["TensorImageDataset"]

_CROP_PAD = 4  # px of zero padding for the random-crop augmentation (the CIFAR recipe)


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
