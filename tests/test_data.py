"""Datasets: splits (sizes, disjointness, balance, determinism), batching, augmentation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pruning_env.data import CIFAR10_MEAN, CIFAR10_STD, available_datasets, load_dataset
from pruning_env.image_dataset import TensorImageDataset
from pruning_env.splits import DatasetSplits, from_arrays


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cifar10(shared_data) -> DatasetSplits:
    return load_dataset("cifar10", data_root=shared_data)


def _indexed_dataset(n: int = 50, hflip: bool = True) -> TensorImageDataset:
    """Images whose every pixel holds the sample's index, so batches reveal which samples they hold."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return TensorImageDataset(x, torch.arange(n) % 5, (0.0,) * 3, (1 / 255,) * 3, hflip=hflip)


def _ids(xb: torch.Tensor) -> list[int]:
    """Sample indices encoded by :func:`_indexed_dataset` (normalisation multiplies by 255/255)."""
    return xb[:, 0, 0, 0].round().long().tolist()


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_split_sizes(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359)
    assert digits.input_shape == (3, 32, 32) and digits.num_classes == 10
    assert digits.classes == [str(i) for i in range(10)]
    for part in (digits.train, digits.val, digits.test):
        assert part.x.dtype == torch.uint8 and part.x.shape[1:] == (3, 32, 32)
        assert part.y.dtype == torch.int64 and not part.hflip
        assert torch.equal(part.x[:, 0], part.x[:, 2])  # grey digits replicated to 3 channels
    x, y = digits.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and isinstance(y, int)


def test_digits_splits_are_disjoint_and_cover_all_images(digits):
    ids = [set(part.index.tolist()) for part in (digits.train, digits.val, digits.test)]
    assert sum(map(len, ids)) == 1797 and set().union(*ids) == set(range(1797))


def test_digits_splits_are_stratified_and_normalised(digits):
    # sklearn digits has 174..183 images per class
    assert digits.test.class_counts(10).tolist() == pytest.approx([36] * 10, abs=1)
    assert digits.val.class_counts(10).tolist() == pytest.approx([14.4] * 10, abs=1)
    x = torch.cat([xb for xb, _ in digits.train.iter_batches(512)])
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2  # stats from the train split


def test_digits_is_deterministic_and_split_seed_changes_only_train_val(digits):
    again = load_dataset("digits")
    assert again.fingerprint == digits.fingerprint
    for a, b in ((again.train, digits.train), (again.val, digits.val), (again.test, digits.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = load_dataset("digits", split_seed=1)
    assert other.fingerprint != digits.fingerprint
    assert set(other.val.index.tolist()) != set(digits.val.index.tolist())
    assert torch.equal(other.test.index, digits.test.index)


def test_val_size_count_and_max_train(digits):
    data = load_dataset("digits", val_size=100, max_train=200)
    assert len(data.val) == 100 and len(data.train) == 200
    assert data.train.class_counts(10).tolist() == pytest.approx([20] * 10, abs=1)  # balanced prefix
    assert torch.equal(data.val.x, load_dataset("digits", val_size=100).val.x)
    assert len(load_dataset("digits", val_size=0).val) == 0
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", val_size=1.5)


# --------------------------------------------------------------------------- CIFAR-10 (offline copy)


def test_cifar10_from_shared_npz(cifar10, shared_data):
    assert len(cifar10.train) + len(cifar10.val) == 50_000 and len(cifar10.val) == 5_000
    assert len(cifar10.test) == 10_000 and cifar10.test.class_counts(10).tolist() == [1000] * 10
    assert cifar10.classes[:3] == ["airplane", "automobile", "bird"] and cifar10.num_classes == 10
    assert (cifar10.mean, cifar10.std) == (CIFAR10_MEAN, CIFAR10_STD)
    assert cifar10.input_shape == (3, 32, 32) and cifar10.train.hflip
    assert str(shared_data / "cifar10") in cifar10.source
    train_ids, val_ids = set(cifar10.train.index.tolist()), set(cifar10.val.index.tolist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 50_000


def test_cifar10_val_is_balanced_and_deterministic(cifar10, shared_data):
    # The shards are sorted by class: a split of the concatenation must still be balanced.
    assert cifar10.val.class_counts(10).tolist() == [500] * 10
    assert cifar10.test.subset(500).class_counts(10).tolist() == [50] * 10  # any prefix is balanced
    again = load_dataset("cifar10", data_root=shared_data, val_size=1000, split_seed=0)
    assert again.val.class_counts(10).tolist() == [100] * 10
    assert again.fingerprint != cifar10.fingerprint
    same = load_dataset("cifar10", data_root=shared_data)
    assert same.fingerprint == cifar10.fingerprint and torch.equal(same.val.index, cifar10.val.index)


def test_missing_cifar_offline_raises_helpful_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_ENV_OFFLINE", "1")
    for name in ("cifar10", "cifar100"):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset(name, data_root=tmp_path)
        msg = str(err.value)
        assert f"'{name}'" in msg and str(tmp_path / name) in msg and "PRUNING_ENV_DATA" in msg
        assert "PRUNING_ENV_OFFLINE" in msg  # says why nothing was downloaded
    monkeypatch.setenv("PRUNING_ENV_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_dataset("cifar10")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet")
    assert all(name in str(err.value) for name in available_datasets())


# --------------------------------------------------------------------------- batching


def test_iter_batches_covers_every_sample_once():
    ds = _indexed_dataset(50)
    plain = list(ds.iter_batches(16))
    assert [len(yb) for _, yb in plain] == [16, 16, 16, 2]
    assert sum((_ids(xb) for xb, _ in plain), []) == list(range(50))
    assert torch.equal(torch.cat([yb for _, yb in plain]), ds.y)
    gen = torch.Generator().manual_seed(0)
    seen = sum((_ids(xb) for xb, _ in ds.iter_batches(16, shuffle=True, generator=gen)), [])
    assert sorted(seen) == list(range(50)) and seen != list(range(50))
    assert [len(yb) for _, yb in ds.iter_batches(16, drop_last=True)] == [16, 16, 16]


def test_iter_batches_matches_getitem_and_dataloader(digits):
    xb, yb = next(digits.val.iter_batches(8))
    assert torch.allclose(xb[3], digits.val[3][0]) and yb[3].item() == digits.val[3][1]
    lx, ly = next(iter(DataLoader(digits.val, batch_size=8)))
    assert torch.allclose(lx, xb) and torch.equal(ly, yb)


def test_augment_crops_and_flips_within_padding():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    for hflip in (True, False):
        ds = TensorImageDataset(x, torch.zeros(16, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3, hflip=hflip)
        gen = torch.Generator().manual_seed(1)
        out = ds.augment(x, gen)
        assert out.shape == x.shape and out.dtype == torch.uint8
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        flips = 0
        for i in range(len(x)):
            crops = {(dy, dx): padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)}
            views = [(f, k) for k, c in crops.items() for f in (False, True)
                     if torch.equal(out[i], c.flip(2) if f else c)]
            assert views, "augmented image is not a (flipped) crop of the padded original"
            flips += any(f for f, _ in views)
        assert (flips > 0) == hflip
        assert torch.equal(out, ds.augment(x, torch.Generator().manual_seed(1)))  # seeded = reproducible
    xb, _ = next(ds.iter_batches(8, augment=True, shuffle=True))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32


def test_subset_by_count_seed_indices_and_mask():
    ds = _indexed_dataset(20)
    assert ds.subset(5).index.tolist() == [0, 1, 2, 3, 4]
    assert len(ds.subset(100)) == 20
    picked = ds.subset(5, seed=3).index
    assert len(set(picked.tolist())) == 5 and torch.equal(picked, ds.subset(5, seed=3).index)
    assert ds.subset([7, 2]).x[:, 0, 0, 0].tolist() == [7, 2] and ds.subset([7, 2]).index.tolist() == [7, 2]
    assert ds.subset(torch.arange(20) >= 18).index.tolist() == [18, 19]


# --------------------------------------------------------------------------- user data


def _arrays(n_train=60, n_test=20, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, 16, 16, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 16, 16, 3), dtype=np.uint8)
    return x_train, np.arange(n_train) % classes, x_test, np.arange(n_test) % classes


def test_from_arrays_accepts_nhwc_and_nchw():
    x_train, y_train, x_test, y_test = _arrays()
    a = from_arrays(x_train, y_train, x_test, y_test, name="mine", classes=["a", "b", "c"], val_size=0.2)
    b = from_arrays(x_train.transpose(0, 3, 1, 2), y_train, x_test.transpose(0, 3, 1, 2), y_test, name="mine",
                    classes=["a", "b", "c"], val_size=0.2)
    assert a.fingerprint == b.fingerprint and torch.equal(a.train.x, b.train.x)
    assert (len(a.train), len(a.val), len(a.test)) == (48, 12, 20) and a.input_shape == (3, 16, 16)
    assert a.val.class_counts(3).tolist() == [4, 4, 4] and a.num_classes == 3 and a.name == "mine"
    expected_mean = x_train[a.train.index.numpy()].reshape(-1, 3).mean(0) / 255
    assert np.allclose(a.mean, expected_mean, atol=1e-5)
    grey = from_arrays(x_train[..., 0], y_train, x_test[..., 0], y_test)
    assert grey.input_shape == (1, 16, 16) and grey.classes == ["0", "1", "2"]


def test_from_arrays_rejects_bad_input():
    x_train, y_train, x_test, y_test = _arrays()
    with pytest.raises(TypeError, match="uint8"):
        from_arrays(x_train / 255.0, y_train, x_test, y_test)
    with pytest.raises(ValueError, match="labels"):
        from_arrays(x_train, y_train, x_test, y_test, classes=["a", "b"])


def test_npz_file_and_shard_folder(tmp_path):
    x_train, y_train, x_test, y_test = _arrays()
    np.savez(tmp_path / "mine.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    single = load_dataset(f"npz:{tmp_path / 'mine.npz'}")
    shards = tmp_path / "shards"
    shards.mkdir()
    np.savez(shards / "train_a.npz", x=x_train[:30], y=y_train[:30])
    np.savez(shards / "train_b.npz", x=x_train[30:], y=y_train[30:])
    np.savez(shards / "test.npz", x=x_test, y=y_test, classes=np.array(["r", "g", "b"]))
    folder = load_dataset(f"npz:{shards}")
    assert torch.equal(single.train.x, folder.train.x) and torch.equal(single.test.y, folder.test.y)
    assert folder.classes == ["r", "g", "b"] and len(folder.test) == 20
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset(f"npz:{tmp_path / 'missing'}")


def test_image_folder_is_resized(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", image_size=16, val_size=4)
    assert data.classes == ["cat", "dog"] and data.input_shape == (3, 16, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 6)
    assert data.test.class_counts(2).tolist() == [3, 3]


def _write_torchvision_cifar100(root, n_train: int = 400, n_test: int = 100) -> None:
    """A tiny dataset in torchvision's CIFAR-100 layout: pickled dicts of N x 3072 uint8 rows and fine labels."""
    import pickle

    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 100
        images = (rng.random((n, 3, 32, 32)) * 60 + labels[:, None, None, None] * 1.9).astype(np.uint8)
        entry = {"data": images.reshape(n, 3072), "fine_labels": labels.tolist(),
                 "coarse_labels": (labels // 5).tolist(), "filenames": [f"{split}_{i}.png" for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class_{i}" for i in range(100)],
                                                "coarse_label_names": [f"super_{i}" for i in range(20)]}))


def test_cifar100_in_torchvision_format_runs_an_episode_and_a_finetune_step(tmp_path, monkeypatch, one_thread):
    """The CIFAR-100 path without the images: torchvision's on-disk format, the 100-class head, an episode
    of the environment and a fine-tune step of the pruned network."""
    import gymnasium as gym

    import pruning_env  # noqa: F401
    from pruning_env.models import build_model
    from pruning_env.train import finetune

    monkeypatch.setenv("PRUNING_ENV_OFFLINE", "1")
    _write_torchvision_cifar100(tmp_path)
    data = load_dataset("cifar100", data_root=tmp_path)
    assert data.num_classes == 100 and data.classes[7] == "class_7" and data.input_shape == (3, 32, 32)
    assert len(data.train) + len(data.val) == 400 and len(data.test) == 100
    assert data.test.class_counts(100).tolist() == [1] * 100  # every fine label read, one test image each
    weights = tmp_path / "resnet20_cifar100.pth"
    torch.save(build_model("resnet20", num_classes=100).state_dict(), weights)
    env = gym.make("DataAwarePruneMACs-v0", model="resnet20", dataset="cifar100", data_root=str(tmp_path),
                   checkpoint=str(weights), importance="l1", val_samples=50, bn_batches=1)
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, done, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert info["macs_ratio"] > 1.5 and np.isfinite(reward)
    pruned = env.unwrapped.last_model
    assert pruned.fc.out_features == 100
    out = finetune(pruned, data.train, max_steps=1, progress=False, device="cpu")
    assert out["steps"] == 1 and np.isfinite(out["history"]["loss"][0])
