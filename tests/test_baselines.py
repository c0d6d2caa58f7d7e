"""Baselines (docs/method.md section 6): oracle tests in float64 against brute force that shares nothing
with ``sosp.methods`` (own hooks, one sample at a time, explicit Kronecker matrices), then every method
end to end on the CIFAR and torchvision models."""

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import toy_models

from sosp import measure, models, runner, selection, structures
from sosp.errors import ConfigError
from sosp_baselines import eigendamage, fisher, magnitude

KINDS = ["resnet", "vgg"]
REL = 1e-8


def close(a, b, rel=REL):
    scale = max(b.abs().max().item(), 1e-300)
    return (a - b).abs().max().item() <= rel * scale


def toy_data(n=7, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=gen)
    return x, torch.randint(0, 5, (n,), generator=gen)


def reproduce_sampled_labels(model, batches, seed):
    """The labels the Fisher passes draw: one multinomial draw per sample, batch after batch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.cat([torch.multinomial(model.eval()(x).softmax(-1), 1, generator=gen)[:, 0] for x, _ in batches])


# ------------------------------------------------------------------------------------------- random


def test_random_is_uniform_and_seeded():
    model = toy_models.make("resnet")
    groups = structures.channel_groups(model, toy_data()[0][:1])
    a, b, c = (runner.score("random", model, groups, [], seed=s) for s in (3, 3, 4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert all(((s >= 0) & (s < 1)).all() for s in a)


# ---------------------------------------------------------------------------------------- magnitude


def test_magnitude_keeps_exactly_the_largest_l1_filters():
    values = [0.5, -3.0, 1.0, -0.1, 2.0, 0.7]  # filter i = values[i] everywhere: L1 = 9 |values[i]|
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 6, 3, bias=False),
            bn=nn.BatchNorm2d(6),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(6, 3),
        )
    )
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor(values)[:, None, None, None].expand(6, 1, 3, 3))
    x = torch.randn(1, 1, 6, 6)
    for scope in ("layerwise", "global"):
        result = runner.run("magnitude", model.eval(), [], 0.5, example_input=x, scope=scope)
        assert result.removed == {"conv": [0, 3, 5]}
        kept = result.model.conv.weight[:, 0, 0, 0].tolist()
        assert kept == [-3.0, 1.0, 2.0]


def test_magnitude_sums_filter_norms_over_the_producers_of_a_group():
    model = toy_models.make("resnet")
    groups = structures.channel_groups(model, toy_data()[0][:1])
    modules = dict(model.named_modules())
    shared = [g for g in groups if len(g.producers) > 1]
    assert shared, "the toy ResNet has a residual group written by several convs"
    for g in shared:
        expected = sum(modules[p].weight.detach().abs().sum((1, 2, 3)) for p in g.producers)
        assert torch.allclose(magnitude.filter_l1_norms(model, g), expected)


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_layerwise_magnitude_removes_the_same_fraction_of_every_group(name, ratio):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 8, 8)
    groups = structures.channel_groups(model, x)
    scores = runner.score("magnitude", model, groups, [], scope="layerwise")
    order = selection.removal_order(groups, scores)
    removed = selection.as_removed(groups, order[: round(ratio * sum(g.size for g in groups))])
    assert len({g.size for g in groups}) > 1, "groups of different sizes make the test meaningful"
    for g in groups:
        assert abs(len(removed.get(g.name, [])) - ratio * g.size) <= 1, (g.name, g.size)
    # and the lowest-norm filters of each group are the ones removed
    for g in groups:
        norms = magnitude.filter_l1_norms(model, g)
        gone = removed.get(g.name, [])
        if gone and len(gone) < g.size:
            kept = sorted(set(range(g.size)) - set(gone))
            assert norms[gone].max() <= norms[kept].min()


# ------------------------------------------------------------------------------------------- taylor


def gated_loss(model, groups, x, y, gates):
    """Cross-entropy with the gates multiplied in by this test's own hooks."""
    modules = dict(model.named_modules())
    handles = []
    for group, gate in zip(groups, torch.split(gates, [g.size for g in groups])):
        for name in group.gated_modules:

            def hook(mod, inp, out, gate=gate):
                return out * gate.reshape([1, -1] + [1] * (out.dim() - 2))

            handles.append(modules[name].register_forward_hook(hook))
    try:
        return F.cross_entropy(model(x), y)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kind", KINDS)
def test_taylor_is_the_mean_over_minibatches_of_squared_gate_gradients(kind):
    model = toy_models.make(kind)
    x, y = toy_data()
    groups = structures.channel_groups(model, x[:1])
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    expected = 0
    for xb, yb in batches:
        c = torch.ones(sum(g.size for g in groups), dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(gated_loss(model, groups, xb, yb, c), c)
        expected = expected + grad**2 / len(batches)
    got = torch.cat(runner.score("taylor", model, groups, batches))
    assert close(got, expected)


# --------------------------------------------------------------------------------------------- cobd


@pytest.mark.parametrize("kind", KINDS)
def test_cobd_equals_bruteforce_diagonal_fisher(kind):
    model = toy_models.make(kind)
    x, _ = toy_data()
    groups = structures.channel_groups(model, x[:1])
    batches = [(x[:3], None), (x[3:], None)]
    labels = reproduce_sampled_labels(model, batches, seed=5)
    modules = dict(model.named_modules())
    producers = sorted({p for g in groups for p in g.producers})
    params = {p: [modules[p].weight] + ([modules[p].bias] if modules[p].bias is not None else []) for p in producers}
    fisher = {p: [torch.zeros_like(t) for t in ts] for p, ts in params.items()}
    for n in range(len(x)):
        loss = F.cross_entropy(model(x[n : n + 1]), labels[n : n + 1])
        flat = [t for p in producers for t in params[p]]
        grads = iter(torch.autograd.grad(loss, flat))
        for p in producers:
            for f in fisher[p]:
                f += next(grads) ** 2 / len(x)
    expected = []
    for g in groups:
        total = 0
        for p in g.producers:
            w = params[p][0].detach()
            total = total + (w**2 * fisher[p][0]).reshape(len(w), -1).sum(1)
            if len(params[p]) > 1:
                total = total + params[p][1].detach() ** 2 * fisher[p][1]
        expected.append(total)
    got = runner.score("cobd", model, groups, batches, seed=5)
    assert close(torch.cat(got), torch.cat(expected))


# -------------------------------------------------------------------------------------- eigendamage


def tiny_conv_net():
    torch.manual_seed(3)
    return (
        nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4))
        .double()
        .eval()
    )


def test_kfac_factors_equal_bruteforce_second_moments():
    model = tiny_conv_net()
    conv, lin = model[0], model[3]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 5, 5, dtype=torch.float64, generator=gen)
    batches = [(x[:2], None), (x[2:], None)]
    got = fisher.kfac_factors(model, batches, {"0": conv, "3": lin}, seed=7)
    labels = reproduce_sampled_labels(model, batches, seed=7)
    A_conv, S_conv = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    A_lin, S_lin = torch.zeros(28, 28, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    for n in range(len(x)):
        padded = F.pad(x[n], (1, 1, 1, 1))  # every (output position, kernel offset) of the stride-2 conv
        rows = [
            torch.cat([padded[:, 2 * i + u, 2 * j + v], torch.tensor([1 / 9], dtype=torch.float64)])
            for i in range(3)
            for j in range(3)
            for u in range(3)
            for v in range(3)
        ]
        A_conv += sum(torch.outer(r, r) for r in rows) / len(rows) / len(x)
        h = conv(x[n : n + 1])
        z = model[2](model[1](h))
        logits = lin(z)
        g_h, g_logits = torch.autograd.grad(F.cross_entropy(logits, labels[n : n + 1]), [h, logits])
        S_conv += sum(torch.outer(g_h[0, :, i, j], g_h[0, :, i, j]) for i in range(3) for j in range(3)) / len(x)
        a = torch.cat([z[0].detach(), torch.ones(1, dtype=torch.float64)])
        A_lin += torch.outer(a, a) / len(x)
        S_lin += torch.outer(g_logits[0], g_logits[0]) / len(x)
    assert close(got["0"].A, A_conv) and close(got["0"].S, S_conv)
    assert close(got["3"].A, A_lin) and close(got["3"].S, S_lin)


def kfac_quadratic_form(delta_offsets, A, S):
    """``theta^T (I_P (x) A (x) S) theta`` with the Kronecker matrix built explicitly."""
    P = len(delta_offsets)
    big = torch.kron(torch.eye(P, dtype=A.dtype), torch.kron(A, S))
    theta = torch.cat([d.T.reshape(-1) for d in delta_offsets])  # column-stacked vec of each offset
    return theta @ big @ theta


TINY_LAYERS = {
    "conv_bias": lambda: nn.Conv2d(2, 3, 2, bias=True),
    "linear_bias": lambda: nn.Linear(4, 3),
    "conv": lambda: nn.Conv2d(3, 2, 3, bias=False),
}


@pytest.mark.parametrize("kind", list(TINY_LAYERS))
def test_eigenbasis_importance_equals_bruteforce_damage(kind):
    torch.manual_seed(0)
    layer = TINY_LAYERS[kind]().double()
    gen = torch.Generator().manual_seed(2)
    d_in = layer.weight.shape[1] + (layer.bias is not None)
    d_out = layer.weight.shape[0]
    a, s = torch.randn(d_in, d_in + 2, generator=gen).double(), torch.randn(d_out, d_out + 2, generator=gen).double()
    A, S = a @ a.T, s @ s.T
    basis = eigendamage.eigenbasis(fisher.KFACFactors(A=A, S=S))
    _, imp_out, imp_in = eigendamage.eigen_importance(eigendamage.weight_per_offset(layer), basis)
    w = layer.weight.detach()
    offsets = [w] if w.dim() == 2 else [w[:, :, u, v] for u in range(w.shape[2]) for v in range(w.shape[3])]
    if layer.bias is not None:
        offsets = [torch.cat([o, layer.bias.detach()[:, None]], 1) for o in offsets]
    _, q_s = torch.linalg.eigh(S)
    _, q_a = torch.linalg.eigh(A)
    bf_out = torch.stack([kfac_quadratic_form([torch.outer(q, q) @ o for o in offsets], A, S) for q in q_s.T])
    bf_in = torch.stack([kfac_quadratic_form([o @ torch.outer(q, q) for o in offsets], A, S) for q in q_a.T])
    assert close(imp_out, bf_out) and close(imp_in, bf_in)
    assert torch.isclose(imp_out.sum(), kfac_quadratic_form(offsets, A, S), rtol=1e-10)


def toy_batches(n=8):
    x, y = toy_data(n)
    return x, [(x[:4], y[:4]), (x[4:], y[4:])]


@pytest.mark.parametrize("kind", KINDS)
def test_eigenbasis_network_reproduces_the_original_outputs(kind):
    model = toy_models.make(kind)
    x, batches = toy_batches()
    layers, skipped = eigendamage.candidate_layers(model, x[:1])
    assert not skipped
    scores = eigendamage.score_layers(model, batches, layers)
    # every layer in its full eigenbasis (the toy VGG has a padded conv with a bias)
    full, done = eigendamage.reparameterise(model, scores, [], only_if_smaller=False)
    assert set(done) == set(layers)
    with torch.no_grad():
        assert close(full.eval()(x), model(x), rel=1e-10)
    result = runner.run("eigendamage", model, batches, 0.0, example_input=x[:1])
    assert result.report["params_after"] == result.report["params_before"]
    with torch.no_grad():
        assert close(result.model(x), model(x), rel=1e-10)


def test_eigenbasis_resnet20_reproduces_outputs_in_float32():
    torch.manual_seed(0)
    model = toy_models.randomize_batchnorm(models.create("resnet20", num_classes=10, in_channels=1)).eval()
    x = torch.randn(4, 1, 8, 8)
    layers, _ = eigendamage.candidate_layers(model, x[:1])
    scores = eigendamage.score_layers(model, [(x, None)], layers)
    full, _ = eigendamage.reparameterise(model, scores, [], only_if_smaller=False)
    with torch.no_grad():
        assert close(full.eval()(x), model(x), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [{}, {"mode": "iterative", "steps": 2}, {"target": "params", "ratio": 0.4}])
def test_eigendamage_shrinks_the_network_which_still_trains(kind, options):
    model = toy_models.make(kind)
    x, batches = toy_batches()
    options = dict(options)
    ratio = options.pop("ratio", 0.5)
    result = runner.run("eigendamage", model, batches, ratio, example_input=x[:1], **options)
    report = result.report
    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    if options.get("target") == "params":
        assert report["params_after"] <= (1 - ratio) * report["params_before"]
    decomposed = [r for r in report["per_layer"] if r["decomposed"]]
    assert decomposed and all(r["params_after"] <= r["params_before"] for r in decomposed)
    assert all(r["kept_in"] >= 1 and r["kept_out"] >= 1 for r in report["per_layer"])
    net = result.model.train()
    F.cross_entropy(net(x), toy_data(8)[1]).backward()
    rotations = [m for m in net.modules() if isinstance(m, eigendamage.EigenBasisLayer)]
    assert rotations
    for m in rotations:  # the gradient reaches every rotation: a finite, non-zero one
        grad = m.rotate_in.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0
    assert {"saliency_seconds", "prune_seconds", "achieved_fraction"} <= set(report)


# --------------------------------------------------------------------------- options and protocols


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("magnitude", {"scope": "per-layer"}, "scope must be one of"),
        ("taylor", {"schedule": "iterative"}, "taylor_iterative"),
        ("taylor", {"schedule": "sometimes"}, "schedule must be"),
        ("eigendamage", {"mode": "twice"}, "mode must be one of"),
        ("eigendamage", {"damping": 1.0}, "no option"),
        ("eigendamage", {"mode": "iterative", "target": "macs"}, "one_pass"),
        ("taylor_iterative", {"per_step": 0}, "per_step"),
        ("cobd", {"labels": "true"}, "no option"),
    ],
)
def test_bad_options_raise_config_errors(method, options, message):
    model = toy_models.make("vgg")
    x, batches = toy_batches()
    with pytest.raises(ConfigError, match=message):
        runner.run(method, model, batches, 0.3, example_input=x[:1], **options)


def test_taylor_iterative_alternates_removal_and_finetuning():
    model = toy_models.make("resnet")
    before = copy.deepcopy(model.state_dict())
    x, batches = toy_batches()
    calls = []
    finetune = lambda m, b: calls.append(sum(p.numel() for p in m.parameters()))  # noqa: E731
    result = runner.run(
        "taylor_iterative", model, batches, 0.4, example_input=x[:1], prune_every=2, per_step=2, finetune_fn=finetune
    )
    report = result.report
    total = report["num_structures"]
    assert report["num_removed"] == round(0.4 * total) and report["steps"] == len(calls) > 1
    assert calls == sorted(calls, reverse=True) and calls[0] > calls[-1]  # the model shrinks step by step
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        assert result.model(x).shape == (8, 5)
    # the built-in SGD fine-tuning runs too
    runner.run("taylor_iterative", model, batches, 0.2, example_input=x[:1], prune_every=1)


# -------------------------------------------------------------------------- every method, end to end

ARCHS = {"resnet20": (1, 8), "vgg11": (3, 16), "torchvision:resnet18": (3, 32)}
METHODS = ["random", "magnitude", "taylor", "cobd", "eigendamage", "sosp_h"]


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    in_channels, size = ARCHS[request.param]
    torch.manual_seed(0)
    model = toy_models.randomize_batchnorm(models.create(request.param, num_classes=10, in_channels=in_channels))
    x = torch.randn(6, in_channels, size, size)
    return model.eval(), x, torch.randint(0, 10, (6,))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_every_architecture(arch, method):
    model, x, y = arch
    result = runner.run(method, model, [(x[:3], y[:3]), (x[3:], y[3:])], 0.5, example_input=x[:1])
    report = result.report
    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    assert report["achieved_fraction"] > 0.3
    with torch.no_grad():
        out = result.model.eval()(x)
    assert out.shape == (6, 10) and torch.isfinite(out).all()
    assert measure.count_params(result.model) == report["params_after"]
