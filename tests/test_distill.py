"""Fine-tuning with knowledge distillation: the loss, determinism, resuming, and what it refuses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from pruning_env import train as base
from pruning_env.distill import CHECKPOINT_FILE, finetune, kd_loss

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(epochs=2, batch_size=64, lr=0.05, device="cpu", progress=False)


def tiny(seed: int = 0) -> nn.Module:
    """~1.4 k parameters; dropout, so that resuming must restore the global RNG too."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def data(digits):
    return digits.train.subset(256)  # 4 batches of 64 per epoch; augmentation: random crops


@pytest.fixture(scope="module")
def teacher(data):
    model = tiny(seed=1)
    base.train(model, data, epochs=3, lr=0.05, batch_size=64, device="cpu", progress=False)
    return model


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kd_loss_is_the_weighted_sum_of_cross_entropy_and_softened_kl():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    ce = F.cross_entropy(s, y)
    p, q = F.softmax(t / 4, dim=1), F.softmax(s / 4, dim=1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(kd_loss(s, y, t, 4.0, 0.9), 0.1 * ce + 0.9 * 16 * kl)
    assert torch.equal(kd_loss(s, y, t, 4.0, 0.0), ce)
    assert torch.equal(kd_loss(s, y, None, 4.0, 0.9), ce)
    torch.testing.assert_close(kd_loss(s, y, s, 2.0, 0.5), 0.5 * ce)  # a teacher that agrees adds nothing


def test_without_a_teacher_it_is_the_base_trainer(data, teacher):
    ref = tiny()
    out_ref = base.finetune(ref, data, **FAST)
    for kwargs in ({}, {"teacher": teacher, "kd_weight": 0.0}):
        model = tiny()
        out = finetune(model, data, **FAST, **kwargs)
        assert_same(weights(model), weights(ref))
        assert out["history"]["loss"] == out_ref["history"]["loss"]
        assert out["history"]["lr"] == out_ref["history"]["lr"]
        assert out["steps"] == 8 and out["epochs"] == 2 and len(out["history"]["epoch_accuracy"]) == 2
        assert not out["amp"] and not out["channels_last"] and out["seconds"] > 0


def test_tensor_pairs_and_tensor_datasets_are_batched_alike(data):
    # Both are kept on the device and batched there (not through a DataLoader, which draws a worker seed
    # from the generator first: the base trainer's batches of a TensorDataset differ for that reason only).
    x = torch.cat([xb for xb, _ in data.iter_batches(256)])
    pair = (x, data.y.clone())
    a, b = tiny(), tiny()
    out = finetune(a, pair, **FAST)
    finetune(b, TensorDataset(*pair), **FAST)
    assert_same(weights(a), weights(b))
    assert out["steps"] == 8 and differ(weights(a), weights(tiny()))


def test_the_teacher_changes_the_result_and_is_left_as_it_came(data, teacher):
    plain, taught = tiny(), tiny()
    finetune(plain, data, **FAST)
    teacher.train()
    before = weights(teacher)
    rng = torch.get_rng_state()
    out = finetune(taught, data, teacher=teacher, **FAST)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    assert teacher.training and next(teacher.parameters()).device.type == "cpu"
    assert_same(weights(teacher), before)  # eval mode inside: BN statistics did not move
    assert differ(weights(plain), weights(taught))
    assert all(math.isfinite(v) for v in out["history"]["loss"])
    assert not taught.training


def test_the_same_seed_gives_the_same_weights(data, teacher):
    runs = []
    for seed in (0, 0, 1):
        model = tiny()
        finetune(model, data, teacher=teacher, seed=seed, **FAST)
        runs.append(weights(model))
    assert_same(runs[0], runs[1])
    assert differ(runs[0], runs[2])


class Interrupted(Exception):
    pass


def test_an_interrupted_finetune_resumes_to_the_same_weights(data, teacher, tmp_path):
    ref = tiny()
    out_ref = finetune(ref, data, teacher=teacher, **FAST)

    def stop_after_first_epoch(epoch, history):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(tiny(), data, teacher=teacher, checkpoint_dir=tmp_path, callback=stop_after_first_epoch, **FAST)
    assert (tmp_path / CHECKPOINT_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temporary file left behind

    model = tiny()  # a new process would rebuild the student from scratch
    out = finetune(model, data, teacher=teacher, checkpoint_dir=tmp_path, **FAST)
    assert out["resumed_from_epoch"] == 1 and out["steps"] == 8
    assert_same(weights(model), weights(ref))
    assert out["history"] == out_ref["history"]

    again = tiny()  # a finished fine-tune returns its final weights at once
    out = finetune(again, data, teacher=teacher, checkpoint_dir=tmp_path, **FAST)
    assert out["resumed_from_epoch"] == 2 and out["history"] == out_ref["history"]
    assert_same(weights(again), weights(ref))


def test_a_checkpoint_of_another_finetune_is_refused(data, teacher, tmp_path):
    finetune(tiny(), data, teacher=teacher, checkpoint_dir=tmp_path, **dict(FAST, epochs=1))
    with pytest.raises(ValueError, match=r"another fine-tune \(lr: 0.05 there, 0.1 now\).*Delete"):
        finetune(tiny(), data, teacher=teacher, checkpoint_dir=tmp_path, **dict(FAST, epochs=1, lr=0.1))
    with pytest.raises(ValueError, match="started from other weights"):
        finetune(tiny(seed=5), data, teacher=teacher, checkpoint_dir=tmp_path, **dict(FAST, epochs=1))
    with pytest.raises(ValueError, match="teacher"):
        finetune(tiny(), data, teacher=tiny(seed=3), checkpoint_dir=tmp_path, **dict(FAST, epochs=1))
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or corrupt.*Delete"):
        finetune(tiny(), data, teacher=teacher, checkpoint_dir=tmp_path, **dict(FAST, epochs=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kd_temperature": 0.0}, "kd_temperature"),
        ({"kd_temperature": -1.0}, "kd_temperature"),
        ({"kd_temperature": math.nan}, "kd_temperature"),
        ({"kd_weight": -0.1}, "kd_weight"),
        ({"kd_weight": 1.5}, "kd_weight"),
        ({"lr": 0.0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"amp": True}, "needs a CUDA device"),
        ({"channels_last": True}, "needs a CUDA device"),
        ({"amp": "yes"}, "'auto', True or False"),
    ],
)
def test_bad_arguments_raise_value_error(data, teacher, kwargs, match):
    with pytest.raises(ValueError, match=match):
        finetune(tiny(), data, teacher=teacher, **{**FAST, **kwargs})


def test_the_teacher_cannot_be_the_student(data):
    model = tiny()
    with pytest.raises(ValueError, match="same module"):
        finetune(model, data, teacher=model, **FAST)
