"""``curvature.unit_gates_applied`` (gates at exactly 1, the scoring point) against ``gates_applied``:
the same outputs and the same first derivatives, on toys whose gate sites are BatchNorms, plain
producers, sliced BatchNorms (generic path), timm's BatchNormAct2d, and in-place ops after a gate."""

import pytest
import torch
import torch.nn as nn
import toy_models

from sosp import curvature, structures


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=torch.float64) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64) * 0.5)
    return model


class InPlaceBlock(nn.Module):
    """torchvision's BasicBlock pattern: ReLU(inplace=True) and ``out += identity`` on gated outputs."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        identity = self.relu(self.bn0(self.conv0(x)))
        out = self.relu(self.bn1(self.conv1(identity)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.fc(self.relu(out).mean((2, 3)))


def _model(kind):
    if kind == "inplace":
        torch.manual_seed(0)
        return InPlaceBlock().double().eval()
    return toy_models.make_more(kind)


def _logits_and_grad(model, groups, x, cotangent, unit: bool):
    gates = torch.ones(structures.total_structures(groups), dtype=torch.float64, requires_grad=True)
    applied = curvature.unit_gates_applied if unit else structures.gates_applied
    with curvature.scoring_mode(model), applied(model, groups, gates):
        logits = model(x)
        (grad,) = torch.autograd.grad(logits, gates, cotangent)
    return logits.detach(), grad


@pytest.mark.parametrize("kind", ["resnet", "vgg", "dense", "mobile", "inplace"])
def test_unit_gates_equal_gates_applied(kind):
    model = _randomize(_model(kind))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=gen)
    groups = structures.channel_groups(model, x[:1])
    cotangent = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    logits, grad = _logits_and_grad(model, groups, x, cotangent, unit=True)
    ref_logits, ref_grad = _logits_and_grad(model, groups, x, cotangent, unit=False)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert ref_grad.abs().max() > 0


def test_unit_gates_keep_parameter_gradients_outside_scoring_mode():
    """With BatchNorm parameters requiring grad, the fused BN node is not used: their gradients stay."""
    model = _randomize(_model("resnet"))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    groups = structures.channel_groups(model, x[:1])
    params = [model.bn1.weight, model.bn1.bias]
    grads = []
    for applied in (curvature.unit_gates_applied, structures.gates_applied):
        gates = torch.ones(structures.total_structures(groups), dtype=torch.float64, requires_grad=True)
        with applied(model, groups, gates):
            out = model(x).square().sum()
        grads.append(torch.autograd.grad(out, [gates, *params]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unit_gates_refuse_double_backward():
    model = _randomize(_model("resnet"))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    groups = structures.channel_groups(model, x[:1])
    gates = torch.ones(structures.total_structures(groups), dtype=torch.float64, requires_grad=True)
    with curvature.scoring_mode(model), curvature.unit_gates_applied(model, groups, gates):
        (g,) = torch.autograd.grad(model(x).square().sum(), gates, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), gates)


@pytest.mark.parametrize("kind", ["resnet", "inplace"])
def test_ggn_ones_with_in_place_ops_after_gates(kind):
    """SOSP-H's JVP + reverse passes against ``g`` and ``G 1`` from per-sample Jacobians (gates_applied)."""
    model = _randomize(_model(kind))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (4,), generator=gen)
    groups = structures.channel_groups(model, x[:1])
    J, logits = curvature.per_sample_jacobians(model, groups, x)
    g_ref = curvature.loss_gradient_from_jacobians(J, logits, y) / len(x)
    G1_ref = curvature.gauss_newton_exact(J, logits).sum(1) / len(x)
    g, G1 = curvature.ggn_ones_combinations(model, groups, x, y)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(G1, G1_ref, rtol=1e-9, atol=1e-12)
