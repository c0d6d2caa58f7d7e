"""Selection rules that keep the comparison fair: the per-group floor, where `normalize: cost` applies,
the authors' floors of EigenDamage and C-OBD, and records that state what was applied."""

import json
import math

import pytest
import torch
import toy_models

from sosp import models, results, runner, selection, structures
from sosp.errors import ConfigError, UnsupportedModelError


def _vgg():
    torch.manual_seed(0)
    model = models.create("vgg11", num_classes=10, in_channels=1)
    toy_models.randomize_batchnorm(model)
    return model.eval()


def _batches(n=2, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=gen), torch.randint(0, 10, (size,), generator=gen)) for _ in range(n)]


def _collapsing_scores(groups):
    """The last group scores lowest everywhere: a global ranking empties it first."""
    scores = [torch.rand(g.size, generator=torch.Generator().manual_seed(i)) + 1.0 for i, g in enumerate(groups)]
    scores[-1] = scores[-1] - 1.0
    return scores


@pytest.mark.parametrize(
    "size, min_channels, min_fraction, floor",
    [(256, 1, 0.0, 1), (256, 1, 0.05, 13), (256, 20, 0.05, 20), (10, 1, 0.2, 2), (3, 8, 0.0, 3), (64, 1, 0.25, 16)],
)
def test_group_floor(size, min_channels, min_fraction, floor):
    assert selection.group_floor(size, min_channels, min_fraction) == floor


def test_floor_stops_layer_collapse():
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    groups = structures.channel_groups(model, x)
    scores = _collapsing_scores(groups)
    collapsed = selection.prune(model, groups, scores, ratio=0.5, example_input=x)
    last = collapsed.report["per_group"][-1]
    assert last["size"] - last["removed"] == 1, "without a floor the lowest-scoring group keeps one channel"
    assert collapsed.report["min_kept_fraction"] == pytest.approx(1 / last["size"])

    floored = selection.prune(model, groups, scores, ratio=0.5, example_input=x, min_fraction=0.2)
    for row in floored.report["per_group"]:
        assert row["size"] - row["removed"] >= math.ceil(0.2 * row["size"])
    assert floored.report["min_kept_fraction"] >= 0.2
    assert floored.report["num_removed"] == collapsed.report["num_removed"], "the same ratio is still reached"
    assert floored.report["min_fraction"] == 0.2


def test_floor_makes_high_ratio_impossible_with_a_clear_error():
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    groups = structures.channel_groups(model, x)
    with pytest.raises(ConfigError, match=r"min_fraction=0\.5"):
        selection.prune(model, groups, _collapsing_scores(groups), ratio=0.6, example_input=x, min_fraction=0.5)
    with pytest.raises(ConfigError, match="min_fraction"):
        selection.prune(model, groups, _collapsing_scores(groups), ratio=0.3, example_input=x, min_fraction=1.0)


@pytest.mark.parametrize(
    "method, options, normalize",
    [
        ("random", {}, "none"),
        ("magnitude", {}, "none"),
        ("magnitude", {"scope": "layerwise"}, "none"),
        ("magnitude", {"scope": "global"}, "cost"),
        ("sosp_h", {}, "cost"),
        ("sosp_i", {}, "cost"),
        ("taylor", {}, "cost"),
        ("cobd", {}, "cost"),
        ("eigendamage", {}, "none"),
        ("taylor_iterative", {}, "none"),
    ],
)
def test_cost_normalisation_applies_only_to_global_saliencies(method, options, normalize):
    assert runner.effective_selection(method, options, normalize="cost")["normalize"] == normalize
    assert runner.effective_selection(method, options, normalize="none")["normalize"] == "none"


@pytest.mark.parametrize(
    "method, configured, applied",
    [
        ("cobd", 0.0, 0.05),
        ("eigendamage", 0.0, 0.05),
        ("cobd", 0.1, 0.1),
        ("sosp_h", 0.0, 0.0),
        ("taylor", 0.1, 0.1),
        ("random", 0.0, 0.0),
    ],
)
def test_authors_floor_of_eigendamage_and_cobd(method, configured, applied):
    assert runner.effective_selection(method, {}, min_fraction=configured)["min_fraction"] == applied


def test_random_with_cost_normalisation_is_unchanged_and_recorded_as_none():
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    plain, costed = (
        runner.run("random", model, _batches(), 0.5, example_input=x, normalize=n, seed=3) for n in ("none", "cost")
    )
    assert plain.removed == costed.removed
    assert costed.report["normalize"] == "none"


def test_cost_normalisation_changes_a_saliency_ranking_and_is_recorded():
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    plain, costed = (
        runner.run("magnitude", model, _batches(), 0.5, example_input=x, normalize=n, scope="global")
        for n in ("none", "cost")
    )
    assert plain.removed != costed.removed
    assert costed.report["normalize"] == "cost"


def test_eigendamage_keeps_five_percent_per_layer_and_records_what_it_applied():
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    result = runner.run("eigendamage", model, _batches(), 0.7, example_input=x, normalize="cost")
    report = result.report
    assert report["normalize"] == "none"
    assert report["min_fraction"] == 0.05
    for row in report["per_layer"]:
        for side in ("in", "out"):
            n = row[f"directions_{side}"]
            assert row[f"kept_{side}"] >= max(1, math.ceil(0.05 * n)), (row["layer"], side)
    fields = results.prune_fields(report)
    assert fields["min_kept_fraction"] >= 0.05 - 1e-12
    assert set(json.loads(fields["removed_per_layer"])) == {row["layer"] for row in report["per_layer"]}


def test_eigendamage_floor_binds_at_a_high_ratio():
    """At 0.9 of all directions the 5 % floor must bind on some layer side with more than 20 directions
    (where 5 % is more than the single direction kept without a floor), else the test above proves nothing."""
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    report = runner.run("eigendamage", model, _batches(), 0.9, example_input=x).report
    binding = [
        (r["layer"], s)
        for r in report["per_layer"]
        for s in ("in", "out")
        if r[f"directions_{s}"] > 20 and r[f"kept_{s}"] == math.ceil(0.05 * r[f"directions_{s}"])
    ]
    assert binding
    assert report["min_kept_fraction"] >= min(
        max(1, math.ceil(0.05 * r[f"directions_{s}"])) / r[f"directions_{s}"]
        for r in report["per_layer"]
        for s in ("in", "out")
    )


def test_cobd_applies_the_authors_floor():
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    result = runner.run("cobd", model, _batches(), 0.85, example_input=x)
    assert result.report["min_fraction"] == 0.05
    for row in result.report["per_group"]:
        assert row["size"] - row["removed"] >= math.ceil(0.05 * row["size"])


def test_record_fields_state_the_applied_selection():
    model = _vgg()
    x = torch.randn(1, 1, 8, 8)
    report = runner.run("taylor", model, _batches(), 0.5, example_input=x, min_fraction=0.1).report
    fields = results.prune_fields(report)
    assert (fields["min_channels"], fields["min_fraction"], fields["normalize"]) == (1, 0.1, "none")
    per_layer = json.loads(fields["removed_per_layer"])
    assert per_layer == {r["group"]: pytest.approx(r["removed"] / r["size"], abs=1e-6) for r in report["per_group"]}
    assert fields["min_kept_fraction"] == pytest.approx(1 - max(per_layer.values()), abs=1e-6)
    assert fields["min_kept_fraction"] >= 0.1


def test_missing_mac_count_raises_instead_of_a_tiny_cost(monkeypatch):
    model = toy_models.make("vgg", dtype=torch.float32)
    x = torch.randn(1, 1, 8, 8)
    groups = structures.channel_groups(model, x)
    real = selection._macs_per_module
    victim = groups[0].producers[0]
    monkeypatch.setattr(
        selection, "_macs_per_module", lambda m, e: {k: v for k, v in real(m, e).items() if k != victim}
    )
    with pytest.raises(UnsupportedModelError, match=victim.replace(".", r"\.")):
        selection.cost_per_structure(model, groups, x)
