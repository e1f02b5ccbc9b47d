"""Training, evaluation and BN recalibration on a real tiny problem (scikit-learn digits, 1 x 8 x 8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pruning_env.train import default_device, evaluate, finetune, recalibrate_bn, train

sklearn_datasets = pytest.importorskip("sklearn.datasets")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # pixel values are 0..16
    x = (x - x.mean()) / x.std()
    y = torch.tensor(y, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return x[tr], y[tr], x[te], y[te]


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


class Batches:
    """A TensorImageDataset-like source: only ``iter_batches(batch_size, shuffle=False)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def iter_batches(self, batch_size: int, shuffle: bool = False):
        for i in range(0, len(self.y), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]


def test_default_device_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")


def test_train_reaches_high_accuracy_on_digits(digits):
    xtr, ytr, xte, yte = digits
    model = small_cnn()
    before = evaluate(model, (xte, yte))
    out = train(model, TensorDataset(xtr, ytr), epochs=20, lr=0.05, batch_size=64, augment=False,
                device="cpu", progress=False, max_steps=200)
    hist = out["history"]
    assert out["steps"] == 200 and len(hist["loss"]) == 200 and len(hist["lr"]) == 200
    assert hist["lr"][0] == pytest.approx(0.05) and hist["lr"][-1] < 0.001  # cosine to ~0 over max_steps
    assert sum(hist["loss"][-20:]) < sum(hist["loss"][:20]) / 5
    assert not model.training
    acc = evaluate(model, Batches(xte, yte))
    assert acc > 0.9 and acc > before + 0.5


def test_evaluate_accepts_every_data_source(digits):
    _, _, xte, yte = digits
    model = small_cnn()
    batches = [(xte[i : i + 100], yte[i : i + 100]) for i in range(0, len(yte), 100)]
    accs = {
        evaluate(model, Batches(xte, yte), batch_size=64),
        evaluate(model, TensorDataset(xte, yte), batch_size=64),
        evaluate(model, (xte, yte)),
        evaluate(model, batches),
    }
    assert len(accs) == 1
    acc = accs.pop()
    assert 0.0 <= acc <= 1.0
    expected = (model.eval()(xte[:50]).argmax(1) == yte[:50]).float().mean().item()
    assert evaluate(model, batches, max_samples=50) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, [])


def test_training_is_deterministic_for_a_seed(digits):
    xtr, ytr, _, _ = digits
    runs = []
    for seed in (0, 0, 1):
        model = small_cnn(seed=3)
        runs.append(train(model, (xtr, ytr), epochs=1, lr=0.05, batch_size=64, augment=False, device="cpu",
                          progress=False, max_steps=15, seed=seed)["history"]["loss"])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # another seed shuffles differently


def test_finetune_defaults_and_stops_at_max_steps(digits):
    xtr, ytr, _, _ = digits
    out = finetune(small_cnn(), (xtr, ytr), device="cpu", progress=False, max_steps=5, batch_size=32)
    assert out["steps"] == 5 and out["history"]["lr"][0] == pytest.approx(0.01)


def test_recalibrate_bn_reestimates_statistics_only(digits):
    xtr, ytr, _, _ = digits
    model = small_cnn()
    train(model, (xtr, ytr), epochs=1, lr=0.05, batch_size=64, augment=False, device="cpu", progress=False,
          max_steps=10)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)  # as after pruning: statistics that no longer fit
    model.train()
    batches = [(xtr[i : i + 100], ytr[i : i + 100]) for i in range(0, 400, 100)]
    assert recalibrate_bn(model, batches, num_batches=4) is model
    assert not model.training
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert any(not torch.equal(state[k], v) for k, v in stats.items())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # cumulative average over equal batches: the first BN's running mean is the mean of its inputs
    with torch.no_grad():
        first_conv = model[0](xtr[:400])
    torch.testing.assert_close(model[1].running_mean, first_conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_a_fine_tune_keeps_its_batchnorm_statistics_unless_it_was_short(digits):
    from pruning_env.train import SHORT_FINETUNE_STEPS, recalibrate_after_finetune

    xtr, ytr, _, _ = digits
    batches = [(xtr[i : i + 100], ytr[i : i + 100]) for i in range(0, 400, 100)]
    model = small_cnn()
    out = train(model, (xtr, ytr), epochs=5, lr=0.05, batch_size=64, device="cpu", progress=False,
                max_steps=SHORT_FINETUNE_STEPS)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert recalibrate_after_finetune(model, batches, out["steps"]) is False  # long enough: its own statistics
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    assert recalibrate_after_finetune(model, batches, SHORT_FINETUNE_STEPS - 1) is True
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    with torch.no_grad():
        first_conv = model[0](xtr[:400])
    torch.testing.assert_close(model[1].running_mean, first_conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
