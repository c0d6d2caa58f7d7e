"""SOSP-H and surgery on common zoo CNNs: gated-with-zeros and physically pruned outputs agree."""

import pytest
import torch
import torch.nn as nn

from sosp import models, runner, selection, structures
from sosp.errors import UnsupportedModelError

ZOO = [
    "torchvision:resnet18",
    "torchvision:resnet50",
    "torchvision:mobilenet_v2",
    "torchvision:densenet121",
    "timm:resnet50",
    "timm:efficientnet_b0",
    "timm:convnext_tiny",
    "torchvision:regnet_x_400mf",
]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_prunes_exactly(name):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    groups = structures.channel_groups(model, x[:1])
    # groups with grouped convs gate every site through gate_slices (a structure spans channels)
    assert groups and all(g.gated_modules or (g.structure_channels and g.gate_slices) for g in groups)
    scores = runner.score("sosp_h", model, groups, [(x, y)])
    result = selection.prune(model, groups, scores, ratio=0.3)
    gates = structures.zero_gates(groups, result.removed)
    with torch.no_grad():
        with structures.gates_applied(model, groups, gates):
            gated = model(x)
        pruned = result.model.eval()(x)
    assert torch.allclose(pruned, gated, rtol=1e-4, atol=1e-4 * gated.abs().max().item())
    assert result.report["params_after"] < result.report["params_before"]
    assert result.report["macs_after"] < result.report["macs_before"]
    assert result.report["num_removed"] == round(0.3 * sum(g.size for g in groups))


@pytest.mark.parametrize("name", ["torchvision:regnet_x_400mf", "torchvision:resnext50_32x4d"])
def test_grouped_conv_model_prunes_exactly(name):
    """Grouped convs (RegNet, ResNeXt): a structure is the same position in every group of a conv;
    selection counts and floors structures, surgery removes all their channels and keeps every
    conv's number of groups, and gated equals pruned."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    groups = structures.channel_groups(model, x[:1])
    assert any(g.structure_channels for g in groups)
    gen = torch.Generator().manual_seed(1)
    scores = [torch.rand(g.size, generator=gen) for g in groups]
    result = selection.prune(model, groups, scores, ratio=0.3, min_fraction=0.2)
    gates = structures.zero_gates(groups, result.removed)
    with torch.no_grad():
        with structures.gates_applied(model, groups, gates):
            gated = model(x)
        pruned = result.model.eval()(x)
    assert torch.allclose(pruned, gated, rtol=1e-4, atol=1e-4 * gated.abs().max().item())
    assert result.report["num_removed"] == round(0.3 * sum(g.size for g in groups))
    assert result.report["params_after"] < result.report["params_before"]
    before, after = dict(model.named_modules()), dict(result.model.named_modules())
    for g in groups:
        removed = result.removed.get(g.name, [])
        assert g.size - len(removed) >= selection.group_floor(g.size, 1, 0.2)
        width = g.num_channels - len(g.channel_indices(removed))
        for name in g.producers:
            old, new = before[name], after[name]
            assert new.out_channels == width, name
            if not old.groups == old.in_channels == old.out_channels:
                assert new.groups == old.groups, name


def test_channel_mixing_layer_is_a_clear_error():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with pytest.raises(UnsupportedModelError, match=r"'1' \(GroupNorm\)"):
        structures.channel_groups(model, torch.randn(1, 3, 8, 8))
