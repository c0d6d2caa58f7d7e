"""Model registry, CIFAR architectures and their width API; reference sizes from docs/method.md section 9."""

import io

import pytest
import torch
from torch import nn

from sosp import models
from sosp.errors import ConfigError, UnknownNameError
from sosp.measure import count_macs, count_params

CIFAR = torch.zeros(1, 3, 32, 32)


# (name, options, params, MACs in millions rounded to 2 decimals) -- docs/method.md section 9
CIFAR_REFERENCE = [
    ("resnet20", {"shortcut": "A"}, 269_722, 40.55),
    ("resnet32", {"shortcut": "A"}, 464_154, 68.86),
    ("resnet56", {"shortcut": "A"}, 853_018, 125.49),
    ("resnet110", {"shortcut": "A"}, 1_727_962, 252.89),
    ("resnet20", {"shortcut": "B"}, 272_474, 40.81),
    ("resnet32", {"shortcut": "B"}, 466_906, 69.12),
    ("resnet56", {"shortcut": "B"}, 855_770, 125.75),
    ("resnet110", {"shortcut": "B"}, 1_730_714, 253.15),
    ("vgg16", {}, 14_724_042, 313.20),
    ("vgg19", {}, 20_035_018, 398.14),
]


@pytest.mark.parametrize(
    "name, options, params, mmacs", CIFAR_REFERENCE, ids=[f"{n}{o.get('shortcut', '')}" for n, o, *_ in CIFAR_REFERENCE]
)
def test_cifar_reference_sizes(name, options, params, mmacs):
    model = models.create(name, num_classes=10, **options)
    assert count_params(model) == params
    assert round(count_macs(model, CIFAR) / 1e6, 2) == mmacs


@pytest.mark.parametrize(
    "name, params, gmacs", [("torchvision:resnet18", 11_689_512, 1.814), ("torchvision:resnet50", 25_557_032, 4.089)]
)
def test_torchvision_reference_sizes(name, params, gmacs):
    model = models.create(name, num_classes=1000)
    assert count_params(model) == params
    assert round(count_macs(model, torch.zeros(1, 3, 224, 224)) / 1e9, 3) == gmacs


@pytest.mark.parametrize(
    "name, options", [("resnet20", {"shortcut": "A"}), ("resnet20", {"shortcut": "B"}), ("vgg11", {}), ("vgg16", {})]
)
def test_runs_on_digits_shape(name, options):
    # The embedded digits data set is 1x8x8: VGG's pooling must survive 1-pixel maps.
    model = models.create(name, num_classes=10, in_channels=1, **options)
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_generic_depth_and_registry():
    assert {"resnet20", "resnet56", "resnet110", "vgg11", "vgg19"} <= set(models.available())
    model = models.create("resnet14", num_classes=3)  # n = 2
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [2, 2, 2]
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_create_errors():
    with pytest.raises(UnknownNameError, match="resnet<6n\\+2>"):
        models.create("alexnet_cifar", num_classes=10)
    with pytest.raises(KeyError):  # UnknownNameError is also a KeyError
        models.create("nope", num_classes=10)
    for bad in ("resnet21", "resnet2", "resnet18"):
        with pytest.raises(ConfigError, match="6n\\+2"):
            models.create(bad, num_classes=10)
    with pytest.raises(UnknownNameError, match="resnet18") as info:
        models.create("torchvision:resnet19", num_classes=10)
    assert len(info.value.known) <= 10
    with pytest.raises(UnknownNameError, match="timm model"):
        models.create("timm:surely_not_a_model", num_classes=10)
    with pytest.raises(ConfigError, match="shortcut"):
        models.create("resnet20", num_classes=10, shortcut="C")
    with pytest.raises(ConfigError, match="takes no option"):
        models.create("vgg11", num_classes=10, shortcut="A")
    with pytest.raises(ConfigError, match="unknown width key"):
        models.create("resnet20", num_classes=10, widths={"stage4": 8})
    with pytest.raises(ConfigError, match="positive integer"):
        models.create("vgg11", num_classes=10, widths={"conv0": 0})
    with pytest.raises(ConfigError, match="num_classes"):
        models.create("resnet20", num_classes=0)
    with pytest.raises(ConfigError, match="only widen"):  # option A cannot narrow the stream
        models.create("resnet20", num_classes=10, shortcut="A", widths={"stage2": 8})


def _check_width_keys(model):
    """Every conv and BN has a width key, and its output channels equal that key's width."""
    spec = model.width_spec()
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    for name, module in convs:
        width = module.out_channels if isinstance(module, nn.Conv2d) else module.num_features
        assert spec[model.width_key(name)] == width, name
    with pytest.raises(ConfigError):
        model.width_key("fc" if hasattr(model, "fc") else "classifier")


def test_resnet_widths():
    base = models.create("resnet20", num_classes=10)
    spec = base.width_spec()
    assert list(spec)[:4] == ["stage1", "stage2", "stage3", "layer1.0"] and len(spec) == 3 + 9
    assert [spec["stage1"], spec["stage2"], spec["stage3"], spec["layer2.1"]] == [16, 32, 64, 32]
    assert base.width_key("conv1") == "stage1"
    assert base.width_key("layer2.0.conv1") == "layer2.0"
    assert base.width_key("layer2.0.conv2") == base.width_key("layer2.0.shortcut.0") == "stage2"
    _check_width_keys(base)

    model = models.create("resnet20", num_classes=10, widths={"stage2": 48, "layer1.0": 8})
    assert model.layer1[0].conv1.out_channels == 8 and model.layer1[0].conv2.in_channels == 8
    assert model.layer2[0].conv2.out_channels == 48 and model.layer3[0].conv1.in_channels == 48
    assert model.layer2[0].shortcut[0].out_channels == 48
    assert model.width_spec()["stage2"] == 48
    _check_width_keys(model)

    half = models.create("resnet20", num_classes=10, width_multiplier=0.5, widths={"stage3": 40})
    assert [half.width_spec()[k] for k in ("stage1", "stage2", "stage3", "layer3.1")] == [8, 16, 40, 32]
    assert models.create("resnet20", num_classes=10, width_multiplier=0.01).width_spec()["stage1"] == 1
    assert models.create("resnet20", num_classes=10, width_multiplier=1.1).width_spec()["stage1"] == 18


def test_resnet_option_a_padding_and_unprunable():
    model = models.create("resnet20", num_classes=10, shortcut="A", widths={"stage2": 37})
    pad = model.layer2[0].shortcut
    assert isinstance(pad, models.PadShortcut) and (pad.pad_front, pad.pad_back) == (10, 11)
    assert model.layer3[0].shortcut.pad_front + model.layer3[0].shortcut.pad_back == 64 - 37
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_params(model) > 0 and not any(isinstance(m, nn.Conv2d) for m in pad.modules())
    assert model.sosp_unprunable[0] == "conv1" and len(model.sosp_unprunable) == 1 + 9
    assert all(name.endswith(".conv2") for name in model.sosp_unprunable[1:])
    assert all(isinstance(model.get_submodule(n), nn.Conv2d) for n in model.sosp_unprunable)
    assert models.create("resnet20", num_classes=10, shortcut="B").sosp_unprunable == ()
    _check_width_keys(model)


def test_vgg_widths():
    model = models.create("vgg11", num_classes=10)
    assert list(model.width_spec().values()) == [64, 128, 256, 256, 512, 512, 512, 512]
    assert model.width_key("features.0") == model.width_key("features.1") == "conv0"
    _check_width_keys(model)
    wide = models.create("vgg11", num_classes=5, in_channels=1, width_multiplier=0.25, widths={"conv7": 9})
    convs = [m for m in wide.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 9]
    assert convs[0].in_channels == 1 and wide.classifier.in_features == 9
    _check_width_keys(wide)


@pytest.mark.parametrize(
    "name, options", [("resnet20", {"shortcut": "A"}), ("resnet20", {"shortcut": "B"}), ("vgg11", {})]
)
def test_model_pickles(name, options):
    model = models.create(name, num_classes=10, **options).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.width_spec() == model.width_spec()
    assert loaded.width_key("conv1" if name.startswith("resnet") else "features.0") in loaded.width_spec()


def test_zoo_in_channels():
    # eval: in training mode BN rejects the 1x1 maps that a 32x32 input reaches in these ImageNet nets
    tv = models.create("torchvision:resnet18", num_classes=4, in_channels=1).eval()
    assert tv.conv1.in_channels == 1 and tv.conv1.kernel_size == (7, 7) and tv.conv1.stride == (2, 2)
    assert tv(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    tm = models.create("timm:resnet18", num_classes=4, in_channels=1).eval()
    assert tm(torch.randn(1, 1, 32, 32)).shape == (1, 4)
