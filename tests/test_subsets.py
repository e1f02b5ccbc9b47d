"""Class subsets (``digits:classes=...``): filtering and relabelling, the sliced head, errors, caching."""

from __future__ import annotations

import pytest
import torch

from pruning_env.data import load_dataset
from pruning_env.scenario import load_scenario
from pruning_env.subsets import find_classifier, parse_classes, select_classes, slice_classifier
from pruning_env.train import evaluate

SUBSET = "digits:classes=7,0,3"


@pytest.fixture(scope="module")
def subset():
    return load_dataset(SUBSET)


@pytest.fixture(scope="module")
def full_base(one_thread):
    return load_scenario("small_resnet", "digits")


def test_subset_keeps_only_the_chosen_classes_relabelled_in_the_given_order(digits, subset):
    assert subset.num_classes == 3 and subset.classes == ["7", "0", "3"]
    assert subset.name == SUBSET and subset.subset.parent == "digits" and subset.subset.class_ids == (7, 0, 3)
    for part, whole in ((subset.train, digits.train), (subset.val, digits.val), (subset.test, digits.test)):
        assert set(part.y.tolist()) == {0, 1, 2} and part.classes == ["7", "0", "3"]
        # every sample of the chosen classes is kept, and only those: same source images, same order
        chosen = (whole.y == 7) | (whole.y == 0) | (whole.y == 3)
        assert torch.equal(part.index, whole.index[chosen])
        assert torch.equal(part.x, whole.x[chosen])
        assert torch.equal(torch.tensor([7, 0, 3])[part.y], whole.y[chosen])  # label j is parent label ids[j]
        assert part.mean == whole.mean and part.std == whole.std  # the base model's normalisation
    assert len(subset.train) + len(subset.val) + len(subset.test) == sum(
        int(((p.y == 7) | (p.y == 0) | (p.y == 3)).sum()) for p in (digits.train, digits.val, digits.test))


def test_names_and_indices_give_the_same_subset_and_fingerprints_differ_by_classes(subset):
    from pruning_env.splits import from_arrays

    named = load_dataset("digits:classes=7,0,3")
    assert named.fingerprint == subset.fingerprint
    other = load_dataset("digits:classes=0,7,3")  # same classes, other order: other labels
    assert other.fingerprint != subset.fingerprint and other.classes == ["0", "7", "3"]
    x = torch.zeros(8, 3, 4, 4, dtype=torch.uint8)
    pets = from_arrays(x, torch.arange(8) % 4, x, torch.arange(8) % 4, classes=["cat", "dog", "ant", "bee"],
                       val_size=0)
    assert select_classes(pets, "Dog,cat").classes == ["dog", "cat"]
    assert select_classes(pets, [3, "ant"]).subset.class_ids == (3, 2)


def test_max_train_caps_the_subset_with_a_balanced_prefix():
    small = load_dataset("digits:classes=1,2", max_train=40)
    assert len(small.train) == 40 and small.train.class_counts(2).tolist() == [20, 20]


@pytest.mark.parametrize("spec, words", [
    ("digits:classes=3", ["at least 2 classes", "digits:classes=0,1"]),
    ("digits:classes=3,4,3", ["class 3", "listed twice"]),
    ("digits:classes=0,10", ["index 10 is out of range", "10 classes", "0-9"]),
    ("digits:classes=-1,2", ["index -1 is out of range"]),
    ("digits:classes=1,two", ["unknown class 'two'", "0, 1, 2"]),
    ("digits:classes=", ["empty class", "comma-separated"]),
    ("digits:classes=1,,2", ["empty class"]),
    ("digits:classes=1,2:classes=1", ["already a class subset", "one classes= list"]),
    (":classes=1,2", ["the dataset is missing"]),
])
def test_bad_subset_specs_say_what_to_write(spec, words):
    with pytest.raises(ValueError) as err:
        load_dataset(spec)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_unknown_cifar_class_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown class 'dgo'.*airplane, automobile.*cifar10:classes=airplane"):
        parse_classes("cat,dgo", "cifar10", ["airplane", "automobile", "bird", "cat", "deer", "dog"])


def test_sliced_head_gives_the_full_models_logits_of_the_chosen_rows(full_base, subset):
    full = full_base.model
    sliced = slice_classifier(full, (7, 0, 3), 10)
    assert find_classifier(sliced, 3) == find_classifier(full, 10)
    assert full.state_dict()[find_classifier(full, 10) + ".weight"].shape[0] == 10  # the original is untouched
    x = torch.stack([subset.val[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.allclose(sliced(x), full(x)[:, [7, 0, 3]], atol=1e-5)
    with pytest.raises(ValueError, match="no nn.Linear with 5 outputs"):
        find_classifier(full, 5)


def test_subset_scenario_slices_the_cached_base_and_is_a_valid_classifier(full_base, subset):
    sc = load_scenario("small_resnet", SUBSET)
    assert "head sliced to classes 7,0,3" in sc.weights_source and sc.id != full_base.id
    x = torch.stack([subset.test[i][0] for i in range(16)])
    with torch.no_grad():
        assert torch.allclose(sc.model(x), full_base.model(x)[:, [7, 0, 3]], atol=1e-5)
    assert evaluate(sc.model, subset.test) >= 0.95  # the full model is 98% right; 3 of its classes at once


def test_a_checkpoint_with_the_full_or_the_subset_head_both_load(full_base, tmp_path):
    full_ckpt, sub_ckpt = tmp_path / "full.pth", tmp_path / "sub.pth"
    torch.save(full_base.model.state_dict(), full_ckpt)
    sliced = slice_classifier(full_base.model, (7, 0, 3), 10)
    torch.save(sliced.state_dict(), sub_ckpt)
    a = load_scenario("small_resnet", SUBSET, checkpoint=full_ckpt)
    b = load_scenario("small_resnet", SUBSET, checkpoint=sub_ckpt)
    assert "head sliced" in a.weights_source and "head sliced" not in b.weights_source
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    bad = tmp_path / "bad.pth"
    torch.save(slice_classifier(full_base.model, (1, 2), 10).state_dict(), bad)
    with pytest.raises(ValueError, match="does not match"):
        load_scenario("small_resnet", SUBSET, checkpoint=bad)


def test_subset_adaptation_is_cached_under_the_subset(full_base, one_thread):
    from pruning_env.cache import cache_dir

    a = load_scenario("small_resnet", "digits:classes=1,2", adapt_steps=3)
    b = load_scenario("small_resnet", "digits:classes=1,2", adapt_steps=3)
    c = load_scenario("small_resnet", "digits:classes=2,1", adapt_steps=3)
    assert a.id == b.id != c.id
    assert "adapted 3 steps (digits-classes-1-2_" in a.weights_source
    assert any(p.name.startswith("digits-classes-2-1_") for p in cache_dir("adapted").iterdir())


def test_env_runs_an_episode_on_a_subset(one_thread):
    # first run on a machine: ~60 s on one core building the 5-class scenario's caches (latency table,
    # attention, profile), shared with test_transfer.py; then about a second
    import gymnasium as gym
    import numpy as np

    import pruning_env  # noqa: F401

    env = gym.make("DataAwarePrune-v0", dataset="digits:classes=0,1,2,3,4", val_samples=200, threads=1,
                   eval_threads=1)
    assert env.unwrapped.backend.scenario.data.num_classes == 5
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, term, trunc, info = env.step(np.array([0.3], dtype=np.float32))
        done = term or trunc
    assert 0.0 < info["accuracy"] <= 1.0 and np.isfinite(reward)
    env.close()


def test_pretrain_on_a_subset_starts_from_a_full_head_checkpoint(full_base, tmp_path, one_thread):
    from pruning_env.scenario import pretrain

    full = tmp_path / "full.pth"
    torch.save(full_base.model.state_dict(), full)
    model, path, metrics = pretrain("small_resnet", SUBSET, checkpoint=full, epochs=1, lr=0.01, progress=False,
                                    out=tmp_path / "subset.pth")
    assert model.get_submodule(find_classifier(model, 3)).out_features == 3 and path.exists()
    assert metrics["val_accuracy"] > 0.9  # the sliced head was a good 3-class classifier before the epoch
