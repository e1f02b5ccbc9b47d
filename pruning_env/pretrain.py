"""Train or adapt a base model on a dataset and cache it: ``python -m pruning_env.pretrain``.

Examples::

    # train the embedded default from scratch (seconds)
    python -m pruning_env.pretrain --model small_resnet --dataset digits --epochs 30
    # adapt published CIFAR-10 weights to the JPEG-degraded offline copy (a short fine-tune)
    python -m pruning_env.pretrain --model resnet20 --dataset cifar10 --data-root ../shared/data \\
        --checkpoint ../shared/data/pretrained/cifar10_resnet20.pth --epochs 1 --lr 0.01

The weights are written under the cache (or ``--out``) and the path is printed; pass it as
``checkpoint=`` to the environment.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .scenario import pretrain

__all__ = ["main"]


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered model name, e.g. resnet20")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--checkpoint", default=None, help="start from these weights (adaptation)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="where to write the state_dict (default: the cache)")
    a = p.parse_args(argv)
    _, path, metrics = pretrain(a.model, a.dataset, checkpoint=a.checkpoint, data_root=a.data_root, epochs=a.epochs,
                                lr=a.lr, batch_size=a.batch_size, seed=a.seed, out=a.out)
    print(json.dumps({"weights": str(path), **metrics}, indent=1))
    return path


if __name__ == "__main__":
    main()
