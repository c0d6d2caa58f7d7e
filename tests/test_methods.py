"""The method registry (``sosp.registry``): every method found through package metadata (entry-point
group ``sosp.methods``), loaded only when asked for, its options declared once and checked (name,
declared type, choices) for the library, the command line and the config; plug-ins from another
package (real ``.dist-info`` metadata), a name declared twice and broken plug-ins; the generic
cost-target search of ``sosp.selection``; saved models of an older layout refused by name."""

import re
import subprocess
import sys

import plugins
import pytest
import torch
import toy_models

from sosp import registry, runner, selection
from sosp.errors import ConfigError, DataError, UnknownNameError
from sosp.registry import Option, PluginError

BUILTIN = ["cobd", "eigendamage", "magnitude", "random", "sosp_h", "sosp_i", "taylor", "taylor_iterative"]
SOSP = ["sosp_h", "sosp_i"]


def test_builtin_methods_are_declared_once_sosp_in_sosp_and_baselines_in_sosp_baselines():
    assert registry.names() == BUILTIN
    assert registry.names("pruner") == ["eigendamage", "taylor_iterative"]
    for name in BUILTIN:
        method = registry.get(name)
        assert method.name == name and method.kind in registry.KINDS and method.summary
        home = "sosp.methods." if name in SOSP else "sosp_baselines."
        assert method.fn.__module__.startswith(home), (name, method.fn.__module__)
        assert method.package == "sosp-bench" and method.provider.startswith("sosp-bench ")
        assert len({o.name for o in method.options}) == len(method.options)


def test_listing_imports_nothing_and_a_method_is_imported_when_asked_for():
    code = (
        "import sys; from sosp import registry; names = registry.names(); "
        "assert 'sosp_baselines' not in sys.modules and 'sosp.methods.sosp_h' not in sys.modules, names; "
        "registry.get('random'); loaded = sorted(m for m in sys.modules if m.startswith('sosp_baselines.')); "
        "assert loaded == ['sosp_baselines.random'], loaded; assert 'torch' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_options_resolve_to_the_declared_defaults():
    assert registry.check_options("sosp_i", {}) == {"estimator": "exact", "mc_samples": 1, "seed": 0, "max_bytes": None}
    assert registry.check_options("sosp_i", {"estimator": "mc", "max_bytes": 10})["max_bytes"] == 10
    lr = registry.check_options("taylor_iterative", {"lr": 1})["lr"]
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
        registry.check_options(method, options)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown pruning method 'nope'; known: cobd, eigendamage"):
        registry.get("nope")
    with pytest.raises(UnknownNameError, match="unknown saliency method 'eigendamage'"):
        registry.get("eigendamage", "saliency")  # a whole pruner has no saliencies to score


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
    assert registry.get(method).parse([(key, text)]) == {key: value}


def test_command_line_refuses_callables_and_values_of_the_wrong_type():
    with pytest.raises(ConfigError, match="cannot be given on the command line"):
        registry.get("eigendamage").parse([("finetune_fn", "print")])
    with pytest.raises(ConfigError, match="max_bytes must be an integer or null, got 'lots'"):
        registry.get("sosp_i").parse([("max_bytes", "lots")])
    with pytest.raises(ConfigError, match="scope must be one of"):
        registry.get("magnitude").parse([("scope", "1")])


def test_the_decorator_checks_the_signature_against_the_declared_options():
    alpha = Option("alpha", float, 1.0, "a weight")

    def other_name(model, groups, batches, *, beta):
        pass

    def with_default(model, groups, batches, *, alpha=1.0):
        pass

    def pruner_with_restated_run_arguments(model, batches, ratio, *, alpha):
        pass

    def pruner(request, *, alpha):
        """A pruner: one request, then its options."""

    with pytest.raises(TypeError, match="keyword-only parameters"):
        registry.method("_bad", options=(alpha,))(other_name)
    with pytest.raises(TypeError, match="default in the signature"):
        registry.method("_bad", options=(alpha,))(with_default)
    with pytest.raises(TypeError, match=re.escape("a pruner takes exactly the positional arguments (request)")):
        registry.method("_bad", "pruner", options=(alpha,))(pruner_with_restated_run_arguments)
    made = registry.method("_good", "pruner", options=(alpha,))(pruner)
    assert isinstance(made, registry.Method) and made.kind == "pruner" and made.provider is None
    assert "_bad" not in registry.names() and "_good" not in registry.names()  # declared, not decorated


def test_option_declarations_are_checked():
    with pytest.raises(TypeError, match="type must be one of"):
        Option("x", list, [], "a list")
    with pytest.raises(ConfigError, match="x must be one of a, b"):
        Option("x", str, "c", "a letter", choices=("a", "b"))


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install distributions into a fresh folder on ``sys.path`` (``installed(name, version, entry_points,
    sources)``); the registry reads the metadata again, and forgets them after the test."""
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    modules = []

    def install(name, version, entry_points, sources):
        plugins.make_distribution(site, name, version, entry_points, sources)
        modules.extend(sources)
        registry.refresh()

    yield install
    monkeypatch.undo()
    for module in modules:
        sys.modules.pop(module, None)
    registry.refresh()


SCALED = """
import torch
from sosp.registry import Option, method

@method("scaled_rank", options=(Option("scale", float, 2.0, "factor"), Option("seed", int, 0, "unused")),
        cost_normalizable=lambda options: options["scale"] > 0)
def scaled_rank(model, groups, batches, *, scale, seed):
    \"\"\"Test method: channel index times ``scale``.\"\"\"
    return [scale * torch.arange(g.size, dtype=torch.float64) for g in groups]
"""


def test_a_method_of_another_package_registers_and_runs_like_a_builtin(installed):
    installed("acme-pruning", "1.2.3", {"scaled_rank": "acme_scaled:scaled_rank"}, {"acme_scaled": SCALED})
    assert "scaled_rank" in registry.names() and "acme_scaled" not in sys.modules
    model = toy_models.make("vgg")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    result = runner.run(
        "scaled_rank",
        model,
        [(x, torch.zeros(2, dtype=torch.long))],
        0.5,
        example_input=x[:1],
        normalize="cost",
        seed=7,
    )
    report = result.report
    assert report["method_package"] == "acme-pruning 1.2.3"
    assert report["options"] == {"seed": 7}  # a saliency method's seed option is the run's
    assert report["resolved_options"] == {"scale": 2.0, "seed": 7}
    assert report["normalize"] == "cost"
    assert runner.effective_selection("scaled_rank", {"scale": -1.0}, normalize="cost")["normalize"] == "none"
    with pytest.raises(ConfigError, match="scale must be a number"):
        runner.run("scaled_rank", model, [], 0.5, example_input=x[:1], scale="big")


def test_a_name_declared_by_two_packages_is_an_error_naming_both(installed):
    installed("acme-pruning", "1.0", {"sosp_h": "acme_h:sosp_h"}, {"acme_h": "raise RuntimeError('not imported')"})
    with pytest.raises(PluginError, match="method 'sosp_h' is declared twice: by package ") as error:
        registry.get("sosp_h")
    assert "package acme-pruning 1.0 (acme_h:sosp_h)" in str(error.value)
    assert "package sosp-bench 0.1.0 (sosp.methods.sosp_h:sosp_h)" in str(error.value)
    assert registry.get("sosp_i").name == "sosp_i"  # the other methods are unaffected


@pytest.mark.parametrize(
    "sources, message",
    [
        ({"acme_broken": "import a_module_that_does_not_exist"}, "failed to load: ModuleNotFoundError"),
        ({"acme_broken": "broken = 42"}, "is a int, not a method made with the sosp.registry.method decorator"),
        (
            {
                "acme_broken": "from sosp.registry import method\n\n@method('other')\ndef broken(model, groups, batches):\n    pass\n"
            },
            "declares method 'broken' but its object is named 'other'",
        ),
    ],
)
def test_a_broken_plugin_is_an_error_naming_its_package(installed, sources, message):
    installed("acme-broken", "0.0.1", {"broken": "acme_broken:broken"}, sources)
    with pytest.raises(PluginError, match=re.escape(message)) as error:
        registry.get("broken")
    assert "package acme-broken 0.0.1 (acme_broken:broken)" in str(error.value)


def test_pruner_reports_record_the_options_and_the_applied_floor():
    model = toy_models.make("vgg")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    report = runner.run("eigendamage", model, [(x, y)], 0.3, example_input=x[:1], steps=2).report
    assert report["options"] == {"steps": 2}
    assert report["resolved_options"] == {"mode": "one_pass", "steps": 2, "finetune_fn": None}
    assert report["min_fraction"] == 0.05 and report["normalize"] == "none" and report["min_channels"] == 1


def test_search_cost_target_is_the_smallest_k_that_reaches_the_goal():
    costs = [10, 9, 9, 7, 4, 4, 2]
    calls = []

    def evaluate(k):
        calls.append(k)
        return costs[k]

    assert selection.search_cost_target(evaluate, 6, 4) == 4 and calls[0] == 6
    for goal in range(2, 11):
        assert selection.search_cost_target(costs.__getitem__, 6, goal) == min(
            k for k, c in enumerate(costs) if c <= goal
        )
    assert selection.search_cost_target(costs.__getitem__, 6, 1) is None
    assert selection.search_cost_target(costs.__getitem__, 0, 10) == 0


def test_models_saved_by_an_older_layout_are_refused_naming_the_file(tmp_path, monkeypatch):
    """A model pickled when EigenDamage's layer class lived in ``sosp.methods.eigendamage`` (before the
    baselines moved to ``sosp_baselines``): no shim translates it; the error names the file."""
    import types

    from sosp import io
    from sosp_baselines import eigenbasis

    old = types.ModuleType("sosp.methods.eigendamage")  # the old home, present while the model is saved
    old.EigenBasisLayer = eigenbasis.EigenBasisLayer
    monkeypatch.setitem(sys.modules, "sosp.methods.eigendamage", old)
    monkeypatch.setattr(eigenbasis.EigenBasisLayer, "__module__", "sosp.methods.eigendamage")
    io.save_model(tmp_path / "old.pt", torch.nn.Sequential(eigenbasis.EigenBasisLayer(torch.nn.Linear(2, 2))))
    monkeypatch.undo()
    assert b"sosp.methods.eigendamage" in (tmp_path / "old.pt").read_bytes()
    with pytest.raises(DataError, match=re.escape(f"model file {tmp_path / 'old.pt'} refers to code that no longer")):
        io.load_model(tmp_path / "old.pt")
    io.save_model(tmp_path / "new.pt", torch.nn.Sequential(eigenbasis.EigenBasisLayer(torch.nn.Linear(2, 2))))
    model, _ = io.load_model(tmp_path / "new.pt")
    assert type(model[0]) is eigenbasis.EigenBasisLayer
