"""Scenarios: base-weight adaptation (cached), weight sources, and the evaluation device contract."""

from __future__ import annotations

import pytest
import torch

from pruning_env.models import build_model
from pruning_env.scenario import adapt, load_scenario
from pruning_env.train import evaluate


def _small(digits) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small_resnet", num_classes=digits.num_classes, input_size=digits.input_shape[-1])


def test_adapt_trains_once_then_loads_the_same_weights_from_the_cache(digits, one_thread) -> None:
    start = _small(digits).state_dict()
    a, path = adapt(_small(digits), digits, steps=3, lr=0.05)
    assert path.exists()
    changed = [k for k, v in a.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, start[k])]
    assert changed, "three SGD steps changed no weight"
    mtime = path.stat().st_mtime_ns
    b, path_b = adapt(_small(digits), digits, steps=3, lr=0.05)
    assert path_b == path and path.stat().st_mtime_ns == mtime  # loaded, not retrained
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    # Other settings are another cache entry.
    _, path_c = adapt(_small(digits), digits, steps=4, lr=0.05)
    assert path_c != path
    assert not a.training and next(a.parameters()).device.type == "cpu"


def test_adapt_refuses_zero_steps(digits) -> None:
    with pytest.raises(ValueError, match="steps > 0"):
        adapt(_small(digits), digits, steps=0)


def test_load_scenario_with_adaptation_changes_weights_and_scenario_id(digits, one_thread) -> None:
    model = _small(digits)
    plain = load_scenario(model, digits)
    adapted = load_scenario(_small(digits), digits, adapt_steps=2)
    assert adapted.id != plain.id
    assert "adapted 2 steps" in adapted.weights_source and adapted.info["adapt_steps"] == 2


def test_evaluate_counts_in_eval_mode_and_leaves_the_model_as_it_was(digits) -> None:
    model = _small(digits).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc = evaluate(model, digits.val, device="cpu", max_samples=64)
    assert model.training and next(model.parameters()).device.type == "cpu"  # mode and device restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    x, y = next(digits.val.iter_batches(64))
    with torch.no_grad():
        expected = (model.eval()(x).argmax(1) == y).float().mean().item()  # eval mode: running BN statistics
    assert acc == pytest.approx(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to evaluate on another device")
def test_evaluate_on_the_gpu_moves_a_cpu_model_back(digits) -> None:
    model = _small(digits).eval()
    on_cpu = evaluate(model, digits.val, device="cpu", max_samples=64)
    assert evaluate(model, digits.val, device="cuda", max_samples=64) == pytest.approx(on_cpu, abs=2 / 64)
    assert next(model.parameters()).device.type == "cpu"
