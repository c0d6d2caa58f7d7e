"""Oracle tests: SOSP-H and SOSP-I against an independent brute force, in float64.

The brute force here shares nothing with ``sosp.curvature``: its own gate hooks, one sample and one
logit at a time through reverse-mode autograd, and ``Lambda_n`` formed explicitly.
"""

import pytest
import torch
import torch.nn.functional as F
import toy_models

from sosp import runner, structures
from sosp.methods.sosp_h import sosp_h_terms
from sosp.methods.sosp_i import sosp_i_terms

KINDS = ["resnet", "vgg"]
REL = 1e-8


def brute_force(model, groups, x, y):
    """``g``, ``G`` and the per-sample Jacobians, by definition."""
    sizes = [g.size for g in groups]
    modules = dict(model.named_modules())

    def logits_of(sample, gate_vector):
        pieces = torch.split(gate_vector, sizes)
        handles = []
        for group, piece in zip(groups, pieces):
            for name in group.gated_modules:

                def hook(mod, inp, out, piece=piece):
                    shape = [1, -1] + [1] * (out.dim() - 2)
                    return out * piece.reshape(shape)

                handles.append(modules[name].register_forward_hook(hook))
        try:
            return model(sample.unsqueeze(0))[0]
        finally:
            for h in handles:
                h.remove()

    S = sum(sizes)
    G = torch.zeros(S, S, dtype=torch.float64)
    g = torch.zeros(S, dtype=torch.float64)
    for n in range(len(x)):
        rows = []
        for k in range(model_classes(model)):
            c = torch.ones(S, dtype=torch.float64, requires_grad=True)
            (row,) = torch.autograd.grad(logits_of(x[n], c)[k], c)
            rows.append(row)
        J = torch.stack(rows)
        c = torch.ones(S, dtype=torch.float64, requires_grad=True)
        logits = logits_of(x[n], c)
        p = logits.softmax(-1).detach()
        Lam = torch.diag(p) - torch.outer(p, p)
        G += J.T @ Lam @ J
        (gn,) = torch.autograd.grad(F.cross_entropy(logits.unsqueeze(0), y[n : n + 1]), c)
        g += gn
    return g / len(x), G / len(x), logits_of


def model_classes(model):
    return 5


def close(a, b, rel=REL):
    scale = max(b.abs().max().item(), 1e-300)
    return (a - b).abs().max().item() <= rel * scale


@pytest.fixture(params=KINDS, scope="module")
def setup(request):
    model = toy_models.make(request.param)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 1, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (7,), generator=gen)
    groups = structures.channel_groups(model, x[:1])
    g_bf, G_bf, _ = brute_force(model, groups, x, y)
    return model, groups, x, y, g_bf, G_bf


def batches_of(x, y, size=3):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def test_groups_cover_residual_and_plain_channels(setup):
    model, groups, *_ = setup
    assert all(g.size > 0 and g.gated_modules for g in groups)
    if isinstance(model, toy_models.TinyResNet):
        stream = [g for g in groups if len(g.producers) > 1]
        assert stream, "the residual stream must be one coupled group"
        assert {"conv1", "layer1.0.conv2"} <= set(stream[0].producers)


def test_sosp_h_gradient_and_ggn_ones_equal_brute_force(setup):
    model, groups, x, y, g_bf, G_bf = setup
    terms = sosp_h_terms(model, groups, batches_of(x, y))  # three uneven batches: weighting matters
    assert terms["num_samples"] == len(x)
    assert close(terms["g"], g_bf)
    assert close(terms["Gv"], G_bf @ torch.ones(len(G_bf), dtype=torch.float64))


def test_sosp_i_full_matrix_equals_brute_force(setup):
    model, groups, x, y, g_bf, G_bf = setup
    terms = sosp_i_terms(model, groups, batches_of(x, y), estimator="exact")
    assert close(terms["G"], G_bf)
    assert close(terms["g"], g_bf)
    assert torch.allclose(terms["G"], terms["G"].T, rtol=0, atol=1e-14)


def test_sosp_h_equals_row_sums_of_sosp_i(setup):
    model, groups, x, y, *_ = setup
    h = sosp_h_terms(model, groups, batches_of(x, y))
    i = sosp_i_terms(model, groups, batches_of(x, y))
    assert close(h["Gv"], i["G"].sum(1))


def test_saliency_formulas_follow_the_spec(setup):
    model, groups, x, y, g_bf, G_bf = setup
    ones = torch.ones(len(G_bf), dtype=torch.float64)
    expected_h = {
        "separate": g_bf.abs() + 0.5 * (G_bf @ ones).abs(),
        "joint": (-g_bf + 0.5 * G_bf @ ones).abs(),
        "second_order": 0.5 * (G_bf @ ones).abs(),
    }
    for combine, expected in expected_h.items():
        scores = torch.cat(runner.score("sosp_h", model, groups, batches_of(x, y), combine=combine))
        assert close(scores, expected), combine
    scores_i = torch.cat(runner.score("sosp_i", model, groups, batches_of(x, y)))
    assert close(scores_i, g_bf.abs() + 0.5 * G_bf.abs().sum(1))
    # absolute value after vs before summing: SOSP-I's sum of |G| bounds SOSP-H's |sum G|
    assert ((G_bf @ ones).abs() <= G_bf.abs().sum(1) + 1e-15).all()


def test_hessian_curvature_equals_brute_force_hessian(setup):
    model, groups, x, y, *_ = setup
    _, _, logits_of = brute_force(model, groups, x[:1], y[:1])
    S = sum(g.size for g in groups)

    def loss(c):
        return torch.stack(
            [F.cross_entropy(logits_of(x[n], c).unsqueeze(0), y[n : n + 1]) for n in range(len(x))]
        ).mean()

    H = torch.autograd.functional.hessian(loss, torch.ones(S, dtype=torch.float64))
    terms = sosp_h_terms(model, groups, batches_of(x, y), curvature="hessian")
    assert close(terms["Gv"], H @ torch.ones(S, dtype=torch.float64))
    assert close(terms["g"], torch.autograd.functional.jacobian(loss, torch.ones(S, dtype=torch.float64)))


def test_monte_carlo_fisher_converges_to_exact(setup):
    """Mean absolute error of the ``mc`` estimate falls as ``K`` grows (fixed seeds).

    The estimator is unbiased with variance ~ 1/K, so the error should shrink roughly like
    1/sqrt(K): from K=1 to K=256 by about 16x. We require only a 4x fall, averaged over 3 seeds,
    which leaves a wide margin for sampling noise while still failing for a biased estimator.
    """
    model, groups, x, y, _, G_bf = setup

    def error(K):
        errs = []
        for seed in range(3):
            G = sosp_i_terms(model, groups, batches_of(x, y), estimator="mc", mc_samples=K, seed=seed)["G"]
            errs.append((G - G_bf).abs().mean().item())
        return sum(errs) / len(errs)

    e1, e16, e256 = error(1), error(16), error(256)
    assert e256 < e16 < e1
    assert e256 < e1 / 4


def test_sosp_i_refuses_matrices_that_do_not_fit(setup):
    model, groups, x, y, *_ = setup
    from sosp.errors import SospError

    S = sum(g.size for g in groups)
    with pytest.raises(SospError, match=f"{S} x {S}"):
        runner.score("sosp_i", model, groups, batches_of(x, y), max_bytes=S * S * 8 - 1)


def test_unknown_method_and_option_are_clear_errors(setup):
    model, groups, x, y, *_ = setup
    from sosp.errors import ConfigError, UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown saliency method 'sosp_x'"):
        runner.score("sosp_x", model, groups, batches_of(x, y))
    with pytest.raises(ConfigError, match="no option 'bogus'"):
        runner.score("sosp_h", model, groups, batches_of(x, y), bogus=1)
    with pytest.raises(ConfigError, match="combine"):
        runner.score("sosp_h", model, groups, batches_of(x, y), combine="sum")
