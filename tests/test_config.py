"""The config schema: every shipped config validates; a bad key, value or type is rejected with a
message naming it, and the workflow stops before any job."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
CONFIGS = sorted((REPO / "config").glob("*.yaml"))


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def merged(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base`` as Snakemake merges --configfile: mappings key by key, the rest replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = (
            merged(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else copy.deepcopy(value)
        )
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    """Every tier file validates as used: given with --configfile on top of config/config.yaml."""
    config = merged(default_config(), yaml.safe_load(path.read_text()) or {})
    validate(config, SCHEMA)


def test_defaults_are_filled_in():
    config = default_config()
    for key in ("resources", "report", "measure", "arch_options", "bottleneck"):
        config.pop(key, None)
    for key in ("samples", "timed", "warmup_batches", "oneshot_ratios", "oneshot_bn", "oneshot_bn_images"):
        config["prune"].pop(key)
    validate(config, SCHEMA)
    assert config["prune"]["samples"] == 1024 and config["measure"]["latency_batches"] == [1, 256]
    assert config["prune"]["timed"] is False and config["prune"]["warmup_batches"] == 1
    assert config["prune"]["oneshot_ratios"] == [] and config["prune"]["oneshot_bn"] == ["as_is"]
    assert config["prune"]["oneshot_bn_images"] == 2048
    assert config["measure"]["gpu_latency"] == "auto" and config["measure"]["iters"] == 30
    assert config["resources"]["train"] == {"threads": 1, "mem_mb": 2000, "runtime": 30}
    assert config["report"]["tables"] == ["summary", "paper", "timing"]
    assert len(config["report"]["figures"]) == 7
    assert config["bottleneck"] == {
        "enabled": False,
        "archs": [],
        "method": "sosp_h",
        "ratio": 0.5,
        "selection": "fraction",
        "value": 0.25,
        "level": "layer",
        "factor": 2.0,
        "uniform_factor": 1.1,
        "methods": ["sosp_h"],
    }


def test_schema_names_match_the_library():
    """The schema's lists of figures and tables are the registries' (a new figure or table must be added
    to both); methods are any installed plug-in, so the schema only constrains their form."""
    from sosp import plots, registry, results

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert "enum" not in schema["$defs"]["method"]
    assert all(re.fullmatch(schema["$defs"]["method"]["pattern"], name) for name in registry.names())
    assert sorted(schema["$defs"]["figure"]["enum"]) == sorted(plots.FIGURES)
    assert sorted(schema["properties"]["report"]["properties"]["tables"]["items"]["enum"]) == sorted(results.TABLES)


def test_method_options_of_every_tier_are_declared():
    """``prune.options`` of every tier names installed methods (sosp.registry) and only their declared
    options, with values of the declared types (the Snakefile checks the same before any job)."""
    from sosp import registry

    for path in CONFIGS:
        config = merged(default_config(), yaml.safe_load(path.read_text()) or {})
        for method, options in config["prune"].get("options", {}).items():
            assert method in registry.names(), (path.name, method)
            registry.check_options(method, options)


def test_every_method_option_is_documented():
    """Each method's declared options are described in docs/method_choices.md."""
    from sosp import registry

    doc = (REPO / "docs" / "method_choices.md").read_text()
    for method in map(registry.get, registry.names()):
        assert f"`{method.name}`" in doc, method.name
        for option in method.options:
            assert f"`{option.name}`" in doc, f"{method.name}: {option.name}"


def test_every_tier_is_documented():
    readme = (REPO / "config" / "README.md").read_text()
    for path in CONFIGS:
        assert f"`{path.name}`" in readme, path.name
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    for key in schema["properties"]:
        assert f"`{key}`" in readme, key
    for section in ("prune", "measure", "bottleneck", "report"):
        for key in schema["properties"][section]["properties"]:
            assert f"`{key}`" in readme, f"{section}.{key}"


def test_default_tier_matches_the_library():
    """The default tier trains with sosp.train.DEFAULT_DIGITS_CONFIG."""
    from sosp.train import DEFAULT_DIGITS_CONFIG, TrainConfig

    config = default_config()
    assert config["dataset"]["name"] == "digits"
    assert TrainConfig.from_dict(config["train"]) == DEFAULT_DIGITS_CONFIG
    TrainConfig.from_dict(config["finetune"])


def _mutate(path: str, value) -> dict:
    config = default_config()
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


@pytest.mark.parametrize(
    "path, value, named",
    [
        ("colour", "blue", "'colour' was unexpected"),  # unknown top-level key
        ("prune.ratio", [0.5], "'ratio' was unexpected"),  # misspelt nested key
        ("train.epoch", 3, "'epoch' was unexpected"),
        ("dataset.nme", "digits", "'nme' was unexpected"),
        ("prune.ratios", [0.3, 1.0], "prune']['ratios']"),  # ratio must be < 1
        ("prune.ratios", [-0.1], "prune']['ratios']"),
        ("train.epochs", "ten", "train']['epochs']"),  # bad type
        ("seeds", [0, "1"], "['seeds']"),
        ("prune.target", "flops", "prune']['target']"),
        ("dataset.name", "mnist", "dataset']['name']"),
        (
            "prune.methods",
            ["sosp_h", "sosp x"],
            "prune']['methods'][1]",
        ),  # not a method name (the Snakefile checks known ones)
        ("bottleneck.factor", -2, "bottleneck']['factor']"),
        ("bottleneck.level", "stage", "bottleneck']['level']"),
        ("measure.gpu_latency", "maybe", "measure']['gpu_latency']"),
        ("measure.iters", 5, "measure']['iters']"),  # docs/method.md: at least 30 timed iterations
        ("report.figures", ["tradeoff_macs", "pie_chart"], "report']['figures'][1]"),
        ("resources.train", {"gpu": -1}, "resources']['train']['gpu']"),
        ("resources.trian", {"threads": 2}, "'trian' was unexpected"),
        ("archs", ["resnet20+x"], "['archs'][0]"),  # '+' is reserved for widened variants
        ("prune.oneshot_ratios", [0.1, 1.0], "prune']['oneshot_ratios'][1]"),  # one-shot ratios in (0, 1)
        ("prune.oneshot_ratios", [0.0], "prune']['oneshot_ratios'][0]"),
        ("prune.oneshot_ratios", [0.1, 0.1], "prune']['oneshot_ratios']"),
        ("prune.oneshot_ratios", 0.1, "prune']['oneshot_ratios']"),
        ("prune.oneshot_bn", ["as_is", "recalibrated"], "prune']['oneshot_bn'][1]"),
        ("prune.oneshot_bn", [], "prune']['oneshot_bn']"),
        ("prune.oneshot_bn", "reestimated", "prune']['oneshot_bn']"),
        ("prune.oneshot_bn_images", 0, "prune']['oneshot_bn_images']"),
        ("prune.oneshot_bn_image", 256, "'oneshot_bn_image' was unexpected"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(path, value, named):
    with pytest.raises(WorkflowError) as info:
        validate(_mutate(path, value), SCHEMA)
    assert named in str(info.value)


def test_oneshot_keys_validate_and_are_not_hashed():
    """The one-shot curve's keys: the CIFAR-10 CPU tier asks for BN as pruned and re-estimated at four
    low ratios; they decide no record (its rows carry their own settings), so the config hash, stamped
    into every record, is the same with or without them."""
    from sosp.config_hash import config_hash

    cpu = merged(default_config(), yaml.safe_load((REPO / "config" / "cifar10_cpu.yaml").read_text()))
    validate(cpu, SCHEMA)
    assert cpu["prune"]["oneshot_ratios"] == [0.1, 0.2, 0.3, 0.4]
    assert cpu["prune"]["oneshot_bn"] == ["as_is", "reestimated"] and cpu["prune"]["oneshot_bn_images"] == 2048
    config = default_config()
    validate(config, SCHEMA)
    digest = config_hash(config)
    for key, value in (("oneshot_ratios", [0.1, 0.2]), ("oneshot_bn", ["reestimated"]), ("oneshot_bn_images", 64)):
        other = copy.deepcopy(config)
        other["prune"][key] = value
        validate(other, SCHEMA)
        assert config_hash(other) == digest, key
    bare = copy.deepcopy(config)
    for key in ("oneshot_ratios", "oneshot_bn", "oneshot_bn_images"):
        bare["prune"].pop(key)
    assert config_hash(bare) == digest  # tiers written before the keys existed keep their hash


def test_missing_required_key_is_named():
    config = default_config()
    del config["seeds"]
    with pytest.raises(WorkflowError, match="'seeds' is a required property"):
        validate(config, SCHEMA)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, value, message",
    [
        (
            "prune.ratios",
            [0.5, 1.5],
            "invalid config: prune.ratios[1]: 1.5 is greater than or equal to the maximum of 1",
        ),
        ("bottleneck.ratio", 0.4, "invalid config: bottleneck.ratio: 0.4 is not one of prune.ratios"),
        (
            "prune.oneshot_bn",
            ["as_is", "fresh"],
            "invalid config: prune.oneshot_bn[1]: 'fresh' is not one of ['as_is', 'reestimated']",
        ),
        ("bottleneck.archs", ["resnet56"], "invalid config: bottleneck.archs[0]: 'resnet56' is not one of archs"),
        ("dataset.name", "imagefolder", "invalid config: dataset.root: the imagefolder data set needs the folder"),
        (
            "prune.options",
            {"sosp_h": {"combin": "joint"}},
            "invalid config: prune.options.sosp_h.combin: method 'sosp_h' has no option 'combin'; options: combine",
        ),
        (
            "prune.options",
            {"sosp_i": {"mc_samples": "many"}},
            "invalid config: prune.options.sosp_i.mc_samples: mc_samples must be an integer, got 'many'",
        ),
        ("prune.options", {"sosp_hh": {}}, "invalid config: prune.options.sosp_hh: unknown pruning method 'sosp_hh'"),
        (
            "prune.methods",
            ["sosp_h", "sosp_x"],
            "invalid config: prune.methods[1]: unknown pruning method 'sosp_x'; installed: cobd, eigendamage",
        ),
    ],
)
def test_workflow_stops_before_any_job(tmp_path, path, value, message):
    """Snakemake itself rejects a bad config up front with one line naming the key; nothing runs."""
    for name in ("Snakefile", "workflow", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    bad = _mutate(path, value)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "bad.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out, out
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()
