"""Model zoo: every registered model builds and runs, CIFAR ResNets load the public weights exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pruning_env.models import BasicBlock, available_models, build_model

# Normalisation the pretrained CIFAR-10 ResNets were trained with (written out independently of data.py).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def _pretrained(shared_data: Path, dataset: str, name: str) -> Path:
    path = shared_data / "pretrained" / f"{dataset}_{name}.pth"
    if not path.is_file():
        pytest.skip(f"pretrained weights {path} not found")
    return path


@pytest.mark.parametrize("name", available_models())
def test_every_model_builds_and_maps_batch_to_logits(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    # In-place activations would overwrite BN outputs kept by forward hooks (activation statistics).
    assert not [m for m in model.modules() if getattr(m, "inplace", False)]


def test_registry_lists_all_families():
    assert available_models() == [  # sorted, every family, nothing unannounced
        "efficientnet_b0", "mobilenet_v2", "resnet20", "resnet32", "resnet44", "resnet56", "small_resnet",
        "vgg11", "vgg16", "vgg19",
    ]
    keys = build_model("resnet20").state_dict().keys()  # names are case-insensitive, surrounding spaces ignored
    assert build_model(" ResNet20 ").state_dict().keys() == keys != build_model("resnet32").state_dict().keys()


def test_unknown_model_error_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet999'") as err:
        build_model("resnet999")
    for name in available_models():
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "blocks"), [("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet56", 9)]
)
def test_cifar_resnet_depth_and_layout(name, blocks):
    model = build_model(name)
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    assert len(convs) + 1 == 6 * blocks + 2  # 3x3 convs plus the fc layer
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [blocks] * 3
    assert model.layer1[0].downsample is None
    for stage, width in ((2, 32), (3, 64)):
        ds = getattr(model, f"layer{stage}")[0].downsample
        assert ds[0].kernel_size == (1, 1) and ds[0].stride == (2, 2) and ds[0].bias is None
        assert ds[0].out_channels == width and isinstance(ds[1], nn.BatchNorm2d)
    assert model.fc.in_features == 64 and model.fc.bias is not None


def test_basic_block_computes_residual_formula():
    torch.manual_seed(0)
    block = BasicBlock(8, 16, stride=2).eval()
    for bn in (block.bn1, block.bn2, block.downsample[1]):  # non-trivial BN statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 8, 10, 10)
    relu = torch.relu
    expected = relu(block.bn2(block.conv2(relu(block.bn1(block.conv1(x))))) + block.downsample(x))
    with torch.no_grad():
        assert torch.allclose(block(x), expected)
    assert block(x).shape == (3, 16, 5, 5)


@pytest.mark.parametrize(("dataset", "name", "classes"), [
    ("cifar10", "resnet20", 10), ("cifar10", "resnet32", 10), ("cifar10", "resnet56", 10),
    ("cifar100", "resnet20", 100), ("cifar100", "resnet56", 100),
])
def test_pretrained_weights_load_strictly(shared_data, dataset, name, classes):
    state = torch.load(_pretrained(shared_data, dataset, name), map_location="cpu", weights_only=True)
    model = build_model(name, num_classes=classes)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_pretrained_resnet20_is_accurate_on_offline_cifar10(shared_data):
    model = build_model("resnet20")
    model.load_state_dict(torch.load(_pretrained(shared_data, "cifar10", "resnet20"), weights_only=True))
    with np.load(shared_data / "cifar10" / "test.npz", allow_pickle=False) as d:
        # test.npz is sorted by class: take 512 evenly spaced images to cover every class.
        idx = np.linspace(0, len(d["y"]) - 1, 512).round().astype(int)
        x, y = d["x"][idx], torch.from_numpy(d["y"][idx])
    assert len(torch.unique(y)) == 10
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).float().mean().item()
    # Published 92.6% on clean pixels; this JPEG-degraded copy costs about 10 points (81% on all 10,000).
    assert acc > 0.70, acc


def _final_feature_map(model: nn.Module, size: int) -> int:
    with torch.no_grad():
        return model.eval().features(torch.zeros(1, 3, size, size)).shape[-1]


def test_mobile_models_keep_spatial_resolution_for_small_inputs():
    assert _final_feature_map(build_model("mobilenet_v2", input_size=32), 32) == 4  # stride 8 instead of 32
    assert _final_feature_map(build_model("efficientnet_b0", input_size=32), 32) == 2  # stride 16
    # native resolution: torchvision's architecture unchanged (total stride 32)
    assert _final_feature_map(build_model("mobilenet_v2", input_size=128), 128) == 4
    assert _final_feature_map(build_model("efficientnet_b0", input_size=128), 128) == 4
    native = build_model("mobilenet_v2", num_classes=10, input_size=224)
    assert native.features[0][0].stride == (2, 2) and native.features[2].conv[1][0].stride == (2, 2)


def test_vgg_configs_and_input_size_check():
    names = ("vgg11", "vgg16", "vgg19")
    convs = {n: sum(isinstance(m, nn.Conv2d) for m in build_model(n).modules()) for n in names}
    assert convs == {"vgg11": 8, "vgg16": 13, "vgg19": 16}
    model = build_model("vgg11", num_classes=3, input_size=64).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="input_size >= 32"):
        build_model("vgg16", input_size=16)


def test_small_resnet_is_small_and_fits_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("small_resnet")
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 300_000  # 32/64 channels: 170 K
    x, y = torch.randn(20, 3, 32, 32), torch.arange(20) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


@pytest.mark.slow
def test_the_default_scenario_trains_itself_to_95_percent(tmp_path):
    """The recipe load_scenario uses when the embedded default has no cached weights."""
    from pruning_env.scenario import _AUTO_TRAIN, pretrain

    _, path, metrics = pretrain("small_resnet", "digits", progress=False, out=tmp_path / "w.pth",
                                **_AUTO_TRAIN[("small_resnet", "digits")])
    assert path.exists() and metrics["test_accuracy"] >= 0.95, metrics
