"""Selection, targets and surgery: the pruned model computes what the gated model computes."""

import pytest
import torch
import toy_models

from sosp import measure, models, runner, selection, structures
from sosp.errors import ConfigError


def gated_vs_pruned(model, x, ratio=0.3, seed=0):
    """Outputs of the gated model (removed gates at 0) and of the physically pruned model."""
    model = model.eval()
    groups = structures.channel_groups(model, x[:1])
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.rand(g.size, generator=gen) for g in groups]
    result = selection.prune(model, groups, scores, ratio=ratio)
    gates = structures.zero_gates(groups, result.removed, dtype=x.dtype)
    with torch.no_grad():
        with structures.gates_applied(model, groups, gates):
            gated = model(x)
        pruned = result.model.eval()(x)
    return gated, pruned, result, groups


@pytest.mark.parametrize("kind", ["resnet", "vgg"])
def test_toy_models_gated_equals_pruned_exactly(kind):
    model = toy_models.make(kind)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    gated, pruned, result, groups = gated_vs_pruned(model, x, ratio=0.4)
    assert torch.allclose(gated, pruned, rtol=1e-10, atol=1e-12)
    assert result.report["num_removed"] == round(0.4 * sum(g.size for g in groups))
    assert measure.count_params(result.model) < measure.count_params(model)


@pytest.mark.parametrize(
    "name, options", [("resnet20", {"shortcut": "A"}), ("resnet20", {"shortcut": "B"}), ("vgg11", {})]
)
def test_cifar_models_gated_equals_pruned(name, options):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=1, **options)
    toy_models.randomize_batchnorm(model)
    x = torch.randn(3, 1, 8, 8)
    gated, pruned, result, groups = gated_vs_pruned(model, x, ratio=0.5)
    assert torch.allclose(gated, pruned, rtol=1e-4, atol=1e-5 * gated.abs().max().item())
    assert result.report["macs_after"] < result.report["macs_before"]
    if options.get("shortcut") == "A":  # residual stream declared unprunable: only inner channels
        assert all(len(g.producers) == 1 and g.name.endswith("conv1") and g.name != "conv1" for g in groups)
    if options.get("shortcut") == "B":
        assert any(len(g.producers) > 2 for g in groups), "stream groups couple stem, blocks and projections"


def test_min_channels_and_impossible_ratio():
    model = toy_models.make("resnet")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    groups = structures.channel_groups(model, x[:1])
    scores = [torch.zeros(g.size) for g in groups]
    order = selection.removal_order(groups, scores, min_channels=2)
    assert len(order) == sum(g.size - 2 for g in groups)
    with pytest.raises(ConfigError, match="at most"):
        selection.prune(model, groups, scores, ratio=0.99, min_channels=2)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
            selection.prune(model, groups, scores, ratio=bad)


def test_global_ranking_removes_lowest_scores_first():
    model = toy_models.make("vgg")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    groups = structures.channel_groups(model, x[:1])
    flat = torch.randperm(sum(g.size for g in groups), generator=torch.Generator().manual_seed(3)).double()
    scores = structures.split_flat(flat, groups)
    result = selection.prune(model, groups, scores, ratio=0.25)
    k = result.report["num_removed"]
    removed_scores = sorted(float(scores[i][c]) for i, g in enumerate(groups) for c in result.removed.get(g.name, []))
    assert removed_scores == sorted(flat.tolist())[:k]


@pytest.mark.parametrize("target", ["macs", "params"])
def test_cost_targets_reach_the_requested_fraction_within_one_structure(target):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 8, 8)
    groups = structures.channel_groups(model, x)
    scores = [torch.rand(g.size) for g in groups]
    result = selection.prune(model, groups, scores, ratio=0.4, target=target)
    count = (lambda m: measure.count_macs(m, x)) if target == "macs" else measure.count_params
    base, after = count(model), count(result.model)
    assert after <= 0.6 * base
    # one structure fewer would miss the target: the search found the smallest k
    order = selection.removal_order(groups, scores)
    k = result.report["num_removed"]
    fewer = selection.remove_channels(model, groups, selection.as_removed(groups, order[: k - 1]), x)
    assert count(fewer) > 0.6 * base


def test_cost_normalisation_changes_the_ranking_by_cost():
    model = toy_models.make("resnet")
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    groups = structures.channel_groups(model, x)
    costs = selection.cost_per_structure(model, groups, x)
    assert all((c > 0).all() for c in costs)
    cost = {g.name: c[0].item() for g, c in zip(groups, costs)}
    assert len(set(cost.values())) == len(groups), "distinct group costs make the ranking testable"
    # saliency sqrt(cost): ranked as it is, the cheapest channels go first; divided by the cost
    # (1 / sqrt(cost)), the most expensive go first
    scores = [c.sqrt() for c in costs]
    plain = selection.prune(model, groups, scores, ratio=0.2)
    by_cost = selection.prune(model, groups, scores, ratio=0.2, normalize="cost")

    def could_lose_more(result):  # groups above the floor (min_channels=1) after the cut
        return [cost[g.name] for g in groups if len(result.removed.get(g.name, [])) < g.size - 1]

    assert max(cost[name] for name in plain.removed) <= min(could_lose_more(plain))
    assert min(cost[name] for name in by_cost.removed) >= max(could_lose_more(by_cost))
    assert set(plain.removed).isdisjoint(by_cost.removed)


def test_run_records_scores_timings_and_layers():
    torch.manual_seed(0)
    model = toy_models.make("resnet", dtype=torch.float32)
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 5, (8,))
    result = runner.run("sosp_h", model, [(x, y)], 0.3, example_input=x[:1])
    report = result.report
    assert report["method"] == "sosp_h" and report["saliency_seconds"] > 0
    assert {"per_group", "per_layer", "scores", "params_after", "macs_after", "achieved_fraction"} <= set(report)
    assert set(report["scores"]) == {g["group"] for g in report["per_group"]}
    assert report["method_package"].startswith("sosp-bench ")


def test_run_ratios_scores_once_and_matches_run(monkeypatch):
    torch.manual_seed(0)
    model = toy_models.make("resnet", dtype=torch.float32)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    calls, scored = [], []

    def make_batches():
        calls.append(1)
        return [(x, y)]

    score = runner.score_resolved
    monkeypatch.setattr(runner, "score_resolved", lambda *a, **k: scored.append(1) or score(*a, **k))
    results = runner.run_ratios("sosp_h", model, make_batches, [0.2, 0.4], example_input=x[:1])
    assert len(scored) == 1  # one scoring pass for both ratios
    assert len(calls) == 2  # the batches are read twice: calibration diagnostics, then the scoring pass
    monkeypatch.undo()
    for ratio, result in zip([0.2, 0.4], results):
        alone = runner.run("sosp_h", model, [(x, y)], ratio, example_input=x[:1])
        assert result.removed == alone.removed
        assert result.report["ratio"] == ratio


def test_run_points_scores_once_for_every_target_and_ratio(monkeypatch):
    """Several targets in one run (what one `sosp prune` job of the workflow does): one scoring pass,
    one result per (target, ratio) in order, each the same as a run at that target alone."""
    torch.manual_seed(0)
    model = toy_models.make("resnet", dtype=torch.float32)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    scored = []
    score = runner.score_resolved
    monkeypatch.setattr(runner, "score_resolved", lambda *a, **k: scored.append(1) or score(*a, **k))
    points = [("structures", 0.2), ("structures", 0.4), ("macs", 0.2), ("params", 0.3)]
    results = runner.run_points("sosp_h", model, lambda: [(x, y)], points, example_input=x[:1])
    assert not scored  # a generator: nothing runs until the results are asked for
    results = list(results)
    assert len(scored) == 1 and len(results) == 4
    monkeypatch.undo()
    for (target, ratio), result in zip(points, results):
        (alone,) = runner.run_ratios("sosp_h", model, lambda: [(x, y)], [ratio], target=target, example_input=x[:1])
        assert result.removed == alone.removed, (target, ratio)
        assert (result.report["target"], result.report["ratio"]) == (target, ratio)
        assert result.report["shared_scoring"] and not alone.report["shared_scoring"]
    # whole pruners run once per point; a bad point fails before anything runs
    pruned = list(runner.run_points("eigendamage", model, lambda: [(x, y)], points[1:3], example_input=x[:1]))
    assert [(r.report["target"], r.report["ratio"]) for r in pruned] == points[1:3]
    with pytest.raises(ConfigError, match="target must be one of"):
        runner.run_points("sosp_h", model, lambda: [(x, y)], [("structures", 0.2), ("flops", 0.2)], example_input=x)
    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
        runner.run_points("sosp_h", model, lambda: [(x, y)], [("macs", 1.0)], example_input=x)


def test_oneshot_evaluation_reestimates_only_the_bn_statistics():
    """``sosp.oneshot``: as-is metrics are train.evaluate's; the BN re-estimation changes a copy's running
    statistics (and nothing else) and leaves the pruned model as it was."""
    from sosp import data, oneshot, train

    bundle = data.load("digits")
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    toy_models.randomize_batchnorm(model)
    model.eval()
    groups = structures.channel_groups(model, bundle.example_input[:1])
    scores = [torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)]
    pruned = selection.prune(model, groups, scores, ratio=0.4).model.eval()
    state = {k: v.clone() for k, v in pruned.state_dict().items()}
    metrics = oneshot.evaluate(pruned, bundle, modes=["as_is", "reestimated"], bn_images=300, seed=1)
    plain = train.evaluate(pruned, bundle.test)
    assert (
        metrics["oneshot_top1_pct"] == pytest.approx(100 * plain["top1"]) and metrics["oneshot_loss"] == plain["loss"]
    )
    assert metrics["bn_images"] == 300 and metrics["reestimated_top1_pct"] is not None
    assert all(torch.equal(state[k], v) for k, v in pruned.state_dict().items())  # the pruned model is untouched
    fresh = oneshot.reestimate_bn(pruned, bundle.train, 300, seed=1)
    assert not fresh.training
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(state[k], v)]
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert all(m.num_batches_tracked.item() == 2 for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d))
    again = oneshot.evaluate(pruned, bundle, modes=["reestimated"], bn_images=300, seed=1)
    assert again["reestimated_top1_pct"] == metrics["reestimated_top1_pct"] and again["oneshot_top1_pct"] is None
    everything = oneshot.evaluate(pruned, bundle, modes=["reestimated"], bn_images=10**6, seed=1)
    assert everything["bn_images"] == len(bundle.train)
    with pytest.raises(ConfigError, match="BN modes"):
        oneshot.evaluate(pruned, bundle, modes=["fresh"])
