"""Gates at 0 equal physical removal, on every zoo model and on toys, with non-trivial BatchNorms.

Default-initialised BatchNorms map 0 to 0 (zero mean, unit variance, zero bias), which hides a gate
placed before a BatchNorm. Here every BatchNorm gets random running statistics and affine
parameters, every LayerNorm random affine parameters and every layer scale random values, so a
zeroed channel that reaches a BatchNorm after its gate would read ``beta - gamma mu / sigma``, not 0.
Grouped convolutions (RegNet, ResNeXt, toys) are pruned at the same position of every one of their
groups, a structure of several channels whose gate is repeated over them.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import toy_models

from sosp import curvature, models, selection, structures
from sosp.errors import UnsupportedModelError

FRACTION = 0.3
RTOL = 1e-10  # float64

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_KNOWN = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.PReLU) + _NORMS


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN running_mean ~ N(0, 1), running_var ~ U(0.5, 2); norm weights ~ U(0.5, 1.5), biases ~
    N(0, 0.5); per-channel parameters of any other module (layer scales: ConvNeXt's ``gamma``) ~
    U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t, low, high):
        t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64) * (high - low) + low)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64) * std)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                normal(module.running_mean, 1.0)
                uniform(module.running_var, 0.5, 2.0)
            if isinstance(module, _NORMS):
                if getattr(module, "weight", None) is not None:
                    uniform(module.weight, 0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    normal(module.bias, 0.5)
            elif not isinstance(module, _KNOWN):
                for param in module.parameters(recurse=False):
                    uniform(param, 0.5, 1.5)
    return model


def random_removal(groups, seed: int = 0) -> dict[str, list[int]]:
    """About ``FRACTION`` of each group's channels (at least one, never all), at random."""
    gen = torch.Generator().manual_seed(seed)
    removed = {}
    for g in groups:
        k = min(max(1, round(FRACTION * g.size)), g.size - 1)
        if k > 0:
            removed[g.name] = sorted(torch.randperm(g.size, generator=gen)[:k].tolist())
    return removed


def gated_pruned_full(model: nn.Module, x: torch.Tensor, unprunable=(), seed: int = 0):
    model = model.eval()
    groups = structures.channel_groups(model, x[:1], unprunable=unprunable)
    removed = random_removal(groups, seed)
    assert removed, "nothing to remove"
    pruned = selection.remove_channels(model, groups, removed, x[:1]).eval()
    gates = structures.zero_gates(groups, removed, dtype=x.dtype)
    with torch.no_grad():
        full = model(x)
        with structures.gates_applied(model, groups, gates):
            gated = model(x)
        after = pruned(x)
    return gated, after, full, groups, pruned


def assert_gates_equal_removal(model: nn.Module, x: torch.Tensor, **kwargs):
    gated, after, full, groups, pruned = gated_pruned_full(model, x, **kwargs)
    scale = gated.abs().max().item()
    gap = (gated - after).abs().max().item()
    assert gap <= RTOL * scale, f"gated and pruned outputs differ by {gap / scale:.3g} (relative)"
    # non-trivial: removing ~30% of every group changes the output
    assert (gated - full).abs().max().item() > 1e-2 * full.abs().max().item()
    assert_grouping_kept(model, pruned)
    return groups


def assert_grouping_kept(model: nn.Module, pruned: nn.Module) -> None:
    """Surgery keeps the number of groups of every grouped conv that is not depthwise (a depthwise
    conv keeps one group per channel), so pruned grouped convs are the same kind of layer."""
    after = dict(pruned.named_modules())
    for name, conv in model.named_modules():
        if isinstance(conv, structures.CONV_TYPES) and conv.groups > 1:
            new = after[name]
            if conv.groups == conv.in_channels == conv.out_channels:
                assert new.groups == new.in_channels == new.out_channels, name
            else:
                assert new.groups == conv.groups, name


ZOO = [
    ("torchvision:resnet18", False),
    ("torchvision:resnet50", True),
    ("torchvision:mobilenet_v2", False),
    ("torchvision:densenet121", True),
    ("timm:resnet50", True),
    ("timm:efficientnet_b0", False),
    ("timm:convnext_tiny", True),
    ("torchvision:regnet_x_400mf", False),
    ("torchvision:resnext50_32x4d", True),
]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if slow else n for n, slow in ZOO])
def test_zoo_gates_equal_removal(name):
    torch.manual_seed(0)
    model = randomize(models.create(name, num_classes=10)).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    groups = assert_gates_equal_removal(model, x)
    modules = dict(model.named_modules())
    depthwise = [
        n
        for g in groups
        for n in g.producers
        if isinstance(modules[n], nn.Conv2d) and modules[n].groups == modules[n].in_channels > 1
    ]
    if "mobilenet" in name or "efficientnet" in name or "convnext" in name:
        assert depthwise, "depthwise convs are pruned with their group"
    if "densenet" in name:  # pre-activation BNs read concatenations of many groups
        assert any(g.gate_slices for g in groups)
    if "regnet" in name or "resnext" in name:  # every grouped conv is pruned, on both sides
        grouped = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and structures._is_grouped(m)]
        assert grouped
        for n in grouped:
            (out_side,) = [g for g in groups if n in g.producers]
            (in_side,) = [g for g in groups if n in g.consumers]
            for g in (out_side, in_side):  # structure s: channels s, s + size, s + 2 size, ...
                assert g.size == g.num_channels // modules[n].groups
                assert g.structure_channels[1] == tuple(range(1, g.num_channels, g.size))


@pytest.mark.parametrize(
    "name, options",
    [("resnet20", {"shortcut": "A"}), ("resnet20", {"shortcut": "B"}), ("vgg11", {})],
    ids=["resnet20A", "resnet20B", "vgg11"],
)
def test_cifar_gates_equal_removal(name, options):
    torch.manual_seed(0)
    model = randomize(models.create(name, num_classes=10, **options)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_gates_equal_removal(model, x)


@pytest.mark.parametrize("kind", ["resnet", "vgg", "dense", "mobile", "grouped", "grouped_mix"])
def test_toy_gates_equal_removal(kind):
    model = randomize(toy_models.make_more(kind))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_gates_equal_removal(model, x)


def test_gate_sites_cover_every_batchnorm_after_a_gate():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    mobile = {g.name: g for g in structures.channel_groups(toy_models.make_more("mobile"), x)}
    # timm's BatchNormAct2d right after the stem conv is the stem's gate site (not the conv)
    assert mobile["stem"].gated_modules == ("bn_stem",)
    # the shortcut conv feeds the add, not a BN: gated at its output; the BN after the residual add
    # acts after the gates of both producers of the stream and carries the gate too
    assert mobile["project"].producers == ("project", "shortcut")
    assert mobile["project"].gated_modules == ("bn_project", "shortcut", "bn_post")
    assert {"expand", "dw1", "dw2", "se_expand"} <= set(mobile["expand"].producers)
    assert {"expand", "dw1", "bn_dw2"} <= set(mobile["expand"].gated_modules)

    dense = {g.name: g for g in structures.channel_groups(toy_models.make_more("dense"), x)}
    stem = dense["conv0"]
    assert stem.gated_modules == ("norm0", "layers.0.0")  # layer 0's BN reads only the stem
    assert stem.normalized_modules == ("layers.1.0", "layers.2.0", "transition.0")
    second = dense["layers.1.5"]  # the second layer's new features: channels 7..9 of later BNs
    assert second.gate_slices == (("layers.2.0", (7, 8, 9), (0, 1, 2)), ("transition.0", (7, 8, 9), (0, 1, 2)))


def test_sliced_gates_shared_and_per_sample_agree():
    """A per-sample gate (B, S) that is the same for every sample equals the shared gate (S,)."""
    model = randomize(toy_models.make_more("dense"))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    groups = structures.channel_groups(model, x[:1])
    flat = torch.rand(
        structures.total_structures(groups), dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        with structures.gates_applied(model, groups, flat):
            shared = model(x)
        with structures.gates_applied(model, groups, flat.expand(len(x), -1)):
            per_sample = model(x)
    torch.testing.assert_close(per_sample, shared, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "mobile", "grouped_mix"])
def test_curvature_paths_include_every_gate_site(kind):
    """SOSP-H's fused JVP/VJP (fast path for plain groups, generic path for groups with sliced or
    normalised sites) and per-sample Jacobians agree with a brute force through gates_applied."""
    model = randomize(toy_models.make_more(kind))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (4,), generator=gen)
    groups = structures.channel_groups(model, x[:1])
    S = structures.total_structures(groups)
    rows = []
    for n in range(len(x)):
        jac = []
        for k in range(5):
            c = torch.ones(S, dtype=torch.float64, requires_grad=True)
            with structures.gates_applied(model, groups, c):
                (row,) = torch.autograd.grad(model(x[n : n + 1])[0, k], c)
            jac.append(row)
        rows.append(torch.stack(jac))
    J = torch.stack(rows)  # (B, C, S)
    with torch.no_grad():
        logits = model(x)
    p = logits.softmax(-1)
    lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    g_bf = torch.einsum("bc,bcs->s", p - F.one_hot(y, 5).double(), J) / len(x)
    G1_bf = torch.einsum("bcs,bcd,bdt->st", J, lam, J).sum(1) / len(x)

    g, G1 = curvature.ggn_ones_combinations(model, groups, x, y)
    torch.testing.assert_close(g, g_bf, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(G1, G1_bf, rtol=1e-9, atol=1e-12)
    J_fast, _ = curvature.per_sample_jacobians(model, groups, x)
    torch.testing.assert_close(J_fast, J, rtol=1e-9, atol=1e-12)
    assert G1_bf.abs().max() > 0


def test_grouped_structures_are_one_position_in_every_group():
    """A conv with G groups is pruned as torch-pruning prunes it: the channels at one position of all
    G groups go together, on its input and on its output side, so the conv keeps G equal groups."""
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    groups = {g.name: g for g in structures.channel_groups(toy_models.make_more("grouped"), x)}
    inputs, outputs = groups["conv1"], groups["conv2"]  # conv2: 4 -> 6 channels, 2 groups
    assert (inputs.size, inputs.num_channels, inputs.structure_channels) == (2, 4, ((0, 2), (1, 3)))
    assert (outputs.size, outputs.num_channels, outputs.structure_channels) == (3, 6, ((0, 3), (1, 4), (2, 5)))
    # every gate site carries the gate of each channel's structure
    assert outputs.gated_modules == () and outputs.gate_slices == (("bn2", (0, 1, 2, 3, 4, 5), (0, 1, 2, 0, 1, 2)),)
    assert outputs.channel_indices([2, 0]) == [0, 2, 3, 5]
    torch.testing.assert_close(outputs.per_structure(torch.arange(6.0)), torch.tensor([3.0, 5.0, 7.0]))
    assert groups["conv3"].structure_channels == () and groups["conv3"].channel_indices([4, 1]) == [1, 4]

    mix = {g.name: g for g in structures.channel_groups(toy_models.make_more("grouped_mix"), x)}
    # read by convs of 2 and 3 groups: a structure is a position of both groupings (every 6th channel)
    assert mix["conv1"].structure_channels == ((0, 2, 4, 6, 8, 10), (1, 3, 5, 7, 9, 11))
    assert mix["conv2"].producers == ("conv2", "conv3", "dw", "res") and mix["conv2"].size == 2
    # a depthwise conv with a channel multiplier has one input per group: no input can go alone
    assert mix["conv5"].size == 1 and mix["mult"].structure_channels[0] == tuple(range(0, 16, 2))


def test_grouped_conv_that_cannot_be_followed_is_refused_naming_the_layer():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    # each group of the conv is a different producer's channels: a position spans two groups
    with pytest.raises(
        UnsupportedModelError, match=r"'conv' \(groups=2, 8 -> 6 channels\): its input channels"
    ) as info:
        structures.channel_groups(toy_models.make_more("grouped_concat"), x)
    assert "Declare 'conv_a', 'conv_b' unprunable" in str(info.value)
    # no BatchNorm after the grouped conv to carry gates repeated over a structure's channels
    with pytest.raises(UnsupportedModelError, match=r"'conv2' \(groups=2, 4 -> 6 channels\).*no BatchNorm") as info:
        structures.channel_groups(toy_models.make_more("grouped_bare"), x)
    assert "Declare 'conv2' unprunable" in str(info.value)
    # groups == out_channels < in_channels: torch-pruning would prune it as a depthwise conv
    fan_in = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 4, 3, groups=4),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with pytest.raises(UnsupportedModelError, match=r"'2' \(groups=4, 8 -> 4 channels\): torch-pruning takes"):
        structures.channel_groups(fan_in.double().eval(), x)


@pytest.mark.parametrize(
    "kind, unprunable, left",
    [("grouped_concat", ["conv_a", "conv_b"], ["conv"]), ("grouped_bare", ["conv2"], ["conv1", "conv3"])],
)
def test_refused_grouped_conv_declared_unprunable_prunes_the_rest_exactly(kind, unprunable, left):
    model = randomize(toy_models.make_more(kind))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    groups = assert_gates_equal_removal(model, x, unprunable=unprunable)
    assert [g.name for g in groups] == left


def test_grouped_conv_declared_unprunable_prunes_the_rest_exactly():
    model = randomize(toy_models.make_more("grouped"))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    groups = assert_gates_equal_removal(model, x, unprunable=["conv1", "conv2"])
    assert [g.name for g in groups] == ["conv3"]


def test_additive_channel_parameter_is_refused_naming_it():
    with pytest.raises(UnsupportedModelError, match=r"'offset\.offset'.*other than by multiplication"):
        structures.channel_groups(toy_models.make_more("offset"), torch.randn(1, 1, 8, 8, dtype=torch.float64))
