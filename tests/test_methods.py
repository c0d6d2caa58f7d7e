"""The method registry (``sosp.methods``): every method once, its options declared once and checked by
the registry (name, declared type, choices) for the library, the command line and the config; the
generic cost-target search of ``sosp.prune``."""

import re
import sys
import types

import pytest
import torch
import toy_models

from sosp import methods, prune
from sosp.errors import ConfigError, UnknownNameError
from sosp.methods import Option

BUILTIN = ["cobd", "eigendamage", "magnitude", "random", "sosp_h", "sosp_i", "taylor", "taylor_iterative"]


def test_every_builtin_method_is_registered_once_by_its_own_module():
    assert methods.names() == sorted(prune.METHODS) == BUILTIN
    assert methods.names("pruner") == ["eigendamage", "taylor_iterative"]
    for name, method in methods.METHODS.items():
        assert method.name == name and method.kind in methods.KINDS and method.summary
        assert method.fn.__module__.startswith("sosp.methods.")
        assert len({o.name for o in method.options}) == len(method.options)


def test_options_resolve_to_the_declared_defaults():
    assert methods.check_options("sosp_i", {}) == {"estimator": "exact", "mc_samples": 1, "seed": 0, "max_bytes": None}
    assert methods.check_options("sosp_i", {"estimator": "mc", "max_bytes": 10})["max_bytes"] == 10
    lr = methods.check_options("taylor_iterative", {"lr": 1})["lr"]
    assert lr == 1.0 and isinstance(lr, float)  # an integer is a number


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("sosp_h", {"bogus": 1}, "method 'sosp_h' has no option 'bogus'; options: combine, curvature"),
        ("sosp_h", {"combine": "sum"}, "combine must be one of separate, joint, second_order, got 'sum'"),
        ("sosp_i", {"mc_samples": 2.5}, "mc_samples must be an integer, got 2.5"),
        ("sosp_i", {"mc_samples": True}, "mc_samples must be an integer, got True"),
        ("sosp_i", {"estimator": None}, "estimator must be a string, got None"),
        ("random", {"seed": "3"}, "seed must be an integer, got '3'"),
        ("taylor_iterative", {"lr": "fast"}, "lr must be a number, got 'fast'"),
        ("taylor_iterative", {"finetune_fn": 3}, "finetune_fn must be a Python callable or null"),
        ("eigendamage", {"seed": 1}, "no option 'seed'"),  # a pruner's seed is the run's, not an option
        ("eigendamage", {"min_fraction": 0.2}, "no option 'min_fraction'"),  # the floor is the selection's
    ],
)
def test_bad_options_are_config_errors_naming_the_option(method, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        methods.check_options(method, options)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown pruning method 'nope'; known: cobd, eigendamage"):
        methods.get("nope")
    with pytest.raises(UnknownNameError, match="unknown saliency method 'eigendamage'"):
        methods.get("eigendamage", "saliency")  # a whole pruner has no saliencies to score


@pytest.mark.parametrize(
    "method, key, text, value",
    [
        ("sosp_i", "estimator", "mc", "mc"),
        ("sosp_i", "estimator", '"mc"', "mc"),  # the workflow passes JSON
        ("sosp_i", "max_bytes", "1000", 1000),
        ("sosp_i", "max_bytes", "null", None),
        ("taylor_iterative", "lr", "1", 1.0),
        ("taylor_iterative", "per_step", "none", None),
        ("magnitude", "scope", "global", "global"),
    ],
)
def test_command_line_text_is_parsed_by_the_declared_type(method, key, text, value):
    assert methods.get(method).parse([(key, text)]) == {key: value}


def test_command_line_refuses_callables_and_values_of_the_wrong_type():
    with pytest.raises(ConfigError, match="cannot be given on the command line"):
        methods.get("eigendamage").parse([("finetune_fn", "print")])
    with pytest.raises(ConfigError, match="max_bytes must be an integer or null, got 'lots'"):
        methods.get("sosp_i").parse([("max_bytes", "lots")])
    with pytest.raises(ConfigError, match="scope must be one of"):
        methods.get("magnitude").parse([("scope", "1")])


def test_register_checks_the_signature_against_the_declared_options():
    alpha = Option("alpha", float, 1.0, "a weight")

    def other_name(model, groups, batches, *, beta):
        pass

    def with_default(model, groups, batches, *, alpha=1.0):
        pass

    def pruner_without_run_arguments(model, batches, ratio, *, alpha):
        pass

    def duplicate(model, groups, batches, *, combine, curvature):
        pass

    with pytest.raises(TypeError, match="keyword-only parameters"):
        methods.register("_bad", options=(alpha,))(other_name)
    with pytest.raises(TypeError, match="default in the signature"):
        methods.register("_bad", options=(alpha,))(with_default)
    with pytest.raises(TypeError, match="keyword-only parameters"):
        methods.register("_bad", "pruner", options=(alpha,))(pruner_without_run_arguments)
    with pytest.raises(ValueError, match="registered twice"):
        methods.register("sosp_h", options=methods.get("sosp_h").options)(duplicate)
    assert "_bad" not in methods.METHODS and methods.get("sosp_h").fn.__name__ == "sosp_h"


def test_option_declarations_are_checked():
    with pytest.raises(TypeError, match="type must be one of"):
        Option("x", list, [], "a list")
    with pytest.raises(ConfigError, match="x must be one of a, b"):
        Option("x", str, "c", "a letter", choices=("a", "b"))


def test_a_new_method_is_one_decorator_and_runs_through_sosp_prune():
    @methods.register(
        "_test_scaled_norm",
        options=(Option("scale", float, 2.0, "factor"), Option("seed", int, 0, "unused")),
        cost_normalizable=lambda options: options["scale"] > 0,
    )
    def scaled_norm(model, groups, batches, *, scale, seed):
        """Test method: filter norms times ``scale``."""
        return [scale * torch.arange(g.size, dtype=torch.float64) for g in groups]

    try:
        model = toy_models.make("vgg")
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        result = prune.run(
            "_test_scaled_norm",
            model,
            [(x, torch.zeros(2, dtype=torch.long))],
            0.5,
            example_input=x[:1],
            normalize="cost",
            seed=7,
        )
        report = result.report
        assert report["options"] == {"seed": 7}  # a saliency method's seed option is the run's
        assert report["resolved_options"] == {"scale": 2.0, "seed": 7}
        assert report["normalize"] == "cost"
        assert prune.effective_selection("_test_scaled_norm", {"scale": -1.0}, normalize="cost")["normalize"] == "none"
        with pytest.raises(ConfigError, match="scale must be a number"):
            prune.run("_test_scaled_norm", model, [], 0.5, example_input=x[:1], scale="big")
    finally:
        methods._REGISTRY.pop("_test_scaled_norm")


def test_pruner_reports_record_the_options_and_the_applied_floor():
    model = toy_models.make("vgg")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    report = prune.run("eigendamage", model, [(x, y)], 0.3, example_input=x[:1], steps=2).report
    assert report["options"] == {"steps": 2}
    assert report["resolved_options"] == {"mode": "one_pass", "steps": 2, "finetune_fn": None}
    assert report["min_fraction"] == 0.05 and report["normalize"] == "none" and report["min_channels"] == 1


def test_search_cost_target_is_the_smallest_k_that_reaches_the_goal():
    costs = [10, 9, 9, 7, 4, 4, 2]
    calls = []

    def evaluate(k):
        calls.append(k)
        return costs[k]

    assert prune.search_cost_target(evaluate, 6, 4) == 4 and calls[0] == 6
    for goal in range(2, 11):
        assert prune.search_cost_target(costs.__getitem__, 6, goal) == min(k for k, c in enumerate(costs) if c <= goal)
    assert prune.search_cost_target(costs.__getitem__, 6, 1) is None
    assert prune.search_cost_target(costs.__getitem__, 0, 10) == 0


def test_models_saved_before_the_methods_moved_still_load(tmp_path, monkeypatch):
    """An EigenDamage model pickled when its layer class lived in ``baselines.eigendamage``."""
    from sosp import io
    from sosp.methods import eigendamage

    legacy = types.ModuleType("baselines.eigendamage")
    legacy.EigenBasisLayer = eigendamage.EigenBasisLayer
    monkeypatch.setitem(sys.modules, "baselines", types.ModuleType("baselines"))
    monkeypatch.setitem(sys.modules, "baselines.eigendamage", legacy)
    monkeypatch.setattr(eigendamage.EigenBasisLayer, "__module__", "baselines.eigendamage")
    io.save_model(tmp_path / "old.pt", torch.nn.Sequential(eigendamage.EigenBasisLayer(torch.nn.Linear(2, 2))))
    monkeypatch.undo()
    assert b"baselines.eigendamage" in (tmp_path / "old.pt").read_bytes()
    model, _ = io.load_model(tmp_path / "old.pt")
    assert type(model[0]) is eigendamage.EigenBasisLayer


def test_models_saved_before_the_eigenbasis_layer_moved_still_load(tmp_path, monkeypatch):
    """An EigenDamage model pickled when its layer class lived in ``sosp.methods.eigendamage``."""
    from sosp import io
    from sosp.methods import eigenbasis, eigendamage

    monkeypatch.setattr(eigenbasis.EigenBasisLayer, "__module__", "sosp.methods.eigendamage")
    io.save_model(tmp_path / "old.pt", torch.nn.Sequential(eigenbasis.EigenBasisLayer(torch.nn.Linear(2, 2))))
    monkeypatch.undo()
    assert b"sosp.methods.eigendamage" in (tmp_path / "old.pt").read_bytes()
    model, _ = io.load_model(tmp_path / "old.pt")
    assert type(model[0]) is eigenbasis.EigenBasisLayer is eigendamage.EigenBasisLayer
